"""The one driver per side (DECISIONS #31): deadlines on virtual time, a peer
that stops reading, a malformed frame, handler errors, clean shutdown."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest
import trio
import trio.testing

from headwater import (
    ActorFailed,
    ConnectionLostError,
    HeadwaterTimeoutError,
    InvalidArgument,
)
from headwater.transport import (
    INLINE,
    ClientConnection,
    ClientDriver,
    ConnectionClosed,
    ConnectionLimit,
    FrameDecoder,
    HandshakeComplete,
    RequestExpired,
    RequestReceived,
    ServerConnection,
    ServerDriver,
)


class _Waiter:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def set(self, value: dict[str, Any] | None, error: BaseException | None) -> None:
        self.value, self.error = value, error
        self.done.set()


async def _echo(request: RequestReceived) -> Mapping[str, Any]:
    if request.op == "sleep":
        await trio.sleep(request.body["seconds"])
    if request.op == "fail":
        raise InvalidArgument("bad field 'x'; give an int")
    if request.op == "bug":
        raise ValueError("a bug in the handler")
    if request.op == "big":
        return {"data": b"x" * request.body["size"]}
    return {"echo": request.body}


def _server(stream: trio.abc.Stream, **options: Any) -> ServerDriver:
    conn = ServerConnection(
        now=trio.current_time(),
        handshake_timeout=options.pop("handshake_timeout", None),
        idle_timeout=options.pop("idle_timeout", None),
    )
    return ServerDriver(stream, conn, options.pop("handle", _echo), **options)


async def _client(stream: trio.abc.Stream, **conn_options: Any) -> ClientDriver:
    conn = ClientConnection(now=trio.current_time(), **conn_options)
    driver = ClientDriver(stream, conn, address="test")
    event = await driver.handshake(ClientDriver.no_token("test", "give one"))
    assert isinstance(event, HandshakeComplete)
    return driver


async def _ask(driver: ClientDriver, op: str, body: dict[str, Any]) -> _Waiter:
    waiter = _Waiter()
    driver.pending[driver.conn.send_request(op, body)] = waiter
    await driver.flush()
    return waiter


async def _read_all(stream: trio.abc.Stream) -> list[dict[str, Any]]:
    decoder = FrameDecoder()
    while data := await stream.receive_some(65536):
        decoder.feed(data)
    return list(decoder.frames())


# ---- deadlines (sans-IO) ----------------------------------------------------


def test_server_deadlines_are_exact_and_the_idle_clock_restarts_after_the_last_answer() -> None:
    """next_deadline: the handshake deadline from construction, then idle
    from the later of the last bytes and the last answer; nothing while a
    request is in flight or a stream is open."""
    client = ClientConnection()
    server = ServerConnection(now=10.0, handshake_timeout=3.0, idle_timeout=7.0)
    assert 13.0 == server.next_deadline(10.0)
    server.receive_data(client.data_to_send(), 11.0)
    assert isinstance(server.next_event(), HandshakeComplete)
    assert 18.0 == server.next_deadline(11.0)
    client.receive_data(server.data_to_send())
    client.next_event()
    request_id = client.send_request("op", {})
    server.receive_data(client.data_to_send(), 12.0)
    assert isinstance(server.next_event(), RequestReceived)
    assert math.inf == server.next_deadline(12.0)
    server.send_response(request_id, {})
    server.touch(30.0)  # the answer went out at 30
    assert 37.0 == server.next_deadline(30.0)
    server.streams_open = 1
    assert math.inf == server.next_deadline(31.0)
    server.streams_open = 0
    server.handle_timeout(36.9)
    assert server.state == "READY"
    server.handle_timeout(38.0)
    closed = server.next_event()
    assert isinstance(closed, ConnectionClosed)
    assert isinstance(closed.error, HeadwaterTimeoutError)
    client.receive_data(server.data_to_send())
    events = [client.next_event(), client.next_event()]
    assert "timeout" == events[-1].code  # type: ignore[union-attr]


def test_client_keepalive_pings_then_declares_the_peer_lost() -> None:
    """A silent peer is pinged after keepalive (the answer is swallowed) and
    declared lost after 3 x keepalive; a request deadline reports
    RequestExpired once and leaves the id in flight."""
    client = ClientConnection(now=0.0, keepalive=2.0)
    server = ServerConnection()
    server.receive_data(client.data_to_send())
    server.next_event()
    client.receive_data(server.data_to_send(), 1.0)
    assert isinstance(client.next_event(), HandshakeComplete)
    assert 3.0 == client.next_deadline(1.0)
    client.handle_timeout(3.0)
    server.receive_data(client.data_to_send())
    ping = server.next_event()
    assert isinstance(ping, RequestReceived)
    assert "ping" == ping.op
    assert 7.0 == client.next_deadline(3.0)  # 3 x keepalive after the last byte
    server.send_response(ping.id, {})
    client.receive_data(server.data_to_send(), 4.0)
    assert client.next_event() is None  # our own ping's answer: swallowed
    request_id = client.send_request("op", {}, deadline=5.0)
    assert 5.0 == client.next_deadline(4.0)
    client.handle_timeout(5.0)
    assert RequestExpired(request_id) == client.next_event()
    assert request_id in client.in_flight
    client.handle_timeout(10.0)
    closed = client.next_event()
    assert isinstance(closed, ConnectionClosed)
    assert isinstance(closed.error, ConnectionLostError)
    assert "keepalive" in str(closed.error)


# ---- the drivers on virtual time ---------------------------------------------


async def test_a_silent_client_and_an_idle_one_time_out_exactly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The server driver sleeps until the core's deadline: a client that never
    speaks is closed after handshake_timeout, one idle after its last
    answer after idle_timeout (not idle_timeout after its last bytes)."""
    silent, far = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_server(far, handshake_timeout=3.0).run)
        start = trio.current_time()
        frames = await _read_all(silent)
        assert "timeout" == frames[-1]["code"]
        assert 3.0 == trio.current_time() - start

        near, far = trio.testing.memory_stream_pair()
        nursery.start_soon(_server(far, idle_timeout=7.0).run)
        client = await _client(near)
        waiter = await _ask(client, "sleep", {"seconds": 20})
        ended = await client.run()  # answered at 20 s, closed 7 s after that
        assert {"echo": {"seconds": 20}} == waiter.value
        assert isinstance(ended, HeadwaterTimeoutError)
        assert 3.0 + 20.0 + 7.0 == trio.current_time() - start


