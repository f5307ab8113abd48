"""headwater.broker: the embedded broker, its actors and its sans-IO cores."""

from __future__ import annotations

from ._broker import DEFAULT_DATA_DIR as DEFAULT_DATA_DIR
from ._broker import Broker as Broker
from ._broker import open_broker as open_broker
from ._config import DURABILITIES as DURABILITIES
from ._config import MAX_PARTITIONS as MAX_PARTITIONS
from ._config import MAX_TOPIC_NAME_LENGTH as MAX_TOPIC_NAME_LENGTH
from ._config import TopicConfig as TopicConfig
from ._config import validate_group_name as validate_group_name
from ._config import validate_topic_name as validate_topic_name
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
from ._server import DEFAULT_PORT as DEFAULT_PORT
from ._server import Server as Server
from ._server import ServerConfig as ServerConfig
from ._server import open_server as open_server
from ._server import run_server as run_server
from ._service import BrokerService as BrokerService

__all__ = [
    "DEFAULT_PORT",
    "Server",
    "ServerConfig",
    "open_server",
    "run_server",
    "Broker",
    "BrokerService",
    "DEFAULT_DATA_DIR",
    "open_broker",
    "Append",
    "BatchMetadata",
    "DURABILITIES",
    "Duplicate",
    "GroupCoordinator",
    "GroupEvent",
    "GroupState",
    "MAX_PARTITIONS",
    "MAX_TOPIC_NAME_LENGTH",
    "MemberState",
    "ProducerEntry",
    "ProducerStates",
    "RecordInfo",
    "TRANSITIONS",
    "TopicConfig",
    "apply",
    "compute_assignment",
    "validate_group_name",
    "validate_topic_name",
]
