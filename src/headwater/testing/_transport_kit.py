"""The transport conformance kit: one suite, run against every transport."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import trio

from headwater._errors import (
    ClosedError,
    ConnectionLostError,
    LocalProtocolError,
    RemoteProtocolError,
)
from headwater.transport._connection import (
    ClientConnection,
    HandshakeComplete,
    RequestReceived,
    ResponseReceived,
    ServerConnection,
)
from headwater.transport._frames import encode_frame
from headwater.transport._messages import PROTOCOL_VERSIONS
from headwater.transport._stream import FramedStream

__all__ = ["TRANSPORT_CHECKS", "check_transport"]

Pair = tuple[FramedStream, FramedStream]
Maker = Callable[[], AbstractAsyncContextManager[Pair]]
Check = Callable[[FramedStream, FramedStream], Awaitable[None]]


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def _round_trip_small(a: FramedStream, b: FramedStream) -> None:
    """Small frames arrive equal and exactly once, in both directions."""
    frame = {"t": "x", "n": 1, "s": "héllo", "b": b"\x00\x01", "l": [1, None, True], "f": 1.5}
    await a.send_frame(frame)
    assert frame == await b.receive_frame()
    await a.send_frame({"t": "next"})  # exactly once: no duplicate, no loss
    assert await b.receive_frame() == {"t": "next"}
    await b.send_frame({"t": "y"})
    assert await a.receive_frame() == {"t": "y"}


async def _big_payloads_both_ways(a: FramedStream, b: FramedStream) -> None:
    """1 MiB byte payloads cross both ways at once without deadlock or change."""
    payload_a, payload_b = _payload(1 << 20, 1), _payload(1 << 20, 2)
    got: dict[str, object] = {}

    async def pump(src: FramedStream, dst: FramedStream, data: bytes, key: str) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.send_frame, {"t": "big", "data": data})
            frame = await dst.receive_frame()
            got[key] = frame["data"] if frame else None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a, b, payload_a, "a->b")
        nursery.start_soon(pump, b, a, payload_b, "b->a")
    assert got["a->b"] == payload_a
    assert got["b->a"] == payload_b


async def _pipelined_order(a: FramedStream, b: FramedStream) -> None:
    """Many frames sent back to back arrive complete and in order."""
    count = 300

    async def send_all() -> None:
        for i in range(count):
            await a.send_frame({"t": "seq", "i": i})

    received = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        for _ in range(count):
            frame = await b.receive_frame()
            assert frame is not None
            received.append(frame["i"])
    assert list(range(count)) == received


async def _concurrent_senders(a: FramedStream, b: FramedStream) -> None:
    """Frames from concurrent senders never interleave; each sender's order holds."""
    senders, each = 8, 25

    async def sender(k: int) -> None:
        for i in range(each):
            await a.send_frame({"t": "c", "k": k, "i": i, "pad": bytes(1000 * k)})

    seen: dict[int, list[int]] = {k: [] for k in range(senders)}
    async with trio.open_nursery() as nursery:
        for k in range(senders):
            nursery.start_soon(sender, k)
        for _ in range(senders * each):
            frame = await b.receive_frame()
            assert frame is not None
            assert bytes(1000 * frame["k"]) == frame["pad"]
            seen[frame["k"]].append(frame["i"])
    assert {k: list(range(each)) for k in range(senders)} == seen


async def _oversize_refused_locally(a: FramedStream, b: FramedStream) -> None:
    """A frame over the limit raises LocalProtocolError, sends nothing, and
    the stream stays usable."""
    try:
        await a.send_frame({"t": "huge", "data": bytes(a.max_frame_size + 1)})
    except LocalProtocolError:
        pass
    else:
        raise AssertionError("an oversize frame was sent")
    await a.send_frame({"t": "after"})
    assert await b.receive_frame() == {"t": "after"}


async def _garbage_is_remote_error(a: FramedStream, b: FramedStream) -> None:
    """A 4 GiB length prefix from the peer is a RemoteProtocolError at once."""
    await a.stream.send_all(b"\xff\xff\xff\xff" + b"junk")
    try:
        await b.receive_frame()
    except RemoteProtocolError:
        pass
    else:
        raise AssertionError("garbage was accepted")


