"""The actor runtime: actors, refs, and the actor system.

An :class:`Actor` handles messages from a bounded mailbox; an :class:`ActorRef`
is how anyone talks to it (``tell`` / ``ask``); :func:`open_actor_system` opens
a supervised tree of them. :func:`serve_actors` offers a system's actors
on a port and :func:`open_actor_client` / :func:`connect_actor` give
:class:`RemoteActorRef` s to them; ``await ref.monitor()`` watches any ref.
Actors link (``ctx.link``, ``ctx.trap_exits``, :class:`Exit`), set timers
(``ctx.send_after`` / ``ctx.send_interval``), show their state
(``await ref.inspect()``), and run blocking handlers in worker threads
(:class:`BlockingActor`); a :class:`LoopWatchdog` names the actor that
holds the loop too long. See :mod:`headwater.supervision` for policies.
"""

from __future__ import annotations

from ._actor import DEFAULT_MAILBOX_SIZE as DEFAULT_MAILBOX_SIZE
from ._actor import Actor as Actor
from ._actor import ActorContext as ActorContext
from ._actor import ActorRef as ActorRef
from ._actor import LocalActorRef as LocalActorRef
from ._blocking import BlockingActor as BlockingActor
from ._links import Exit as Exit
from ._links import ExitReason as ExitReason
from ._monitor import Down as Down
from ._monitor import DownReason as DownReason
from ._monitor import Monitor as Monitor
from ._monitor import Up as Up
from ._persistent import PersistentActor as PersistentActor
from ._remote import ActorClient as ActorClient
from ._remote import RemoteActorRef as RemoteActorRef
from ._remote import connect_actor as connect_actor
from ._remote import open_actor_client as open_actor_client
from ._serve import serve_actor_stream as serve_actor_stream
from ._serve import serve_actors as serve_actors
from ._system import DEFAULT_BLOCKING_THREADS as DEFAULT_BLOCKING_THREADS
from ._system import ActorSystem as ActorSystem
from ._system import TraceHook as TraceHook
from ._system import open_actor_system as open_actor_system
from ._system import tracing as tracing
from ._timers import Timer as Timer
from ._watchdog import DEFAULT_WATCHDOG_THRESHOLD as DEFAULT_WATCHDOG_THRESHOLD
from ._watchdog import LoopWatchdog as LoopWatchdog
from ._watchdog import WatchdogStatistics as WatchdogStatistics
from ._wire import ActorAddress as ActorAddress
from ._wire import parse_actor_url as parse_actor_url

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
    "BlockingActor",
    "DEFAULT_BLOCKING_THREADS",
    "Timer",
    # links
    "Exit",
    "ExitReason",
    # the blocked-loop watchdog
    "LoopWatchdog",
    "WatchdogStatistics",
    "DEFAULT_WATCHDOG_THRESHOLD",
    # monitors
    "Monitor",
    "Down",
    "DownReason",
    "Up",
    # remote actors
    "serve_actors",
    "serve_actor_stream",
    "open_actor_client",
    "connect_actor",
    "ActorClient",
    "RemoteActorRef",
    "ActorAddress",
    "parse_actor_url",
]
