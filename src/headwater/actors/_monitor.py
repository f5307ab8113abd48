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

A remote monitor made with ``monitor(reconnect=True)`` goes on after
``"unreachable"``: its client reconnects in the background (with backoff)
and, once the actor answers again, :meth:`Monitor.wait_up` returns an
:class:`Up` holding a fresh monitor (itself with ``reconnect=True``) on the
new connection; inside an actor, ``ctx.monitor(ref, reconnect=True)``
delivers the ``Down`` and then the ``Up`` as messages and goes on watching.

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

__all__ = ["Down", "DownReason", "Monitor", "Up"]

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


@attrs.frozen
class Up:
    """A remote actor reachable again after a ``"unreachable"`` :class:`Down`
    (only for ``monitor(reconnect=True)``). ``monitor`` watches it anew."""

    ref: ActorRef = attrs.field(eq=False, repr=False)
    path: str
    monitor: Monitor = attrs.field(eq=False, repr=False)


class Monitor:
    """A one-shot watch on one actor; made by ``await ref.monitor()``.

    :meth:`wait` blocks until the target is down and returns the
    :class:`Down`; :attr:`down` is that value (``None`` before). Not
    constructed by users.
    """

    __slots__ = (
        "_cancelled",
        "_down",
        "_event",
        "_on_cancel",
        "_up",
        "_up_event",
        "reconnect",
        "ref",
    )

    def __init__(
        self,
        ref: ActorRef,
        on_cancel: Callable[[Monitor], None] | None = None,
        *,
        reconnect: bool = False,
    ) -> None:
        self.ref = ref
        self.reconnect = reconnect
        self._on_cancel = on_cancel
        self._down: Down | None = None
        self._cancelled = False
        self._event = trio.Event()
        self._up: Up | None = None
        self._up_event = trio.Event()

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

    @property
    def up(self) -> Up | None:
        """The :class:`Up` once the actor is reachable again, else ``None``."""
        return self._up

    def _is_cancelled(self) -> bool:
        return self._cancelled

    def _fire_up(self, up: Up) -> None:
        if self._up is None and not self._cancelled:
            self._up = up
            self._up_event.set()

    async def wait_up(self) -> Up:
        """After an ``"unreachable"`` down of a ``reconnect=True`` monitor,
        wait until the actor is reachable again and return the :class:`Up`
        (whose ``monitor`` watches on). Raises :class:`~headwater.ClosedError`
        if the monitor was cancelled, or if it cannot come back (no
        ``reconnect``, or it fired with another reason). Cancellation-safe."""
        await self._event.wait()
        down = self._down
        if down is None or not self.reconnect or down.reason != "unreachable":
            raise ClosedError(
                f"the monitor of {self.ref.path} will not see the actor come back "
                f"({'cancelled' if down is None else down.reason}; "
                "only reconnect=True monitors of remote refs do)"
            )
        await self._up_event.wait()
        if self._up is None:
            raise ClosedError(f"the monitor of {self.ref.path} was cancelled")
        return self._up

    def cancel(self) -> None:
        """Stop watching (Erlang's ``demonitor``); idempotent, never blocks.

        Does nothing if the monitor already fired, except that a
        ``reconnect=True`` monitor stops waiting for the actor to come back.
        For a remote ref the far side is told in the background by the
        connection's own task.
        """
        if not self.active:
            if self._up is None and not self._cancelled:
                self._cancelled = True
                self._up_event.set()
            return
        self._cancelled = True
        hook, self._on_cancel = self._on_cancel, None
        self._event.set()
        if hook is not None:
            hook(self)