async def _clean_close(a: FramedStream, b: FramedStream) -> None:
    """After a's aclose, b sees a clean end of stream and a's calls raise ClosedError."""
    await a.send_frame({"t": "last"})
    await a.aclose()
    await a.aclose()  # idempotent
    assert await b.receive_frame() == {"t": "last"}
    assert await b.receive_frame() is None
    for call in (lambda: a.send_frame({"t": "x"}), a.receive_frame):
        try:
            await call()
        except ClosedError:
            pass
        else:
            raise AssertionError("a closed stream was usable")


async def _peer_gone(a: FramedStream, b: FramedStream) -> None:
    """Sending to a peer that closed eventually raises ConnectionLostError."""
    await b.aclose()
    with trio.fail_after(10):
        for _ in range(10_000):
            try:
                await a.send_frame({"t": "ping", "pad": bytes(4096)})
            except ConnectionLostError:
                return
            await trio.sleep(0.001)
    raise AssertionError("sending to a closed peer never failed")


async def _eof_mid_frame(a: FramedStream, b: FramedStream) -> None:
    """An end of stream inside a frame is ConnectionLostError, not a clean EOF."""
    data = encode_frame({"t": "cut", "data": bytes(100)})
    await a.stream.send_all(data[:50])
    await a.aclose()
    try:
        await b.receive_frame()
    except ConnectionLostError:
        pass
    else:
        raise AssertionError("a truncated frame at EOF was not reported")


async def _protocol_session(a: FramedStream, b: FramedStream) -> None:
    """Handshake with auth, then pipelined requests answered out of order."""
    client = ClientConnection(token="s3cret")
    server = ServerConnection(token="s3cret", server="kit")

    async def pump(framed: FramedStream, conn: ClientConnection | ServerConnection) -> object:
        while True:
            event = conn.next_event()
            if event is not None:
                return event
            conn.receive_data(await framed.receive_data())

    await a.send_data(client.data_to_send())
    assert HandshakeComplete(PROTOCOL_VERSIONS[-1], "headwater-python", True) == await pump(
        b, server
    )
    await b.send_data(server.data_to_send())
    assert isinstance(await pump(a, client), HandshakeComplete)
    ids = [client.send_request("echo", {"i": i}) for i in range(20)]
    await a.send_data(client.data_to_send())
    requests = []
    for _ in ids:
        event = await pump(b, server)
        assert isinstance(event, RequestReceived)
        requests.append(event)
    for request in reversed(requests):
        server.send_response(request.id, {"i": request.body["i"] * 10})
    await b.send_data(server.data_to_send())
    answers = {}
    for _ in ids:
        event = await pump(a, client)
        assert isinstance(event, ResponseReceived)
        answers[event.id] = event.body["i"]
    assert {rid: i * 10 for i, rid in enumerate(ids)} == answers
    assert frozenset() == client.in_flight


TRANSPORT_CHECKS: tuple[Check, ...] = (
    _round_trip_small,
    _big_payloads_both_ways,
    _pipelined_order,
    _concurrent_senders,
    _oversize_refused_locally,
    _garbage_is_remote_error,
    _clean_close,
    _peer_gone,
    _eof_mid_frame,
    _protocol_session,
)
"""The behaviour checks :func:`check_transport` runs, in order."""


async def check_transport(maker: Maker) -> list[str]:
    """Run the transport conformance suite; return the names of the checks run.

    ``maker()`` must return an async context manager yielding a fresh pair of
    connected :class:`~headwater.transport.FramedStream` endpoints (and cleaning
    them up on exit); it is called once per check. A failing check raises
    ``AssertionError`` naming it. Each check is bounded by ``trio.fail_after(30)``
    on the current clock.
    """
    ran = []
    for check in TRANSPORT_CHECKS:
        name = check.__name__.lstrip("_")
        try:
            with trio.fail_after(30):
                async with maker() as (a, b):
                    await check(a, b)
        except AssertionError as exc:
            raise AssertionError(f"transport check {name!r} failed: {exc}") from exc
        ran.append(name)
    return ran
