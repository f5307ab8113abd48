"""The transport conformance kit over real loopback TCP (real clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from headwater.testing import TRANSPORT_CHECKS, check_transport
from headwater.transport import FramedStream

pytestmark = pytest.mark.crash


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[FramedStream, FramedStream]]:
    accepted: list[trio.SocketStream] = []
    opened: list[trio.SocketStream] = []
    try:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listeners[0] as listener:
            port = listener.socket.getsockname()[1]
            async with trio.open_nursery() as nursery:

                async def accept_one() -> None:
                    accepted.append(await listener.accept())

                nursery.start_soon(accept_one)
                opened.append(await trio.open_tcp_stream("127.0.0.1", port))
        a = FramedStream(opened[0], max_frame_size=4 << 20)
        b = FramedStream(accepted[0], max_frame_size=4 << 20)
        yield a, b
    finally:
        # Synchronous closes: every socket is closed even when cancelled
        # (an awaited close re-raises the cancel and skips the next one).
        for stream in (*opened, *accepted):
            stream.socket.close()


async def test_loopback_tcp_conforms() -> None:
    """Every check passes over a real TCP connection on 127.0.0.1."""
    with trio.fail_after(60):
        ran = await check_transport(tcp_pair)
    assert len(TRANSPORT_CHECKS) == len(ran)
