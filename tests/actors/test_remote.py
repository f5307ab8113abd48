"""Remote actors over a memory stream pair (MockClock): the conformance kit,
unregistered messages, lost connections, auth, and the wire helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import pytest
import trio
import trio.testing

from headwater import (
    ActorNotFound,
    AuthenticationError,
    ClosedError,
    ConnectionLostError,
    InvalidArgument,
    LocalProtocolError,
    RemoteProtocolError,
)
from headwater.actors import (
    ActorAddress,
    ActorClient,
    ActorRef,
    ActorSystem,
    open_actor_client,
    parse_actor_url,
    serve_actor_stream,
)
from headwater.actors._wire import decode_reply, encode_reply
from headwater.testing import KIT_REGISTRY, check_actor_refs
from headwater.testing._actor_kit import GetRef, Put


@asynccontextmanager
async def local_refs(system: ActorSystem) -> AsyncIterator[GetRef]:
    """Refs straight from the system."""

    async def get(path: str) -> ActorRef:
        return system.lookup(path)

    yield get


@attrs.define
class MemoryLink:
    """Serves a system over memory stream pairs; can cut every link."""

    system: ActorSystem
    nursery: trio.Nursery
    token: str | None = None
    streams: list[trio.abc.Stream] = attrs.field(factory=list)
    refuse: bool = False
    attempts: int = 0

    async def open(self, host: str, port: int) -> trio.abc.Stream:
        self.attempts += 1
        await trio.lowlevel.checkpoint()
        if self.refuse:
            raise ConnectionLostError(f"connection refused by {host}:{port} (test)")
        client_end, server_end = trio.testing.memory_stream_pair()
        self.streams.append(client_end)
        self.nursery.start_soon(
            lambda: serve_actor_stream(self.system, KIT_REGISTRY, server_end, token=self.token)
        )
        return client_end

    async def cut(self) -> None:
        for stream in self.streams:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def memory_client(
    system: ActorSystem, *, token: str | None = None, server_token: str | None = None
) -> AsyncIterator[tuple[ActorClient, MemoryLink]]:
    """An ActorClient whose connections are memory stream pairs to ``system``."""
    async with trio.open_nursery() as nursery:
        link = MemoryLink(system, nursery, server_token)
        async with open_actor_client(KIT_REGISTRY, token=token, opener=link.open) as client:
            yield client, link
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def memory_refs(system: ActorSystem) -> AsyncIterator[GetRef]:
    """Remote refs over a memory stream pair."""
    async with memory_client(system) as (client, _link):

        async def get(path: str) -> ActorRef:
            return await client.lookup(f"headwater://mem:1{path}")

        yield get


async def test_local_refs_conform(autojump_clock: trio.abc.Clock) -> None:
    """LocalActorRef passes the actor-ref conformance kit."""
    await check_actor_refs(local_refs)


async def test_remote_refs_over_memory_conform(autojump_clock: trio.abc.Clock) -> None:
    """RemoteActorRef over a memory stream pair passes the same kit."""
    await check_actor_refs(memory_refs)


@attrs.frozen
class Unregistered:
    """A message class the kit's registry does not know."""

    n: int


async def _target(client: ActorClient) -> ActorRef:
    return await client.lookup("headwater://mem:1/kit/target")


@asynccontextmanager
async def kit_system() -> AsyncIterator[ActorSystem]:
    """An actor system holding the kit's actors."""
    from headwater.actors import open_actor_system
    from headwater.supervision import ChildSpec, SupervisorSpec
    from headwater.testing._actor_kit import _Shared, _Target

    shared = _Shared()
    kit = SupervisorSpec("kit", children=(ChildSpec("target", lambda: _Target(shared)),))
    async with open_actor_system("kit", children=(kit,)) as system:
        yield system
        shared.gate.set()


