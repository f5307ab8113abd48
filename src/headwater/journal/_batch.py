"""The stored batch format: :class:`Event`, the payload codec, key hashing.

The broker stores, compacts and (for share subscriptions) decodes batches;
clients build and read them; the Kafka front end translates to and from them.
So the format lives here, below all of them (DESIGN.md's layer order: an
import only ever points down). ``headwater.client`` re-exports these names.

Theory of operation
-------------------
A producer batch becomes one journal record. The record's fixed header (owned
by the journal) carries the base offset, the event count, the first and max
timestamps, the append time and the producer id/epoch/base sequence; the
broker validates and stores that header and never decodes the payload. The
payload, defined here, is::

    [1, ts_deltas, keys, values]              # format version 1, then columns
    [1, ts_deltas, keys, values, headers]     # when any event has headers

Each column is an array with one entry per event (columnar: measured faster
than an array of per-event arrays, and it lets the accumulator keep columns):

* ``ts_delta`` is ``timestamp - base_timestamp`` in milliseconds (an int, may
  be negative: producers may send out of timestamp order); ``base_timestamp``
  is the header's first timestamp, i.e. the first event's timestamp.
* ``key`` is ``null``, a byte string, or a text string (str keys keep their
  type; they are hashed for partitioning as their UTF-8 bytes).
* ``value`` is a byte string (the serializer's output), or ``null`` for a
  tombstone. An empty value is the empty byte string, never ``null``.
* ``headers[i]`` is ``null`` (no headers) or a flat array ``[name1, value1,
  name2, value2, ...]`` of text names and byte-string values.
* an event's offset is ``base_offset + index``; nothing per event is stored
  for it.

Why CBOR and not Kafka's RecordBatch v2 records: measured in
``benchmarks/bench_codec.py`` and written down in ``docs/batch-format.md``:
cbor2's C encoder/decoder does the per-byte work, where v2 records need a
varint loop in pure Python per field.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import repeat
from typing import Any, NamedTuple

import cbor2

from headwater._errors import (
    CorruptionError,
    HeadwaterError,
    InvalidArgument,
    SerializationError,
)
from headwater.journal._record import HEADER_SIZE, RecordHeader

__all__ = [
    "PAYLOAD_VERSION",
    "Event",
    "Headers",
    "Key",
    "PendingEvent",
    "decode_events",
    "decode_record_events",
    "encode_columns",
    "encode_events",
    "key_bytes",
    "murmur2",
    "partition_for_key",
]

# ------------------------------------------------------------------ events


#: An event key: bytes, or a str (stored as a CBOR text string; hashed for
#: partitioning as its UTF-8 bytes, so ``"k"`` and ``b"k"`` land in the same
#: partition, but each comes back as the type it was sent as).
Key = bytes | str

#: Event headers: ordered (name, value) pairs; a name may repeat (as in Kafka).
Headers = tuple[tuple[str, bytes], ...]


class _EventFields(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: Key | None
    value: Any
    headers: Headers = ()


class Event(_EventFields):
    """One stored event, as a consumer sees it.

    ``offset`` is its position in the partition, ``timestamp`` the producer's
    time in milliseconds since the epoch. ``key`` is ``None``, bytes or str (as
    sent). ``value`` is ``None`` for a tombstone (a deleted key on a compacted
    topic), else the value as the consumer's deserializer returned it (bytes
    when read raw). ``headers`` are ordered (name, bytes) pairs.

    Immutable. It is a named tuple (fields in the order above, so it unpacks
    and compares like one): building one costs a third of a frozen attrs
    class, and a consumer builds one per event (docs/batch-format.md).
    ``event._replace(value=...)`` makes a changed copy.
    """

    __slots__ = ()


#: Builds an Event from a 7-tuple without a Python-level call (the decoder's
#: hot path: ``map(_new_event, zip(...))`` stays in C).
_new_event: Callable[[Iterable[Any]], Event] = partial(tuple.__new__, Event)


# -------------------------------------------------------------- key hashing

_UNPACKERS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of ``data`` as a signed int (like Java's ``int``)."""
    length = len(data)
    h = 0x9747B28C ^ length
    n4 = length >> 2
    unpack = _UNPACKERS.get(n4)
    if unpack is None:
        unpack = _UNPACKERS[n4] = struct.Struct(f"<{n4}I").unpack_from
    for k in unpack(data):
        k = (k * 0x5BD1E995) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * 0x5BD1E995) & 0xFFFFFFFF
        h = ((h * 0x5BD1E995) & 0xFFFFFFFF) ^ k
    tail = length & 3
    if tail:
        base = n4 << 2
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 15
    return h - 0x100000000 if h & 0x80000000 else h


