"""Local monitors: what fires them, with which reason, and what does not."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from headwater import ActorNotFound, ClosedError, SupervisorGaveUp
from headwater.actors import Actor, Down, open_actor_system
from headwater.supervision import ChildSpec


class Crashy(Actor):
    """Raises on "boom", else echoes."""

    async def handle(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        return message


async def test_system_monitor_by_path_and_unknown_path(autojump_clock: trio.abc.Clock) -> None:
    """system.monitor takes a path or a ref; an unknown path raises ActorNotFound."""
    async with open_actor_system(children=(ChildSpec("a", Crashy),)) as system:
        by_path = await system.monitor("a")
        by_ref = await system.monitor(system.lookup("/a"))
        with pytest.raises(ActorNotFound, match="/nope"):
            await system.monitor("/nope")
        await system.stop_child("/a")
        assert ("stopped", "/a") == ((await by_path.wait()).reason, by_path.ref.path)
        assert "stopped" == (await by_ref.wait()).reason


async def test_temporary_child_crash_fires_with_the_failure(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A temporary child that crashes is not restarted: its monitor fires
    'stopped' with the failure as detail; a permanent one's does not fire."""
    children = (
        ChildSpec("temp", Crashy, restart="temporary"),
        ChildSpec("perm", Crashy),
    )
    async with open_actor_system(children=children) as system:
        temp = await system.monitor("temp")
        perm = await system.monitor("perm")
        for path in ("/temp", "/perm"):
            with pytest.raises(Exception, match="boom"):
                await system.lookup(path).ask("boom")
        down = await temp.wait()
        assert ("stopped", "ValueError: boom") == (down.reason, down.detail)
        await trio.sleep(1)
        assert perm.down is None
        assert perm.active


async def test_monitors_fire_when_the_system_closes_or_gives_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Closing the system fires every monitor; so does a root that gives up."""
    async with open_actor_system(children=(ChildSpec("a", Crashy),)) as system:
        monitor = await system.monitor("a")
    assert isinstance(monitor.down, Down)
    with pytest.raises(SupervisorGaveUp):
        async with open_actor_system(children=(ChildSpec("a", Crashy),), max_restarts=0) as s:
            gave_up = await s.monitor("a")
            await s.lookup("a").tell("boom")
            await trio.sleep(1)
    assert gave_up.down is not None
    assert "boom" in gave_up.down.detail


async def test_cancel_and_wait(autojump_clock: trio.abc.Clock) -> None:
    """A cancelled monitor's wait raises ClosedError, also for a waiter
    already blocked; cancel after firing keeps the Down."""
    async with open_actor_system(children=(ChildSpec("a", Crashy),)) as system:
        monitor = await system.monitor("a")
        raised: list[BaseException] = []

        async def waiter() -> None:
            try:
                await monitor.wait()
            except ClosedError as exc:
                raised.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(1)
            monitor.cancel()
        assert 1 == len(raised)
        fired = await system.monitor("a")
        await system.stop_child("a")
        fired.cancel()
        assert "stopped" == (await fired.wait()).reason
