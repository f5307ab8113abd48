"""The batch payload codec: moved to :mod:`headwater.journal._batch` (below
the broker, which stores and compacts batches); re-exported here."""

from __future__ import annotations

from headwater.journal._batch import PAYLOAD_VERSION as PAYLOAD_VERSION
from headwater.journal._batch import PendingEvent as PendingEvent
from headwater.journal._batch import decode_events as decode_events
from headwater.journal._batch import decode_record_events as decode_record_events
from headwater.journal._batch import encode_events as encode_events

__all__ = [
    "PAYLOAD_VERSION",
    "PendingEvent",
    "decode_events",
    "decode_record_events",
    "encode_events",
]
