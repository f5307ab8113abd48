"""Actor timers on MockClock: exact fire times, cancellation on stop,
restart and cancel(), and typed errors for bad delays."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

from headwater import InvalidArgument
from headwater.actors import Actor, Timer, open_actor_system
from headwater.supervision import ChildSpec

SEEN: list[tuple[float, Any]] = []


class Ticker(Actor):
    """Arms timers on request and records when their messages arrive."""

    def __init__(self) -> None:
        self.timers: dict[str, Timer] = {}

    async def handle(self, message: Any) -> Any:
        if isinstance(message, tuple) and message[0] == "after":
            self.timers[message[2]] = self.context.send_after(message[1], message[2])
            return None
        if isinstance(message, tuple) and message[0] == "every":
            self.timers[message[2]] = self.context.send_interval(message[1], message[2])
            return None
        if isinstance(message, tuple) and message[0] == "cancel":
            self.timers[message[1]].cancel()
            return None
        if message == "boom":
            raise ValueError("boom")
        if isinstance(message, tuple) and message[0] == "bad":
            self.context.send_after(message[1], "never")
        SEEN.append((trio.current_time(), message))
        return None


async def test_send_after_and_send_interval_fire_at_exact_times(
    autojump_clock: trio.abc.Clock,
) -> None:
    """send_after fires once at start + delay; send_interval at start + n *
    period; cancel() stops an interval."""
    SEEN.clear()
    async with open_actor_system(children=(ChildSpec("t", Ticker),)) as system:
        ref = system.lookup("/t")
        start = trio.current_time()
        await ref.ask(("after", 1.5, "once"))
        await ref.ask(("every", 0.4, "tick"))
        await trio.sleep(1.3)
        await ref.ask(("cancel", "tick"))
        await trio.sleep(5)
        assert [(0.4, "tick"), (0.8, "tick"), (1.2, "tick"), (1.5, "once")] == [
            (round(t - start, 6), m) for t, m in SEEN
        ]


async def test_timers_are_cancelled_when_the_actor_restarts_or_stops(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A crash (restart) cancels the incarnation's timers, and so does a
    graceful stop: nothing arrives afterwards."""
    SEEN.clear()
    async with open_actor_system(children=(ChildSpec("t", Ticker),)) as system:
        ref = system.lookup("/t")
        await ref.ask(("every", 1.0, "tick"))
        await ref.ask(("after", 10.0, "late"))
        await trio.sleep(2.5)
        with pytest.raises(Exception, match="boom"):
            await ref.ask("boom")
        await trio.sleep(20)
        assert ["tick", "tick"] == [m for _, m in SEEN]
        await ref.ask(("every", 1.0, "again"))
        await system.stop_child("/t")
        await trio.sleep(20)
        assert ["tick", "tick"] == [m for _, m in SEEN]


@pytest.mark.parametrize("delay", [-1, -0.001, math.nan, math.inf, "1", True, None])
async def test_bad_delays_are_invalid_arguments(
    autojump_clock: trio.abc.Clock, delay: object
) -> None:
    """A negative, non-finite or non-number delay raises InvalidArgument in
    the handler (a usage error: the actor keeps running); a zero period too."""
    async with open_actor_system(children=(ChildSpec("t", Ticker),)) as system:
        ref = system.lookup("/t")
        with pytest.raises(InvalidArgument, match="delay="):
            await ref.ask(("bad", delay))
        with pytest.raises(InvalidArgument, match="period=0"):
            await ref.ask(("every", 0, "x"))
        assert 0 == system.tree().children[0].restarts
