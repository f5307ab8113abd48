"""The journal record codec, sans-IO.

Theory of operation
-------------------
A record is one producer batch: a fixed 62-byte header and an opaque payload
(the client's encoding of its events; the journal never looks inside). All
integers are big-endian::

    offset size field           meaning
    0      4    length          whole record size in bytes, header included
    4      4    crc             CRC-32C of bytes 8..length (everything after it)
    8      1    magic           0x48 ("H")
    9      1    version         1
    10     2    attributes      flags (bit 0: payload compressed; bit 1: written by
                                compaction, a gap in offsets may precede it; bit 2:
                                transactional; bit 3: control record (a transaction
                                marker, count 1, never an event); bit 4: with bit 3,
                                a commit marker, else an abort marker)
    12     8    base_offset     offset of the first event (set by the broker)
    20     4    count           number of events, >= 1
    24     8    first_timestamp producer timestamp of the first event (ms)
    32     8    max_timestamp   largest producer timestamp in the batch (ms)
    40     8    append_time     broker time of the append (ms, set by the broker)
    48     8    producer_id     -1 when the producer is not idempotent
    56     2    producer_epoch  -1 when not idempotent
    58     4    base_sequence   sequence of the first event, -1 when not idempotent
    62     ...  payload

The CRC covers every byte after itself, *including* the broker-assigned base
offset and append time: the broker checks the client's CRC, patches those two
fields and recomputes the CRC (CRC-32C in C runs at several GB/s, so this costs
microseconds per batch), and from then on every stored byte is checked. Unlike
Kafka, a stored batch is therefore not byte-identical to the client's; a future
Kafka listener would re-frame batches anyway.

Decoding reports exactly what it found: :class:`Short` (not enough bytes yet: a
torn tail or a read that stopped early), :class:`Corrupt` (bad magic, version,
length, count or checksum) or a valid :class:`RecordHeader`. It never returns
garbage.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from functools import partial
from typing import Final, NamedTuple

import attrs
import crc32c

from headwater._errors import InvalidArgument

__all__ = [
    "ATTR_COMMIT",
    "ATTR_COMPACTED",
    "ATTR_CONTROL",
    "ATTR_TRANSACTIONAL",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RECORD_SIZE",
    "NO_PRODUCER",
    "VERSION",
    "Corrupt",
    "RecordHeader",
    "Short",
    "decode_header",
    "encode_record",
    "iter_records",
    "patch_header",
    "patch_record",
    "record_crc",
    "stamp_record",
    "stored_header",
]

_CHECKED: Final = struct.Struct(">BBHqIqqqqhi")  # the header after the crc field
_LENGTH_CRC: Final = struct.Struct(">II")
HEADER: Final = struct.Struct(_LENGTH_CRC.format + _CHECKED.format[1:])  # the whole header
HEADER_SIZE: Final = HEADER.size
MAGIC: Final = 0x48
VERSION: Final = 1
NO_PRODUCER: Final = -1
ATTR_COMPACTED: Final = 0x0002
"""Attribute bit: written by compaction; the offsets before it may have a gap."""
ATTR_TRANSACTIONAL: Final = 0x0004
"""Attribute bit: the batch belongs to its producer's open transaction."""
ATTR_CONTROL: Final = 0x0008
"""Attribute bit: a transaction marker (control record); readers never see it as an event."""
ATTR_COMMIT: Final = 0x0010
"""Attribute bit, with :data:`ATTR_CONTROL`: the marker commits (else it aborts)."""
MAX_RECORD_SIZE: Final = 256 * 1024 * 1024
"""No record may be larger than this (a sanity bound on the length field)."""

_CRC_START: Final = 8
_BASE_OFFSET: Final = struct.Struct(">q")
_APPEND_TIME: Final = struct.Struct(">q")
_CRC: Final = struct.Struct(">I")


class RecordHeader(NamedTuple):
    """The decoded header of one valid record.

    Immutable. A named tuple (fields in the order below), not an attrs
    class: one is built per append and per record read, and this one is
    built in C (an attrs frozen class's ``__init__`` was the largest Python
    cost of an append). ``header._replace(...)`` makes a changed copy.
    """

    length: int
    crc: int
    attributes: int
    base_offset: int
    count: int  # type: ignore[assignment]  # (shadows tuple.count: a field here)
    first_timestamp: int
    max_timestamp: int
    append_time: int
    producer_id: int
    producer_epoch: int
    base_sequence: int

    @property
    def next_offset(self) -> int:
        """The offset after this record's last event."""
        return self.base_offset + self.count

    @property
    def last_offset(self) -> int:
        """The offset of this record's last event."""
        return self.base_offset + self.count - 1


