"""Kafka RecordBatch v2, sans-IO: decode what producers send, encode what
consumers fetch.

Theory of operation
-------------------
A Kafka produce carries a run of record batches (magic 2). The layout, all
integers big-endian, varints zig-zag encoded::

    offset size field
    0      8    base_offset
    8      4    batch_length            bytes after this field
    12     4    partition_leader_epoch
    16     1    magic                   2
    17     4    crc                     CRC-32C of bytes 21..end
    21     2    attributes              bits 0-2 compression (0 none, 1 gzip,
                                        2 snappy, 3 lz4, 4 zstd); bit 3 log-append
                                        time; bit 4 transactional; bit 5 control
    23     4    last_offset_delta
    27     8    base_timestamp
    35     8    max_timestamp
    43     8    producer_id
    51     2    producer_epoch
    53     4    base_sequence
    57     4    record count
    61     ...  records (compressed as one block when bits 0-2 say so)

    record: varint length, int8 attributes, varlong timestamp_delta,
            varint offset_delta, varint key length (-1 = null) + key,
            varint value length (-1 = null) + value,
            varint header count, then per header: varint name length + name
            (UTF-8), varint value length (-1 = null) + value

:func:`decode_batches` checks every length, the magic, the CRC and each
record's framing, decompresses (gzip, snappy, lz4, zstd through ``cramjam``)
and returns :class:`KafkaBatch` objects; anything malformed raises
:class:`KafkaCorruptBatch`, which the front end answers with
``CORRUPT_MESSAGE``. :func:`encode_batch` writes one uncompressed batch.
Nothing here blocks or does I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final, NamedTuple

import attrs
import cramjam
import crc32c

from headwater._errors import InvalidArgument

__all__ = [
    "COMPRESSION_NAMES",
    "KafkaBatch",
    "KafkaCorruptBatch",
    "KafkaRecord",
    "decode_batches",
    "encode_batch",
]

_PREFIX: Final = struct.Struct(">qiib")  # base_offset, batch_length, leader epoch, magic
_AFTER_CRC: Final = struct.Struct(">hiqqqhii")  # attributes .. record count
_HEAD_SIZE: Final = 61
_CRC_AT: Final = 17
_CRC_FROM: Final = 21
_U32: Final = struct.Struct(">I")

COMPRESSION_NAMES: Final = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
"""Kafka's compression codec ids (attribute bits 0-2)."""

ATTR_TRANSACTIONAL: Final = 0x10
ATTR_CONTROL: Final = 0x20

#: (name, value) pairs; a Kafka header value may be null.
KafkaHeaders = tuple[tuple[str, bytes | None], ...]


class KafkaCorruptBatch(InvalidArgument):
    """A Kafka record batch is malformed (bad length, magic, CRC, varint,
    compression or record framing). The front end answers ``CORRUPT_MESSAGE``;
    a producer that sees it has a bug or a broken network path."""

    code = "kafka_corrupt_batch"


class KafkaRecord(NamedTuple):
    """One record of a batch: absolute timestamp (ms), key, value, headers
    (a named tuple: measured cheaper to build per record than an attrs class)."""

    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: KafkaHeaders = ()


@attrs.frozen
class KafkaBatch:
    """One decoded RecordBatch v2."""

    base_offset: int
    attributes: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records: tuple[KafkaRecord, ...]
    max_timestamp: int

    @property
    def compression(self) -> str:
        """The codec the producer used (``none``, ``gzip``, ``snappy``, ``lz4``, ``zstd``)."""
        return COMPRESSION_NAMES.get(self.attributes & 0x7, "?")

    @property
    def transactional(self) -> bool:
        """Whether the producer marked the batch as part of a transaction."""
        return bool(self.attributes & ATTR_TRANSACTIONAL)

    @property
    def control(self) -> bool:
        """Whether this is a control batch (transaction markers)."""
        return bool(self.attributes & ATTR_CONTROL)