async def test_unregistered_message_is_refused_on_the_sender(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An unregistered message (or a wrongly typed field) raises
    LocalProtocolError before anything is sent; the ref stays usable."""
    from headwater.testing._actor_kit import Get

    async with kit_system() as system, memory_client(system) as (client, _link):
        ref = await _target(client)
        with pytest.raises(LocalProtocolError, match="Unregistered"):
            await ref.tell(Unregistered(1))
        with pytest.raises(LocalProtocolError, match="Unregistered"):
            await ref.ask(Unregistered(1))
        with pytest.raises(LocalProtocolError, match=r"Put\.value"):
            await ref.tell(Put("x"))  # type: ignore[arg-type]
        await ref.tell(Put(7))
        assert [7] == await ref.ask(Get())


async def test_unsendable_reply_is_a_remote_protocol_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A reply that is neither registered nor plain reaches the asker as
    RemoteProtocolError naming the type."""
    from headwater.actors import Actor, open_actor_system
    from headwater.supervision import ChildSpec

    class Odd(Actor):
        async def handle(self, message: object) -> object:
            return Unregistered(1)

    async with (
        open_actor_system("odd", children=(ChildSpec("odd", Odd),)) as system,
        memory_client(system) as (client, _link),
    ):
        ref = await client.lookup("headwater://mem:1/odd")
        with pytest.raises(RemoteProtocolError, match="Unregistered"):
            await ref.ask(Put(1))


async def test_lost_connection_fails_waiters_and_fires_monitors(
    autojump_clock: trio.abc.Clock,
) -> None:
    """When the link breaks: a pending ask raises ConnectionLostError, a
    monitor fires 'unreachable', tell_nowait raises ConnectionLostError, and
    the ref's next awaited use reconnects (as does a new lookup)."""
    from headwater.testing._actor_kit import Echo, Get, Sleep

    async with kit_system() as system, memory_client(system) as (client, link):
        ref = await _target(client)
        monitor = await ref.monitor()
        outcome: list[BaseException] = []

        async def pending() -> None:
            try:
                await ref.ask(Sleep(3), timeout=None)
            except ConnectionLostError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pending)
            await trio.sleep(1)
            await link.cut()
        assert 1 == len(outcome)
        down = await monitor.wait()
        assert ("unreachable", "/kit/target") == (down.reason, down.path)
        with pytest.raises(ConnectionLostError):
            ref.tell_nowait(Put(1))
        assert 1 == len(link.streams)
        await ref.tell(Put(1))  # reconnects
        assert 2 == len(link.streams)
        assert [1] == await ref.ask(Get())
        assert (await ref.monitor()).active
        again = await _target(client)
        assert Echo("back") == await again.ask(Echo("back"))


async def test_reconnect_backs_off_while_the_peer_is_away(
    autojump_clock: trio.abc.Clock,
) -> None:
    """While the peer refuses connections, a lost ref tries once at once,
    then at most once per backoff delay (0.1, 0.2, 0.4 s ...); inside a delay
    it raises ConnectionLostError without trying; once the peer is back the
    next use reconnects."""
    from headwater.testing._actor_kit import Get

    async with kit_system() as system, memory_client(system) as (client, link):
        ref = await _target(client)
        await link.cut()
        await trio.testing.wait_all_tasks_blocked()
        link.refuse = True
        attempts_before = link.attempts
        start = trio.current_time()
        tried_at: list[float] = []
        for i in range(12):
            await trio.sleep_until(start + i * 0.03)
            seen = link.attempts
            with pytest.raises(ConnectionLostError):
                await ref.tell(Put(1))
            if link.attempts > seen:
                tried_at.append(round(trio.current_time() - start, 3))
        assert [0.0, 0.12, 0.33] == tried_at  # due at 0.0, then 0.1 and 0.12 + 0.2
        assert 3 == link.attempts - attempts_before
        link.refuse = False
        await trio.sleep(1.0)
        await ref.tell(Put(2))
        assert [2] == await ref.ask(Get())


async def test_refs_share_one_connection_per_peer(autojump_clock: trio.abc.Clock) -> None:
    """Two lookups of the same host:port share one connection; another port
    gets its own; after the client is closed, refs and lookups raise
    ClosedError and monitors fire."""
    async with kit_system() as system, memory_client(system) as (client, link):
        await client.lookup("headwater://mem:1/kit/target")
        await client.lookup("headwater://mem:1/kit")
        assert 1 == len(link.streams)
        await client.lookup("headwater://mem:2/kit/target")
        assert 2 == len(link.streams)
        with pytest.raises(ActorNotFound, match="/kit/none"):
            await client.lookup("headwater://mem:1/kit/none")
        ref = await client.lookup("headwater://mem:1/kit/target")
        monitor = await ref.monitor()
    with pytest.raises(ClosedError):  # we closed the client: our fault, not the peer's
        await ref.tell(Put(1))
    assert "unreachable" == (await monitor.wait()).reason
    with pytest.raises(ClosedError):
        await client.lookup("headwater://mem:1/kit/target")


async def test_token_auth(autojump_clock: trio.abc.Clock) -> None:
    """A server with a token refuses a client with none or a wrong one and
    serves one with the right token."""
    async with kit_system() as system:
        for token in (None, "wrong"):
            async with memory_client(system, token=token, server_token="s3cret") as (client, _):
                with pytest.raises(AuthenticationError):
                    await _target(client)
        async with memory_client(system, token="s3cret", server_token="s3cret") as (client, _):
            await (await _target(client)).tell(Put(1))


