"""The everyday client API against the real embedded broker (MockClock, simulated disk)."""

from __future__ import annotations

from typing import Any

import trio

from headwater.broker import open_broker
from headwater.journal import SimulatedFileSystem
from headwater.testing import capture_logs

from .conftest import Connect

DATA = "/data"


async def test_produce_consume_in_a_group_and_resume_after_reopen(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """Keyed events keep per-key order; a group consumer commits; after a broker
    reopen a new consumer in the group resumes after the commit."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker, connect(broker) as client:
        await client.create_topic("orders", partitions=3)
        async with client.producer() as producer:
            first = await producer.send("orders", {"id": 0}, key="user-0")
            stored = await producer.send_many(
                "orders", [({"id": i}, f"user-{i % 7}") for i in range(1, 300)]
            )
        assert 300 == 1 + len(stored)
        assert {e.partition for e in stored if e.key == "user-0"} == {first.partition}
        seen: list[Any] = []
        async with client.consumer(["orders"], group="billing", start="earliest") as consumer:
            async for event in consumer:
                seen.append(event)
                if len(seen) == 200:
                    await consumer.commit()
                    break
        by_key: dict[str, list[int]] = {}
        for e in seen:
            by_key.setdefault(e.key, []).append(e.value["id"])
        assert all(ids == sorted(ids) for ids in by_key.values())
    async with open_broker(DATA, fs=fs) as broker, connect(broker) as client:
        rest: list[Any] = []
        async with client.consumer(["orders"], group="billing", start="earliest") as consumer:
            with trio.move_on_after(30):
                async for event in consumer:
                    rest.append(event)
                    if len(seen) + len(rest) >= 300:
                        break
        ids = sorted(e.value["id"] for e in seen + rest)
        # At-least-once: nothing is missed; events after the commit may repeat.
        assert list(range(300)) == sorted(set(ids))
        desc = await client.describe_group("billing")
        assert "billing" == desc.group


async def test_idempotent_producer_through_partition_kills(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """Killing partition actors while a producer sends stores every event exactly once."""
    with capture_logs() as logs:
        await _kill_storm(connect)
    restarted = [e for e in logs if e["event"] == "actor_restarted"]
    # Ten kills 60 ms apart on virtual time. Each partition's restart
    # backoff doubles with its own crashes (partitions have an intensity of
    # their own: on_give_up="fail"); the supervisor waits out one backoff at
    # a time, and a kill landing while a partition waits it out is a no-op.
    assert [
        ("/broker/topics/t/0", 1, 0.05),
        ("/broker/topics/t/1", 1, 0.05),
        ("/broker/topics/t/0", 2, 0.1),
        ("/broker/topics/t/1", 2, 0.1),
        ("/broker/topics/t/0", 3, 0.2),
        ("/broker/topics/t/1", 3, 0.2),
    ] == [(e["actor"], e["restarts"], e["delay"]) for e in restarted]


async def _kill_storm(connect: Connect) -> None:
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("t", partitions=2)
        async with client.producer(max_batch_events=5) as producer:
            await producer.partitions_of("t")
            async with trio.open_nursery() as nursery:

                async def chaos() -> None:
                    for i in range(10):
                        await trio.sleep(0.06)
                        await broker.kill(f"/broker/topics/t/{i % 2}")

                nursery.start_soon(chaos)
                handles = []
                for i in range(500):
                    handles.append(producer.send_nowait("t", f"v{i}".encode()))
                    if i % 5 == 4:
                        await trio.sleep(0.006)
                events = [await h for h in handles]
        offsets = {(e.partition, e.offset) for e in events}
        assert 500 == len(offsets)
        values: list[bytes] = []
        async with client.consumer(["t"], start="earliest") as consumer:
            with trio.move_on_after(10):
                async for event in consumer:
                    values.append(event.value)
                    if len(values) == 500:
                        break
        assert sorted(f"v{i}".encode() for i in range(500)) == sorted(values)


async def test_compacted_topic_keeps_latest_per_key(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """Compaction keeps the latest event of every key, removes superseded ones and
    expired tombstones, never changes an offset, and survives a reopen."""
    now = [1_000_000]
    fs = SimulatedFileSystem()
    opts: dict[str, Any] = {
        "fs": fs,
        "segment_bytes": 600,
        "clock": lambda: now[0],
        "retention_check_interval": 5.0,
    }
    async with open_broker(DATA, **opts) as broker, connect(broker) as client:
        await client.create_topic("profiles", compacted=True)
        async with client.producer(max_batch_events=1, clock=lambda: now[0]) as producer:
            written = [
                await producer.send("profiles", {"v": i}, key=f"k{i % 4}") for i in range(40)
            ]
            tomb = await producer.send("profiles", None, key="k0")
            for i in range(40, 50):
                await producer.send("profiles", {"v": i}, key=f"k{1 + i % 3}")
        before = await _read_all(client, "profiles")
        await trio.sleep(6)  # a maintenance pass compacts the sealed segments
        after = await _read_all(client, "profiles")
        # 50 events and a tombstone; compaction keeps each sealed segment's
        # first and last event and otherwise the latest per key (deterministic
        # on the simulated disk and virtual time).
        assert (51, 17) == (len(before), len(after))
        offsets = [e.offset for e in after]
        assert offsets == sorted(set(offsets))
        by_offset = {e.offset: e for e in before}
        assert all(by_offset[e.offset].value == e.value for e in after)
        latest = {}
        for e in before:
            latest[e.key] = e
        kept = {e.offset for e in after}
        assert all(e.offset in kept for e in latest.values())
        assert tomb.offset in kept  # still inside its grace period
        now[0] += 25 * 3600 * 1000
        await trio.sleep(6)
        final = {e.offset for e in await _read_all(client, "profiles")}
        assert written[0].offset in final  # a segment's first event always stays
        assert tomb.offset not in final  # the tombstone is gone after its grace period
    async with open_broker(DATA, **opts) as broker, connect(broker) as client:
        reopened = await _read_all(client, "profiles")
        assert [e.offset for e in reopened] == sorted({e.offset for e in reopened})
        assert {e.key: e.value for e in reopened}["k3"] == latest["k3"].value


async def _read_all(client: Any, topic: str) -> list[Any]:
    events: list[Any] = []
    async with client.consumer([topic], start="earliest") as consumer:
        while True:
            batch = await consumer.getmany(max_events=1000, timeout=0.5)
            if not batch:
                return events
            events.extend(batch)
