"""TcpChannel.request: a free slot of the connection's window is taken
without a task step, and a request made in an already cancelled scope
queues nothing (no frame lost from the stream, no slot held)."""

from __future__ import annotations

import trio
import trio.testing

from headwater import _protocol as p
from headwater.broker import open_broker, open_server
from headwater.client import TcpChannel, connect_channel
from headwater.journal import SimulatedFileSystem


async def test_a_request_in_a_cancelled_scope_sends_nothing_and_keeps_every_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a window of 2 requests, ten requests made in cancelled scopes are
    each cancelled before anything is queued: none is in flight afterwards,
    and requests made after them (two at once, filling the window) are all
    answered on the same connection."""
    async with (
        open_broker("/d", fs=SimulatedFileSystem()) as broker,
        open_server(broker, listen=False) as server,
    ):

        async def open_stream() -> trio.abc.Stream:
            client_end, server_end = trio.testing.memory_stream_pair()
            await server.serve_stream(server_end, "memory")
            return client_end

        channel = TcpChannel(open_stream, address="memory", max_in_flight=2)
        async with connect_channel(channel) as client:
            await client.create_topic("t")
            session = channel._session
            assert session is not None
            for _ in range(10):
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await channel.request(p.DescribeTopic("t"))
                assert scope.cancelled_caught
            assert ({}, 2) == (dict(session.pending), session.slots.value)
            answers: list[p.TopicDescription] = []

            async def one() -> None:
                answers.append(await channel.request(p.DescribeTopic("t")))

            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    for _ in range(6):
                        nursery.start_soon(one)
            assert ["t"] * 6 == [a.topic.name for a in answers]
            assert channel._session is session  # no reconnection was needed