async def test_in_flight_bound_and_tell_nowait(autojump_clock: trio.abc.Clock) -> None:
    """With max_in_flight=3 (two request slots plus one kept for demonitor),
    tell_nowait raises MailboxFull once both slots are taken; a cancelled
    monitor gives its slot back."""
    from headwater import MailboxFull
    from headwater.testing._actor_kit import Echo, Get

    async with kit_system() as system, trio.open_nursery() as nursery:
        link = MemoryLink(system, nursery)
        async with open_actor_client(KIT_REGISTRY, max_in_flight=3, opener=link.open) as client:
            ref = await _target(client)
            first = await ref.monitor()
            second = await ref.monitor()
            with pytest.raises(MailboxFull):
                ref.tell_nowait(Put(1))
            first.cancel()
            second.cancel()
            with trio.fail_after(5):
                assert Echo("free") == await ref.ask(Echo("free"))
            ref.tell_nowait(Put(2))
            ref.tell_nowait(Put(3))
            with pytest.raises(MailboxFull):
                ref.tell_nowait(Put(4))
            await trio.sleep(1)
            assert [2, 3] == await ref.ask(Get())
        with pytest.raises(InvalidArgument, match="max_in_flight"):
            async with open_actor_client(KIT_REGISTRY, max_in_flight=1):
                pass  # pragma: no cover
        nursery.cancel_scope.cancel()


async def test_garbage_from_a_client_ends_only_that_connection(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A peer sending garbage gets an error frame and a closed stream;
    serve_actor_stream returns without raising."""
    from headwater.transport import FrameDecoder

    async with kit_system() as system:
        client_end, server_end = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_actor_stream, system, KIT_REGISTRY, server_end)
            await client_end.send_all(b"\xff\xff\xff\xffjunk")
            decoder = FrameDecoder()
            while True:
                data = await client_end.receive_some(4096)
                if not data:
                    break
                decoder.feed(data)
            frame = decoder.next_frame()
            assert frame is not None
            assert ("error", None) == (frame["t"], frame["id"])


def test_parse_actor_url() -> None:
    """URLs parse to host, port and normalized path; bad ones are refused by name."""
    assert ActorAddress("127.0.0.1", 9000, "/a/b") == parse_actor_url(
        "headwater://127.0.0.1:9000/a/b/"
    )
    assert 7701 == parse_actor_url("headwater://localhost/x").port
    assert "headwater://h:1/x" == parse_actor_url("headwater://h:1/x").url
    for bad in ("http://h:1/x", "headwater://h:1/", "headwater:///x", "headwater://h:99999/x"):
        with pytest.raises(InvalidArgument, match="URL"):
            parse_actor_url(bad)


def test_reply_encoding() -> None:
    """Replies are registered messages or plain values; others are refused."""
    for value in (None, 1, 2.5, "s", b"b", [1, [2]], {"k": [None]}, True):
        assert value == decode_reply(KIT_REGISTRY, encode_reply(KIT_REGISTRY, value))
    assert Put(3) == decode_reply(KIT_REGISTRY, encode_reply(KIT_REGISTRY, Put(3)))
    for bad in (object(), {1: 2}, Unregistered(1), {1.5}):
        with pytest.raises(LocalProtocolError):
            encode_reply(KIT_REGISTRY, bad)
    with pytest.raises(RemoteProtocolError):
        decode_reply(KIT_REGISTRY, {})


async def test_keepalive_declares_a_silent_peer_unreachable(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An idle but healthy link stays up (pings answered); a link that goes
    silent without closing is declared lost after 3 x keepalive, and the
    monitor fires 'unreachable'."""
    from headwater.testing import FaultyStream
    from headwater.testing._actor_kit import Echo

    async with kit_system() as system, trio.open_nursery() as nursery:
        link = MemoryLink(system, nursery)
        faulty: list[FaultyStream] = []

        async def opener(host: str, port: int) -> trio.abc.Stream:
            faulty.append(FaultyStream(await link.open(host, port)))
            return faulty[-1]

        async with open_actor_client(KIT_REGISTRY, opener=opener, keepalive=2.0) as client:
            ref = await _target(client)
            monitor = await ref.monitor()
            await trio.sleep(60)  # idle: pings keep it alive
            assert monitor.down is None
            assert Echo("still") == await ref.ask(Echo("still"))
            start = trio.current_time()
            faulty[0].stall()
            down = await monitor.wait()
            assert "unreachable" == down.reason
            assert "keepalive" in down.detail
            assert 4.0 <= trio.current_time() - start <= 8.0
            await ref.tell(Put(1))  # the next use reconnects on a fresh stream
            assert 2 == len(faulty)
        with pytest.raises(InvalidArgument, match="keepalive"):
            async with open_actor_client(KIT_REGISTRY, keepalive=0):
                pass  # pragma: no cover
        nursery.cancel_scope.cancel()


async def test_silent_peers_time_out_on_both_sides(autojump_clock: trio.abc.Clock) -> None:
    """A server that never answers the hello fails the lookup after
    3 x keepalive; a client that never speaks, or goes idle past
    idle_timeout, is sent a timeout error frame and closed."""
    from headwater.transport import FrameDecoder

    kept: list[trio.abc.Stream] = []

    async def mute(host: str, port: int) -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        kept.append(server_end)  # nobody ever reads or answers it
        return client_end

    async with open_actor_client(KIT_REGISTRY, opener=mute, keepalive=1.0) as client:
        start = trio.current_time()
        with pytest.raises(ConnectionLostError, match="handshake"):
            await _target(client)
        assert 3.0 == pytest.approx(trio.current_time() - start)

    async with kit_system() as system:
        for idle, speak in ((None, False), (4.0, True)):
            client_end, server_end = trio.testing.memory_stream_pair()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(
                        serve_actor_stream,
                        system,
                        KIT_REGISTRY,
                        server_end,
                        handshake_timeout=2.0,
                        idle_timeout=idle,
                    )
                )
                if speak:
                    from headwater.transport import ClientConnection

                    await client_end.send_all(ClientConnection().data_to_send())
                start = trio.current_time()
                decoder = FrameDecoder()
                while data := await client_end.receive_some(4096):
                    decoder.feed(data)
                frames = []
                while (frame := decoder.next_frame()) is not None:
                    frames.append(frame)
                assert ("error", "timeout") == (frames[-1]["t"], frames[-1]["code"])
                assert (4.0 if speak else 2.0) == pytest.approx(trio.current_time() - start)


