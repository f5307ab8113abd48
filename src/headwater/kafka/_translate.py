"""Translation at the edge: Kafka record batches to and from Headwater's one
stored batch format (DECISIONS #14), sans-IO.

Theory of operation
-------------------
A Kafka producer's RecordBatch v2 becomes one journal record whose payload is
the CBOR columnar batch of ``docs/batch-format.md``: keys, values and header
values are stored as the raw bytes the producer sent (``null`` stays
``null``), header names as text, timestamps as the producer's. The journal
header takes the batch's producer id, epoch and base sequence, so Kafka's
idempotence is Headwater's (the partition's producer state checks them).

A fetch turns each stored record back into one uncompressed RecordBatch v2 at
the record's base offset with the same producer fields. Headwater ``str``
keys go out as their UTF-8 bytes (the bytes they are hashed as); header
values stay bytes or ``null``. Nothing here blocks or does I/O.
"""

from __future__ import annotations

from headwater.client._codec import decode_record_events, encode_events
from headwater.journal._record import encode_record, iter_records

from ._records import KafkaBatch, encode_batch

__all__ = ["batch_to_record", "records_to_kafka"]


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
        producer_id=batch.producer_id,
        producer_epoch=batch.producer_epoch,
        base_sequence=batch.base_sequence,
    )


def records_to_kafka(data: bytes, *, topic: str, partition: int) -> bytes:
    """Re-frame a run of whole journal records (a fetch result) as Kafka
    record batches, one per record."""
    out: list[bytes] = []
    for header, record in iter_records(data):
        events = decode_record_events(header, record, topic=topic, partition=partition)
        rows = [
            (
                e.timestamp,
                e.key.encode("utf-8") if isinstance(e.key, str) else e.key,
                e.value,
                e.headers,
            )
            for e in events
        ]
        out.append(
            encode_batch(
                header.base_offset,
                rows,
                producer_id=header.producer_id,
                producer_epoch=header.producer_epoch,
                base_sequence=header.base_sequence,
            )
        )
    return b"".join(out)
