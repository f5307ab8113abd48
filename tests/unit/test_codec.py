"""The event payload codec: round trips, tombstones, str keys, malformed input."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import CorruptionError, SerializationError
from headwater.client import Event, decode_events, encode_events

keys = st.none() | st.binary(max_size=20) | st.text(max_size=20)
values = st.none() | st.binary(max_size=64)
headers = st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=3).map(tuple)
pending = st.tuples(st.integers(0, 2**41), keys, values, headers)


@given(st.lists(pending, min_size=1, max_size=30), st.integers(0, 2**40))
def test_round_trip(events, base_offset):
    """Every field survives encode then decode; offsets are base + index."""
    payload = encode_events(events)
    decoded = decode_events(
        payload,
        topic="t",
        partition=2,
        base_offset=base_offset,
        base_timestamp=events[0][0],
        count=len(events),
    )
    expected = [
        Event("t", 2, base_offset + i, ts, key, value, hdrs)
        for i, (ts, key, value, hdrs) in enumerate(events)
    ]
    assert expected == decoded


def test_tombstone_is_null_and_empty_value_is_empty_bytes():
    """value=None is stored as CBOR null, b"" as an empty byte string."""
    payload = encode_events([(10, b"k", None, ()), (11, b"k", b"", ())])
    assert [1, [0, 1], [b"k", b"k"], [None, b""]] == cbor2.loads(payload)
    decoded = decode_events(payload, topic="t", partition=0, base_offset=0, base_timestamp=10)
    assert [None, b""] == [e.value for e in decoded]


def test_str_key_keeps_its_type():
    """A str key comes back as str, a bytes key as bytes."""
    payload = encode_events([(1, "user-7", b"v", ()), (1, b"user-7", b"v", ())])
    decoded = decode_events(payload, topic="t", partition=0, base_offset=5, base_timestamp=1)
    assert ["user-7", b"user-7"] == [e.key for e in decoded]


def test_explicit_base_timestamp_and_negative_delta():
    """Timestamps are deltas against the base; earlier-than-base events work."""
    payload = encode_events([(100, None, b"a", ()), (90, None, b"b", ())], base_timestamp=95)
    assert [5, -5] == cbor2.loads(payload)[1]
    decoded = decode_events(payload, topic="t", partition=0, base_offset=0, base_timestamp=95)
    assert [100, 90] == [e.timestamp for e in decoded]


def test_headers_column_only_when_needed():
    """A batch without headers has four elements; with any, five."""
    assert 4 == len(cbor2.loads(encode_events([(1, None, b"", ())])))
    payload = encode_events([(1, None, b"", ()), (1, None, b"", (("a", b"1"), ("a", b"2")))])
    assert [None, ["a", b"1", "a", b"2"]] == cbor2.loads(payload)[4]


def test_empty_batch_refused():
    """An empty batch is a SerializationError."""
    with pytest.raises(SerializationError, match="empty batch"):
        encode_events([])


def test_unencodable_value_is_serialization_error():
    """A value cbor2 cannot encode raises SerializationError naming the type."""
    with pytest.raises(SerializationError, match="object"):
        encode_events([(1, None, object(), ())])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff",
        cbor2.dumps({"a": 1}),
        cbor2.dumps([2, [0], [None], [b""]]),
        cbor2.dumps([1, [0, 1], [None], [b""]]),
        cbor2.dumps([1, ["x"], [None], [b""]]),
        cbor2.dumps([1, [0], [None], [b""], [["odd"]]]),
    ],
)
def test_malformed_payload_is_corruption(payload):
    """Garbage, wrong version, ragged columns and bad entries raise CorruptionError."""
    with pytest.raises(CorruptionError, match="offset 7"):
        decode_events(payload, topic="t", partition=0, base_offset=7, base_timestamp=0)


def test_count_mismatch_is_corruption():
    """A header count that disagrees with the payload is refused."""
    payload = encode_events([(1, None, b"", ())])
    with pytest.raises(CorruptionError, match="header says 2"):
        decode_events(payload, topic="t", partition=0, base_offset=0, base_timestamp=1, count=2)


@given(
    st.lists(pending, min_size=1, max_size=40),
    st.booleans(),
    st.booleans(),
    st.sampled_from([1, 23, 24, 255, 256]),
)
def test_payload_is_cbor2s_encoding_of_the_columns(events, one_ms, unkeyed, copies):
    """The batch payload is byte for byte what cbor2 writes for the columns,
    also on the fast paths (all timestamps in one millisecond, no keys) and at
    the lengths where CBOR's array head grows."""
    events = (events * copies)[: max(copies, len(events))]
    if one_ms:
        events = [(events[0][0], *e[1:]) for e in events]
    if unkeyed:
        events = [(e[0], None, *e[2:]) for e in events]
    base = events[0][0]
    columns = [1, [e[0] - base for e in events], [e[1] for e in events], [e[2] for e in events]]
    if any(e[3] for e in events):
        columns.append([[x for pair in e[3] for x in pair] if e[3] else None for e in events])
    assert cbor2.dumps(columns) == encode_events(events)