async def test_a_lookup_connecting_as_the_client_closes_closes_its_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A lookup from a task outside the client's block whose connection
    opens only after the client closed raises ClosedError and closes that
    stream (it used to leak it: its nursery was gone)."""
    release = trio.Event()
    far_ends: list[trio.abc.Stream] = []
    failures: list[BaseException] = []

    async def slow(host: str, port: int) -> trio.abc.Stream:
        await release.wait()
        client_end, server_end = trio.testing.memory_stream_pair()
        far_ends.append(server_end)
        return client_end

    async with trio.open_nursery() as outside:
        async with open_actor_client(KIT_REGISTRY, opener=slow) as client:

            async def look() -> None:
                try:
                    await client.lookup("headwater://peer:1/kit/target")
                except ClosedError as exc:
                    failures.append(exc)

            outside.start_soon(look)
            await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert 1 == len(failures)
    with trio.fail_after(5):
        assert b"" == await far_ends[0].receive_some(1024)


async def test_a_demonitor_sent_with_its_monitor_ends_the_monitor(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A monitor and its demonitor in one write: the demonitor may be handled
    before the monitor registered (it awaits the actor's cell); the monitor
    is still ended ('demonitored') instead of holding its slot for ever."""
    from headwater.transport import ClientConnection, ResponseReceived

    async with kit_system() as system:
        client_end, server_end = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_actor_stream, system, KIT_REGISTRY, server_end)
            conn = ClientConnection()
            await client_end.send_all(conn.data_to_send())
            while conn.state != "READY":
                conn.receive_data(await client_end.receive_some(65536))
                conn.next_event()
            watch = conn.send_request("monitor", {"path": "/kit/target"})
            conn.send_request("demonitor", {"monitor": watch})
            await client_end.send_all(conn.data_to_send())
            answers: dict[int, dict[str, object]] = {}
            with trio.fail_after(10):
                while watch not in answers:
                    conn.receive_data(await client_end.receive_some(65536))
                    while (event := conn.next_event()) is not None:
                        assert isinstance(event, ResponseReceived)
                        answers[event.id] = event.body
            assert "demonitored" == answers[watch]["reason"]
            nursery.cancel_scope.cancel()


async def test_a_remote_ask_takes_few_task_steps(autojump_clock: trio.abc.Clock) -> None:
    """An ask over a memory connection runs at most 20 Trio task steps (as
    before the drivers were one per side: they must not add hops)."""
    from headwater.testing._actor_kit import Echo

    class Steps(trio.abc.Instrument):
        counting = False
        steps = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if self.counting:
                self.steps += 1

    steps = Steps()
    async with kit_system() as system, trio.open_nursery() as nursery:
        link = MemoryLink(system, nursery)
        async with open_actor_client(KIT_REGISTRY, opener=link.open) as client:
            ref = await client.lookup("headwater://mem:1/kit/target")
            await ref.ask(Echo("warm"))
            counts = []
            trio.lowlevel.add_instrument(steps)
            try:
                for _ in range(9):
                    await trio.testing.wait_all_tasks_blocked()
                    steps.counting, steps.steps = True, 0
                    await ref.ask(Echo("x"))
                    steps.counting = False
                    counts.append(steps.steps)
            finally:
                trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()
    assert sorted(counts)[4] <= 20
