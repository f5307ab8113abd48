"""headwater.testing: fakes and conformance kits for Headwater's own tests and yours."""

from __future__ import annotations

from headwater.journal._files import PowerLoss as PowerLoss
from headwater.journal._files import SimulatedFileSystem as SimulatedFileSystem

from ._actor_kit import ACTOR_REF_CHECKS as ACTOR_REF_CHECKS
from ._actor_kit import KIT_REGISTRY as KIT_REGISTRY
from ._actor_kit import check_actor_refs as check_actor_refs
from ._faulty import FaultyStream as FaultyStream
from ._faulty import FaultyStreamStatistics as FaultyStreamStatistics
from ._process import ServerProcess as ServerProcess
from ._process import server_process as server_process
from ._process import subprocess_env as subprocess_env
from ._servers import connect_in_memory as connect_in_memory
from ._transport_kit import TRANSPORT_CHECKS as TRANSPORT_CHECKS
from ._transport_kit import check_transport as check_transport

__all__ = [
    "ServerProcess",
    "server_process",
    "subprocess_env",
    "connect_in_memory",
    "SimulatedFileSystem",
    "PowerLoss",
    "FaultyStream",
    "FaultyStreamStatistics",
    "TRANSPORT_CHECKS",
    "check_transport",
    "ACTOR_REF_CHECKS",
    "KIT_REGISTRY",
    "check_actor_refs",
]
