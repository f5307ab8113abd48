"""Two processes whose actors talk over loopback TCP, and a monitor firing.

Run it with ``python examples/remote_actors.py``. The script plays two parts:

* the **main** process runs ``/scoreboard`` (counts the points it is told) and
  ``/watcher`` (monitors remote actors and prints their ``Down``), serves them
  on a free port of 127.0.0.1, and starts a second copy of this script;
* the **pong** process (``python examples/remote_actors.py pong PORT``) runs
  ``/ponger``, serves it on another free port and prints that port. Each
  ``Ping`` it is asked, it answers with a ``Pong`` *and* tells the main
  process's ``/scoreboard`` a ``Point`` -- actors in both directions.

The main process pings three times, checks the scoreboard, asks the watcher to
monitor the ponger, then ``SIGKILL``\\ s the pong process: the watcher receives
``Down(reason="unreachable")``. Exits 0 within a few seconds.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from functools import partial
from typing import Any

import attrs
import trio

try:
    import headwater
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    import headwater

from headwater.actors import (
    Actor,
    ActorRef,
    Down,
    RemoteActorRef,
    open_actor_client,
    open_actor_system,
    serve_actors,
)
from headwater.supervision import ChildSpec
from headwater.transport import MessageRegistry

# Both processes share this registry: it is the contract of the wire.
MESSAGES = MessageRegistry("remote-example")


@MESSAGES.message("ping")
@attrs.frozen
class Ping:
    """Asked of the ponger; ``n`` is echoed back."""

    n: int


@MESSAGES.message("pong")
@attrs.frozen
class Pong:
    """The ponger's answer."""

    n: int
    pid: int


@MESSAGES.message("point")
@attrs.frozen
class Point:
    """Told to the scoreboard by the ponger."""

    n: int


@MESSAGES.message("score")
@attrs.frozen
class Score:
    """Asked of the scoreboard: its total comes back as a plain int."""


@attrs.frozen
class Watch:
    """Local message: monitor this ref (a local message may carry anything)."""

    ref: ActorRef


class Scoreboard(Actor):
    """Adds up the points it is told; replies to Score with the total."""

    def __init__(self) -> None:
        self.total = 0

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Point):
            self.total += message.n
            return None
        if isinstance(message, Score):
            return self.total
        return await super().handle(message)


class Watcher(Actor):
    """Monitors what it is told to watch; Down messages land in its mailbox."""

    def __init__(self, downs: trio.MemorySendChannel[Down]) -> None:
        self.downs = downs

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Watch):
            await self.context.monitor(message.ref)  # Erlang's monitor/2
            return None
        if isinstance(message, Down):
            print(f"watcher: {message.path} is down ({message.reason}): {message.detail}")
            await self.downs.send(message)
            return None
        return await super().handle(message)


class Ponger(Actor):
    """Answers Ping with Pong and tells the main process's scoreboard a Point."""

    def __init__(self, scoreboard: RemoteActorRef) -> None:
        self.scoreboard = scoreboard

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Ping):
            await self.scoreboard.tell(Point(message.n))  # back across the wire
            return Pong(message.n, os.getpid())
        return await super().handle(message)


async def pong_process(main_port: int) -> None:
    """The second process: serve /ponger until killed."""
    async with open_actor_client(MESSAGES) as client:
        scoreboard = await client.lookup(f"headwater://127.0.0.1:{main_port}/scoreboard")
        children = (ChildSpec("ponger", lambda: Ponger(scoreboard)),)
        async with (
            open_actor_system("pong", children=children) as system,
            trio.open_nursery() as nursery,
        ):
            port = await nursery.start(partial(serve_actors, system, MESSAGES))
            print(f"PORT {port}", flush=True)
            await trio.sleep_forever()


async def main_process() -> None:
    """The first process: serve /scoreboard and /watcher, drive the pong process."""
    downs_send, downs_recv = trio.open_memory_channel[Down](1)
    children = (
        ChildSpec("scoreboard", Scoreboard),
        ChildSpec("watcher", lambda: Watcher(downs_send)),
    )
    with trio.fail_after(20):
        async with (
            open_actor_system("main", children=children) as system,
            trio.open_nursery() as nursery,
        ):
            port = await nursery.start(partial(serve_actors, system, MESSAGES))
            print(f"main: pid {os.getpid()} serving on 127.0.0.1:{port}")
            proc = subprocess.Popen(  # noqa: ASYNC220 -- a quick spawn; output read in a thread
                [sys.executable, __file__, "pong", str(port)], stdout=subprocess.PIPE, text=True
            )
            assert proc.stdout is not None
            try:
                line = ""
                while not line.startswith("PORT "):
                    line = await trio.to_thread.run_sync(proc.stdout.readline)
                    if not line:
                        raise SystemExit("the pong process did not start")
                pong_url = f"headwater://127.0.0.1:{line.split()[1]}/ponger"
                async with open_actor_client(MESSAGES) as client:
                    ponger = await client.lookup(pong_url)
                    for n in (1, 2, 3):
                        pong = await ponger.ask(Ping(n))
                        print(f"main: asked {pong_url} Ping({n}) -> {pong}")
                    total = await system.lookup("/scoreboard").ask(Score())
                    print(f"main: the pong process told our scoreboard {total} points")
                    await system.lookup("/watcher").ask(Watch(ponger))
                    print(f"main: SIGKILL to pong process {proc.pid}")
                    os.kill(proc.pid, signal.SIGKILL)
                    down = await downs_recv.receive()
                    assert down.reason == "unreachable", down
            finally:
                if proc.poll() is None:
                    proc.kill()
                await trio.to_thread.run_sync(proc.wait)
                proc.stdout.close()
            nursery.cancel_scope.cancel()
    print("main: done")


if __name__ == "__main__":
    assert headwater
    if len(sys.argv) == 3 and sys.argv[1] == "pong":
        trio.run(pong_process, int(sys.argv[2]))
    else:
        trio.run(main_process)
