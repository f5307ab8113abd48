"""Introspection: which_children / count_children, mailbox figures and
inspect() in the tree, and the errors for bad paths."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from headwater import ActorNotFound, ActorStopped, InvalidArgument, UsageError
from headwater.actors import Actor, open_actor_system
from headwater.supervision import ChildCount, ChildSpec, SupervisorSpec


class Counter(Actor):
    """Counts messages; "hold" waits for the gate; "boom" crashes."""

    gate: trio.Event

    def __init__(self) -> None:
        self.count = 0
        self.label = "x" * 500
        self._secret = "hidden"

    async def handle(self, message: Any) -> Any:
        if message == "hold":
            await Counter.gate.wait()
        if message == "boom":
            raise ValueError("boom")
        self.count += 1
        return self.count


class Custom(Actor):
    """Shows its own view."""

    def inspect(self) -> Any:
        return {"custom": True}


async def _idle() -> None:
    await trio.sleep_forever()


def _children() -> tuple[ChildSpec | SupervisorSpec, ...]:
    return (
        ChildSpec("counter", Counter, mailbox_size=8),
        SupervisorSpec("workers", children=(ChildSpec("custom", Custom), ChildSpec("t", _idle))),
    )


async def test_which_children_and_count_children(autojump_clock: trio.abc.Clock) -> None:
    """OTP's which_children / count_children for the root and a sub-supervisor."""
    async with open_actor_system(children=_children()) as system:
        entries = system.which_children("/")
        assert [("counter", "/counter", "actor", "running", "permanent")] == [
            (e.name, e.path, e.kind, e.state, e.restart) for e in entries[:1]
        ]
        assert ["counter", "workers"] == [e.name for e in entries]
        assert entries[0].ref is system.lookup("/counter")
        assert ChildCount(specs=2, active=2, supervisors=1, workers=1) == system.count_children()
        assert ChildCount(specs=2, active=2, supervisors=0, workers=2) == system.count_children(
            "/workers"
        )
        assert ["/workers/custom", "/workers/t"] == [
            e.path for e in system.which_children("/workers")
        ]
        with pytest.raises(ActorNotFound, match="/nope"):
            system.which_children("/nope")
        with pytest.raises(InvalidArgument, match="not a supervisor"):
            system.count_children("/counter")


async def test_tree_carries_mailbox_depth_high_water_handled_and_restarts(
    autojump_clock: trio.abc.Clock,
) -> None:
    """While the actor is held, queued messages show as depth; the high-water
    mark and handled count survive a restart, and the restart and last failure
    show too; render() prints them."""
    Counter.gate = trio.Event()
    async with open_actor_system(children=_children()) as system:
        ref = system.lookup("/counter")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.tell, "hold")
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(5):
                await ref.tell("tick")
            node = system.tree().children[0]
            assert (5, 5, 8, 1) == (
                node.mailbox_depth,
                node.mailbox_high_water,
                node.mailbox_size,
                node.handled,
            )
            Counter.gate.set()
        # "hold" counted too; the ask queues behind the five ticks (6 waiting)
        assert 7 == await ref.ask("tick")
        with pytest.raises(Exception, match="boom"):
            await ref.ask("boom")
        await trio.testing.wait_all_tasks_blocked()
        node = system.tree().children[0]
        assert (0, 6, 8, 8, 1, "ValueError: boom") == (
            node.mailbox_depth,
            node.mailbox_high_water,
            node.mailbox_size,
            node.handled,
            node.restarts,
            node.last_failure,
        )
        assert node == type(node).from_dict(node.as_dict())
        assert "counter [actor] running mailbox=0/8 hw=6 handled=8 restarts=1" in (
            system.tree().render()
        )
        assert "counter [actor] running restarts=1" in system.tree().render(stats=False)


async def test_inspect_shows_public_attributes_or_the_actors_own_view(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The default inspect() lists public attributes as short reprs (no
    context, no private names); an override is returned as is; tasks,
    unknown paths and stopped actors raise typed errors."""
    Counter.gate = trio.Event()
    async with open_actor_system(children=_children()) as system:
        ref = system.lookup("/counter")
        await ref.tell("tick")
        shown = await ref.inspect()
        assert ["count", "label"] == sorted(shown)
        assert "1" == shown["count"]
        assert 200 >= len(shown["label"])
        assert shown["label"].startswith("'xxx")
        assert {"custom": True} == await system.inspect("/workers/custom")
        with pytest.raises(UsageError, match="task"):
            await system.inspect("/workers/t")
        with pytest.raises(ActorNotFound, match="/ghost"):
            await system.inspect("/ghost")
        await system.stop_child("/counter")
        with pytest.raises(ActorStopped):
            await ref.inspect()
