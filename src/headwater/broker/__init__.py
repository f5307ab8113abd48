"""headwater.broker: topics, partitions and consumer groups (sans-IO cores)."""

from __future__ import annotations

from ._idempotence import Append as Append
from ._idempotence import BatchMetadata as BatchMetadata
from ._idempotence import Duplicate as Duplicate
from ._idempotence import ProducerEntry as ProducerEntry
from ._idempotence import ProducerStates as ProducerStates
from ._idempotence import RecordInfo as RecordInfo

__all__ = [
    "Append",
    "BatchMetadata",
    "Duplicate",
    "ProducerEntry",
    "ProducerStates",
    "RecordInfo",
]
