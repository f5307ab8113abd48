"""A produce-and-consume storm against a real server process, killed with
SIGKILL at a random moment, round after round; and a server paused with
SIGSTOP for longer than the group session timeout.

After every restart: every acknowledged event is stored exactly once at its
acknowledged offset, committed group offsets never go backwards, and a group
consumer resumes from the committed offsets. Recovery time (restart to the
first answered request) is recorded. ``HEADWATER_STORM_ROUNDS`` sets the
number of rounds (default 4; the soak runs more).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import trio

import headwater
from headwater import HeadwaterError
from headwater.client import Event

from .server_proc import server

pytestmark = pytest.mark.crash

ROUNDS = int(os.environ.get("HEADWATER_STORM_ROUNDS", "4"))
TOPIC = "storm"
GROUP = "storm-readers"


async def committed(url: str) -> dict[int, int]:
    async with headwater.connect(url) as client:
        description = await client.describe_group(GROUP)
        return {p.partition: p.committed for p in description.partitions if p.committed is not None}


async def produce(url: str, tag: str, acked: list[Event]) -> None:
    """Idempotent producer: numbered events until cancelled."""
    try:
        async with (
            headwater.connect(url, connect_timeout=5) as client,
            client.producer(linger=0.002, request_timeout=5) as producer,
        ):
            i = 0
            while True:
                acked.extend(await producer.send_many(TOPIC, [f"{tag}-{i + k}" for k in range(25)]))
                i += 25
    except* HeadwaterError:
        pass  # the server went away (maybe inside a nursery's group): this round is over


async def consume(url: str, first: dict[int, int], commits: list[dict[int, int]]) -> None:
    """A group consumer: remembers the first offset it sees per partition,
    commits every few hundred events (recording what it committed)."""
    try:
        async with (
            headwater.connect(url, connect_timeout=5) as client,
            client.consumer(TOPIC, group=GROUP, session_timeout=3.0, auto_commit=False) as consumer,
        ):
            since = 0
            while True:
                events = await consumer.getmany(500, timeout=0.5)
                for event in events:
                    first.setdefault(event.partition, event.offset)
                since += len(events)
                if since >= 300:
                    positions = {p: consumer.position(TOPIC, p) for _t, p in consumer.assignment()}
                    await consumer.commit()
                    commits.append({p: o for p, o in positions.items() if o is not None})
                    since = 0
    except* HeadwaterError:
        pass  # a commit whose answer was lost may still be stored: checked next round


async def read_everything(url: str) -> list[Event]:
    async with headwater.connect(url) as client:
        description = await client.describe_topic(TOPIC)
        total = sum(p.next_offset for p in description.partitions)
        out: list[Event] = []
        async with client.consumer(TOPIC) as consumer:
            with trio.fail_after(60):
                while len(out) < total:
                    out.extend(await consumer.getmany(10_000, timeout=1))
        return out


async def test_sigkill_storm_rounds(tmp_path: Path) -> None:
    """ROUNDS x (start, storm, SIGKILL at a random moment): nothing acknowledged
    is lost or stored twice; commits never go backwards; consumers resume from
    them."""
    rng = random.Random(7)
    data_dir = tmp_path / "data"
    acked: list[Event] = []
    recoveries: list[float] = []
    last_commit: dict[int, int] = {}
    for round_no in range(ROUNDS):
        started = time.monotonic()
        with server(data_dir, log_name=f"round{round_no}.log") as proc:
            async with headwater.connect(proc.url) as client:
                recoveries.append(time.monotonic() - started)
                if round_no == 0:
                    await client.create_topic(TOPIC, partitions=3)
            if round_no:
                now = await committed(proc.url)
                for partition, offset in last_commit.items():
                    assert now.get(partition, 0) >= offset, "a committed offset went backwards"
                last_commit = now
            first: dict[int, int] = {}
            commits: list[dict[int, int]] = []
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(produce, proc.url, f"r{round_no}", acked)
                    nursery.start_soon(consume, proc.url, first, commits)
                    await trio.sleep(rng.uniform(0.4, 1.2))
                    code = await trio.to_thread.run_sync(proc.stop, signal.SIGKILL)
                    assert -signal.SIGKILL == code
                    nursery.cancel_scope.cancel()
            for partition, offset in first.items():
                # Resumed from the commit (or from the start of a never-committed partition).
                assert offset == last_commit.get(partition, offset), (partition, offset)
            if commits:
                last_commit = {**last_commit, **commits[-1]}
    with server(data_dir, log_name="final.log") as proc:
        stored = await read_everything(proc.url)
        final_commits = await committed(proc.url)
    by_position = {(e.partition, e.offset): e.value for e in stored}
    assert len(by_position) == len(stored)
    lost = [e for e in acked if by_position.get((e.partition, e.offset)) != e.value]
    assert [] == lost
    values = [e.value for e in stored]
    assert len(values) == len(set(values)), "an event was stored twice"
    for partition, offset in last_commit.items():
        assert final_commits.get(partition, 0) >= offset
    assert len(acked) > 100 * ROUNDS
    print(f"storm: {ROUNDS} rounds, {len(acked)} acked, recovery s {sorted(recoveries)}")


async def test_sigstop_longer_than_the_session_timeout(tmp_path: Path) -> None:
    """A server paused (SIGSTOP) for longer than the group session timeout
    resumes: the producer's retries land once, the group consumer rejoins and
    reads everything."""
    data_dir = tmp_path / "data"
    with server(data_dir) as proc:
        async with headwater.connect(proc.url) as client:
            await client.create_topic(TOPIC, partitions=2)
            seen: set[str] = set()
            async with (
                client.producer(request_timeout=10, linger=0.001) as producer,
                client.consumer(TOPIC, group=GROUP, session_timeout=1.0) as consumer,
            ):
                stored = await producer.send_many(TOPIC, [f"a{i}" for i in range(500)])
                proc.proc.send_signal(signal.SIGSTOP)
                try:
                    async with trio.open_nursery() as nursery:

                        async def late() -> None:
                            stored.extend(
                                await producer.send_many(TOPIC, [f"b{i}" for i in range(500)])
                            )

                        nursery.start_soon(late)
                        await trio.sleep(2.5)  # > session_timeout
                        proc.proc.send_signal(signal.SIGCONT)
                finally:
                    proc.proc.send_signal(signal.SIGCONT)
                with trio.fail_after(30):
                    while len(seen) < 1000:
                        seen.update(e.value for e in await consumer.getmany(1000, timeout=1))
            assert {e.value for e in stored} == seen
        assert 0 == proc.stop()
        stored_after = None
    with server(data_dir, log_name="after.log") as proc:
        stored_after = await read_everything(proc.url)
    values = [e.value for e in stored_after]
    assert len(values) == len(set(values)) == 1000
