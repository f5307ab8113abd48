"""A small supervision tree: restarts, strategies, and escalation.

Run it with ``python examples/supervision_tree.py``. It builds this tree::

    /                       root: one_for_one, gives up after 1 restart in 10 s
    ├── counter             an actor keeping a count (permanent)
    └── pipeline            a supervisor: rest_for_one, 2 restarts within 5 s
        ├── reader          an actor
        ├── parser          an actor; "poison" makes it crash
        └── writer          an actor

then crashes the parser (the rest_for_one strategy restarts parser and writer,
not reader), shows the restarted tree, and feeds poison until the pipeline
exceeds its restart intensity: the pipeline gives up, the root restarts it
once, and when it gives up again the root escalates and the system stops with
``SupervisorGaveUp``. Finishes by itself in a moment (restarts back off by 0.2 s).
"""

from __future__ import annotations

import logging
import pathlib
import sys
from typing import Any

import trio

try:
    import headwater
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    import headwater

from headwater.actors import Actor, open_actor_system
from headwater.supervision import ChildSpec, SupervisorSpec


class Counter(Actor):
    """Counts the messages it is told; replies with the count when asked."""

    def __init__(self) -> None:
        self.count = 0

    async def handle(self, message: Any) -> Any:
        self.count += 1
        return self.count


class Stage(Actor):
    """One pipeline stage: upper-cases text, crashes on "poison"."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def handle(self, message: Any) -> Any:
        if message == "poison":
            raise ValueError(f"{self.name} cannot digest {message!r}")
        return f"{self.name}:{str(message).upper()}"


def stage(name: str) -> ChildSpec:
    return ChildSpec(name, lambda: Stage(name))


async def main() -> int:
    # Show the runtime's warnings and errors (crashes, give-ups, escalations)
    # as one line each, without tracebacks: Headwater logs through the stdlib
    # logger "headwater" (level WARNING by default), so a handler is enough.
    def drop_traceback(record: logging.LogRecord) -> bool:
        record.exc_info = None
        return True

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(levelname)-7s] %(message)s"))
    handler.addFilter(drop_traceback)
    logging.getLogger("headwater").addHandler(handler)
    pipeline = SupervisorSpec(
        "pipeline",
        [stage("reader"), stage("parser"), stage("writer")],
        strategy="rest_for_one",
        max_restarts=2,
        within=5.0,
        backoff=0.2,
    )
    try:
        async with open_actor_system(
            "example",
            max_restarts=1,
            within=10.0,
            children=(ChildSpec("counter", Counter), pipeline),
        ) as system:
            print("The tree at start:")
            print(system.tree().render(), "\n")

            parser = system.lookup("/pipeline/parser")
            print("parser says:", await parser.ask("hello"))
            try:
                await parser.ask("poison")
            except headwater.ActorFailed as exc:
                print(f"parser crashed: {exc.error_type}: {exc.error_message}")
            # The same ref reaches the new incarnation (it waits out the backoff).
            print("parser, restarted, says:", await parser.ask("again"))
            print("\nAfter one crash (rest_for_one restarted parser and writer):")
            print(system.tree().render(), "\n")

            print("Feeding poison until the pipeline gives up...")
            t0 = trio.current_time()
            while True:
                try:
                    await parser.ask("poison", timeout=5)
                except headwater.ActorFailed:
                    print(f"  t=+{trio.current_time() - t0:.1f}s: parser crashed")
                except headwater.ActorStopped:
                    await trio.sleep(0.1)  # the pipeline is being restarted by the root
    except headwater.SupervisorGaveUp as exc:
        print(f"\nThe system stopped: {exc}")
        print(f"caused by: {exc.__cause__!r}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