# --------------------------------------------------------------------------
# varints


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Zig-zag varint at ``pos``: (value, next position)."""
    if pos < len(buf):
        b = buf[pos]
        if b < 0x80:
            return (b >> 1) ^ -(b & 1), pos + 1
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise KafkaCorruptBatch("a varint runs past the end of the batch")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise KafkaCorruptBatch("a varint is longer than 10 bytes")
    return (result >> 1) ^ -(result & 1), pos


def _zigzag_bytes(value: int) -> bytes:
    out = bytearray()
    _write_varint_slow(out, value)
    return bytes(out)


def _write_varint_slow(out: bytearray, value: int) -> None:
    v = (value << 1) ^ (value >> 63)
    v &= 0xFFFFFFFFFFFFFFFF
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


_SMALL: Final = 1 << 13
_VARINTS: Final = [_zigzag_bytes(v) for v in range(_SMALL)]


def _write_varint(out: bytearray, value: int) -> None:
    if 0 <= value < _SMALL:
        out += _VARINTS[value]
    else:
        _write_varint_slow(out, value)


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    length, pos = _read_varint(buf, pos)
    if length == -1:
        return None, pos
    if length < 0 or pos + length > len(buf):
        raise KafkaCorruptBatch(f"a field of {length} bytes does not fit in the record")
    return buf[pos : pos + length], pos + length


def _write_bytes(out: bytearray, data: bytes | None) -> None:
    if data is None:
        out.append(1)  # zig-zag -1
        return
    _write_varint(out, len(data))
    out += data


# --------------------------------------------------------------------------
# compression


def _decompress(codec: int, data: bytes) -> bytes:
    try:
        if codec == 1:
            return bytes(cramjam.gzip.decompress(data))
        if codec == 2:
            if data[:8] == b"\x82SNAPPY\x00":  # xerial framing (Java clients)
                return _xerial_snappy(data)
            return bytes(cramjam.snappy.decompress_raw(data))
        if codec == 3:
            return bytes(cramjam.lz4.decompress(data))
        if codec == 4:
            return bytes(cramjam.zstd.decompress(data))
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise KafkaCorruptBatch(
            f"cannot decompress a {COMPRESSION_NAMES[codec]} batch: {exc}"
        ) from None
    raise KafkaCorruptBatch(f"unknown compression codec {codec}; use none/gzip/snappy/lz4/zstd")


def _xerial_snappy(data: bytes) -> bytes:
    out = bytearray()
    pos = 16
    while pos < len(data):
        if pos + 4 > len(data):
            raise KafkaCorruptBatch("a snappy block header is cut short")
        (size,) = struct.unpack_from(">i", data, pos)
        pos += 4
        out += bytes(cramjam.snappy.decompress_raw(data[pos : pos + size]))
        pos += size
    return bytes(out)


# --------------------------------------------------------------------------
# decode


def _tail(buf: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte ``first`` had its high bit set:
    (raw unsigned value, next position)."""
    result = first & 0x7F
    shift = 7
    n = len(buf)
    while True:
        if pos >= n:
            raise KafkaCorruptBatch("a varint runs past the end of the batch")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise KafkaCorruptBatch("a varint is longer than 10 bytes")


def _decode_records(buf: bytes, count: int, base_timestamp: int) -> tuple[list[KafkaRecord], int]:
    # Hot path (every produced record): varints are read inline, one byte
    # being the common case; _tail reads longer ones. Measured about twice
    # as fast as a call per field.
    records: list[KafkaRecord] = []
    append = records.append
    pos = 0
    end = len(buf)
    tail = _tail
    read_bytes = _read_bytes
    max_ts = base_timestamp
    try:
        for _ in range(count):
            v = buf[pos]
            pos += 1
            if v & 0x80:
                v, pos = tail(buf, pos, v)
            length = (v >> 1) ^ -(v & 1)
            start = pos
            if length < 6 or start + length > end:
                raise KafkaCorruptBatch(f"a record of {length} bytes does not fit in its batch")
            pos += 1  # record attributes (unused)
            v = buf[pos]
            pos += 1
            if v & 0x80:
                v, pos = tail(buf, pos, v)
            ts = base_timestamp + ((v >> 1) ^ -(v & 1))
            v = buf[pos]
            pos += 1
            if v & 0x80:
                v, pos = tail(buf, pos, v)  # offset delta: offsets are assigned on append
            v = buf[pos]
            pos += 1
            if v & 0x80:
                v, pos = tail(buf, pos, v)
            n = (v >> 1) ^ -(v & 1)
            if n == -1:
                key = None
            elif n < 0 or pos + n > end:
                raise KafkaCorruptBatch(f"a key of {n} bytes does not fit in the record")
            else:
                key = buf[pos : pos + n]
                pos += n
            v = buf[pos]
            pos += 1
            if v & 0x80:
                v, pos = tail(buf, pos, v)
            n = (v >> 1) ^ -(v & 1)
            if n == -1:
                value = None
            elif n < 0 or pos + n > end:
                raise KafkaCorruptBatch(f"a value of {n} bytes does not fit in the record")
            else:
                value = buf[pos : pos + n]
                pos += n
            v = buf[pos]
            pos += 1
            if v & 0x80:
                v, pos = tail(buf, pos, v)
            n_headers = (v >> 1) ^ -(v & 1)
            headers: KafkaHeaders = ()
            if n_headers:
                if n_headers < 0 or n_headers > length:
                    raise KafkaCorruptBatch(f"a record claims {n_headers} headers")
                items: list[tuple[str, bytes | None]] = []
                for _h in range(n_headers):
                    name, pos = read_bytes(buf, pos)
                    hvalue, pos = read_bytes(buf, pos)
                    if name is None:
                        raise KafkaCorruptBatch("a header has a null name")
                    try:
                        items.append((name.decode("utf-8"), hvalue))
                    except UnicodeDecodeError:
                        raise KafkaCorruptBatch("a header name is not UTF-8") from None
                headers = tuple(items)
            if pos != start + length:
                raise KafkaCorruptBatch("a record's fields do not add up to its length")
            if ts > max_ts:
                max_ts = ts
            append(KafkaRecord(ts, key, value, headers))
    except IndexError:
        raise KafkaCorruptBatch("a record runs past the end of its batch") from None
    if pos != end:
        raise KafkaCorruptBatch(f"{end - pos} bytes follow the last record of a batch")
    return records, max_ts


