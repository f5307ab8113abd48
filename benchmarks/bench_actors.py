"""Actor messaging: tell between two actors vs a bare Trio memory channel, and ask.

Figures (one run, same process, same buffer size):

* ``tell`` messages/s from a sender task to an actor that counts them;
* the same through a bare ``trio.open_memory_channel`` between two tasks;
* ``ratio_tell_vs_channel`` (goal >= 0.5);
* ``ask`` round trips/s (one caller, one actor);
* ``tell`` and ``ask`` with the blocked-loop watchdog off, and
  ``ratio_watchdog_on_vs_off`` for each (goal >= 0.95; the other figures run
  with the watchdog on, the default);
* ``ask`` round trips/s to a :class:`~headwater.actors.BlockingActor` (its
  handler in a worker thread) vs the same to a plain actor, and the
  difference as ``blocking_overhead_per_message`` in microseconds.

Runs interleave (channel, tell, tell without watchdog, ...) and report medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import trio

from headwater.actors import Actor, BlockingActor, open_actor_system
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


class _BlockingEcho(BlockingActor):
    def handle_blocking(self, message: Any) -> Any:
        return message


async def _tell(n: int, watchdog: float | None = 0.1) -> tuple[float, float]:
    """(messages per wall second, per CPU second of the whole process)."""
    done = trio.Event()
    async with open_actor_system(watchdog=watchdog) as system:
        ref = await system.start_child(ChildSpec("sink", lambda: _Sink(n, done)))
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            await ref.tell(i)
        await done.wait()
        return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


async def _ask(n: int, watchdog: float | None = 0.1, blocking: bool = False) -> tuple[float, float]:
    """(round trips per wall second, per CPU second of the whole process)."""
    async with open_actor_system(watchdog=watchdog) as system:
        factory: Any = _BlockingEcho if blocking else (lambda: _Sink(n, trio.Event()))
        ref = await system.start_child(ChildSpec("echo", factory))
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            await ref.ask(i)
        return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def _figure(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"bench": "actors", "case": case, "metric": metric, "value": value, "unit": unit}


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the figures; ``quick`` uses fewer messages and rounds."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n = 50_000 if quick else 300_000
    rounds = 5 if quick else 9
    channel: list[float] = []
    tell: list[tuple[float, float]] = []
    tell_off: list[tuple[float, float]] = []
    ask: list[tuple[float, float]] = []
    ask_off: list[tuple[float, float]] = []
    blocking: list[tuple[float, float]] = []
    plain: list[tuple[float, float]] = []
    for i in range(rounds):
        channel.append(trio.run(_bare_channel, n))
        # Alternate which goes first, so drift in the machine's load (other
        # processes share its cores) does not favour one side.
        for watchdog in (0.1, None) if i % 2 == 0 else (None, 0.1):
            (tell if watchdog else tell_off).append(trio.run(_tell, n, watchdog))
            (ask if watchdog else ask_off).append(trio.run(_ask, n // 5, watchdog))
        plain.append(trio.run(_ask, n // 10, 0.1, False))
        blocking.append(trio.run(_ask, n // 10, 0.1, True))
    wall = {
        k: [w for w, _ in v]
        for k, v in {
            "tell": tell,
            "tell_off": tell_off,
            "ask": ask,
            "ask_off": ask_off,
            "blocking": blocking,
            "plain": plain,
        }.items()
    }
    ratios = [t / c for t, c in zip(wall["tell"], channel, strict=True)]
    yield _figure("tell", "messages_per_s", statistics.median(wall["tell"]), "msg/s")
    yield _figure("bare_channel", "messages_per_s", statistics.median(channel), "msg/s")
    yield _figure("tell_vs_channel", "ratio_tell_vs_channel", statistics.median(ratios), "x")
    yield _figure("ask", "round_trips_per_s", statistics.median(wall["ask"]), "req/s")
    yield _figure(
        "tell/watchdog_off", "messages_per_s", statistics.median(wall["tell_off"]), "msg/s"
    )
    yield _figure(
        "ask/watchdog_off", "round_trips_per_s", statistics.median(wall["ask_off"]), "req/s"
    )
    # The watchdog's price is CPU (a thread waking every threshold / 2 and a
    # probe on the loop); on a shared, loaded machine wall-clock ratios swing
    # 0.6-2.0 from run to run, so the headline ratio divides CPU-time rates
    # (process_time: both threads) and the wall-clock one is reported beside.
    for case, on, off in (("tell", tell, tell_off), ("ask", ask, ask_off)):
        yield _figure(
            case,
            "ratio_watchdog_on_vs_off",
            statistics.median(a[1] / b[1] for a, b in zip(on, off, strict=True)),
            "x",
        )
        yield _figure(
            case,
            "ratio_watchdog_on_vs_off_wall",
            statistics.median(a[0] / b[0] for a, b in zip(on, off, strict=True)),
            "x",
        )
    yield _figure(
        "ask/blocking_actor", "round_trips_per_s", statistics.median(wall["blocking"]), "req/s"
    )
    yield _figure("ask/plain_actor", "round_trips_per_s", statistics.median(wall["plain"]), "req/s")
    overhead = statistics.median(
        1e6 / b - 1e6 / p for b, p in zip(wall["blocking"], wall["plain"], strict=True)
    )
    yield _figure("blocking_actor", "blocking_overhead_per_message", overhead, "us")
