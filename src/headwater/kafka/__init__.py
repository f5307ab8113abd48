"""The Kafka-protocol front end: Kafka clients and tools work against Headwater.

``headwater serve --kafka-port 9092`` starts a Kafka listener beside the
Headwater one; it answers the Kafka APIs listed in ``docs/kafka.md`` by calling
the same broker service, so topics, offsets, groups and committed offsets are
shared with Headwater's own clients. The codec and the translation to
Headwater's stored batch format are sans-IO and live here, at the edge.
"""

from __future__ import annotations

from ._handler import KafkaHandler as KafkaHandler
from ._handler import error_code as error_code
from ._records import KafkaBatch as KafkaBatch
from ._records import KafkaCorruptBatch as KafkaCorruptBatch
from ._records import KafkaRecord as KafkaRecord
from ._records import decode_batches as decode_batches
from ._records import encode_batch as encode_batch
from ._server import KafkaServer as KafkaServer
from ._server import kafka_listener_spec as kafka_listener_spec
from ._translate import batch_to_record as batch_to_record
from ._translate import records_to_kafka as records_to_kafka
from ._wire import SUPPORTED as SUPPORTED
from ._wire import KafkaConnection as KafkaConnection
from ._wire import KafkaProtocolViolation as KafkaProtocolViolation
from ._wire import KafkaRequest as KafkaRequest

__all__ = [
    "SUPPORTED",
    "KafkaBatch",
    "KafkaConnection",
    "KafkaCorruptBatch",
    "KafkaHandler",
    "KafkaProtocolViolation",
    "KafkaRecord",
    "KafkaRequest",
    "KafkaServer",
    "batch_to_record",
    "decode_batches",
    "encode_batch",
    "error_code",
    "kafka_listener_spec",
    "records_to_kafka",
]
