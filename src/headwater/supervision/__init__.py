"""Supervision: restart policies (sans-IO) and the supervisor runtime.

Erlang/OTP semantics: strategies ``one_for_one``, ``one_for_all`` and
``rest_for_one``; restart types ``permanent``, ``transient`` and ``temporary``;
restart intensity (``max_restarts`` within ``within`` seconds) with optional
exponential backoff; escalation to the parent supervisor when exceeded.
"""

from __future__ import annotations

from ._policy import Backoff as Backoff
from ._policy import ChildInfo as ChildInfo
from ._policy import Crash as Crash
from ._policy import Decision as Decision
from ._policy import Escalate as Escalate
from ._policy import Ignore as Ignore
from ._policy import Restart as Restart
from ._policy import RestartPolicy as RestartPolicy
from ._policy import RestartType as RestartType
from ._policy import Strategy as Strategy
from ._policy import decide as decide
from ._specs import DEFAULT_MAILBOX_SIZE as DEFAULT_MAILBOX_SIZE
from ._specs import ActorSnapshot as ActorSnapshot
from ._specs import ChildCount as ChildCount
from ._specs import ChildEntry as ChildEntry
from ._specs import ChildSpec as ChildSpec
from ._specs import GiveUp as GiveUp
from ._specs import SupervisorSpec as SupervisorSpec
from ._specs import unwrap_group as unwrap_group

__all__ = [
    "ActorSnapshot",
    "DEFAULT_MAILBOX_SIZE",
    "Backoff",
    "ChildCount",
    "ChildEntry",
    "ChildInfo",
    "ChildSpec",
    "Crash",
    "Decision",
    "Escalate",
    "GiveUp",
    "Ignore",
    "Restart",
    "RestartPolicy",
    "RestartType",
    "Strategy",
    "SupervisorSpec",
    "decide",
    "unwrap_group",
]
