"""Actors and refs: tell, ask, errors, timeouts, backpressure, restarts."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from headwater import (
    ActorFailed,
    ActorNotFound,
    ActorRestarted,
    ActorStopped,
    HeadwaterTimeoutError,
    InvalidArgument,
    MailboxFull,
    StorageError,
    UsageError,
)
from headwater.actors import Actor, open_actor_system
from headwater.supervision import ChildSpec


class Echo(Actor):
    """Replies to asks; raises on request; can be slowed down or gated."""

    def __init__(self, seen: list[Any] | None = None, gate: trio.Event | None = None) -> None:
        self.seen = seen if seen is not None else []
        self.gate = gate

    async def handle(self, message: Any) -> Any:
        if self.gate is not None:
            await self.gate.wait()
        self.seen.append(message)
        if message == "usage":
            raise InvalidArgument("bad argument 'usage'")
        if message == "disk":
            raise StorageError("disk broke")
        if message == "boom":
            raise KeyError("k")
        if message == "slow":
            await trio.sleep(10)
        return message


async def test_ask_returns_reply_and_tell_delivers_in_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    """tell delivers in order; ask returns the handler's value."""
    seen: list[Any] = []
    async with open_actor_system() as system:
        ref = await system.start_child(ChildSpec("e", lambda: Echo(seen)))
        for i in range(5):
            await ref.tell(i)
        assert "last" == await ref.ask("last")
        assert [0, 1, 2, 3, 4, "last"] == seen
        assert "/e" == ref.path
        assert system.lookup("e") is ref


async def test_errors_cross_ask_by_type(autojump_clock: trio.abc.Clock) -> None:
    """HeadwaterErrors arrive as themselves; others as ActorFailed with type and
    message; a UsageError keeps the actor alive, anything else restarts it."""
    async with open_actor_system() as system:
        ref = await system.start_child(ChildSpec("e", Echo))
        with pytest.raises(InvalidArgument, match="bad argument"):
            await ref.ask("usage")
        assert 1 == system.tree().children[0].incarnation
        with pytest.raises(StorageError):
            await ref.ask("disk")
        await trio.testing.wait_all_tasks_blocked()
        assert 2 == system.tree().children[0].incarnation
        with pytest.raises(ActorFailed) as info:
            await ref.ask("boom")
        assert ("KeyError", "'k'") == (info.value.error_type, info.value.error_message)
        await trio.testing.wait_all_tasks_blocked()
        assert 3 == system.tree().children[0].incarnation
        assert "ok" == await ref.ask("ok")


async def test_ask_timeout(autojump_clock: trio.abc.Clock) -> None:
    """An ask with no reply in time raises HeadwaterTimeoutError at exactly the timeout."""
    async with open_actor_system() as system:
        ref = await system.start_child(ChildSpec("e", Echo))
        with pytest.raises(HeadwaterTimeoutError, match="/e"):
            await ref.ask("slow", timeout=1.5)
        assert 1.5 == trio.current_time()
        assert isinstance(HeadwaterTimeoutError(), TimeoutError)
        with pytest.raises(InvalidArgument):
            await ref.ask("x", timeout=-1)


async def test_backpressure_on_full_mailbox(autojump_clock: trio.abc.Clock) -> None:
    """With the handler blocked, tell fills the mailbox then blocks; tell_nowait raises."""
    gate = trio.Event()
    async with open_actor_system() as system:
        ref = await system.start_child(ChildSpec("e", lambda: Echo(gate=gate), mailbox_size=2))
        await ref.tell(0)  # taken by the handler, which waits on the gate
        await trio.testing.wait_all_tasks_blocked()
        await ref.tell(1)
        ref.tell_nowait(2)
        with pytest.raises(MailboxFull):
            ref.tell_nowait(3)
        with pytest.raises(HeadwaterTimeoutError):
            await ref.tell(3, timeout=1.0)
        delivered = False

        async def sender() -> None:
            nonlocal delivered
            await ref.tell(3)
            delivered = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert not delivered
            gate.set()
        assert delivered


async def test_messages_in_old_mailbox_get_actor_restarted(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Asks queued behind a crash are dropped with ActorRestarted; the actor then serves again."""
    gate = trio.Event()
    results: list[object] = []
    async with open_actor_system() as system:
        ref = await system.start_child(ChildSpec("e", lambda: Echo(gate=gate)))

        async def ask(message: str) -> None:
            try:
                results.append(await ref.ask(message))
            except Exception as exc:
                results.append(type(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "boom")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, "queued")
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert [ActorFailed, ActorRestarted] == results
        gate.set()
        assert "again" == await ref.ask("again")


async def test_stopped_actor_refuses_at_once(autojump_clock: trio.abc.Clock) -> None:
    """A ref to a stopped actor raises ActorStopped immediately; lookups fail."""
    async with open_actor_system() as system:
        ref = await system.start_child(ChildSpec("e", Echo))
        await system.stop_child("/e")
        with pytest.raises(ActorStopped):
            await ref.ask("x")
        with pytest.raises(ActorStopped):
            ref.tell_nowait("x")
        with pytest.raises(ActorNotFound):
            system.lookup("/e")
        assert 0.0 == trio.current_time()
    with pytest.raises(ActorStopped):
        await ref.tell("after close")


async def test_task_children_have_no_mailbox(autojump_clock: trio.abc.Clock) -> None:
    """Telling a task child (an async function) is a usage error."""

    async def loop() -> None:
        await trio.sleep_forever()

    async with open_actor_system() as system:
        ref = await system.start_child(ChildSpec("t", loop))
        with pytest.raises(UsageError, match="task"):
            await ref.tell("x")
