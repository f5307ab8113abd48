"""The producer's path for plain events (unkeyed, no headers, partition or
timestamp given) to a topic whose sticky batch is open: ``send_nowait``
appends them straight to that batch. Mixed with other events they keep their
order, follow the sticky partition as batches fill, never land in a batch that
closed meanwhile, and bad ones raise and queue nothing. And ``send`` on the
direct path (linger 0) returns the answer, or raises its error, at once."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from headwater._errors import ClosedError, EventTooLarge, InvalidArgument, SerializationError
from headwater.client import Client

from .real_broker import RealBroker


async def _read(
    client: Client, topic: str, count: int = 1
) -> list[tuple[int, int, bytes, int, tuple]]:
    """At least ``count`` stored events of ``topic`` (all of one partition
    in offset order), as (partition, offset, value, timestamp, headers)."""
    events = []
    async with client.consumer(topic, deserializer="bytes") as consumer:
        while len(events) < count:
            events += await consumer.getmany(10_000, timeout=1)
    return [(e.partition, e.offset, e.value, e.timestamp, e.headers) for e in events]


async def test_plain_and_other_events_keep_their_order_in_one_batch(
    client: Client, autojump_clock: object
) -> None:
    """Plain events and events with a key, headers, a partition or a
    timestamp, queued into one lingering batch in turn: each is stored once,
    in call order, as it was given, at the offset its handle reports."""
    async with client.producer(serializer="bytes", linger=1.0, clock=lambda: 500) as producer:
        await producer.partitions_of("t1")
        handles = [
            producer.send_nowait("t1", b"p0"),
            producer.send_nowait("t1", b"p1"),
            producer.send_nowait("t1", b"k", key="key"),
            producer.send_nowait("t1", b"p2"),
            producer.send_nowait("t1", b"h", headers={"h": b"v"}),
            producer.send_nowait("t1", b"p3"),
            producer.send_nowait("t1", b"x", partition=0),
            producer.send_nowait("t1", b"ts", timestamp=900),
            producer.send_nowait("t1", b"p4"),
            producer.send_nowait("t1", None),
            producer.send_nowait("t1", b"p5"),
        ]
        stored = [await h.wait() for h in handles]
    assert list(range(11)) == [e.offset for e in stored]
    assert [h.value for h in handles] == [e.value for e in stored]
    events = await _read(client, "t1")
    assert [(0, e.offset, e.value, e.timestamp, e.headers) for e in stored] == [
        (p, o, v or None, t, h) for p, o, v, t, h in events
    ]
    assert (("h", b"v"),) == events[4][4]
    assert [500] * 7 + [900] + [500] * 3 == [e[3] for e in events]


async def test_plain_events_follow_the_sticky_partition_as_batches_fill(
    client: Client, autojump_clock: object
) -> None:
    """Plain events fill a batch of one partition; when it is full the next
    ones go to the next partition (round robin), as without the shortcut."""
    async with client.producer(serializer="bytes", max_batch_events=4, linger=1.0) as producer:
        await producer.partitions_of("t3")
        handles = [producer.send_nowait("t3", b"%d" % i) for i in range(14)]
        stored = [await h.wait() for h in handles]
    assert [0] * 4 + [1] * 4 + [2] * 4 + [0] * 2 == [h.partition for h in handles]
    assert [h.partition for h in handles] == [e.partition for e in stored]
    assert [0, 1, 2, 3] * 3 + [4, 5] == [e.offset for e in stored]
    events = await _read(client, "t3", 14)
    assert sorted((e.partition, e.offset, e.value) for e in stored) == sorted(
        (p, o, v) for p, o, v, _, _ in events
    )


async def test_a_plain_event_after_its_batch_lingered_out_goes_to_a_new_batch(
    client: Client, autojump_clock: object
) -> None:
    """The batch a plain event went to is sent when its linger is over; the
    next plain event starts a new batch (it is stored, at the next offset)."""
    async with client.producer(serializer="bytes", linger=0.01) as producer:
        await producer.partitions_of("t1")
        first = producer.send_nowait("t1", b"a")
        second = producer.send_nowait("t1", b"b")
        assert (0, 1) == ((await first.wait()).offset, (await second.wait()).offset)
        third = producer.send_nowait("t1", b"c")
        fourth = producer.send_nowait("t1", b"d")
        with trio.fail_after(5):
            assert (2, 3) == ((await third.wait()).offset, (await fourth.wait()).offset)
    assert [b"a", b"b", b"c", b"d"] == [v for _, _, v, _, _ in await _read(client, "t1")]


async def test_a_plain_batch_closed_by_size_is_sent_at_once(
    client: Client, autojump_clock: object
) -> None:
    """A plain event that fills its batch closes it and wakes the flusher:
    the batch goes out without waiting for its linger (an hour here)."""
    async with client.producer(serializer="bytes", max_batch_events=3, linger=3000.0) as producer:
        await producer.partitions_of("t1")
        start = trio.current_time()
        handles = [producer.send_nowait("t1", b"0")]
        await trio.testing.wait_all_tasks_blocked()  # the flusher waits for the linger
        handles += [producer.send_nowait("t1", b"%d" % i) for i in (1, 2)]
        assert [0, 1, 2] == [(await h.wait()).offset for h in handles]
        assert trio.current_time() - start < 1
        await producer.flush()


async def test_bad_plain_events_raise_and_queue_nothing(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """A plain event too large, or a value the serializer refuses, raises a
    typed error while a batch is open; the events around it are stored."""
    async with client.producer(linger=1.0, max_event_bytes=100) as producer:
        await producer.partitions_of("t1")
        first = producer.send_nowait("t1", {"n": 1})
        with pytest.raises(EventTooLarge):
            producer.send_nowait("t1", "x" * 200)
        with pytest.raises(SerializationError):
            producer.send_nowait("t1", object())
        last = producer.send_nowait("t1", {"n": 2})
        assert (0, 1) == ((await first.wait()).offset, (await last.wait()).offset)
    assert [{"n": 1}, {"n": 2}] == [e.value for e in await _stored(client, "t1")]


async def _stored(client: Client, topic: str) -> list:
    async with client.consumer(topic) as consumer:
        return await consumer.getmany(10_000, timeout=1)


async def test_no_plain_event_goes_in_after_the_producer_closed(
    client: Client, autojump_clock: object
) -> None:
    """With a batch open, closing the producer fails its events; a plain send
    after that raises ClosedError (it does not join the dead batch)."""
    async with client.producer(serializer="bytes", linger=1.0) as producer:
        await producer.partitions_of("t1")
        producer.send_nowait("t1", b"a")
        await producer.aclose()
        with pytest.raises(ClosedError):
            producer.send_nowait("t1", b"b")


async def test_a_direct_send_raises_its_own_error_and_the_next_one_is_stored(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """linger 0: a direct send answered with a non-retriable error raises it
    (the send returns as soon as the answer is in); the next direct send is
    stored at offset 0, and the one after at 1."""
    broker.fail_produces(1, lambda: InvalidArgument("bad"))
    async with client.producer(serializer="bytes", linger=0.0) as producer:
        with pytest.raises(InvalidArgument, match="bad"):
            await producer.send("t1", b"refused")
        assert 0 == (await producer.send("t1", b"ok")).offset
        assert 1 == (await producer.send("t1", b"ok2")).offset
    assert [b"ok", b"ok2"] == [v for _, _, v, _, _ in await _read(client, "t1")]


async def test_direct_sends_stamp_events_with_the_producer_clock(
    client: Client, autojump_clock: object
) -> None:
    """linger 0: a direct send's event gets the configured clock's time, the
    default (wall) clock's, or the timestamp given."""
    import time

    async with client.producer(serializer="bytes", linger=0.0, clock=lambda: 4321) as producer:
        assert 4321 == (await producer.send("t1", b"a")).timestamp
        assert 77 == (await producer.send("t1", b"b", timestamp=77)).timestamp
    async with client.producer(serializer="bytes", linger=0.0) as producer:
        before = time.time_ns() // 1_000_000
        stamped = (await producer.send("t1", b"c")).timestamp
        assert before <= stamped <= time.time_ns() // 1_000_000
    assert [4321, 77, stamped] == [t for _, _, _, t, _ in await _read(client, "t1", 3)]
