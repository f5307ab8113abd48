"""Regressions found by the simulation: killing a supervisor (not a leaf actor)."""

from __future__ import annotations

import contextlib
from typing import Any

import trio
import trio.testing

from headwater.actors import Actor, open_actor_system
from headwater.supervision import ChildSpec, SupervisorSpec


class Echo(Actor):
    """Answers every message with itself."""

    async def handle(self, message: Any) -> Any:
        return message


async def test_killed_supervisor_restarts_its_children(autojump_clock: trio.abc.Clock) -> None:
    """Killing a supervisor ends its children by cancellation; their cells must
    wait for the next incarnation (not stay "running" on a dead mailbox, which
    made senders spin forever and the restarted supervisor refuse to adopt them
    with IllegalTransitionError). Found by simulation seed 6."""
    tree = SupervisorSpec("sup", [ChildSpec("echo", Echo)], max_restarts=5, within=10.0)
    async with open_actor_system(children=(tree,), max_restarts=5, within=10.0) as system:
        ref = system.lookup("/sup/echo")
        for round_no in range(3):
            await system.kill("/sup", "test")
            cell = ref._cell  # type: ignore[attr-defined]
            assert cell.state != "running" or not cell.mailbox._closed, round_no
            assert ("hi", round_no) == await ref.ask(("hi", round_no), timeout=5)
        nodes = {n.path: n for n in system.tree().walk()}
        assert "running" == nodes["/sup/echo"].state
        assert 4 == nodes["/sup"].incarnation


class FailsToClose(Actor):
    """Holds a resource whose cleanup fails (a journal whose last fsync fails)."""

    async def started(self) -> None:
        async def hold() -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise OSError(5, "closing failed")

        self.context.nursery.start_soon(hold)

    async def handle(self, message: Any) -> Any:
        return message


async def test_cleanup_error_during_a_kill_is_the_childs_crash(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An error raised while a kill unwinds surfaces at the cancel scope's
    exit; it is the killed child's crash (restart it), never an error that
    tears down the whole tree (simulation seed 2115: a group journal whose
    close fsync failed took the broker down)."""
    tree = SupervisorSpec("sup", [ChildSpec("a", FailsToClose)], max_restarts=10, within=10.0)
    async with open_actor_system(children=(tree,), max_restarts=10, within=10.0) as system:
        for path in ("/sup/a", "/sup", "/sup/a"):
            await system.kill(path, "test")
            assert 1 == await system.lookup("/sup/a").ask(1, timeout=5)
        nodes = {n.path: n for n in system.tree().walk()}
        assert "running" == nodes["/sup/a"].state


class SlowToStop(Actor):
    """Its graceful stop waits (a handler finishing a long request, say)."""

    async def handle(self, message: Any) -> Any:
        return message

    async def stopping(self) -> None:
        await trio.sleep(5.0)


class Crashes(Actor):
    """Crashes on "boom"."""

    async def handle(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError("boom")
        return message


async def test_a_kill_during_a_childs_graceful_stop(autojump_clock: trio.abc.Clock) -> None:
    """A one_for_all supervisor stops its children gracefully after one
    crashed; killed while a child is still stopping, it must take that
    child's cell over when it restarts (the cell was left "stopping" and the
    restart failed with IllegalTransitionError until the supervisor gave
    up). Found by simulation soak seed 311."""
    tree = SupervisorSpec(
        "sup",
        [ChildSpec("a", Crashes), ChildSpec("slow", SlowToStop)],
        strategy="one_for_all",
        max_restarts=5,
        within=10.0,
    )
    async with open_actor_system(children=(tree,), max_restarts=5, within=10.0) as system:
        with contextlib.suppress(Exception):
            await system.lookup("/sup/a").ask("boom", timeout=5)
        await trio.sleep(1.0)  # /sup/slow is stopping now
        nodes = {n.path: n for n in system.tree().walk()}
        assert "stopping" == nodes["/sup/slow"].state
        await system.kill("/sup", "test")
        assert "hi" == await system.lookup("/sup/slow").ask("hi", timeout=10)
        nodes = {n.path: n for n in system.tree().walk()}
        assert ("running", "running") == (nodes["/sup/slow"].state, nodes["/sup"].state)
