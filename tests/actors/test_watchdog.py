"""The blocked-loop watchdog under MockClock (polled by hand), and
BlockingActor: handlers in worker threads keep the loop free."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio
import trio.testing

from headwater import ConfigError
from headwater.actors import (
    Actor,
    BlockingActor,
    LoopWatchdog,
    WatchdogStatistics,
    open_actor_system,
)
from headwater.supervision import ChildSpec
from headwater.testing import capture_logs

CLOCK: list[trio.testing.MockClock] = []


class Blocker(Actor):
    """Holds the loop for 0.5 virtual seconds, as a time.sleep(0.5) would."""

    async def handle(self, message: Any) -> Any:
        dog = self.context.system.watchdog
        assert dog is not None
        dog.poll()  # the watchdog's thread posts a probe ...
        CLOCK[0].jump(message)  # ... the handler holds the loop ...
        dog.poll()  # ... and the thread, seeing the probe wait, samples the stack
        return None


class Polite(Actor):
    """Awaits instead of blocking."""

    async def handle(self, message: Any) -> Any:
        dog = self.context.system.watchdog
        assert dog is not None
        dog.poll()
        await trio.sleep(message)
        dog.poll()
        return None


async def test_watchdog_names_the_actor_that_held_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler that holds the loop 0.5 s logs one loop_blocked warning with
    the exact duration, its actor path and its stack; a handler that awaits
    for as long logs nothing; the counter says 1."""
    CLOCK[:] = [autojump_clock]
    dog = LoopWatchdog(0.1, clock=autojump_clock.current_time, thread=False)
    children = (ChildSpec("blocker", Blocker), ChildSpec("polite", Polite))
    with capture_logs() as logs:
        async with open_actor_system(children=children, watchdog=dog) as system:
            await system.lookup("/polite").ask(0.5)
            await trio.testing.wait_all_tasks_blocked()
            await system.lookup("/blocker").ask(0.5)
            await trio.testing.wait_all_tasks_blocked()
            dog.poll()  # a probe on a free loop is answered at once
            await trio.testing.wait_all_tasks_blocked()
    blocked = [e for e in logs if e["event"] == "loop_blocked"]
    assert 1 == len(blocked), blocked
    entry = blocked[0]
    assert ("warning", 0.5, "/blocker", 0.1) == (
        entry["log_level"],
        entry["duration"],
        entry["actor"],
        entry["threshold"],
    )
    assert entry["stack"].endswith(
        "in handle\n    dog.poll()  # ... and the thread, seeing the probe wait, samples the stack"
    )
    assert WatchdogStatistics(threshold=0.1, blocked=1, longest=0.5) == dog.statistics()


async def test_watchdog_is_configurable_and_can_be_switched_off(
    autojump_clock: trio.abc.Clock,
) -> None:
    """By default it is off under MockClock (probes would perturb the
    deterministic schedule); a float sets a threshold; None switches it off;
    a bad threshold is a ConfigError; a watchdog serves one system only."""
    async with open_actor_system() as system:
        assert system.watchdog is None
    async with open_actor_system(watchdog=0.25) as system:
        assert system.watchdog is not None
        assert 0.25 == system.watchdog.threshold
    async with open_actor_system(watchdog=None) as system:
        assert system.watchdog is None
    for bad in (0, -1.0, float("inf"), "fast", True):
        with pytest.raises(ConfigError, match="watchdog"):
            async with open_actor_system(watchdog=bad):  # type: ignore[arg-type]
                pass  # pragma: no cover
    dog = LoopWatchdog(thread=False)
    async with open_actor_system(watchdog=dog):
        with pytest.raises(ConfigError, match="one per system"):
            async with open_actor_system(watchdog=dog):
                pass  # pragma: no cover


class Sleeper(BlockingActor):
    """Blocks its worker thread (as a blocking library would)."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        self.entered = entered
        self.release = release

    def handle_blocking(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom in a thread")
        self.entered.set()
        assert self.release.wait(10)
        return ("done", message, threading.current_thread() is not threading.main_thread())


async def test_blocking_actor_runs_in_a_thread_and_the_watchdog_stays_quiet() -> None:
    """While a BlockingActor's handler blocks its thread, the loop stays free:
    another actor answers, the watchdog's probes are answered (no
    loop_blocked); errors from the thread crash the actor as usual. Real
    clock: the thread really blocks (bounded by fail_after)."""
    started, release = threading.Event(), threading.Event()
    children = (
        ChildSpec("sleeper", lambda: Sleeper(started, release)),
        ChildSpec("polite", Polite),
    )
    dog = LoopWatchdog(0.05, thread=False)
    with capture_logs() as logs, trio.fail_after(10):
        async with open_actor_system(children=children, watchdog=dog) as system:
            async with trio.open_nursery() as nursery:

                async def ask() -> None:
                    assert ("done", 1, True) == await system.lookup("/sleeper").ask(1)

                nursery.start_soon(ask)
                await trio.to_thread.run_sync(started.wait, abandon_on_cancel=True)
                for _ in range(5):  # the loop is free while the thread blocks
                    dog.poll()
                    await trio.sleep(0.03)
                    dog.poll()
                time.sleep(0)  # noqa: ASYNC251 -- a yield to the thread, not a block
                release.set()
            with pytest.raises(Exception, match="boom in a thread"):
                await system.lookup("/sleeper").ask("boom")
    assert [] == [e for e in logs if e["event"] == "loop_blocked"]
    assert 0 == dog.statistics().blocked
