"""Monitors: be told once when an actor stops for good (Erlang's ``monitor/2``).

Theory of operation
-------------------
``await ref.monitor()`` returns a :class:`Monitor`, for a local or a remote
ref alike. It fires exactly once, with a :class:`Down` whose ``reason`` says
why:

* ``"stopped"`` -- the actor was stopped for good (a graceful stop, or its
  supervisor chose not to restart it; ``detail`` then holds its last failure);
* ``"failed"`` -- its supervision tree gave up;
* ``"not_found"`` -- there was no such actor when the monitor was set up
  (Erlang's ``noproc``);
* ``"unreachable"`` -- (remote refs only) the connection to the actor's
  process was lost, so nothing more will be heard from it (Erlang's
  ``noconnection``).

A restart is not a stop: monitors survive restarts, like refs. ``cancel()``
is Erlang's ``demonitor``: afterwards the monitor never fires, and
:meth:`Monitor.wait` raises :class:`~headwater.ClosedError`.

Inside an actor, ``await self.context.monitor(ref)`` also delivers the
:class:`Down` to the actor's own mailbox (handled like any message) from a
task in the incarnation's nursery; the monitor is cancelled when that
incarnation ends, as Erlang removes the monitors of a dead process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import attrs
import trio

from headwater._errors import ClosedError

if TYPE_CHECKING:
    from headwater.actors._actor import ActorRef

__all__ = ["Down", "DownReason", "Monitor"]

DownReason = Literal["stopped", "failed", "not_found", "unreachable"]
DOWN_REASONS: tuple[DownReason, ...] = ("stopped", "failed", "not_found", "unreachable")


@attrs.frozen
class Down:
    """The target of a :class:`Monitor` stopped for good or became unreachable.

    ``ref`` is the monitored ref, ``path`` its actor path, ``reason`` one of
    ``"stopped"``, ``"failed"``, ``"not_found"``, ``"unreachable"``, and
    ``detail`` a human explanation (the last failure, the lost connection).
    """

    ref: ActorRef = attrs.field(eq=False, repr=False)
    path: str
    reason: DownReason
    detail: str = ""


class Monitor:
    """A one-shot watch on one actor; made by ``await ref.monitor()``.

    :meth:`wait` blocks until the target is down and returns the
    :class:`Down`; :attr:`down` is that value (``None`` before). Not
    constructed by users.
    """

    __slots__ = ("_cancelled", "_down", "_event", "_on_cancel", "ref")

    def __init__(self, ref: ActorRef, on_cancel: Callable[[Monitor], None] | None = None) -> None:
        self.ref = ref
        self._on_cancel = on_cancel
        self._down: Down | None = None
        self._cancelled = False
        self._event = trio.Event()

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else (self._down or "watching")
        return f"<Monitor {self.ref.path} {state}>"

    @property
    def down(self) -> Down | None:
        """The :class:`Down` once fired, else ``None``."""
        return self._down

    @property
    def active(self) -> bool:
        """True until the monitor fired or was cancelled."""
        return self._down is None and not self._cancelled

    def _fire(self, reason: DownReason, detail: str = "") -> None:
        """Fire once (later calls and calls after ``cancel`` do nothing)."""
        if not self.active:
            return
        self._down = Down(self.ref, self.ref.path, reason, detail)
        self._on_cancel = None
        self._event.set()

    async def wait(self) -> Down:
        """Wait until the target is down and return why.

        Raises :class:`~headwater.ClosedError` if the monitor was (or gets)
        cancelled before it fired. Cancellation-safe.
        """
        await self._event.wait()
        if self._down is None:
            raise ClosedError(f"the monitor of {self.ref.path} was cancelled")
        return self._down

    def cancel(self) -> None:
        """Stop watching (Erlang's ``demonitor``); idempotent, never blocks.

        Does nothing if the monitor already fired. For a remote ref the
        far side is told in the background by the connection's own task.
        """
        if not self.active:
            return
        self._cancelled = True
        hook, self._on_cancel = self._on_cancel, None
        self._event.set()
        if hook is not None:
            hook(self)
