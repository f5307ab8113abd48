"""A supervision lab: a small tree you poke from the command line.

Run ``python examples/supervision_lab.py --serve`` and, in another terminal::

    headwater tree --url headwater+actors://127.0.0.1:7701            # the live tree
    headwater actors inspect /clock --url headwater+actors://127.0.0.1:7701
    headwater actors kill /pipeline/parser --url headwater+actors://127.0.0.1:7701

The tree::

    /                     root: one_for_one, lenient (it never gives up here)
    ├── clock             ticks itself every 0.5 s (ctx.send_interval); inspect it
    ├── pipeline          one_for_all, gives up after 2 restarts within 30 s
    │   ├── fetcher       a BlockingActor: each fetch sleeps 50 ms in a worker thread
    │   └── parser        linked to fetcher (ctx.link): when one dies, so does the other
    └── auditor           traps exits of its link to parser: logs each Exit it gets

Kill the parser once: the pipeline restarts both children (one_for_all; the
link would have taken the fetcher down anyway), the auditor receives an
``Exit`` and ``restarts=`` climbs in ``headwater tree``. Kill it three times
within 30 s: the pipeline exceeds its intensity and gives up, and the root
restarts the whole pipeline (watch the incarnations). The clock keeps ticking.

Without ``--serve`` the lab pokes itself, through the same actors listener
and the same calls the CLI makes, prints what the CLI would show, and exits
(the example tests run it that way).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time
from functools import partial
from typing import Any

import trio

try:
    import headwater
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    import headwater

from headwater.actors import (
    Actor,
    BlockingActor,
    Exit,
    open_actor_client,
    open_actor_system,
    serve_actors,
)
from headwater.supervision import ChildSpec, SupervisorSpec
from headwater.transport import MessageRegistry

REGISTRY = MessageRegistry("supervision-lab")


class Clock(Actor):
    """Counts its own ticks (a timer that dies with each incarnation)."""

    def __init__(self) -> None:
        self.ticks = 0
        self.started_at = 0.0

    async def started(self) -> None:
        self.started_at = round(trio.current_time(), 3)
        self.context.send_interval(0.5, "tick")

    async def handle(self, message: Any) -> Any:
        self.ticks += 1
        return self.ticks


class Fetcher(BlockingActor):
    """Blocking I/O stand-in: runs in a worker thread, so the loop stays free."""

    def __init__(self) -> None:
        self.fetched = 0

    def handle_blocking(self, message: Any) -> Any:
        time.sleep(0.05)  # a blocking library call; fine in a worker thread
        self.fetched += 1
        return f"page {message}"


class Parser(Actor):
    """Linked to the fetcher: their fates are tied."""

    def __init__(self) -> None:
        self.parsed = 0

    async def started(self) -> None:
        await self.context.link(self.context.system.lookup("/pipeline/fetcher"))
        self.context.send_interval(1.0, "work")

    async def handle(self, message: Any) -> Any:
        page = await self.context.system.lookup("/pipeline/fetcher").ask(self.parsed)
        self.parsed += 1
        return page


class Auditor(Actor):
    """Traps exits: a linked parser's death arrives as an Exit message."""

    def __init__(self) -> None:
        self.exits: list[str] = []

    async def started(self) -> None:
        self.context.trap_exits = True
        self.context.send_after(0.0, "relink")

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Exit):
            self.exits.append(f"{message.path}: {message.reason}")
            print(f"auditor: got Exit({message.path}, {message.reason})", flush=True)
            self.context.send_after(0.5, "relink")  # the new parser, once it runs
        elif message == "relink":
            await self.context.link(self.context.system.lookup("/pipeline/parser"))
        return None


def tree_spec() -> tuple[ChildSpec | SupervisorSpec, ...]:
    """The lab's children (see the module docstring)."""
    pipeline = SupervisorSpec(
        "pipeline",
        strategy="one_for_all",
        max_restarts=2,
        within=30.0,
        backoff=0.1,
        children=(ChildSpec("fetcher", Fetcher), ChildSpec("parser", Parser)),
    )
    return (ChildSpec("clock", Clock), pipeline, ChildSpec("auditor", Auditor))


async def serve(port: int) -> None:
    """Serve the lab until interrupted."""
    async with (
        open_actor_system("lab", max_restarts=1000, within=1.0, children=tree_spec()) as system,
        trio.open_nursery() as nursery,
    ):
        bound = await nursery.start(partial(serve_actors, system, REGISTRY, port=port))
        url = f"headwater+actors://127.0.0.1:{bound}"
        print(f"PORT {bound}", flush=True)
        print(f"try:  headwater tree --url {url}", flush=True)
        print(f"      headwater actors kill /pipeline/parser --url {url}", flush=True)
        await trio.sleep_forever()


async def demo() -> None:
    """Poke the lab through its own actors listener, as the CLI would."""
    async with (
        open_actor_system("lab", max_restarts=1000, within=1.0, children=tree_spec()) as system,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(partial(serve_actors, system, REGISTRY))
        listener = f"headwater+actors://127.0.0.1:{port}"
        print(f"serving the lab on {listener}\n")
        async with open_actor_client(REGISTRY) as client:
            await trio.sleep(1.2)
            clock = await client.lookup(f"headwater://127.0.0.1:{port}/clock")
            print("$ headwater actors inspect /clock")
            for name, value in (await clock.inspect()).items():
                print(f"  {name}  {value}")
            for round_ in range(3):
                print(f"\n$ headwater actors kill /pipeline/parser   (kill {round_ + 1})")
                await client.kill(f"headwater://127.0.0.1:{port}/pipeline/parser", "lab")
                await trio.sleep(0.8)
            print("\n$ headwater tree")
            tree = await client.tree(listener)
            print(tree.render())
            pipeline = next(n for n in tree.walk() if n.path == "/pipeline")
            print(
                f"\nthe pipeline gave up after its 3rd kill and the root restarted it "
                f"(incarnation {pipeline.incarnation}, restarts={pipeline.restarts})"
            )
        nursery.cancel_scope.cancel()


def main() -> None:
    """Entry point: ``--serve [--port P]`` serves; otherwise the demo runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl-C")
    parser.add_argument("--port", type=int, default=7701, help="actors port (0: any free one)")
    args = parser.parse_args()

    # Show the runtime's warnings and errors (crashes, give-ups, a blocked
    # loop) as one line each: Headwater logs through the stdlib logger
    # "headwater" (level WARNING by default), so a handler is enough.
    def drop_traceback(record: logging.LogRecord) -> bool:
        record.exc_info = None
        return True

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(levelname)-7s] %(message)s"))
    handler.addFilter(drop_traceback)
    logging.getLogger("headwater").addHandler(handler)
    print(f"headwater {headwater.__version__}")
    try:
        trio.run(serve if args.serve else demo, *([args.port] if args.serve else []))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
