"""headwater.client: the producer/consumer side (events, codec, serializers, batching)."""

from __future__ import annotations

from ._accumulator import Accumulator as Accumulator
from ._accumulator import AccumulatorConfig as AccumulatorConfig
from ._accumulator import BatchSlot as BatchSlot
from ._accumulator import ReadyBatch as ReadyBatch
from ._codec import PendingEvent as PendingEvent
from ._codec import decode_events as decode_events
from ._codec import encode_events as encode_events
from ._event import Event as Event
from ._partitioner import Partitioner as Partitioner
from ._partitioner import key_bytes as key_bytes
from ._partitioner import murmur2 as murmur2
from ._partitioner import partition_for_key as partition_for_key
from ._serializers import BytesSerializer as BytesSerializer
from ._serializers import CborSerializer as CborSerializer
from ._serializers import JsonSerializer as JsonSerializer
from ._serializers import Serializer as Serializer
from ._serializers import StrSerializer as StrSerializer
from ._serializers import deserialize_value as deserialize_value
from ._serializers import get_serializer as get_serializer
from ._serializers import serialize_value as serialize_value

__all__ = [
    "Accumulator",
    "AccumulatorConfig",
    "BatchSlot",
    "BytesSerializer",
    "CborSerializer",
    "Event",
    "JsonSerializer",
    "Partitioner",
    "PendingEvent",
    "ReadyBatch",
    "Serializer",
    "StrSerializer",
    "decode_events",
    "deserialize_value",
    "encode_events",
    "get_serializer",
    "key_bytes",
    "murmur2",
    "partition_for_key",
    "serialize_value",
]
