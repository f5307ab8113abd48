"""The actor trace hook: off by default, records every handled message."""

from __future__ import annotations

from typing import Any

import trio

from headwater import InvalidArgument
from headwater.actors import Actor, open_actor_system, tracing
from headwater.supervision import ChildSpec


class Picky(Actor):
    """Echoes ints, refuses the rest."""

    async def handle(self, message: Any) -> Any:
        if not isinstance(message, int):
            raise InvalidArgument(f"{message!r} is not an int")
        return message


async def test_trace_records_messages_outcomes_and_exits(autojump_clock: trio.abc.Clock) -> None:
    """Inside ``tracing`` each handled message is (time, path, type, outcome);
    outside it nothing is recorded."""
    seen: list[tuple[float, str, str, str]] = []
    with tracing(lambda *item: seen.append(item)):
        async with open_actor_system(children=(ChildSpec("p", Picky),)) as system:
            ref = system.lookup("/p")
            await trio.sleep(1.5)
            assert 7 == await ref.ask(7)
            try:
                await ref.ask("x")
            except InvalidArgument:
                pass
            await ref.tell(3)
            await system.kill("/p", "test")
    assert (1.5, "/p", "int", "int") == seen[0]
    assert (1.5, "/p", "str", "raised:InvalidArgument") == seen[1]
    assert (1.5, "/p", "int", "told") == seen[2]
    assert (1.5, "/p", "<exit>", "ActorKilled") == seen[3]
    before = len(seen)
    async with open_actor_system(children=(ChildSpec("p", Picky),)) as system:
        assert 1 == await system.lookup("/p").ask(1)
    assert before == len(seen)
