"""Share subscriptions end to end: embedded and over the protocol (MockClock,
simulated disk). The broker's clock follows Trio's, so lock timeouts and
backoffs run on virtual time."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from headwater import (
    HeadwaterError,
    InvalidArgument,
    LockLostError,
    SubscriptionBusyError,
    SubscriptionConflictError,
)
from headwater.broker import open_broker
from headwater.client import ExponentialBackoff
from headwater.journal import SimulatedFileSystem

from .conftest import Connect

DATA = "/data"


def _clock() -> int:
    return int(trio.current_time() * 1000)


def _broker(fs: SimulatedFileSystem) -> Any:
    return open_broker(DATA, fs=fs, clock=_clock)


async def _produce(client: Any, topic: str, n: int, partitions: int = 2) -> None:
    await client.create_topic(topic, partitions=partitions)
    async with client.producer() as producer:
        await producer.send_many(topic, [({"i": i}, f"k{i}") for i in range(n)])


async def test_shared_deals_every_event_once_fairly(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """4 consumers with equal credit, acking each event: every event is acked
    exactly once, no consumer sits idle, and the deal is fair."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await _produce(client, "jobs", 400)
        seen: list[tuple[str, int]] = []

        async def worker(wid: str) -> None:
            async with client.subscribe("jobs", "q", max_unacked=5) as sub:
                async for event in sub:
                    seen.append((wid, event.value["i"]))
                    assert 1 == event.delivery_count
                    await trio.sleep(0.01)
                    await sub.ack(event)
                    if len(seen) >= 400:
                        return

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for w in "abcd":
                    nursery.start_soon(worker, w)
        assert list(range(400)) == sorted(i for _, i in seen)
        per_worker = Counter(w for w, _ in seen)
        assert set(per_worker) == set("abcd")
        assert max(per_worker.values()) - min(per_worker.values()) <= 10
        desc = await client.describe_group("q")
        assert ("jobs", "shared", "jobs.q.dlq") == (desc.topic, desc.mode, desc.dead_letter_topic)
        assert 400 == sum(p.acked for p in desc.partitions)
        assert 0 == sum(p.backlog + p.in_flight + p.dead_lettered for p in desc.partitions)


