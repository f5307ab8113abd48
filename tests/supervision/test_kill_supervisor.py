"""Regressions found by the simulation: killing a supervisor (not a leaf actor)."""

from __future__ import annotations

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
