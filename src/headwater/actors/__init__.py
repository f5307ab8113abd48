"""The actor runtime: actors, refs, and the actor system.

An :class:`Actor` handles messages from a bounded mailbox; an :class:`ActorRef`
is how anyone talks to it (``tell`` / ``ask``); :func:`open_actor_system` opens
a supervised tree of them. See :mod:`headwater.supervision` for policies.
"""

from __future__ import annotations

from ._actor import DEFAULT_MAILBOX_SIZE as DEFAULT_MAILBOX_SIZE
from ._actor import Actor as Actor
from ._actor import ActorContext as ActorContext
from ._actor import ActorRef as ActorRef
from ._actor import LocalActorRef as LocalActorRef
from ._persistent import PersistentActor as PersistentActor
from ._system import ActorSystem as ActorSystem
from ._system import TraceHook as TraceHook
from ._system import open_actor_system as open_actor_system
from ._system import tracing as tracing

__all__ = [
    "Actor",
    "ActorContext",
    "ActorRef",
    "LocalActorRef",
    "PersistentActor",
    "ActorSystem",
    "open_actor_system",
    "TraceHook",
    "tracing",
    "DEFAULT_MAILBOX_SIZE",
]