async def test_the_client_driver_keeps_a_quiet_link_and_drops_a_dead_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Keepalive pings keep an idle connection up; a peer that stops
    answering is declared lost after 3 x keepalive, with no timer task."""
    near, far = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        server = _server(far)
        nursery.start_soon(server.run)
        client = await _client(near, keepalive=2.0)
        ended: list[BaseException] = []

        async def run() -> None:
            ended.append(await client.run())

        nursery.start_soon(run)
        await trio.sleep(60)
        assert [] == ended
        assert server.requests >= 20  # pings
        server.stop_reading(0)  # the peer goes silent without closing
        await trio.testing.wait_all_tasks_blocked()
        # server closed the stream: the client reads EOF
        await trio.sleep(10)
        assert 1 == len(ended)
        assert isinstance(ended[0], ConnectionLostError)


async def test_a_client_that_stops_reading_is_dropped_after_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Big answers to a peer that never reads: one write waits send_timeout,
    then that connection alone is closed (client_not_reading)."""
    near, far = trio.testing.lockstep_stream_pair()
    server = _server(far, send_timeout=20.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        conn = ClientConnection()
        await near.send_all(conn.data_to_send())
        conn.receive_data(await near.receive_some(65536))
        assert isinstance(conn.next_event(), HandshakeComplete)
        conn.send_request("big", {"size": 1 << 20})
        await near.send_all(conn.data_to_send())  # then never read again
        start = trio.current_time()
    assert 20.0 == trio.current_time() - start  # server.run() returned: the nursery ended
    assert "read nothing" in server.reason
    assert "CLOSED" == server.conn.state


async def test_a_malformed_frame_closes_only_that_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Garbage on one connection gets an error frame and a close; a second
    connection served beside it keeps answering."""
    bad, bad_far = trio.testing.memory_stream_pair()
    good, good_far = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_server(bad_far).run)
        nursery.start_soon(_server(good_far).run)
        client = await _client(good)
        nursery.start_soon(client.run)
        await bad.send_all(b"\x00\x00\x00\x05\xff\xff\xff\xff\xff")
        frames = await _read_all(bad)
        assert "remote_protocol_error" == frames[-1]["code"]
        waiter = await _ask(client, "echo", {"n": 1})
        await waiter.done.wait()
        assert {"echo": {"n": 1}} == waiter.value
        nursery.cancel_scope.cancel()


async def test_handler_exceptions_become_typed_error_frames(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A HeadwaterError keeps its class on the wire; any other exception is
    logged (request_failed) and answered as actor_failed naming it; the
    connection goes on, and an INLINE route answers in arrival order."""
    near, far = trio.testing.memory_stream_pair()
    order: list[int] = []

    async def handle(request: RequestReceived) -> Mapping[str, Any]:
        order.append(request.id)
        return await _echo(request)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_server(far, handle=handle, route=lambda r: INLINE).run)
        client = await _client(near)
        nursery.start_soon(client.run)
        failed = await _ask(client, "fail", {})
        bug = await _ask(client, "bug", {})
        fine = await _ask(client, "echo", {})
        await fine.done.wait()
        assert isinstance(failed.error, InvalidArgument)
        assert "give an int" in str(failed.error)
        assert isinstance(bug.error, ActorFailed)  # an unexpected exception, by its class name
        assert "ValueError: a bug in the handler" in str(bug.error)
        assert {"echo": {}} == fine.value
        assert [1, 2, 3] == order
        assert any("request_failed" in r.getMessage() for r in caplog.records)
        nursery.cancel_scope.cancel()


