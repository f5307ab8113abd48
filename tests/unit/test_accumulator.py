"""The producer accumulator: batching by count, bytes and linger; sequences; limits."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import ConfigError, EventTooLarge, InvalidArgument
from headwater.client import Accumulator, AccumulatorConfig, Partitioner, decode_events


def acc(**config):
    """An accumulator with producer id 7, epoch 1."""
    a = Accumulator(AccumulatorConfig(**config))
    a.set_identity(7, 1)
    return a


def test_full_batch_is_ready_without_linger():
    """A batch closes at max_batch_events and drains at once, with header fields."""
    a = acc(max_batch_events=3, linger=10.0)
    slots = [a.append("t", 0, 1000 + i, b"k", b"v%d" % i, (), now=0.0) for i in range(4)]
    assert [0, 1, 2, 0] == [s.index for s in slots]
    assert 0.0 == a.next_deadline()
    [batch] = a.drain(now=0.0)
    assert (3, 1000, 1002, 7, 1, 0) == (
        batch.count,
        batch.first_timestamp,
        batch.max_timestamp,
        batch.producer_id,
        batch.epoch,
        batch.base_sequence,
    )
    events = decode_events(
        batch.payload, topic="t", partition=0, base_offset=50, base_timestamp=1000, count=3
    )
    assert [b"v0", b"v1", b"v2"] == [e.value for e in events]
    assert 10.0 == a.next_deadline()  # the fourth event's batch lingers


def test_linger_deadline_and_drain():
    """An open batch is drained once now reaches created_at + linger."""
    a = acc(linger=0.5)
    assert a.next_deadline() is None
    a.append("t", 0, 1, None, b"a", (), now=2.0)
    a.append("t", 1, 1, None, b"b", (), now=2.25)
    assert 2.5 == a.next_deadline()
    assert [] == a.drain(now=2.4)
    assert [0] == [b.partition for b in a.drain(now=2.5)]
    assert 2.75 == a.next_deadline()
    assert [1] == [b.partition for b in a.drain(now=3.0)]
    assert a.next_deadline() is None


def test_busy_partitions_keep_growing_their_batch():
    """A lingered batch of a busy partition stays open (and out of the deadline)
    until the partition is free; full batches and force drain regardless."""
    a = acc(linger=0.5, max_batch_events=4)
    a.append("t", 0, 1, None, b"a", (), now=0.0)
    a.append("t", 1, 1, None, b"b", (), now=0.0)
    busy = {("t", 0)}
    assert 0.5 == a.next_deadline(busy)
    assert [1] == [b.partition for b in a.drain(now=1.0, busy=busy)]
    assert a.next_deadline(busy) is None
    for i in range(2):
        a.append("t", 0, 1, None, b"x%d" % i, (), now=1.0)
    assert [] == a.drain(now=2.0, busy=busy)
    [grown] = a.drain(now=2.0)
    assert 3 == grown.count
    for i in range(5):
        a.append("t", 0, 1, None, b"y%d" % i, (), now=3.0)
    assert [4] == [b.count for b in a.drain(now=3.0, busy=busy)]  # full: sent anyway
    assert [1] == [b.count for b in a.drain(now=3.0, force=True, busy=busy)]


def test_force_drains_everything():
    """flush: force=True closes every open batch regardless of linger."""
    a = acc(linger=100.0)
    a.append("t", 0, 1, None, b"a", (), now=0.0)
    a.append("u", 3, 1, None, None, (), now=0.0)
    assert [("t", 0), ("u", 3)] == [(b.topic, b.partition) for b in a.drain(0.0, force=True)]
    assert 0 == a.buffered_bytes == a.buffered_events


def test_bytes_limit_closes_before_overflow():
    """An event that would overflow max_batch_bytes starts a new batch."""
    a = acc(max_batch_bytes=100, linger=100.0)
    a.append("t", 0, 1, None, b"x" * 50, (), now=0.0)  # 66 estimated
    a.append("t", 0, 1, None, b"x" * 50, (), now=0.0)  # would be 132: closes the first
    [first] = a.drain(0.0)
    assert 1 == first.count
    [second] = a.drain(0.0, force=True)
    assert (1, 1) == (second.count, second.base_sequence)


def test_sequences_per_partition_and_identity_reset():
    """Base sequences advance by count per partition; a new identity restarts them."""
    a = acc(max_batch_events=2)
    for _ in range(5):
        a.append("t", 0, 1, None, b"", (), now=0.0)
    a.append("t", 1, 1, None, b"", (), now=0.0)
    batches = a.drain(0.0, force=True)
    assert [("t", 0, 0, 1), ("t", 0, 2, 3), ("t", 0, 4, 4), ("t", 1, 0, 0)] == [
        (b.topic, b.partition, b.base_sequence, b.last_sequence) for b in batches
    ]
    a.set_identity(8, 0)
    a.append("t", 0, 1, None, b"", (), now=0.0)
    [b] = a.drain(0.0, force=True)
    assert (8, 0, 0) == (b.producer_id, b.epoch, b.base_sequence)


def test_event_too_large_changes_nothing():
    """An oversized event raises EventTooLarge naming size and limit; nothing buffered."""
    a = acc(max_event_bytes=100)
    with pytest.raises(EventTooLarge, match=r"about 117 bytes.*limit \(max_event_bytes\) is 100"):
        a.append("t", 0, 1, b"k", b"x" * 100, (), now=0.0)
    assert (0, None) == (a.buffered_events, a.next_deadline())


@pytest.mark.parametrize(
    ("key", "value", "headers", "match"),
    [
        (7, b"", (), "key must be bytes, str or None, not int"),
        (None, "text", (), "value must be bytes or None, not str"),
        (None, b"", (("h", "str"),), "header must be a"),
        (None, b"", (("h",),), "header must be a"),
    ],
)
def test_bad_types_refused(key, value, headers, match):
    """Keys, values and headers of the wrong type are InvalidArgument; nothing buffered."""
    a = acc()
    with pytest.raises(InvalidArgument, match=match):
        a.append("t", 0, 1, key, value, headers, now=0.0)
    assert 0 == a.buffered_events


def test_bad_config():
    """Non-positive limits and a negative linger are ConfigErrors."""
    with pytest.raises(ConfigError, match="max_batch_events"):
        AccumulatorConfig(max_batch_events=0)
    with pytest.raises(ConfigError, match="linger"):
        AccumulatorConfig(linger=-1)


def test_partitioner_moves_on_when_batches_close():
    """Wired to a Partitioner, unkeyed events move partition at each closed batch."""
    part = Partitioner()
    a = Accumulator(AccumulatorConfig(max_batch_events=2), on_batch_closed=part.batch_closed)
    chosen = []
    for _ in range(6):
        p = part.choose("t", None, 3)
        chosen.append(p)
        a.append("t", p, 1, None, b"", (), now=0.0)
    assert [0, 0, 1, 1, 2, 2] == chosen


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 2), st.integers(0, 40), st.floats(0, 1)),
        st.tuples(st.just("drain"), st.booleans()),
    ),
    max_size=80,
)


@given(ops)
def test_every_event_once_in_order_with_contiguous_sequences(script):
    """Random appends/drains: each event drains once, in order per partition,
    batches within limits, sequences contiguous per partition."""
    a = acc(max_batch_events=4, max_batch_bytes=120, linger=0.3)
    now = 0.0
    sent: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    got: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    next_seq = {0: 0, 1: 0, 2: 0}
    n = 0

    def take(batches):
        for b in batches:
            assert b.base_sequence == next_seq[b.partition]
            next_seq[b.partition] += b.count
            assert b.count <= 4
            assert b.size_estimate <= 120 or b.count == 1
            _, _, _, values = cbor2.loads(b.payload)
            got[b.partition].extend(values)

    for op in script:
        if op[0] == "append":
            _, p, size, dt = op
            now += dt
            value = b"%d:" % n + b"x" * size
            n += 1
            sent[p].append(value)
            a.append("t", p, n, None, value, (), now=now)
        else:
            take(a.drain(now, force=op[1]))
            deadline = a.next_deadline()
            assert deadline is None or deadline > now
    take(a.drain(now, force=True))
    assert sent == got
    assert 0 == a.buffered_bytes


@pytest.mark.parametrize(
    ("key", "headers", "timestamp", "match"),
    [
        ("\ud800", (), 1, "key must be valid Unicode"),
        (None, (("\udfff", b""),), 1, "header name must be valid Unicode"),
        (None, (), 1.5, "timestamp must be an int"),
    ],
)
def test_unencodable_text_refused_at_append(key, headers, timestamp, match):
    """Text that cannot be UTF-8 and non-int timestamps fail at append, so a
    drain never fails to encode a batch holding other events."""
    a = acc()
    a.append("t", 0, 1, None, b"ok", (), now=0.0)
    with pytest.raises(InvalidArgument, match=match):
        a.append("t", 0, timestamp, key, b"", headers, now=0.0)
    [batch] = a.drain(0.0, force=True)
    assert 1 == batch.count


def test_resequence_after_new_identity():
    """Unacknowledged batches get the new identity and fresh contiguous sequences."""
    a = acc(max_batch_events=2)
    for _ in range(4):
        a.append("t", 0, 1, None, b"", (), now=0.0)
    old = a.drain(0.0)
    assert [0, 2] == [b.base_sequence for b in old]
    a.set_identity(7, 2)
    new = [a.resequence(b) for b in old]
    assert [(7, 2, 0), (7, 2, 2)] == [(b.producer_id, b.epoch, b.base_sequence) for b in new]
    assert [b.payload for b in old] == [b.payload for b in new]
    a.append("t", 0, 1, None, b"", (), now=0.0)
    assert [4] == [b.base_sequence for b in a.drain(0.0, force=True)]


def test_columns_round_trip_mixed_events():
    """Events held as columns come back as given: keys of both types, a
    tombstone, and headers that first appear mid-batch (earlier events get
    none); the payload is the one encode_events makes of the same events."""
    from headwater.journal._batch import encode_events

    events = [
        (1000, None, b"a", ()),
        (1003, "k", None, ()),
        (1001, b"kb", b"c", (("h", b"1"), ("i", b"2"))),
        (1002, None, b"d", ()),
    ]
    a = acc(max_batch_events=4)
    for ts, key, value, headers in events:
        a.add("t", 0, ts, key, value, headers, 0.0)
    [batch] = a.drain(now=0.0)
    assert (4, 1000, 1003) == (batch.count, batch.first_timestamp, batch.max_timestamp)
    assert encode_events(events) == batch.payload
    got = decode_events(batch.payload, topic="t", partition=0, base_offset=0, base_timestamp=1000)
    assert [(e.timestamp, e.key, e.value, e.headers) for e in got] == [
        (1000, None, b"a", ()),
        (1003, "k", None, ()),
        (1001, b"kb", b"c", (("h", b"1"), ("i", b"2"))),
        (1002, None, b"d", ()),
    ]


def test_plain_events_are_still_size_checked():
    """The fast path for unkeyed bytes events without headers still counts
    their size against max_event_bytes and max_batch_bytes."""
    a = acc(max_event_bytes=100, max_batch_bytes=200, linger=10.0)
    with pytest.raises(EventTooLarge, match="max_event_bytes"):
        a.add("t", 0, 0, None, b"x" * 100, (), 0.0)
    assert 0 == a.buffered_bytes
    for _ in range(3):
        a.add("t", 0, 0, None, b"x" * 60, (), 0.0)  # 76 estimated bytes each
    [batch] = a.drain(now=0.0)  # the third event overflowed the first batch
    assert 2 == batch.count
    assert 76 == a.buffered_bytes


def test_add_plain_appends_to_the_open_batch_and_closes_it_when_full():
    """add_plain puts an unkeyed event into an open batch (same columns as
    add), refuses (-1, nothing changed) an event that does not fit or is too
    large, and closes the batch when it reaches max_batch_events."""
    closed: list[tuple[str, int]] = []
    a = Accumulator(
        AccumulatorConfig(max_batch_events=3, max_batch_bytes=100, max_event_bytes=60),
        on_batch_closed=lambda t, p: closed.append((t, p)),
    )
    a.set_identity(7, 1)
    a.append("t", 0, 1000, None, b"a", (("h", b"v"),), now=0.0)
    batch = a.open_batch(("t", 0))
    assert batch is not None
    assert a.open_batch(("t", 1)) is None
    assert -1 == a.add_plain(batch, 1001, b"x" * 45)  # too large: 16 + 45 > 60
    before = (a.buffered_bytes, a.buffered_events)
    assert 1 == a.add_plain(batch, 1001, b"b")
    assert (before[0] + 17, before[1] + 1) == (a.buffered_bytes, a.buffered_events)
    assert [] == closed
    assert 2 == a.add_plain(batch, 1002, b"c")
    assert [("t", 0)] == closed
    assert a.open_batch(("t", 0)) is None
    [ready] = a.drain(now=0.0)
    events = decode_events(
        ready.payload, topic="t", partition=0, base_offset=0, base_timestamp=1000, count=3
    )
    got = [(e.value, e.headers) for e in events]
    assert [(b"a", (("h", b"v"),)), (b"b", ()), (b"c", ())] == got
    assert [1000, 1001, 1002] == [e.timestamp for e in events]
    assert 0 == a.buffered_bytes


def test_add_plain_refuses_an_event_that_would_overflow_the_batch():
    """An event that would take the batch past max_batch_bytes is refused
    (-1): add then closes the batch and opens the next, as for any event."""
    a = acc(max_batch_bytes=50)
    a.append("t", 0, 1, None, b"x" * 20, (), now=0.0)  # 36 bytes
    batch = a.open_batch(("t", 0))
    assert batch is not None
    assert -1 == a.add_plain(batch, 2, b"y" * 20)
    assert 1 == a.buffered_events
    assert 0 == a.add("t", 0, 2, None, b"y" * 20, (), 0.0)[1]  # a new batch
    assert 2 == len(a.drain(now=0.0, force=True))
