"""Timers of an actor incarnation: ``ctx.send_after`` and ``ctx.send_interval``.

Theory of operation
-------------------
A timer is one task in the incarnation's nursery that sleeps until its fire
time (on Trio's clock, so ``MockClock`` drives it exactly) and then puts the
message in the actor's own mailbox with ``await tell()``. Because the task
lives in the incarnation's nursery, a stop or a restart cancels every timer
of that incarnation, as Erlang cancels a dead process's timers and Akka an
actor's timers on restart. An interval timer fires at ``start + n * period``
(a fixed rate): a delivery delayed by a full mailbox does not shift the
later ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from headwater._errors import ActorStopped, InvalidArgument

if TYPE_CHECKING:
    from headwater.actors._actor import ActorRef

__all__ = ["Timer", "check_delay"]


def check_delay(name: str, value: object, *, zero_ok: bool) -> float:
    """``value`` as seconds, or :class:`InvalidArgument` naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or math.isinf(value)
        or value < 0
        or (value == 0 and not zero_ok)
    ):
        bound = ">= 0" if zero_ok else "> 0"
        raise InvalidArgument(f"{name}={value!r} is invalid; give finite seconds {bound}")
    return float(value)


class Timer:
    """A pending ``send_after`` or ``send_interval`` of an actor; made by
    :class:`~headwater.actors.ActorContext`, not by users.

    :attr:`fired` counts deliveries; :meth:`cancel` stops it (idempotent).
    """

    __slots__ = ("_scope", "delay", "fired", "path", "period")

    def __init__(self, path: str, delay: float, period: float | None) -> None:
        self.path = path
        self.delay = delay
        self.period = period
        self.fired = 0
        self._scope = trio.CancelScope()

    def __repr__(self) -> str:
        kind = f"every {self.period}s" if self.period is not None else f"after {self.delay}s"
        state = "cancelled" if self._scope.cancel_called else "active"
        return f"<Timer {self.path} {kind} fired={self.fired} {state}>"

    @property
    def active(self) -> bool:
        """True until cancelled or (for ``send_after``) fired."""
        return not self._scope.cancel_called and not (self.period is None and self.fired)

    def cancel(self) -> None:
        """Stop the timer; a message not yet in the mailbox is not sent."""
        self._scope.cancel()

    async def _run(self, ref: ActorRef, message: Any) -> None:
        with self._scope:
            due = trio.current_time() + self.delay
            while True:
                await trio.sleep_until(due)
                try:
                    await ref.tell(message)
                except ActorStopped:
                    return  # the actor is stopping: nobody to tell
                self.fired += 1
                if self.period is None:
                    return
                due += self.period