#: Builds a RecordHeader from an 11-tuple without a Python-level call.
new_header: Callable[[tuple[int, ...]], RecordHeader] = partial(tuple.__new__, RecordHeader)


@attrs.frozen
class Short:
    """Not enough bytes for a whole record: ``needed`` more would be required."""

    needed: int


@attrs.frozen
class Corrupt:
    """The bytes at this position are not a valid record; ``reason`` says why."""

    reason: str


def record_crc(buf: bytes | bytearray | memoryview, length: int, pos: int = 0) -> int:
    """CRC-32C of a record's checked bytes (everything after the crc field)."""
    view = memoryview(buf)[pos + _CRC_START : pos + length]
    return int(crc32c.crc32c(view))


def encode_record(
    payload: bytes | bytearray | memoryview,
    *,
    count: int,
    first_timestamp: int = 0,
    max_timestamp: int | None = None,
    attributes: int = 0,
    base_offset: int = 0,
    append_time: int = 0,
    producer_id: int = NO_PRODUCER,
    producer_epoch: int = NO_PRODUCER,
    base_sequence: int = NO_PRODUCER,
) -> bytes:
    """Build one record around ``payload`` (which holds ``count`` events)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count < 2**31:
        raise InvalidArgument(f"count={count!r} is invalid; a record holds 1..2**31-1 events")
    length = HEADER_SIZE + len(payload)
    if length > MAX_RECORD_SIZE:
        raise InvalidArgument(
            f"a record of {length} bytes exceeds the maximum of {MAX_RECORD_SIZE} bytes"
        )
    if max_timestamp is None:
        max_timestamp = first_timestamp
    try:
        checked = _CHECKED.pack(
            MAGIC,
            VERSION,
            attributes,
            base_offset,
            count,
            first_timestamp,
            max_timestamp,
            append_time,
            producer_id,
            producer_epoch,
            base_sequence,
        )
    except struct.error as exc:
        raise InvalidArgument(f"a record header field is out of range: {exc}") from None
    # Packed as stamp_record and stored_header pack a stored header.
    crc = crc32c.crc32c(payload, crc32c.crc32c(checked))
    return _LENGTH_CRC.pack(length, crc) + checked + payload


def decode_header(
    buf: bytes | bytearray | memoryview, pos: int = 0, *, check_crc: bool = True
) -> RecordHeader | Short | Corrupt:
    """Decode and validate the record starting at ``buf[pos]``.

    With ``check_crc`` the whole record must be present and its checksum right;
    without, only the header is checked (for index rebuilds on trusted data).
    """
    available = len(buf) - pos
    if available < HEADER_SIZE:
        return Short(HEADER_SIZE - available)
    fields = HEADER.unpack_from(buf, pos)
    # (length, crc, magic, version, attributes, base_offset, count, ...)
    length = fields[0]
    if not (
        fields[2] == MAGIC
        and fields[3] == VERSION
        and HEADER_SIZE <= length <= MAX_RECORD_SIZE
        and fields[6] >= 1
        and fields[5] >= 0
    ):
        return _corrupt_header(fields)
    if check_crc:
        if available < length:
            return Short(length - available)
        actual = crc32c.crc32c(memoryview(buf)[pos + _CRC_START : pos + length])
        if actual != fields[1]:
            return Corrupt(f"checksum mismatch (stored 0x{fields[1]:08x}, computed 0x{actual:08x})")
    # Every append and every record read decodes one: built without a
    # Python-level call (the fields minus magic and version).
    return new_header(fields[:2] + fields[4:])


def _corrupt_header(fields: tuple[int, ...]) -> Corrupt:
    """What is wrong with a header that failed decode_header's checks."""
    length, _crc, magic, version, _attributes, base_offset, count = fields[:7]
    if magic != MAGIC:
        return Corrupt(f"bad magic byte 0x{magic:02x}")
    if version != VERSION:
        return Corrupt(f"unknown record version {version}")
    if not HEADER_SIZE <= length <= MAX_RECORD_SIZE:
        return Corrupt(f"record length {length} out of range")
    if count < 1:
        return Corrupt(f"record event count {count} < 1")
    return Corrupt(f"negative base offset {base_offset}")