async def test_stop_reading_lets_requests_finish_then_closes_every_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A drain: each driver stops reading, its request in flight is answered
    within the grace, then the stream closes; the limit sees the last one go."""
    limit = ConnectionLimit(10)
    drivers: list[ServerDriver] = []
    clients: list[ClientDriver] = []
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            near, far = trio.testing.memory_stream_pair()
            driver = _server(far)
            drivers.append(driver)
            release = limit.opened()

            async def run(driver: ServerDriver = driver, release: Any = release) -> None:
                try:
                    await driver.run()
                finally:
                    release()

            nursery.start_soon(run)
            client = await _client(near)
            nursery.start_soon(client.run)
            clients.append(client)
        assert 3 == limit.count
        waiters = [await _ask(c, "sleep", {"seconds": 5}) for c in clients]
        await trio.testing.wait_all_tasks_blocked()
        limit.draining = True
        assert limit.full()
        for driver in drivers:
            driver.stop_reading(10.0)
        with trio.fail_after(6):
            await limit.wait_idle()
        for waiter in waiters:
            assert {"echo": {"seconds": 5}} == waiter.value
        assert all("shutting down" in d.reason for d in drivers)
        nursery.cancel_scope.cancel()


class _GatedStream(trio.abc.Stream):
    """A stream whose reads wait while ``open`` is unset (a peer that pauses reading)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.open = trio.Event()
        self.open.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self.open.wait()
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_caller_cancelled_midway_through_a_write_leaves_no_half_frame() -> None:
    """Over TCP, a request whose caller is cancelled while its frame is half
    written (the server paused reading, the socket buffers are full) is
    still sent whole by the writer task, and the next request, queued behind
    it, is answered: the connection stays usable. (Before, the rest of the
    frame was dropped and the next frame read as garbage.)"""
    import socket

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        near = await trio.open_tcp_stream("127.0.0.1", port)
        far = _GatedStream(await listeners[0].accept())
        for s, opt in ((near.socket, socket.SO_SNDBUF), (far.inner.socket, socket.SO_RCVBUF)):  # type: ignore[attr-defined]
            s.setsockopt(socket.SOL_SOCKET, opt, 32 * 1024)
        nursery.start_soon(_server(far).run)
        client = await _client(near)
        nursery.start_soon(client.run)
        far.open = trio.Event()  # the server stops reading
        blob = b"x" * (4 << 20)
        big = _Waiter()
        with trio.move_on_after(0.2) as scope:
            await _ask_into(client, big, {"blob": blob})
        assert scope.cancelled_caught, "the write should have blocked"
        small = _Waiter()
        nursery.start_soon(_ask_into, client, small, {"n": 2})  # waits behind the rest
        await trio.testing.wait_all_tasks_blocked()
        far.open.set()
        with trio.fail_after(10):
            await small.done.wait()
            await big.done.wait()
        assert {"echo": {"n": 2}} == small.value
        assert big.value is not None
        assert blob == big.value["echo"]["blob"]
        assert client.lost is None
        nursery.cancel_scope.cancel()
    for resource in (near, far, *listeners):
        await resource.aclose()


async def test_a_caller_cancelled_before_its_write_still_gets_its_frame_sent() -> None:
    """Over TCP, cancelled before a byte left (its scope was already
    cancelled), the frames it took go out through the writer task instead
    of being lost."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        near = await trio.open_tcp_stream("127.0.0.1", port)
        far = await listeners[0].accept()
        nursery.start_soon(_server(far).run)
        client = await _client(near)
        nursery.start_soon(client.run)
        waiter = _Waiter()
        with trio.CancelScope() as scope:
            scope.cancel()
            await _ask_into(client, waiter, {"n": 1})
        with trio.fail_after(10):
            await waiter.done.wait()
        assert {"echo": {"n": 1}} == waiter.value
        assert client.lost is None
        nursery.cancel_scope.cancel()
    for resource in (near, far, *listeners):
        await resource.aclose()


async def _ask_into(driver: ClientDriver, waiter: _Waiter, body: dict[str, Any]) -> None:
    driver.pending[driver.conn.send_request("echo", body)] = waiter
    await driver.flush()
