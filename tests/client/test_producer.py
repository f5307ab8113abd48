"""Producer behaviour through the public client API, run against both the fake
broker and the real embedded broker (simulated disk)."""

from __future__ import annotations

import copy

import pytest
import trio

from headwater._errors import (
    ActorRestarted,
    ClosedError,
    ConfigError,
    EventTooLarge,
    HeadwaterError,
    InvalidArgument,
    InvalidTopicName,
    SerializationError,
    StorageError,
    UnknownPartitionError,
    UnknownTopicError,
)
from headwater.client import Client, ProducerConfig, open_producer

from .real_broker import RealBroker


async def test_send_returns_stored_events_with_offsets(
    client: Client, autojump_clock: object
) -> None:
    """send returns the stored event; offsets count up from 0 per partition."""
    async with client.producer(clock=lambda: 1234) as producer:
        first = await producer.send("t1", {"id": 1}, key="k")
        second = await producer.send("t1", b"raw", headers={"h": b"v"})
    assert ("t1", 0, 0, 1234, "k", {"id": 1}) == (
        first.topic,
        first.partition,
        first.offset,
        first.timestamp,
        first.key,
        first.value,
    )
    assert (1, (("h", b"v"),)) == (second.offset, second.headers)


async def test_linger_batches_concurrent_sends(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """Events sent within the linger time go in one Produce request."""
    async with client.producer(linger=0.5) as producer:
        await producer.partitions_of("t1")
        handles = [producer.send_nowait("t1", i) for i in range(50)]
        start = trio.current_time()
        events = [await h.wait() for h in handles]
        waited = trio.current_time() - start
    assert list(range(50)) == [e.offset for e in events]
    assert 1 == broker.requests["Produce"]
    assert 0.5 == pytest.approx(waited)


async def test_batches_close_by_size(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """max_batch_events and max_batch_bytes split batches (one request each)."""
    async with client.producer(linger=10, max_batch_events=10) as producer:
        await producer.send_many("t1", range(35))
    assert 4 == broker.requests["Produce"]
    async with client.producer(linger=10, max_batch_bytes=1000, serializer="bytes") as producer:
        await producer.send_many("t1", [b"x" * 400] * 5)
    assert 4 + 3 == broker.requests["Produce"]


async def test_keyed_events_keep_partition_and_order(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """The same key always lands on the same partition, in send order."""
    async with client.producer(max_batch_events=7) as producer:
        events = await producer.send_many(
            "t3", [{"value": i, "key": f"user-{i % 5}"} for i in range(200)]
        )
    by_key: dict[str, set[int]] = {}
    for e in events:
        by_key.setdefault(str(e.key), set()).add(e.partition)
    assert all(1 == len(parts) for parts in by_key.values())
    for partition in range(3):
        stored = await broker.values("t3", partition)
        sent = [e for e in events if e.partition == partition]
        assert [e.offset for e in sent] == list(range(len(sent)))
        assert len(stored) == len(sent)


async def test_unkeyed_events_spread(client: Client, autojump_clock: object) -> None:
    """Unkeyed events move to another partition as batches close."""
    async with client.producer(max_batch_events=10) as producer:
        events = await producer.send_many("t3", range(60))
    assert {0, 1, 2} == {e.partition for e in events}


async def test_retries_store_each_batch_once(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """Lost responses and restarts are retried; the fake stores each batch once."""
    broker.fail_produces(2, lambda: ActorRestarted("restarting"))
    broker.fail_produces(2, lambda: StorageError("lost"), after_store=True)
    async with client.producer(max_batch_events=5) as producer:
        events = await producer.send_many("t1", range(20))
    assert list(range(20)) == [e.offset for e in events]
    assert [b"\x00", b"\x01"] == (await broker.values("t1", 0))[:2]
    assert 20 == len(await broker.values("t1", 0))


async def test_handles_fail_after_delivery_timeout(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """A partition that keeps failing fails its handles after delivery_timeout;
    the producer then carries on with the next events."""
    broker.fail_produces(1000, lambda: ActorRestarted("down"))
    async with client.producer(delivery_timeout=3.0) as producer:
        start = trio.current_time()
        with pytest.raises(ActorRestarted):
            await producer.send("t1", "lost")
        assert 1.0 < trio.current_time() - start <= 3.0
        broker.produce_faults.clear()
        stored = await producer.send("t1", "kept")
    assert (0, ["kept"]) == (
        stored.offset,
        [v and v.decode()[1:] for v in await broker.values("t1", 0)],
    )


async def test_non_retriable_error_fails_at_once(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """A non-retriable error fails the batch without retrying."""
    broker.fail_produces(1, lambda: InvalidArgument("bad"))
    async with client.producer() as producer:
        with pytest.raises(InvalidArgument):
            await producer.send("t1", 1)
        assert 0 == (await producer.send("t1", 2)).offset
    assert 2 == broker.requests["Produce"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda p: p.send("nope", 1), UnknownTopicError),
        (lambda p: p.send("t1", 1, partition=1), UnknownPartitionError),
        (lambda p: p.send("t1", 1, key=3.5), InvalidArgument),
        (lambda p: p.send("t1", object()), SerializationError),
        (lambda p: p.send("t1", b"x" * 5000), EventTooLarge),
        (lambda p: p.send("t1", 1, timestamp=-1), InvalidArgument),
        (lambda p: p.send("t1", 1, headers=[("h", 3)]), InvalidArgument),
        (lambda p: p.send_many("t1", [(1, 2, 3)]), InvalidArgument),
    ],
)
async def test_bad_input_raises_before_sending(
    client: Client,
    broker: RealBroker,
    autojump_clock: object,
    call: object,
    error: type,
) -> None:
    """Bad input raises a typed error and nothing is produced."""
    async with client.producer(max_event_bytes=1000) as producer:
        with pytest.raises(error):
            await call(producer)  # type: ignore[operator]
    assert 0 == broker.requests.get("Produce", 0)


async def test_bad_admin_and_config_input(client: Client, broker: RealBroker) -> None:
    """Admin calls and configs check arguments before any request."""
    before = dict(broker.requests)
    with pytest.raises(InvalidTopicName, match="a b"):
        await client.create_topic("a b")
    with pytest.raises(InvalidArgument, match="partitions"):
        await client.create_topic("ok", partitions=0)
    with pytest.raises(ConfigError, match="durability"):
        await client.create_topic("ok", durability="sometimes")
    with pytest.raises(ConfigError, match="linger"):
        client.producer(linger=-1)
    with pytest.raises(ConfigError, match="colour"):
        client.producer(colour="red")
    with pytest.raises(InvalidArgument, match="start"):
        client.consumer(["t1"], start="middle")
    with pytest.raises(HeadwaterError):
        client.consumer(["t1"], start=-4)
    assert before == broker.requests


async def test_order_kept_across_retries_with_many_batches(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """Failures in the middle of a stream of batches keep per-partition order
    and store every event once (the lost-response retries are duplicates)."""
    async with client.producer(max_batch_events=3, linger=0) as producer:
        await producer.partitions_of("t1")
        handles = []
        for i in range(30):
            if i % 7 == 0:
                broker.fail_produces(1, lambda: StorageError("lost"), after_store=(i % 2 == 0))
            handles.append(producer.send_nowait("t1", i))
            await trio.sleep(0.001)
        events = [await h for h in handles]
    assert list(range(30)) == [e.offset for e in events]
    assert [bytes([0x18, i]) if i >= 24 else bytes([i]) for i in range(30)] == (
        await broker.values("t1", 0)
    )


async def test_send_nowait_knows_the_topics_that_existed_at_open(
    client: Client, autojump_clock: object
) -> None:
    """Every topic that existed when the producer opened takes send_nowait at
    once; one created later raises UnknownTopicError (naming it and what to
    do) until its partitions are known, and queues nothing."""
    async with client.producer() as producer:
        handle = producer.send_nowait("t3", 1, partition=2)
        assert (2, 0) == ((await handle).partition, handle.result().offset)
        await client.create_topic("later", partitions=2)
        with pytest.raises(UnknownTopicError, match=r"'later'.*partitions_of"):
            producer.send_nowait("later", 1)
        assert 2 == await producer.partitions_of("later")
        handle = producer.send_nowait("later", 1, partition=1)
        assert (1, 0) == ((await handle).partition, handle.result().offset)


async def test_aclose_inside_the_block_flushes_and_closes(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """``aclose()`` flushes and closes at once (idempotent); later sends raise
    ClosedError and leaving the block does not flush again or raise."""
    async with client.producer(linger=10.0) as producer:
        await producer.partitions_of("t1")
        handle = producer.send_nowait("t1", b"queued")
        await producer.aclose()
        await producer.aclose()
        assert 0 == (await handle.wait()).offset
        with pytest.raises(ClosedError):
            producer.send_nowait("t1", b"late")
    assert 1 == broker.requests["Produce"]


async def test_open_producer_over_a_channel(broker: RealBroker, autojump_clock: object) -> None:
    """``open_producer(channel)`` is what ``client.producer()`` returns: it
    checks settings at once and owns the producer's tasks for the block."""
    channel = broker.channel()
    with pytest.raises(ConfigError, match="linger"):
        open_producer(channel, ProducerConfig(linger=-1))
    async with Client(channel) as c:
        await c.create_topic("t1")
    async with open_producer(broker.channel()) as producer:
        assert 0 == (await producer.send("t1", b"x")).offset


async def test_send_handles_are_distinct_objects(client: Client, autojump_clock: object) -> None:
    """Two handles of equal events are different handles (identity, not value):
    usable as dict keys or set members even when the value is unhashable."""
    async with client.producer(clock=lambda: 5) as producer:
        await producer.partitions_of("t1")
        first = producer.send_nowait("t1", {"same": 1})
        second = producer.send_nowait("t1", {"same": 1})
        assert first != second
        assert first == first
        assert 2 == len({first, second})
        assert ("t1", 0, 5, None, {"same": 1}, ()) == (
            first.topic,
            first.partition,
            first.timestamp,
            first.key,
            first.value,
            first.headers,
        )
        assert "SendHandle(topic='t1'" in repr(first)
        copied = copy.copy(first)
        assert copied is not first
        assert copied != first
        assert [0, 1, 0] == [(await h).offset for h in (first, second, copied)]