async def test_lock_timeout_redelivers_with_backoff_then_dead_letters_with_headers(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """An event never acked is redelivered after ack_timeout + the backoff,
    counting up, and after max_deliveries lands in the DLQ with hw.dlq.* headers."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await _produce(client, "jobs", 1, partitions=1)
        times: list[tuple[float, int]] = []
        async with client.subscribe(
            "jobs", "q", ack_timeout=2.0, max_deliveries=3, backoff=[1.0, 5.0], max_wait=1.0
        ) as sub:
            t0 = trio.current_time()
            with trio.move_on_after(30):
                async for event in sub:
                    elapsed = round(trio.current_time() - t0, 3)
                    times.append((elapsed, event.delivery_count))
        # delivered at 0; lock ends at 2 + backoff 1 -> 3; lock ends 5 + backoff 5 -> 10
        assert [(0.0, 1), (3.0, 2), (10.0, 3)] == times
        async with client.consumer("jobs.q.dlq", deserializer="cbor") as dlq:
            dead = await dlq.getmany(10, timeout=5)
        assert 1 == len(dead)
        headers = dict(dead[0].headers)
        assert ({"i": 0}, "k0") == (dead[0].value, dead[0].key)
        assert {
            "hw.dlq.topic": b"jobs",
            "hw.dlq.partition": b"0",
            "hw.dlq.offset": b"0",
            "hw.dlq.delivery_count": b"3",
            "hw.dlq.error": b"ack timeout",
            "hw.dlq.subscription": b"q",
        } == headers
        desc = await client.describe_group("q")
        assert (1, 2, 0, 1) == (
            desc.partitions[0].dead_lettered,
            desc.partitions[0].redelivered,
            desc.partitions[0].acked,
            desc.partitions[0].ack_floor,
        )


async def test_nack_with_delay_and_exponential_backoff_and_reject(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """nack(delay=) waits that long; nack() waits the exponential backoff;
    reject() dead-letters at once with the error text."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await _produce(client, "jobs", 2, partitions=1)
        log: list[tuple[float, int, int]] = []
        async with client.subscribe(
            "jobs", "q", backoff=ExponentialBackoff(base=0.5, max=1.5), max_deliveries=9
        ) as sub:
            t0 = trio.current_time()
            async for event in sub:
                log.append((round(trio.current_time() - t0, 3), event.offset, event.delivery_count))
                if event.offset == 1:
                    await sub.reject(event, error="bad payload")
                elif event.delivery_count == 1:
                    await sub.nack(event, delay=7.0)
                elif event.delivery_count < 5:
                    await sub.nack(event)
                else:
                    await sub.ack(event)
                    break
        # offset 0: 0 -> nack(7) -> 7 -> +0.5 -> 7.5... backoff n=2: 1.0, n=3: 1.5, n=4: 1.5
        assert [
            (0.0, 0, 1),
            (0.0, 1, 1),
            (7.0, 0, 2),
            (8.0, 0, 3),
            (9.5, 0, 4),
            (11.0, 0, 5),
        ] == log
        async with client.consumer("jobs.q.dlq") as dlq:
            [dead] = await dlq.getmany(10, timeout=5)
        assert b"bad payload" == dict(dead.headers)["hw.dlq.error"]
        assert b"1" == dict(dead.headers)["hw.dlq.delivery_count"]


async def test_flow_control_never_more_than_max_unacked(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """A consumer holding max_unacked events gets no more until it settles one."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await _produce(client, "jobs", 50)
        async with client.subscribe("jobs", "q", max_unacked=3) as sub:
            held = [await sub.__anext__(), await sub.__anext__(), await sub.__anext__()]
            with trio.move_on_after(5) as scope:
                await sub.__anext__()
            assert scope.cancelled_caught
            desc = await client.describe_group("q")
            assert 3 == sum(p.in_flight for p in desc.partitions)
            await sub.ack(held[0])
            with trio.fail_after(5):
                await sub.__anext__()


async def test_bad_input_is_refused_with_typed_errors(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """Foreign/expired acks, double acks, mode change, exclusive second
    consumer, group-name clash, unknown mode, max_deliveries < 1."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await _produce(client, "jobs", 5, partitions=1)
        async with client.subscribe("jobs", "q", ack_timeout=1.0, max_unacked=1) as a:
            first = await a.__anext__()
            await a.ack(first)
            await a.ack(first)  # a double ack is a no-op
            second = await a.__anext__()
            await trio.sleep(3)  # the lock expires
            with pytest.raises(LockLostError, match="jobs/0 offsets 1"):
                await a.nack(second)
        with pytest.raises(SubscriptionConflictError, match="mode='shared' \\(not 'exclusive'\\)"):
            async with client.subscribe("jobs", "q", mode="exclusive", ack_timeout=1.0):
                pass
        async with client.subscribe("jobs", "q", start="latest", ack_timeout=1.0):
            pass  # start= only applies when a subscription is created
        async with client.subscribe("jobs", "x", mode="exclusive"):
            with pytest.raises(SubscriptionBusyError, match="exclusive"):
                async with client.subscribe("jobs", "x", mode="exclusive"):
                    pass
        async with client.subscribe("jobs", "x", mode="exclusive"):
            pass  # the first left: a new consumer is admitted
        async with client.consumer("jobs", group="g") as consumer:
            await consumer.getmany(1, timeout=1)
        with pytest.raises(SubscriptionConflictError, match="consumer group"):
            async with client.subscribe("jobs", "g"):
                pass
        with pytest.raises(SubscriptionConflictError, match="share subscription"):
            async with client.consumer("jobs", group="q") as consumer:
                await consumer.getmany(1, timeout=1)
        with pytest.raises(InvalidArgument, match="mode='round_robin'"):
            client.subscribe("jobs", "y", mode="round_robin")
        with pytest.raises(InvalidArgument, match="max_deliveries"):
            client.subscribe("jobs", "y", max_deliveries=0)
        assert {"g", "q", "x"} <= set(await client.list_groups())


async def test_restart_keeps_counts_and_never_redelivers_acked(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """Across a broker reopen: acked events stay acked, an in-flight event
    comes back with its count one higher, the subscription resumes."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await _produce(client, "jobs", 10, partitions=1)
        async with client.subscribe("jobs", "q", max_unacked=4, ack_timeout=5.0) as sub:
            got = [await sub.__anext__() for _ in range(4)]
            await sub.ack_many(got[:3])
            broker_gone = got[3]
    async with _broker(fs) as broker, connect(broker) as client:
        seen: list[tuple[int, int]] = []
        async with client.subscribe("jobs", "q", max_unacked=4, ack_timeout=5.0) as sub:
            with trio.move_on_after(30):
                async for event in sub:
                    seen.append((event.offset, event.delivery_count))
                    await sub.ack(event)
                    if len(seen) == 7:
                        break
        assert 3 == broker_gone.offset
        assert [(3, 2)] == [s for s in seen if s[0] == 3]
        assert list(range(3, 10)) == sorted(o for o, _ in seen)
        desc = await client.describe_group("q")
        assert (10, 10) == (desc.partitions[0].ack_floor, desc.partitions[0].acked)


@pytest.mark.parametrize(
    ("events", "job"),
    # 0.025 s jobs: events buffered behind slow jobs and retried acks outlive
    # their lock (the client must not hand those out: delivery counts went back)
    [(5000, 0.01), (2000, 0.025)],
)
async def test_killing_share_actors_loses_and_repeats_nothing_acked(
    autojump_clock: trio.abc.Clock, connect: Connect, events: int, job: float
) -> None:
    """A kill storm on the share partition actors while 8 workers drain a
    2-partition topic: each event is acked exactly once in the subscription's
    own accounting, none lost, delivery counts never go back."""
    n = int(os.environ.get("HEADWATER_SHARE_EVENTS", str(events)))
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await _produce(client, "jobs", n)
        acked: Counter[int] = Counter()
        tried: set[int] = set()
        last_count: dict[tuple[int, int], int] = {}
        done = trio.Event()

        async def worker() -> None:
            async with client.subscribe("jobs", "q", max_unacked=20, ack_timeout=2.0) as sub:
                while not done.is_set():
                    with trio.move_on_after(1):
                        event = await sub.__anext__()
                        key = (event.partition, event.offset)
                        assert event.delivery_count > last_count.get(key, 0)
                        last_count[key] = event.delivery_count
                        await trio.sleep(job)
                        tried.add(event.value["i"])
                        try:
                            await sub.ack(event)
                        except HeadwaterError:
                            continue  # a kill mid-ack: if stored, it never comes back
                        acked[event.value["i"]] += 1

        kills_during_work = 0

        async def killer() -> None:
            nonlocal kills_during_work
            for round_ in range(10):
                await trio.sleep(0.5)
                if not done.is_set():
                    kills_during_work += 1
                await broker.kill(f"/broker/shares/q/{round_ % 2}")

        async def watch() -> None:
            while True:
                await trio.sleep(1)
                desc = await client.describe_group("q")
                if sum(p.acked for p in desc.partitions) == n:
                    done.set()
                    return

        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(worker)
                nursery.start_soon(killer)
                nursery.start_soon(watch)
        desc = await client.describe_group("q")
        assert n == sum(p.acked for p in desc.partitions)
        assert n == sum(p.ack_floor for p in desc.partitions)
        assert n == sum(p.end_offset for p in desc.partitions)
        assert 0 == sum(p.dead_lettered for p in desc.partitions)
        assert set(range(n)) == tried
        assert n - len(acked) <= 100  # acks whose answer a kill swallowed
        assert 1 == max(acked.values())  # acked events never came back
        assert 10 == kills_during_work
        restarts = {
            node.path: node.restarts
            for node in broker.tree().walk()
            if node.path in ("/broker/shares/q/0", "/broker/shares/q/1")
        }
        # (a kill that lands while the actor is still restarting counts once)
        assert all(r >= 4 for r in restarts.values()), restarts


async def test_failover_one_active_consumer_then_takeover(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """failover: only the first live consumer is dealt events; when it leaves,
    the standby takes over at once with what the first still held (counted
    as a second delivery)."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await _produce(client, "jobs", 20, partitions=2)
        opts: dict[str, Any] = {"mode": "failover", "max_unacked": 5, "max_wait": 0.5}
        async with client.subscribe("jobs", "f", **opts) as standby:
            async with client.subscribe("jobs", "f", **opts) as second:
                assert [] == await second.getmany(5, timeout=2)  # a standby now
                first_held = await standby.getmany(5, timeout=2)
                assert 5 == len(first_held)
            # ``second`` left; ``standby`` stays active and acks what it holds.
            await standby.ack_many(first_held)
            async with client.subscribe("jobs", "f", **opts) as third:
                assert [] == await third.getmany(5, timeout=2)
                held = await standby.getmany(5, timeout=2)
                assert 5 == len(held)
                await standby.aclose()  # leaves: the 5 it held go back at once
                t0 = trio.current_time()
                taken = []
                while len(taken) < 10:
                    batch = await third.getmany(5, timeout=5)
                    taken += batch
                    await third.ack_many(batch)
                assert trio.current_time() - t0 <= 1.0
                again = {(e.partition, e.offset): e.delivery_count for e in taken}
                assert {(e.partition, e.offset): 2 for e in held} == {
                    k: v for k, v in again.items() if v == 2
                }
        desc = await client.describe_group("f")
        assert ("failover", 15) == (desc.mode, sum(p.acked for p in desc.partitions))


async def test_session_expiry_releases_held_events_and_frees_exclusive(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """A consumer that goes silent (no fetch, no ack) is dropped after its
    session timeout: what it held is dealt again at once (count 2) and an
    exclusive subscription admits a new consumer."""
    from headwater import _protocol as p

    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await _produce(client, "jobs", 3, partitions=1)
        joined = await client._ask(
            p.ShareSubscribe("jobs", "x", mode="exclusive", session_timeout=2.0)
        )
        batch = await client._ask(p.ShareFetch("x", joined.consumer_id, 3, 0.0))
        assert [0, 1, 2] == [r.offset for r in batch.records]
        with pytest.raises(SubscriptionBusyError):
            async with client.subscribe("jobs", "x", mode="exclusive", session_timeout=2.0):
                pass
        await trio.sleep(2.5)
        async with client.subscribe("jobs", "x", mode="exclusive", session_timeout=2.0) as sub:
            t0 = trio.current_time()
            again = await sub.getmany(3, timeout=5)
            assert trio.current_time() - t0 < 0.1
        assert [(0, 2), (1, 2), (2, 2)] == [(e.offset, e.delivery_count) for e in again]


async def test_key_shared_keeps_per_key_order_and_stickiness_across_churn(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """key_shared: each key's events are processed in offset order (the next
    waits for the previous ack), and while membership is stable a key is
    handled by one consumer only; consumers joining and leaving move keys
    but never break the order."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await client.create_topic("jobs", partitions=2)
        async with client.producer() as producer:
            await producer.send_many("jobs", [(i, f"k{i % 12}") for i in range(600)])
        processed: list[tuple[str, int, str, int]] = []  # (key, value, consumer, phase)
        phase = 0
        done = trio.Event()

        async def worker(wid: str, stop: trio.Event) -> None:
            opts: dict[str, Any] = {"mode": "key_shared", "max_unacked": 4, "max_wait": 0.2}
            async with client.subscribe("jobs", "ks", **opts) as sub:
                while not stop.is_set() and not done.is_set():
                    for event in await sub.getmany(4, timeout=0.3):
                        await trio.sleep(0.01)
                        processed.append((event.key, event.value, wid, phase))
                        await sub.ack(event)
                    if len(processed) >= 600:
                        done.set()

        stops = {w: trio.Event() for w in ("a", "b", "c", "d")}
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker, "a", stops["a"])
                nursery.start_soon(worker, "b", stops["b"])
                await trio.sleep(3)
                phase = 1
                nursery.start_soon(worker, "c", stops["c"])
                await trio.sleep(3)
                phase = 2
                stops["a"].set()
                nursery.start_soon(worker, "d", stops["d"])
                await done.wait()
        by_key: dict[str, list[int]] = {}
        for key, value, _, _ in processed:
            by_key.setdefault(key, []).append(value)
        assert 600 == len(processed)
        assert all(values == sorted(values) for values in by_key.values())
        assert 12 == len(by_key)
        # Stickiness: in phase 0 (a and b only) each key was handled by one consumer.
        owners: dict[str, set[str]] = {}
        for key, _, wid, ph in processed:
            if ph == 0:
                owners.setdefault(key, set()).add(wid)
        assert owners
        assert all(1 == len(who) for who in owners.values())
        assert {"a", "b"} == set().union(*owners.values())


async def test_delayed_delivery_holds_until_deliver_at_across_a_restart(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """An event sent with deliver_after=60 s is not dealt before then, even
    across a broker reopen; events behind it are not held up."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await client.create_topic("jobs", partitions=1)
        t0 = trio.current_time()
        async with client.producer(clock=_clock) as producer:
            await producer.send("jobs", "later", deliver_after=60)
            await producer.send("jobs", "now")
            at = 1000 * (t0 + 90)
            await producer.send("jobs", "at", deliver_at=int(at))
        async with client.subscribe("jobs", "d") as sub:
            first = await sub.getmany(10, timeout=10)
            assert ["now"] == [e.value for e in first]
            await sub.ack_many(first)
    async with _broker(fs) as broker, connect(broker) as client:
        got: list[tuple[str, float]] = []
        async with client.subscribe("jobs", "d") as sub:
            while len(got) < 2:
                for e in await sub.getmany(10, timeout=100):
                    got.append((e.value, round(trio.current_time() - t0, 1)))
                    await sub.ack(e)
        assert [("later", 60.0), ("at", 90.0)] == got
    async with _broker(fs) as broker, broker.connect() as client, client.producer() as producer:
        with pytest.raises(InvalidArgument, match="deliver_at or deliver_after"):
            await producer.send("jobs", 1, deliver_at=5, deliver_after=5)


async def test_deleting_the_topic_drops_its_subscriptions(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """A subscription's state lives with its topic: deleting the topic removes
    the subscription; a new topic of that name starts a fresh one."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await _produce(client, "jobs", 4, partitions=1)
        async with client.subscribe("jobs", "q") as sub:
            await sub.ack_many(await sub.getmany(4, timeout=2))
        await client.delete_topic("jobs")
        assert "q" not in await client.list_groups()
        await _produce(client, "jobs", 2, partitions=1)
        async with client.subscribe("jobs", "q", mode="exclusive") as sub:
            again = await sub.getmany(4, timeout=2)
        assert [(0, 1), (1, 1)] == [(e.offset, e.delivery_count) for e in again]


async def test_observers_show_a_share_subscription_like_a_group(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The web snapshot and /metrics list a share subscription beside the
    groups (its backlog as lag) instead of failing on it."""
    from headwater.web import gather, render_metrics

    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, broker.connect() as client:
        await _produce(client, "jobs", 6, partitions=2)
        async with client.subscribe("jobs", "q") as sub:
            await sub.ack_many(await sub.getmany(2, timeout=2))
        view = await gather(broker)
        [group] = [g for g in view.groups if g["group"] == "q"]
        assert ("share (shared)", 4) == (group["state"], group["lag"])
        assert b"q" in render_metrics(view)


async def test_share_subscription_reads_committed(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """A share subscription reads committed (DECISIONS #21): it never deals a
    transaction marker, an aborted event, or an event of a transaction still
    open; the open one is dealt once it commits, and every offset settles."""
    fs = SimulatedFileSystem()
    async with _broker(fs) as broker, connect(broker) as client:
        await client.create_topic("tx", partitions=1)
        async with client.producer(transactional_id="w") as producer:
            async with producer.transaction():  # offsets 0, 1; marker 2
                await producer.send("tx", {"i": 0})
                await producer.send("tx", {"i": 1})
            with pytest.raises(KeyError):
                async with producer.transaction():  # offset 3; marker 4
                    await producer.send("tx", {"i": -1})
                    raise KeyError("abort")
            got: list[int] = []
            async with client.subscribe("tx", "q") as sub:
                with trio.move_on_after(2):
                    async for event in sub:
                        got.append(event.value["i"])
                        await sub.ack(event)
                assert [0, 1] == got
                async with producer.transaction():  # offset 5; marker 6
                    await producer.send("tx", {"i": 2})
                    with trio.move_on_after(2):  # still open: nothing dealt
                        async for event in sub:
                            got.append(event.value["i"])  # noqa: PERF401
                    assert [0, 1] == got
                with trio.fail_after(5):
                    async for event in sub:
                        got.append(event.value["i"])
                        await sub.ack(event)
                        break
        assert [0, 1, 2] == got
        desc = await client.describe_group("q")
        assert 0 == sum(p.backlog + p.in_flight for p in desc.partitions)
