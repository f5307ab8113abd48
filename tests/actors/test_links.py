"""Links against OTP's table: fail / stop / kill of a linked actor, with and
without trap_exits, for local refs and remote refs (a memory stream pair
under MockClock); plus unreachable peers, unlink and bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from headwater import ActorNotFound, ActorStopped, LinkedExit
from headwater.actors import (
    Actor,
    ActorRef,
    ActorSystem,
    Exit,
    open_actor_client,
    open_actor_system,
    serve_actor_stream,
)
from headwater.supervision import ChildSpec
from headwater.transport import MessageRegistry

REGISTRY = MessageRegistry("links-test")


@REGISTRY.message("links.cmd")
@attrs.frozen
class Cmd:
    """``boom`` crashes the actor; ``stop`` stops it normally."""

    what: str


EXITS: list[Exit] = []


class Node(Actor):
    """Links on request; records Exit messages; crashes or stops on command."""

    def __init__(self, trap: bool) -> None:
        self.trap = trap

    async def started(self) -> None:
        self.context.trap_exits = self.trap

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Exit):
            EXITS.append(message)
            return None
        if isinstance(message, Cmd):
            if message.what == "boom":
                raise ValueError("boom")
            if message.what == "stop":
                self.context.stop()
            return None
        if isinstance(message, tuple) and message[0] == "link":
            await self.context.link(message[1])
            return None
        if isinstance(message, tuple) and message[0] == "unlink":
            await self.context.unlink(message[1])
            return None
        return await super().handle(message)


def _spec(name: str, trap: bool) -> ChildSpec:
    return ChildSpec(name, lambda: Node(trap), restart="transient")


@attrs.define
class Pair:
    """``near`` holds /b (the linker); ``far`` holds /a; ``a`` is b's ref to a."""

    near: ActorSystem
    far: ActorSystem
    a: ActorRef
    cut: Any = None


@asynccontextmanager
async def local_pair(trap_b: bool, trap_a: bool = False) -> AsyncIterator[Pair]:
    children = (_spec("a", trap_a), _spec("b", trap_b))
    async with open_actor_system(children=children) as system:
        yield Pair(system, system, system.lookup("/a"))


@asynccontextmanager
async def remote_pair(trap_b: bool, trap_a: bool = False) -> AsyncIterator[Pair]:
    streams: list[trio.abc.Stream] = []
    async with (
        open_actor_system("far", children=(_spec("a", trap_a),)) as far,
        open_actor_system("near", children=(_spec("b", trap_b),)) as near,
        trio.open_nursery() as nursery,
    ):

        async def opener(host: str, port: int) -> trio.abc.Stream:
            client_end, server_end = trio.testing.memory_stream_pair()
            streams.append(client_end)
            nursery.start_soon(serve_actor_stream, far, REGISTRY, server_end)
            return client_end

        async def cut() -> None:
            for stream in streams:
                await trio.aclose_forcefully(stream)

        async with open_actor_client(REGISTRY, opener=opener) as client:
            ref = await client.lookup("headwater://mem:1/a")
            yield Pair(near, far, ref, cut)
        nursery.cancel_scope.cancel()


PAIRS = {"local": local_pair, "remote": remote_pair}


async def _exit_a(pair: Pair, how: str) -> None:
    if how == "fail":
        with pytest.raises(Exception, match="boom"):
            await pair.far.lookup("/a").ask(Cmd("boom"))
    elif how == "stop":
        await pair.far.lookup("/a").ask(Cmd("stop"))
    else:
        await pair.far.kill("/a", "experiment")
    await trio.sleep(1)


@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("trap", [True, False], ids=["trap", "no_trap"])
@pytest.mark.parametrize(
    ("how", "reason"), [("fail", "failed"), ("stop", "normal"), ("kill", "killed")]
)
async def test_otp_link_table(
    autojump_clock: trio.abc.Clock, where: str, trap: bool, how: str, reason: str
) -> None:
    """When a linked actor fails, stops or is killed: a trapping linker gets
    Exit(path, reason); a non-trapping one fails with LinkedExit unless the
    reason is normal, in which case nothing happens."""
    EXITS.clear()
    async with PAIRS[where](trap_b=trap) as pair:
        b = pair.near.lookup("/b")
        await b.ask(("link", pair.a))
        await _exit_a(pair, how)
        node = pair.near.tree().children[-1]
        if trap:
            assert [(pair.a.path, reason)] == [
                (e.path.rsplit(":1", 1)[-1], e.reason) for e in EXITS
            ]
            assert 0 == node.restarts
        elif reason == "normal":
            assert ([], 0) == (EXITS, node.restarts)
        else:
            assert [] == EXITS
            assert 1 == node.restarts
            assert node.last_failure is not None
            assert node.last_failure.startswith("LinkedExit: actor /b failed because linked")
            assert f"({reason}" in node.last_failure