def patch_record(
    record: bytes | bytearray | memoryview, base_offset: int, append_time: int
) -> bytearray:
    """Return a copy of a valid record with base offset and append time set and
    the CRC recomputed (the broker's only change to a client's batch)."""
    buf = bytearray(record)
    _BASE_OFFSET.pack_into(buf, 12, base_offset)
    _APPEND_TIME.pack_into(buf, 40, append_time)
    _CRC.pack_into(buf, 4, record_crc(buf, len(buf)))
    return buf


# -- CRC-32C over a changed header, without a second pass over the payload --
#
# For a fixed payload P, ``crc32c(P, value=v)`` is affine in ``v``: the
# difference it makes is a linear map of ``v``'s difference that depends on
# len(P) only (processing len(P) zero bytes). Patching the header changes the
# CRC of the header bytes from ``a`` to ``b``; the record's CRC then changes
# by ``Z(len(P)) (a ^ b)``. ``Z(n)`` is applied as the product of the maps
# for the powers of two in ``n``; each map is kept as four 256-entry tables
# (one per byte of its 32-bit input), built once on first use.

_SHIFT_TABLES: list[tuple[list[int], list[int], list[int], list[int]]] = []
_SHIFT_LOCK = threading.Lock()
_COMBINE_FROM: Final = 8 * 1024
"""Records at least this long are re-checksummed by combination (cheaper
than a pass over the payload); shorter ones are simply recomputed."""


