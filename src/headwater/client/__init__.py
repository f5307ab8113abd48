"""headwater.client: the producer/consumer side (events, codec, serializers, batching)."""

from __future__ import annotations

# The stored batch format lives below the broker (DESIGN.md's layer order).
from headwater.journal._batch import Event as Event
from headwater.journal._batch import PendingEvent as PendingEvent
from headwater.journal._batch import decode_events as decode_events
from headwater.journal._batch import encode_events as encode_events
from headwater.journal._batch import key_bytes as key_bytes
from headwater.journal._batch import murmur2 as murmur2
from headwater.journal._batch import partition_for_key as partition_for_key

from ._accumulator import Accumulator as Accumulator
from ._accumulator import AccumulatorConfig as AccumulatorConfig
from ._accumulator import BatchSlot as BatchSlot
from ._accumulator import ReadyBatch as ReadyBatch
from ._channel import Channel as Channel
from ._channel import FetchSubscription as FetchSubscription
from ._channel import LocalChannel as LocalChannel
from ._client import Client as Client
from ._consumer import Consumer as Consumer
from ._consumer import ConsumerConfig as ConsumerConfig
from ._consumer import PartitionsCallback as PartitionsCallback
from ._consumer import Timestamp as Timestamp
from ._partitioner import Partitioner as Partitioner
from ._producer import Producer as Producer
from ._producer import ProducerConfig as ProducerConfig
from ._producer import SendHandle as SendHandle
from ._producer import open_producer as open_producer
from ._serializers import BytesSerializer as BytesSerializer
from ._serializers import CborSerializer as CborSerializer
from ._serializers import JsonSerializer as JsonSerializer
from ._serializers import Serializer as Serializer
from ._serializers import StrSerializer as StrSerializer
from ._serializers import deserialize_value as deserialize_value
from ._serializers import get_serializer as get_serializer
from ._serializers import serialize_value as serialize_value
from ._share import ExponentialBackoff as ExponentialBackoff
from ._share import SharedEvent as SharedEvent
from ._share import Subscription as Subscription
from ._tcp import DEFAULT_URL as DEFAULT_URL
from ._tcp import TcpChannel as TcpChannel
from ._tcp import connect as connect
from ._tcp import connect_channel as connect_channel
from ._tcp import parse_url as parse_url

__all__ = [
    "DEFAULT_URL",
    "TcpChannel",
    "connect",
    "connect_channel",
    "parse_url",
    "Accumulator",
    "AccumulatorConfig",
    "BatchSlot",
    "BytesSerializer",
    "CborSerializer",
    "Channel",
    "FetchSubscription",
    "Client",
    "Consumer",
    "ConsumerConfig",
    "ExponentialBackoff",
    "SharedEvent",
    "Subscription",
    "PartitionsCallback",
    "Event",
    "JsonSerializer",
    "LocalChannel",
    "Partitioner",
    "PendingEvent",
    "Producer",
    "ProducerConfig",
    "ReadyBatch",
    "SendHandle",
    "open_producer",
    "Serializer",
    "StrSerializer",
    "Timestamp",
    "decode_events",
    "deserialize_value",
    "encode_events",
    "get_serializer",
    "key_bytes",
    "murmur2",
    "partition_for_key",
    "serialize_value",
]
