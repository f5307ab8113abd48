"""headwater.testing: fakes and conformance kits for Headwater's own tests and yours."""

from __future__ import annotations

from headwater.journal._files import PowerLoss as PowerLoss
from headwater.journal._files import SimulatedFileSystem as SimulatedFileSystem

from ._actor_kit import ACTOR_REF_CHECKS as ACTOR_REF_CHECKS
from ._actor_kit import KIT_REGISTRY as KIT_REGISTRY
from ._actor_kit import check_actor_refs as check_actor_refs
from ._checker import Ack as Ack
from ._checker import Assignment as Assignment
from ._checker import CheckReport as CheckReport
from ._checker import Commit as Commit
from ._checker import History as History
from ._checker import Read as Read
from ._checker import Seek as Seek
from ._checker import SendFailed as SendFailed
from ._checker import Shutdown as Shutdown
from ._checker import TxnEnd as TxnEnd
from ._checker import Violation as Violation
from ._checker import check as check
from ._faulty import FaultyStream as FaultyStream
from ._faulty import FaultyStreamStatistics as FaultyStreamStatistics
from ._logs import capture_logs as capture_logs
from ._process import ServerProcess as ServerProcess
from ._process import server_process as server_process
from ._process import subprocess_env as subprocess_env
from ._proxy import Direction as Direction
from ._proxy import NetworkFaults as NetworkFaults
from ._proxy import Proxy as Proxy
from ._proxy import ProxyLink as ProxyLink
from ._proxy import open_proxy as open_proxy
from ._servers import connect_in_memory as connect_in_memory
from ._simulation import SimulationConfig as SimulationConfig
from ._simulation import SimulationResult as SimulationResult
from ._simulation import rerun_command as rerun_command
from ._simulation import run_seed as run_seed
from ._simulation import simulate as simulate
from ._transport_kit import TRANSPORT_CHECKS as TRANSPORT_CHECKS
from ._transport_kit import check_transport as check_transport

__all__ = [
    "ServerProcess",
    "server_process",
    "subprocess_env",
    "connect_in_memory",
    "capture_logs",
    "SimulatedFileSystem",
    "PowerLoss",
    "FaultyStream",
    "FaultyStreamStatistics",
    "open_proxy",
    "Proxy",
    "ProxyLink",
    "NetworkFaults",
    "Direction",
    "TRANSPORT_CHECKS",
    "check_transport",
    "ACTOR_REF_CHECKS",
    "KIT_REGISTRY",
    "check_actor_refs",
    "Ack",
    "Assignment",
    "CheckReport",
    "Commit",
    "History",
    "Read",
    "Seek",
    "SendFailed",
    "Shutdown",
    "TxnEnd",
    "Violation",
    "check",
    "SimulationConfig",
    "SimulationResult",
    "rerun_command",
    "run_seed",
    "simulate",
]