def _tables(columns: list[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    out: list[list[int]] = []
    for byte in range(4):
        table = [0] * 256
        for value in range(1, 256):
            low = value & -value
            table[value] = table[value ^ low] ^ columns[byte * 8 + low.bit_length() - 1]
        out.append(table)
    return out[0], out[1], out[2], out[3]


def _apply(tables: tuple[list[int], list[int], list[int], list[int]], x: int) -> int:
    t0, t1, t2, t3 = tables
    return t0[x & 0xFF] ^ t1[(x >> 8) & 0xFF] ^ t2[(x >> 16) & 0xFF] ^ t3[x >> 24]


def _shift_tables(k: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Tables of the map "process 2**k zero bytes" on a CRC difference
    (built once, on first use: 5-8 ms for records up to 1 MiB here)."""
    if k < len(_SHIFT_TABLES):
        return _SHIFT_TABLES[k]
    with _SHIFT_LOCK:  # each level is built from the one before: one builder
        while len(_SHIFT_TABLES) <= k:
            if not _SHIFT_TABLES:
                zero = crc32c.crc32c(b"\0", 0)
                columns = [crc32c.crc32c(b"\0", 1 << i) ^ zero for i in range(32)]
            else:
                prev = _SHIFT_TABLES[-1]
                columns = [_apply(prev, _apply(prev, 1 << i)) for i in range(32)]
            _SHIFT_TABLES.append(_tables(columns))
    return _SHIFT_TABLES[k]


def crc_shift(diff: int, length: int) -> int:
    """How a CRC-32C difference ``diff`` at some point of a message shows in
    the final CRC after ``length`` more (unchanged) bytes."""
    k = 0
    while length:
        if length & 1:
            diff = _apply(_shift_tables(k), diff)
        length >>= 1
        k += 1
    return diff


def patch_header(
    record: bytes | bytearray | memoryview, base_offset: int, append_time: int
) -> bytes:
    """The header of a valid record with base offset and append time set and
    the CRC updated: the stored record is this header followed by
    ``record[HEADER_SIZE:]`` unchanged (written without copying the payload).
    For long records the CRC is combined from the old one, never recomputed
    over the payload (the same result as :func:`patch_record`)."""
    length = len(record)
    head = bytearray(record[:HEADER_SIZE])
    if length < _COMBINE_FROM:
        _BASE_OFFSET.pack_into(head, 12, base_offset)
        _APPEND_TIME.pack_into(head, 40, append_time)
        crc = crc32c.crc32c(memoryview(record)[HEADER_SIZE:], crc32c.crc32c(head[_CRC_START:]))
        _CRC.pack_into(head, 4, crc)
        return bytes(head)
    old_crc = _CRC.unpack_from(head, 4)[0]
    before = crc32c.crc32c(head[_CRC_START:])
    _BASE_OFFSET.pack_into(head, 12, base_offset)
    _APPEND_TIME.pack_into(head, 40, append_time)
    after = crc32c.crc32c(head[_CRC_START:])
    _CRC.pack_into(head, 4, old_crc ^ crc_shift(before ^ after, length - HEADER_SIZE))
    return bytes(head)


def stored_header(record: bytes, stored: RecordHeader) -> bytes:
    """:func:`patch_header` for the append path: the header of ``record``
    as stored, packed from ``stored`` (the header it was decoded to, with
    the base offset and append time set) rather than copied and patched,
    its CRC summed in one pass over a short record's payload."""
    checked = _CHECKED.pack(MAGIC, VERSION, *stored[2:])
    length = stored[0]
    if length < _COMBINE_FROM:
        crc = crc32c.crc32c(memoryview(record)[HEADER_SIZE:], crc32c.crc32c(checked))
    else:
        # Linear in the header's bytes: valid whatever ``stored`` differs in.
        before = crc32c.crc32c(memoryview(record)[_CRC_START:HEADER_SIZE])
        diff = before ^ crc32c.crc32c(checked)
        crc = _CRC.unpack_from(record, 4)[0] ^ crc_shift(diff, length - HEADER_SIZE)
    return _LENGTH_CRC.pack(length, crc) + checked


def stamp_record(
    record: bytes, base_offset: int, append_time: int
) -> tuple[RecordHeader, bytes] | None:
    """Check a client's ``record`` and stamp it in one step (the append
    path): returns its header with ``base_offset`` and ``append_time`` set
    (``crc`` still the client's, as :func:`decode_header` gave it) and the
    header bytes to store before ``record[HEADER_SIZE:]`` (as
    :func:`stored_header` packs them), or ``None`` when ``record`` is not
    one valid record of exactly ``len(record)`` bytes (:func:`decode_header`
    then says what is wrong). The same checks as :func:`decode_header` plus
    the length, with the fields unpacked once and no intermediate header."""
    if len(record) < HEADER_SIZE:
        return None
    (
        length,
        crc,
        magic,
        version,
        attributes,
        client_offset,
        count,
        first_timestamp,
        max_timestamp,
        _client_time,
        producer_id,
        producer_epoch,
        base_sequence,
    ) = HEADER.unpack_from(record)
    if not (
        magic == MAGIC
        and version == VERSION
        and length == len(record)
        and HEADER_SIZE <= length <= MAX_RECORD_SIZE
        and count >= 1
        and client_offset >= 0
    ):
        return None
    view = memoryview(record)
    payload = view[HEADER_SIZE:]
    before = crc32c.crc32c(view[_CRC_START:HEADER_SIZE])
    if crc32c.crc32c(payload, before) != crc:
        return None
    checked = _CHECKED.pack(
        MAGIC,
        VERSION,
        attributes,
        base_offset,
        count,
        first_timestamp,
        max_timestamp,
        append_time,
        producer_id,
        producer_epoch,
        base_sequence,
    )
    if length < _COMBINE_FROM:
        stored_crc = crc32c.crc32c(payload, crc32c.crc32c(checked))
    else:  # combined from the client's CRC: no second pass over the payload
        stored_crc = crc ^ crc_shift(before ^ crc32c.crc32c(checked), length - HEADER_SIZE)
    header = new_header(
        (
            length,
            crc,
            attributes,
            base_offset,
            count,
            first_timestamp,
            max_timestamp,
            append_time,
            producer_id,
            producer_epoch,
            base_sequence,
        )
    )
    return header, _LENGTH_CRC.pack(length, stored_crc) + checked


def iter_records(
    buf: bytes | bytearray | memoryview,
) -> list[tuple[RecordHeader, memoryview]]:
    """Split a run of whole, valid records (a fetch result) into (header, record)
    pairs. Raises :class:`InvalidArgument` on anything else."""
    out: list[tuple[RecordHeader, memoryview]] = []
    view = memoryview(buf)
    pos = 0
    while pos < len(view):
        header = decode_header(view, pos)
        if not isinstance(header, RecordHeader):
            raise InvalidArgument(f"not a valid record at byte {pos}: {header}")
        out.append((header, view[pos : pos + header.length]))
        pos += header.length
    return out
