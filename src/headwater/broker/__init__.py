"""headwater.broker: topics, partitions and consumer groups (sans-IO cores)."""

from __future__ import annotations

from ._group import TRANSITIONS as TRANSITIONS
from ._group import GroupCoordinator as GroupCoordinator
from ._group import GroupEvent as GroupEvent
from ._group import GroupState as GroupState
from ._group import MemberState as MemberState
from ._group import apply as apply
from ._group import compute_assignment as compute_assignment
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
    "GroupCoordinator",
    "GroupEvent",
    "GroupState",
    "MemberState",
    "ProducerEntry",
    "ProducerStates",
    "RecordInfo",
    "TRANSITIONS",
    "apply",
    "compute_assignment",
]
