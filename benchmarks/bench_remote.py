"""Remote actors: tell and ask rates, local refs vs remote refs over loopback TCP.

Figures (one process: the serving system and the client share one Trio loop,
so the remote figures pay for both ends on one core):

* ``tell`` and ``ask`` messages/s through a :class:`LocalActorRef`;
* the same through a :class:`RemoteActorRef` over 127.0.0.1, one caller
  awaiting each call (``remote_*_sequential``) and 32 concurrent callers
  sharing the connection (``remote_*_pipelined_32``: pipelining);
* the pipelined cases again with the serving system in a **second process**
  (``*_2proc``: client and server on their own cores, the realistic setup);
* ``ratio_remote_vs_local`` for each.

A remote ``tell`` is a request answered once the message is in the mailbox,
so its rate is a round-trip rate. Runs interleave; medians are reported.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import attrs
import trio

from headwater.actors import Actor, ActorRef, open_actor_client, open_actor_system, serve_actors
from headwater.supervision import ChildSpec
from headwater.transport import MessageRegistry

REGISTRY = MessageRegistry("bench-remote")


@REGISTRY.message("n")
@attrs.frozen
class N:
    """One numbered message."""

    i: int


class _Counter(Actor):
    def __init__(self) -> None:
        self.seen = 0

    async def handle(self, message: Any) -> Any:
        self.seen += 1
        return self.seen


Use = Callable[[ActorRef], Any]


async def _drive(ref: ActorRef, n: int, callers: int, op: str) -> float:
    each = n // callers

    async def caller() -> None:
        call = ref.tell if op == "tell" else ref.ask
        for i in range(each):
            await call(N(i))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
    if op == "tell":
        await ref.ask(N(-1))  # the tells are in the mailbox; let them be handled
    return each * callers / (time.perf_counter() - start)


CHILDREN = (ChildSpec("counter", _Counter, mailbox_size=64),)


async def _serve_forever() -> None:
    """The second process: serve /counter, print the port, run until killed."""
    async with (
        open_actor_system("bench", children=CHILDREN) as system,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(partial(serve_actors, system, REGISTRY))
        print(f"PORT {port}", flush=True)
        await trio.sleep_forever()


async def _measure_2proc(port: int, n: int, callers: int, op: str) -> float:
    async with open_actor_client(REGISTRY) as client:
        ref = await client.lookup(f"headwater://127.0.0.1:{port}/counter")
        return await _drive(ref, n, callers, op)


def _start_server() -> tuple[subprocess.Popen[str], int]:
    here = pathlib.Path(__file__).resolve()
    env = {**os.environ, "PYTHONPATH": str(here.parent.parent / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(here), "serve"], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = ""
    while not line.startswith("PORT "):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark server process did not start")
    return proc, int(line.split()[1])


async def _measure(n: int, callers: int, op: str, remote: bool) -> float:
    async with open_actor_system("bench", children=CHILDREN) as system:
        if not remote:
            return await _drive(system.lookup("/counter"), n, callers, op)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_actors, system, REGISTRY))
            async with open_actor_client(REGISTRY) as client:
                ref = await client.lookup(f"headwater://127.0.0.1:{port}/counter")
                rate = await _drive(ref, n, callers, op)
            nursery.cancel_scope.cancel()
        return rate


def _figure(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"bench": "remote", "case": case, "metric": metric, "value": value, "unit": unit}


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the figures; ``quick`` uses fewer messages and rounds."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n_local = 20_000 if quick else 200_000
    n_remote = 3_000 if quick else 30_000
    rounds = 3 if quick else 5
    results: dict[str, list[float]] = {}
    cases = {
        "local_tell": (n_local, 1, "tell", False),
        "remote_tell_sequential": (n_remote, 1, "tell", True),
        "remote_tell_pipelined_32": (n_remote, 32, "tell", True),
        "local_ask": (n_local // 4, 1, "ask", False),
        "remote_ask_sequential": (n_remote, 1, "ask", True),
        "remote_ask_pipelined_32": (n_remote, 32, "ask", True),
    }
    two_proc = {
        "remote_tell_pipelined_32_2proc": (n_remote * 3, 32, "tell"),
        "remote_ask_pipelined_32_2proc": (n_remote * 3, 32, "ask"),
    }
    proc, port = _start_server()
    try:
        for _ in range(rounds):
            for case, (n, callers, op, remote) in cases.items():
                results.setdefault(case, []).append(trio.run(_measure, n, callers, op, remote))
            for case, (n, callers, op) in two_proc.items():
                rate = trio.run(_measure_2proc, port, n, callers, op)
                results.setdefault(case, []).append(rate)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    medians = {case: statistics.median(rates) for case, rates in results.items()}
    for case, rate in medians.items():
        yield _figure(case, "messages_per_s", rate, "msg/s")
    for case, rate in medians.items():
        if case.startswith("remote_"):
            local = medians["local_tell" if "_tell_" in case else "local_ask"]
            yield _figure(case, "ratio_remote_vs_local", rate / local, "x")


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    trio.run(_serve_forever)
