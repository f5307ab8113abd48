"""Client recovery paths over memory streams with injected faults (MockClock):
what the real-TCP network-fault suite found, pinned down deterministically."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from headwater import HeadwaterTimeoutError
from headwater import _protocol as p
from headwater.broker import ServerConfig, open_broker, open_server
from headwater.broker._server import Server
from headwater.client import Client
from headwater.client._tcp import TcpChannel, connect_channel
from headwater.journal import SimulatedFileSystem
from headwater.testing import FaultyStream


@asynccontextmanager
async def faulty_client(server: Server, streams: list[FaultyStream]) -> AsyncIterator[Client]:
    """A remote client whose every connection is a FaultyStream (appended to
    ``streams`` so the test can reach the current one)."""

    async def open_stream() -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        await server.serve_stream(server_end, "faulty")
        stream = FaultyStream(client_end)
        streams.append(stream)
        return stream

    channel = TcpChannel(open_stream, address="memory", connect_timeout=1)
    async with connect_channel(channel, request_timeout=1) as client:
        yield client


async def test_a_failed_rejoin_is_retried_not_fatal(autojump_clock: trio.testing.MockClock) -> None:
    """A member misses its session (its heartbeats are lost), learns it was
    dropped, and its JoinGroup is lost too: the consumer keeps going, joins
    on the next heartbeat and reads new events."""
    streams: list[FaultyStream] = []
    dropping = {"heartbeat": False, "join_group": False}

    def hook(data: bytes) -> bytes:
        for op, armed in dropping.items():
            if armed and op.encode() in data:
                streams[-1].drop_sends += 1
                if op == "join_group":
                    dropping[op] = False  # just once
        return data

    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        open_server(broker, ServerConfig(), listen=False) as server,
        faulty_client(server, streams) as client,
    ):
        await client.create_topic("t")
        streams[-1].send_hook = hook
        # Pulled fetches keep answers arriving, so a lost heartbeat is just
        # lost (a quiet pushed-fetch connection would be re-made instead).
        async with client.consumer(
            "t", group="g", session_timeout=3, request_timeout=1, max_wait=0.2, fetch_credit=0
        ) as consumer:
            assert consumer.membership is not None
            first = consumer.membership.member_id
            dropping["heartbeat"] = True
            await trio.sleep(5)  # the session expires
            dropping["heartbeat"] = False
            dropping["join_group"] = True
            await trio.sleep(5)  # UnknownMember -> rejoin (lost) -> rejoin
            assert not dropping["join_group"], "the rejoin was never attempted"
            assert consumer.membership is not None
            assert first != consumer.membership.member_id
            async with client.producer() as producer:
                await producer.send("t", "after")
            with trio.fail_after(10):
                event = await consumer.__anext__()
            assert "after" == event.value


async def test_a_connection_that_answers_nothing_is_replaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The connection goes silent (stalled both ways, never closed): the first
    request times out with a clear error, the client drops that connection
    (nothing arrived since the request went out) and the next request runs
    on a new one."""
    streams: list[FaultyStream] = []
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        open_server(broker, ServerConfig(), listen=False) as server,
        faulty_client(server, streams) as client,
    ):
        await client.create_topic("t")
        streams[-1].stall()
        with pytest.raises(HeadwaterTimeoutError, match="connection is re-made"):
            await client.list_topics()
        with trio.fail_after(5):
            assert ["t"] == [t.name for t in await client.list_topics()]
        assert 2 == len(streams)


async def test_a_slow_but_live_connection_is_kept(autojump_clock: trio.testing.MockClock) -> None:
    """A request times out while other answers keep arriving on the same
    connection: the connection is alive, so it is kept."""
    streams: list[FaultyStream] = []
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        open_server(broker, ServerConfig(), listen=False) as server,
        faulty_client(server, streams) as client,
    ):
        await client.create_topic("t")
        channel = client._channel
        async with trio.open_nursery() as nursery:

            async def chatter() -> None:
                while True:
                    await client.list_topics()
                    await trio.sleep(0.1)

            nursery.start_soon(chatter)
            # A long poll on an empty partition outlasting its own timeout.
            with pytest.raises(HeadwaterTimeoutError) as info:
                await channel.request(p.Fetch("t", 0, 0, 1024, 5.0), timeout=0.5)
            assert "re-made" not in str(info.value)
            nursery.cancel_scope.cancel()
        assert 1 == len(streams)


class _PausingStream(trio.abc.Stream):
    """Hands out its first received chunk only once ``resume`` is set, in a
    shielded wait: the reader is then scheduled with data in hand even if
    cancelled meanwhile (how a real socket read that completed in the same
    scheduler batch as a cancel behaves)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received = trio.Event()
        self.resume = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = bytes(await self.inner.receive_some(max_bytes))
        if not self.received.is_set():
            self.received.set()
            with trio.CancelScope(shield=True):
                await self.resume.wait()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:  # pragma: no cover - not used by the client
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_client_closed_as_its_handshake_completes_closes_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """aclose() runs while the handshake's last answer is already read but
    not yet handled (no session to close yet): the connection task still
    closes the stream it just opened (a real socket would leak and warn)."""
    streams: list[_PausingStream] = []
    client_ends: list[trio.abc.Stream] = []
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        open_server(broker, ServerConfig(), listen=False) as server,
    ):

        async def open_stream() -> trio.abc.Stream:
            client_end, server_end = trio.testing.memory_stream_pair()
            await server.serve_stream(server_end, "pausing")
            client_ends.append(client_end)
            streams.append(_PausingStream(client_end))
            return streams[-1]

        channel = TcpChannel(open_stream, address="memory", connect_timeout=1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run)
            await trio.testing.wait_all_tasks_blocked()
            assert streams, "the channel never connected"
            await streams[0].received.wait()
            await channel.aclose()
            streams[0].resume.set()
        with pytest.raises(trio.ClosedResourceError):
            await client_ends[0].send_all(b"x")
