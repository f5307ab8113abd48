"""Actors whose handlers block: run them in worker threads from a bounded pool.

Theory of operation
-------------------
A :class:`BlockingActor` is an ordinary actor (one mailbox, one message at a
time, supervised and restarted like any other) whose :meth:`handle_blocking`
is a plain function run with ``trio.to_thread.run_sync`` under the system's
``CapacityLimiter`` (``open_actor_system(blocking_threads=8)``), Akka's
dispatcher for blocking work. While one handler sleeps or waits on a
blocking library in its thread, the Trio loop stays free for every other
actor, so the blocked-loop watchdog stays quiet. This is the answer to a
``loop_blocked`` warning.

The price is a thread hop per message (measured by
``benchmarks/bench_actors.py``, case ``blocking``). A handler in a thread
cannot be cancelled: a kill or a stop waits for the current
``handle_blocking`` call to return (bound it with the library's own
timeouts). Do not touch Trio objects from ``handle_blocking``; use
``trio.from_thread`` if you must.
"""

from __future__ import annotations

from typing import Any

import trio

from headwater._errors import UsageError
from headwater.actors._actor import Actor

__all__ = ["BlockingActor"]


class BlockingActor(Actor):
    """An actor whose messages are handled by :meth:`handle_blocking` in a
    worker thread (see the module docstring). Subclass it and override
    :meth:`handle_blocking`; the return value is the ``ask`` reply."""

    limiter: trio.CapacityLimiter | None = None
    """A limiter of its own (shared by the instances that name it), or
    ``None`` for the system's ``blocking_limiter``."""

    def handle_blocking(self, message: Any) -> Any:
        """Handle one message in a worker thread (may block)."""
        raise UsageError(f"{type(self).__name__} does not handle {type(message).__name__}")

    async def handle(self, message: Any) -> Any:
        """Run :meth:`handle_blocking` in a worker thread; do not override."""
        limiter = self.limiter or self.context.system.blocking_limiter
        return await trio.to_thread.run_sync(self.handle_blocking, message, limiter=limiter)
