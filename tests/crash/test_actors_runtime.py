"""Real-clock, real-process checks of the actor runtime: the watchdog on a
really blocked loop, a remote monitor and link across a killed and
restarted peer process, and the CLI against a real serve_actors process
(tree, actors kill / inspect, and the wrong-listener errors)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, ClassVar

import pytest
import trio

from headwater import ConnectionLostError
from headwater.actors import (
    Actor,
    BlockingActor,
    Exit,
    open_actor_client,
    open_actor_system,
)
from headwater.supervision import ChildSpec
from headwater.testing import KIT_REGISTRY, capture_logs
from headwater.testing._actor_kit import Get, Put

from .server_proc import ROOT, env, server
from .test_remote_actors_tcp import peer_process

pytestmark = pytest.mark.crash


class Sleepy(Actor):
    """Blocks the loop: the watchdog's culprit."""

    async def handle(self, message: Any) -> Any:
        time.sleep(message)  # noqa: ASYNC251 -- the bug the watchdog must find
        return None


class Threaded(BlockingActor):
    """Blocks its worker thread only."""

    def handle_blocking(self, message: Any) -> Any:
        time.sleep(message)
        return None


async def test_watchdog_names_the_blocking_actor_on_the_real_clock() -> None:
    """A handler calling time.sleep(0.3) on the loop is logged once as
    loop_blocked with its path, a duration near 0.3 s and its stack; the
    same sleep in a BlockingActor's thread logs nothing."""
    children = (ChildSpec("sleepy", Sleepy), ChildSpec("threaded", Threaded))
    with capture_logs() as logs, trio.fail_after(20):
        async with open_actor_system(children=children) as system:  # on by default here
            assert system.watchdog is not None
            assert 0.1 == system.watchdog.threshold
            await trio.sleep(0.2)
            await system.lookup("/threaded").ask(0.3)
            await trio.sleep(0.2)
            quiet = [e for e in logs if e["event"] == "loop_blocked"]
            await system.lookup("/sleepy").ask(0.3)
            await trio.sleep(0.2)
            assert system.watchdog is not None
            stats = system.watchdog.statistics()
    assert [] == quiet
    blocked = [e for e in logs if e["event"] == "loop_blocked"]
    assert 1 == len(blocked), blocked
    assert "/sleepy" == blocked[0]["actor"]
    assert 0.2 <= blocked[0]["duration"] <= 1.5
    assert "time.sleep(message)" in blocked[0]["stack"]
    assert 1 == stats.blocked


class Linker(Actor):
    """Traps exits and records them."""

    exits: ClassVar[list[Exit]] = []

    async def started(self) -> None:
        self.context.trap_exits = True

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Exit):
            Linker.exits.append(message)
        else:
            await self.context.link(message)
        return None


async def test_remote_monitor_and_link_across_a_killed_and_restarted_peer() -> None:
    """SIGKILL the peer: a reconnect monitor and a link fire 'unreachable'
    once; the ref raises ConnectionLostError while the peer is down; once a
    new peer serves the same port, the monitor fires Up and the same ref
    works again (reconnected with backoff)."""
    Linker.exits = []
    with trio.fail_after(40):
        async with (
            open_actor_system("near", children=(ChildSpec("linker", Linker),)) as near,
            open_actor_client(KIT_REGISTRY, reconnect_backoff=0.05) as client,
        ):
            async with peer_process() as (proc, port):
                ref = await client.lookup(f"headwater://127.0.0.1:{port}/kit/target")
                await ref.tell(Put(1))
                monitor = await ref.monitor(reconnect=True)
                await near.lookup("/linker").ask(ref)
                os.kill(proc.pid, signal.SIGKILL)
                down = await monitor.wait()
                assert "unreachable" == down.reason
                with pytest.raises(ConnectionLostError):
                    await ref.ask(Get())
            await trio.sleep(0.5)
            assert ["unreachable"] == [e.reason for e in Linker.exits]
            async with peer_process(port=port):
                up = await monitor.wait_up()
                assert "/kit/target" == up.path
                assert up.monitor.active
                assert [] == await ref.ask(Get())  # a fresh peer: a fresh actor
            assert "unreachable" == (await up.monitor.wait()).reason
            assert 1 == len(Linker.exits)  # the link fired once; links do not come back


def _hw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in env().items() if not k.startswith("HEADWATER_")},
    )


async def test_cli_tree_kill_inspect_against_a_real_actors_process(tmp_path: Any) -> None:
    """`headwater tree --url headwater+actors://...` draws the lab's tree (and
    --json gives the snapshot), `actors inspect` shows an actor's state,
    `actors kill` crashes one (restarts=1 in the next tree); a broker URL for
    an actors command, or an actors port for the broker's tree, is the
    wrong_listener usage error (exit 2)."""
    lab = subprocess.Popen(  # noqa: ASYNC220 -- a short spawn, then read through a thread
        [sys.executable, str(ROOT / "examples" / "supervision_lab.py"), "--serve", "--port", "0"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert lab.stdout is not None
        line = ""
        with trio.fail_after(30):
            while not line.startswith("PORT "):
                line = await trio.to_thread.run_sync(lab.stdout.readline)
                assert line, "the lab exited before serving"
        url = f"headwater+actors://127.0.0.1:{int(line.split()[1])}"
        drawn = await trio.to_thread.run_sync(_hw, "tree", "--url", url)
        assert 0 == drawn.returncode, drawn.stderr
        assert "clock [actor] running" in drawn.stdout
        assert "pipeline [supervisor] running" in drawn.stdout
        shown = await trio.to_thread.run_sync(_hw, "actors", "inspect", "/clock", "--url", url)
        assert 0 == shown.returncode, shown.stderr
        assert "ticks" in shown.stdout
        killed = await trio.to_thread.run_sync(
            _hw, "actors", "kill", "/pipeline/parser", "--url", url
        )
        assert (0, "killed /pipeline/parser\n") == (killed.returncode, killed.stdout)
        as_json = await trio.to_thread.run_sync(_hw, "tree", "--json", "--url", url)
        tree = json.loads(as_json.stdout)
        pipeline = next(c for c in tree["children"] if c["path"] == "/pipeline")
        parser = next(c for c in pipeline["children"] if c["path"] == "/pipeline/parser")
        assert 1 == parser["restarts"]
        assert "ActorKilled" in parser["last_failure"]
        assert {"mailbox_depth", "mailbox_high_water", "handled"} <= set(parser)
        missing = await trio.to_thread.run_sync(_hw, "actors", "inspect", "/nope", "--url", url)
        assert 1 == missing.returncode
        assert "[actor_not_found]" in missing.stderr
        as_broker = await trio.to_thread.run_sync(
            _hw, "tree", "--url", url.replace("headwater+actors", "headwater")
        )
        assert 2 == as_broker.returncode
        assert "[wrong_listener]" in as_broker.stderr
        with server(tmp_path / "data") as broker:
            wrong = await trio.to_thread.run_sync(
                _hw,
                "actors",
                "kill",
                "/clock",
                "--url",
                broker.url.replace("headwater", "headwater+actors"),
            )
        assert 2 == wrong.returncode, wrong.stderr
        assert "[wrong_listener]" in wrong.stderr
    finally:
        lab.kill()
        await trio.to_thread.run_sync(lab.wait)
        if lab.stdout is not None:
            lab.stdout.close()