@pytest.mark.parametrize("where", ["local", "remote"])
async def test_links_go_both_ways(autojump_clock: trio.abc.Clock, where: str) -> None:
    """b links to a; when b fails, a (not trapping) fails too; a trapping a
    receives the Exit instead."""
    for trap_a in (False, True):
        EXITS.clear()
        async with PAIRS[where](trap_b=False, trap_a=trap_a) as pair:
            b = pair.near.lookup("/b")
            await b.ask(("link", pair.a))
            with pytest.raises(Exception, match="boom"):
                await b.ask(Cmd("boom"))
            await trio.sleep(1)
            a_node = pair.far.tree().children[0]
            if trap_a:
                assert [("/b", "failed")] == [(e.path, e.reason) for e in EXITS]
                assert 0 == a_node.restarts
            else:
                assert 1 == a_node.restarts
                assert a_node.last_failure is not None
                assert "LinkedExit" in a_node.last_failure


@pytest.mark.parametrize("where", ["local", "remote"])
async def test_unlink_and_restart_remove_the_link(
    autojump_clock: trio.abc.Clock, where: str
) -> None:
    """After unlink, a's failure no longer reaches b; a link belongs to an
    incarnation, so after b restarts it is gone too."""
    EXITS.clear()
    async with PAIRS[where](trap_b=True, trap_a=True) as pair:
        b = pair.near.lookup("/b")
        await b.ask(("link", pair.a))
        await b.ask(("unlink", pair.a))
        await _exit_a(pair, "fail")
        await b.ask(("link", pair.a))
        await pair.near.kill("/b")
        await trio.sleep(1)
        await _exit_a(pair, "fail")
        # a (trapping) heard of b's kill; b heard nothing of a's failures
        assert [("/b", "killed")] == [(e.path, e.reason) for e in EXITS]


async def test_lost_connection_is_an_unreachable_exit(autojump_clock: trio.abc.Clock) -> None:
    """A remote link whose connection is lost delivers Exit(reason
    'unreachable') to a trapping linker, and fails a non-trapping one."""
    for trap in (True, False):
        EXITS.clear()
        async with remote_pair(trap_b=trap) as pair:
            await pair.near.lookup("/b").ask(("link", pair.a))
            await pair.cut()
            await trio.sleep(1)
            node = pair.near.tree().children[0]
            if trap:
                assert ["unreachable"] == [e.reason for e in EXITS]
                assert 1 == EXITS[0].detail.count("connection to"), EXITS[0].detail  # said once
                assert 0 == node.restarts
            else:
                assert 1 == node.restarts
                assert node.last_failure is not None
                assert "unreachable" in node.last_failure


async def test_linking_to_a_dead_ref_is_a_typed_error(autojump_clock: trio.abc.Clock) -> None:
    """Linking to an actor stopped for good raises ActorStopped (local, or
    remote on a connection that knew it); to a remote path never seen,
    ActorNotFound (a usage error: the linker keeps running). Uncaught,
    ActorStopped crashes the linker, as OTP's noproc does."""
    async with local_pair(trap_b=False) as pair:
        await pair.near.stop_child("/a")
        with pytest.raises(ActorStopped, match="cannot link to /a"):
            await pair.near.lookup("/b").ask(("link", pair.a))
    async with remote_pair(trap_b=False) as pair:
        await pair.far.stop_child("/a")
        with pytest.raises(ActorStopped, match="cannot link to headwater://mem:1/a"):
            await pair.near.lookup("/b").ask(("link", pair.a))
        ghost = await pair.a._client.lookup("headwater://mem:1/a")  # type: ignore[attr-defined]
        ghost._address = type(ghost._address)("mem", 1, "/ghost")
        with pytest.raises(ActorNotFound, match="/ghost"):
            await pair.near.lookup("/b").ask(("link", ghost))
        assert 1 == pair.near.tree().children[0].restarts  # from the ActorStopped only
    assert LinkedExit.code == "linked_exit"
