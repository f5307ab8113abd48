"""Serve a broker over memory streams: the TCP client path under MockClock.

The server's connection code and the remote client's channel run unchanged
(frames, handshake, pipelining, reconnects); only the byte stream is a
``trio.testing.memory_stream_pair`` instead of a socket, so a test that
uses :func:`connect_in_memory` exercises the whole remote path
deterministically (DECISIONS #1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from headwater.broker._server import Server
from headwater.client._client import Client
from headwater.client._tcp import TcpChannel, connect_channel

__all__ = ["connect_in_memory"]


@asynccontextmanager
async def connect_in_memory(
    server: Server, *, token: str | None = None, **client_options: Any
) -> AsyncIterator[Client]:
    """A remote :class:`~headwater.client.Client` of ``server`` (from
    ``open_server(broker, listen=False)``) over memory streams. Every
    (re)connection is a new memory stream pair served by ``server``."""

    async def open_stream() -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        await server.serve_stream(server_end, "memory")
        return client_end

    channel = TcpChannel(open_stream, address="memory", token=token)
    async with connect_channel(channel, **client_options) as client:
        yield client
