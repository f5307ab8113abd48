"""Actor messaging: tell between two actors vs a bare Trio memory channel, and ask.

Figures (one run, same process, same buffer size):

* ``tell`` messages/s from a sender task to an actor that counts them;
* the same through a bare ``trio.open_memory_channel`` between two tasks;
* ``ratio_tell_vs_channel`` (goal >= 0.5);
* ``ask`` round trips/s (one caller, one actor).

Runs interleave (channel, tell, channel, tell, ...) and report medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import trio

from headwater.actors import Actor, open_actor_system
from headwater.supervision import DEFAULT_MAILBOX_SIZE, ChildSpec


class _Sink(Actor):
    def __init__(self, n: int, done: trio.Event) -> None:
        self.n = n
        self.seen = 0
        self.done = done

    async def handle(self, message: Any) -> Any:
        self.seen += 1
        if self.seen == self.n:
            self.done.set()
        return message


async def _bare_channel(n: int) -> float:
    send, recv = trio.open_memory_channel[int](DEFAULT_MAILBOX_SIZE)

    async def consume() -> None:
        seen = 0
        async for _ in recv:
            seen += 1
            if seen == n:
                return

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        for i in range(n):
            await send.send(i)
    return n / (time.perf_counter() - start)


async def _tell(n: int) -> float:
    done = trio.Event()
    async with open_actor_system() as system:
        ref = await system.start_child(ChildSpec("sink", lambda: _Sink(n, done)))
        start = time.perf_counter()
        for i in range(n):
            await ref.tell(i)
        await done.wait()
        return n / (time.perf_counter() - start)


async def _ask(n: int) -> float:
    async with open_actor_system() as system:
        ref = await system.start_child(ChildSpec("echo", lambda: _Sink(n, trio.Event())))
        start = time.perf_counter()
        for i in range(n):
            await ref.ask(i)
        return n / (time.perf_counter() - start)


def _figure(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"bench": "actors", "case": case, "metric": metric, "value": value, "unit": unit}


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the figures; ``quick`` uses fewer messages and rounds."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n = 50_000 if quick else 300_000
    rounds = 3 if quick else 5
    channel: list[float] = []
    tell: list[float] = []
    ask: list[float] = []
    for _ in range(rounds):
        channel.append(trio.run(_bare_channel, n))
        tell.append(trio.run(_tell, n))
        ask.append(trio.run(_ask, n // 5))
    ratios = [t / c for t, c in zip(tell, channel, strict=True)]
    yield _figure("tell", "messages_per_s", statistics.median(tell), "msg/s")
    yield _figure("bare_channel", "messages_per_s", statistics.median(channel), "msg/s")
    yield _figure("tell_vs_channel", "ratio_tell_vs_channel", statistics.median(ratios), "x")
    yield _figure("ask", "round_trips_per_s", statistics.median(ask), "req/s")