def key_bytes(key: Key) -> bytes:
    """The bytes a key is hashed as: bytes as given, str as UTF-8."""
    if type(key) is bytes:
        return key
    if isinstance(key, str):
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(f"a str key must be valid Unicode text: {exc}") from None
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise InvalidArgument(
        f"an event key must be bytes or str, not {type(key).__qualname__}; "
        "convert it (for example str(key)) or leave it None"
    )


def partition_for_key(key: Key, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (Kafka's formula)."""
    if type(partitions) is not int or partitions < 1:
        raise InvalidArgument(f"partitions must be an int >= 1, not {partitions!r}")
    return (murmur2(key_bytes(key)) & 0x7FFFFFFF) % partitions


# ------------------------------------------------------------------- codec

PAYLOAD_VERSION = 1

#: One event before it is stored: (timestamp ms, key, value bytes or None, headers).
PendingEvent = tuple[int, Key | None, bytes | None, Headers]


def encode_events(events: Sequence[PendingEvent], base_timestamp: int | None = None) -> bytes:
    """Encode events as one batch payload (see the module docstring).

    ``base_timestamp`` defaults to the first event's timestamp (what the
    journal header's first timestamp must then be). Raises
    :class:`~headwater.SerializationError` naming the offending type when a
    key, value or header cannot be encoded. Pure; never blocks.
    """
    if not events:
        raise SerializationError("cannot encode an empty batch: pass at least one event")
    headers = None
    if any(e[3] for e in events):
        headers = [[x for pair in e[3] for x in pair] if e[3] else None for e in events]
    return encode_columns(
        [e[0] for e in events],
        [e[1] for e in events],
        [e[2] for e in events],
        headers,
        base_timestamp,
    )


def encode_columns(
    timestamps: Sequence[int],
    keys: Sequence[Key | None],
    values: Sequence[bytes | None],
    headers: Sequence[list[Any] | None] | None,
    base_timestamp: int | None = None,
) -> bytes:
    """:func:`encode_events` for events already held as columns (the
    producer's accumulator keeps them so): timestamps (ms), keys, values, and
    ``None`` or one flattened ``[name, value, ...]`` list (or ``None``) per
    event. One C-speed CBOR encode of the whole batch; same errors."""
    n = len(timestamps)
    if not n:
        raise SerializationError("cannot encode an empty batch: pass at least one event")
    base = timestamps[0] if base_timestamp is None else base_timestamp
    if len(keys) != n or len(values) != n or (headers is not None and len(headers) != n):
        raise SerializationError("cannot encode event batch: columns of different lengths")
    try:
        if list(timestamps).count(base) == n:
            deltas = _head(0x80, n) + bytes(n)  # one millisecond: every delta is 0
        else:
            deltas = cbor2.dumps([t - base for t in timestamps])
        parts = [
            b"\x85" if headers is not None else b"\x84",
            _head(0, PAYLOAD_VERSION),
            deltas,
            _column(list(keys)),
            cbor2.dumps(values),
        ]
        if headers is not None:
            parts.append(cbor2.dumps(headers))
        return b"".join(parts)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise SerializationError(f"cannot encode event batch: {exc}") from None


def _head(major: int, n: int) -> bytes:
    """A CBOR item head: ``major`` (0x00 uint, 0x40 bytes, 0x80 array) and
    argument ``n``, in its shortest form (as cbor2 writes it)."""
    if n < 24:
        return bytes((major + n,))
    if n < 0x100:
        return bytes((major + 24, n))
    if n < 0x10000:
        return bytes((major + 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major + 26,)) + n.to_bytes(4, "big")
    return bytes((major + 27,)) + n.to_bytes(8, "big")


def _column(items: list[Any]) -> bytes:
    """The CBOR encoding of ``items`` (the bytes ``cbor2.dumps`` writes); a
    column of ``None`` (unkeyed events) built at C speed."""
    n = len(items)
    if items.count(None) == n:
        return _head(0x80, n) + b"\xf6" * n
    return cbor2.dumps(items)


def _corrupt(topic: str, partition: int, base_offset: int, what: str) -> CorruptionError:
    return CorruptionError(
        f"payload of the record at offset {base_offset} in {topic}/{partition} {what}"
    )


def decode_events(
    payload: bytes | memoryview,
    *,
    topic: str,
    partition: int,
    base_offset: int,
    base_timestamp: int,
    count: int | None = None,
    first_offset: int = 0,
    deserialize: Callable[[bytes], Any] | None = None,
) -> list[Event]:
    """Decode a batch payload into :class:`Event` objects.

    Event ``i`` gets offset ``base_offset + i`` and timestamp ``base_timestamp
    + ts_delta``; values stay bytes (or ``None`` for tombstones), or are
    passed through ``deserialize`` (tombstones stay ``None``). Events before
    ``first_offset`` are skipped (a fetch starts at the record holding the
    wanted offset). When
    ``count`` is given (the journal header's event count), a payload with a
    different number of events is rejected. A malformed payload raises
    :class:`~headwater.CorruptionError` naming the base offset.
    """
    try:
        decoded = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, TypeError, ValueError) as exc:
        raise _corrupt(topic, partition, base_offset, f"is not CBOR: {exc}") from None
    if type(decoded) is not list or len(decoded) not in (4, 5):
        raise _corrupt(topic, partition, base_offset, "is not an event batch")
    if decoded[0] != PAYLOAD_VERSION:
        raise _corrupt(
            topic,
            partition,
            base_offset,
            f"has unknown format version {decoded[0]!r} (this client reads {PAYLOAD_VERSION})",
        )
    deltas, keys, values = decoded[1], decoded[2], decoded[3]
    n = len(deltas)
    headers_col = decoded[4] if len(decoded) == 5 else None
    if len(keys) != n or len(values) != n or (headers_col is not None and len(headers_col) != n):
        raise _corrupt(topic, partition, base_offset, "has columns of different lengths")
    if count is not None and n != count:
        raise _corrupt(topic, partition, base_offset, f"holds {n} events, the header says {count}")
    skip = first_offset - base_offset
    if skip > 0:
        deltas, keys, values = deltas[skip:], keys[skip:], values[skip:]
        headers_col = None if headers_col is None else headers_col[skip:]
        base_offset += skip
        n -= skip
    if deserialize is not None:
        try:
            values = [None if v is None else deserialize(v) for v in values]
        except HeadwaterError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"cannot deserialize an event value of {topic}/{partition} near offset "
                f"{base_offset}: {exc}; check the consumer's deserializer"
            ) from exc
    try:
        offsets = range(base_offset, base_offset + n)
        if not set(map(type, deltas)) <= {int}:
            raise TypeError("a timestamp delta is not an int")
        if base_timestamp:
            timestamps: Iterable[Any] = map(base_timestamp.__add__, deltas)
        else:
            timestamps = deltas
        if headers_col is None:
            events = list(
                map(
                    _new_event,
                    zip(
                        repeat(topic, n),
                        repeat(partition, n),
                        offsets,
                        timestamps,
                        keys,
                        values,
                        repeat((), n),
                        strict=True,
                    ),
                )
            )
        else:
            events = [
                Event(
                    topic,
                    partition,
                    offset,
                    ts,
                    key,
                    value,
                    tuple(zip(flat[::2], flat[1::2], strict=True)) if flat else (),
                )
                for offset, ts, key, value, flat in zip(
                    offsets, timestamps, keys, values, headers_col, strict=True
                )
            ]
        return events
    except (TypeError, ValueError) as exc:
        raise _corrupt(topic, partition, base_offset, f"has a malformed event: {exc}") from None


def decode_record_events(
    header: RecordHeader,
    record: bytes | memoryview,
    *,
    topic: str,
    partition: int,
    first_offset: int = 0,
    deserialize: Callable[[bytes], Any] | None = None,
) -> list[Event]:
    """Decode the events of one journal record (its header already decoded);
    see :func:`decode_events` for ``first_offset`` and ``deserialize``."""
    return decode_events(
        memoryview(record)[HEADER_SIZE:],  # cbor2 reads a view: no copy of the payload
        topic=topic,
        partition=partition,
        base_offset=header.base_offset,
        base_timestamp=header.first_timestamp,
        count=header.count,
        first_offset=first_offset,
        deserialize=deserialize,
    )
