"""headwater.testing: fakes and conformance kits for Headwater's own tests and yours."""

from __future__ import annotations

from headwater.journal._files import PowerLoss as PowerLoss
from headwater.journal._files import SimulatedFileSystem as SimulatedFileSystem

from ._checker import Ack as Ack
from ._checker import Assignment as Assignment
from ._checker import CheckReport as CheckReport
from ._checker import Commit as Commit
from ._checker import History as History
from ._checker import Read as Read
from ._checker import Seek as Seek
from ._checker import SendFailed as SendFailed
from ._checker import Shutdown as Shutdown
from ._checker import Violation as Violation
from ._checker import check as check
from ._faulty import FaultyStream as FaultyStream
from ._faulty import FaultyStreamStatistics as FaultyStreamStatistics
from ._simulation import SimulationConfig as SimulationConfig
from ._simulation import SimulationResult as SimulationResult
from ._simulation import rerun_command as rerun_command
from ._simulation import run_seed as run_seed
from ._simulation import simulate as simulate
from ._transport_kit import TRANSPORT_CHECKS as TRANSPORT_CHECKS
from ._transport_kit import check_transport as check_transport

__all__ = [
    "SimulatedFileSystem",
    "PowerLoss",
    "FaultyStream",
    "FaultyStreamStatistics",
    "TRANSPORT_CHECKS",
    "check_transport",
    "Ack",
    "Assignment",
    "CheckReport",
    "Commit",
    "History",
    "Read",
    "Seek",
    "SendFailed",
    "Shutdown",
    "Violation",
    "check",
    "SimulationConfig",
    "SimulationResult",
    "rerun_command",
    "run_seed",
    "simulate",
]
