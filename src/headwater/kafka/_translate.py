"""Translation at the edge: Kafka record batches to and from Headwater's one
stored batch format (DECISIONS #14), sans-IO.

Theory of operation
-------------------
A Kafka producer's RecordBatch v2 becomes one journal record whose payload is
the CBOR columnar batch of ``docs/batch-format.md``: keys, values and header
values are stored as the raw bytes the producer sent (``null`` stays
``null``), header names as text, timestamps as the producer's. The journal
header takes the batch's producer id, epoch and base sequence, so Kafka's
idempotence is Headwater's (the partition's producer state checks them), and
a transactional batch keeps its transactional bit (the partition admits it
only inside a transaction the coordinator has opened there).

A fetch turns each stored record back into one uncompressed RecordBatch v2 at
the record's base offset with the same producer fields. Headwater ``str``
keys go out as their UTF-8 bytes (the bytes they are hashed as); header
values stay bytes or ``null``. Nothing here blocks or does I/O.
"""

from __future__ import annotations

from typing import Any

import cbor2

from headwater.journal._batch import PAYLOAD_VERSION, decode_record_events, encode_events
from headwater.journal._record import (
    ATTR_TRANSACTIONAL,
    HEADER_SIZE,
    RecordHeader,
    encode_record,
    iter_records,
)

from ._records import KafkaBatch, encode_batch

__all__ = ["batch_to_record", "records_to_kafka"]

#: (timestamp ms, key, value, headers) of one record on its way out.
Row = tuple[int, bytes | None, bytes | None, Any]


def batch_to_record(batch: KafkaBatch) -> bytes:
    """One journal record (offset and append time left for the broker) holding
    the events of ``batch``."""
    records = batch.records
    events = [(r.timestamp, r.key, r.value, r.headers) for r in records]
    payload = encode_events(events)  # type: ignore[arg-type]  # header values may be None
    return encode_record(
        payload,
        count=len(records),
        first_timestamp=records[0].timestamp,
        max_timestamp=batch.max_timestamp,
        attributes=ATTR_TRANSACTIONAL if batch.transactional else 0,
        producer_id=batch.producer_id,
        producer_epoch=batch.producer_epoch,
        base_sequence=batch.base_sequence,
    )


def _columns(header: RecordHeader, record: memoryview, topic: str, partition: int) -> list[Row]:
    """A stored record's events as Kafka rows, read straight from the CBOR
    columns (no per-event ``Event`` object: this runs for every fetched
    event). Anything but a valid payload goes through the codec, which
    raises the precise :class:`~headwater.CorruptionError`."""
    try:
        decoded = cbor2.loads(bytes(record[HEADER_SIZE:]))
        ok = (
            type(decoded) is list
            and len(decoded) in (4, 5)
            and decoded[0] == PAYLOAD_VERSION
            and all(len(col) == header.count for col in decoded[1:])
        )
    except (cbor2.CBORDecodeError, TypeError, ValueError):
        ok = False
    if not ok:
        events = decode_record_events(header, record, topic=topic, partition=partition)
        return [(e.timestamp, _key(e.key), e.value, e.headers) for e in events]
    base = header.first_timestamp
    deltas, keys, values = decoded[1], decoded[2], decoded[3]
    keys = [k.encode("utf-8") if type(k) is str else k for k in keys]
    if len(decoded) == 4:
        return [(base + d, k, v, ()) for d, k, v in zip(deltas, keys, values, strict=True)]
    return [
        (base + d, k, v, tuple(zip(h[::2], h[1::2], strict=True)) if h else ())
        for d, k, v, h in zip(deltas, keys, values, decoded[4], strict=True)
    ]


def _key(key: object) -> bytes | None:
    return key.encode("utf-8") if isinstance(key, str) else key  # type: ignore[return-value]


def records_to_kafka(data: bytes, *, topic: str, partition: int) -> bytes:
    """Re-frame a run of whole journal records (a fetch result) as Kafka
    record batches, one per record."""
    out: list[bytes] = []
    for header, record in iter_records(data):
        out.append(
            encode_batch(
                header.base_offset,
                _columns(header, record, topic, partition),
                producer_id=header.producer_id,
                producer_epoch=header.producer_epoch,
                base_sequence=header.base_sequence,
            )
        )
    return b"".join(out)