def decode_batches(data: bytes | bytearray | memoryview) -> list[KafkaBatch]:
    """Decode a run of RecordBatch v2 (a produce request's ``records``).

    Raises :class:`KafkaCorruptBatch` for anything malformed (the whole run is
    refused, nothing is half-decoded)."""
    buf = bytes(data)
    batches: list[KafkaBatch] = []
    pos = 0
    total = len(buf)
    while pos < total:
        if total - pos < _HEAD_SIZE:
            raise KafkaCorruptBatch(f"a batch is cut short ({total - pos} bytes)")
        base_offset, batch_length, _epoch, magic = _PREFIX.unpack_from(buf, pos)
        if magic != 2:
            raise KafkaCorruptBatch(
                f"record batch magic {magic}; Headwater accepts only magic 2 (Kafka 0.11+)"
            )
        end = pos + 12 + batch_length
        if batch_length < _HEAD_SIZE - 12 or end > total:
            raise KafkaCorruptBatch(f"a batch length of {batch_length} does not fit the request")
        (crc,) = _U32.unpack_from(buf, pos + _CRC_AT)
        if crc32c.crc32c(memoryview(buf)[pos + _CRC_FROM : end]) != crc:
            raise KafkaCorruptBatch("a record batch fails its CRC-32C check")
        (
            attributes,
            _last_delta,
            base_ts,
            max_ts,
            producer_id,
            producer_epoch,
            base_sequence,
            count,
        ) = _AFTER_CRC.unpack_from(buf, pos + _CRC_FROM)
        if count < 0 or count > batch_length:
            raise KafkaCorruptBatch(f"a batch claims {count} records")
        body = buf[pos + _HEAD_SIZE : end]
        codec = attributes & 0x7
        if codec:
            body = _decompress(codec, body)
        records, seen_max = _decode_records(body, count, base_ts)
        batches.append(
            KafkaBatch(
                base_offset,
                attributes,
                producer_id,
                producer_epoch,
                base_sequence,
                tuple(records),
                max(max_ts, seen_max),
            )
        )
        pos = end
    return batches


# --------------------------------------------------------------------------
# encode


def encode_batch(
    base_offset: int,
    records: Sequence[tuple[int, bytes | None, bytes | None, Sequence[tuple[str, bytes | None]]]],
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
) -> bytes:
    """One uncompressed RecordBatch v2 holding ``records`` (timestamp ms, key,
    value, headers) at offsets ``base_offset``, ``base_offset + 1``, ..."""
    if not records:
        raise InvalidArgument("a record batch needs at least one record")
    base_ts = records[0][0]
    max_ts = base_ts
    body = bytearray()
    rec = bytearray()
    write_varint = _write_varint
    write_bytes = _write_bytes
    for delta, (ts, key, value, headers) in enumerate(records):
        rec.clear()
        rec.append(0)
        write_varint(rec, ts - base_ts)
        write_varint(rec, delta)
        write_bytes(rec, key)
        write_bytes(rec, value)
        write_varint(rec, len(headers))
        for name, hvalue in headers:
            write_bytes(rec, name.encode("utf-8"))
            write_bytes(rec, hvalue)
        write_varint(body, len(rec))
        body += rec
        if ts > max_ts:
            max_ts = ts
    tail = (
        _AFTER_CRC.pack(
            attributes,
            len(records) - 1,
            base_ts,
            max_ts,
            producer_id,
            producer_epoch,
            base_sequence,
            len(records),
        )
        + body
    )
    crc = crc32c.crc32c(tail)
    return _PREFIX.pack(base_offset, len(tail) + 9, -1, 2) + _U32.pack(crc) + tail
