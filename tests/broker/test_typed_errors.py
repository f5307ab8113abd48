"""Every public context manager raises the typed error itself, never an
``ExceptionGroup`` of one, embedded and over the TCP protocol (issue 11,
point 6): ``except headwater.UnknownTopicError`` around ``async with`` works."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import headwater
from headwater import _protocol as p
from headwater.actors import ActorSystem, open_actor_client, open_actor_system, serve_actor_stream
from headwater.broker import open_broker, open_server
from headwater.journal import SimulatedFileSystem
from headwater.testing import KIT_REGISTRY, connect_in_memory

from .conftest import Connect

DATA = "/data"


class Boom(Exception):
    """A user's own error, raised inside an ``async with`` block."""


async def test_producer_send_to_an_unknown_topic_raises_the_typed_error(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """``except UnknownTopicError`` around ``async with client.producer()``
    catches a send to a missing topic, and the client and broker around it
    close without raising again."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        with pytest.raises(headwater.UnknownTopicError, match="no-such-topic") as info:
            async with client.producer() as producer:
                await producer.send("no-such-topic", b"x")
        assert type(info.value) is headwater.UnknownTopicError
        # The client is still usable after the failed block.
        await client.create_topic("t")
        assert ["t"] == [t.name for t in await client.list_topics()]


async def test_unknown_topic_leaves_every_enclosing_manager_typed(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """The same error crosses the producer, the client and the broker blocks
    as itself."""
    with pytest.raises(headwater.UnknownTopicError) as info:
        async with (
            open_broker(DATA, fs=SimulatedFileSystem()) as broker,
            connect(broker) as client,
            client.producer() as producer,
        ):
            await producer.send("no-such-topic", b"x")
    assert type(info.value) is headwater.UnknownTopicError


async def test_a_user_error_in_the_producer_block_comes_out_as_itself(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """A KeyError in user code inside ``async with producer`` is that very
    KeyError (same object, same cause), and events queued before it fail
    with ClosedError instead of being sent."""
    cause = ValueError("why")
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("t")
        raised = KeyError("missing")
        with pytest.raises(KeyError) as info:
            async with client.producer(linger=10.0) as producer:
                await producer.partitions_of("t")
                handle = producer.send_nowait("t", b"queued")
                raise raised from cause
        assert info.value is raised
        assert info.value.__cause__ is cause
        with pytest.raises(headwater.ClosedError):
            await handle.wait()


async def test_an_error_during_the_exit_flush_is_typed(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """A HeadwaterError raised while leaving the block (the flush finds the
    client closed) comes out as itself, and the queued event fails."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("t")
        with pytest.raises(headwater.ClosedError) as info:
            async with client.producer(linger=10.0) as producer:
                await producer.partitions_of("t")
                handle = producer.send_nowait("t", b"queued")
                await client.aclose()
        assert type(info.value) is headwater.ClosedError
        with pytest.raises(headwater.ClosedError):
            await handle.wait()


async def test_cancelling_a_blocked_exit_flush_closes_the_producer(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """A cancel scope around the block that fires during the exit flush ends
    it cleanly (the producer's nursery is exited, nothing is left running)."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        handle_request = broker.service.handle

        async def stall_produces(request: object, **options: Any) -> object:
            if isinstance(request, p.Produce):
                await trio.sleep_forever()
            return await handle_request(request, **options)

        broker.service.handle = stall_produces  # type: ignore[method-assign]
        async with connect(broker) as client:
            await client.create_topic("t")
            handles = []
            with trio.move_on_after(5) as scope:
                async with client.producer(linger=0.0) as producer:
                    await producer.partitions_of("t")
                    handles.append(producer.send_nowait("t", b"never"))
            assert scope.cancelled_caught
            assert 5.0 == trio.current_time()
            with pytest.raises(headwater.ClosedError):
                handles[0].result()
            # The nursery stack is intact: a new producer works.
            async with client.producer() as producer:
                assert producer.identity is not None


async def test_a_user_error_in_the_client_block_keeps_its_cause(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """``async with connect(...)``/``broker.connect()`` re-raise the body's
    error as itself, with its ``__cause__``."""
    cause = OSError("the cause")
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        with pytest.raises(Boom) as info:
            async with connect(broker):
                raise Boom("from the body") from cause
        assert info.value.__cause__ is cause


async def test_open_server_raises_the_body_error_as_itself(autojump_clock: trio.abc.Clock) -> None:
    """``open_server`` owns a nursery; an error in its block leaves as itself."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        with pytest.raises(headwater.UnknownTopicError):
            async with open_server(broker, listen=False) as server, connect_in_memory(server) as c:
                await c.describe_topic("no-such-topic")
        with pytest.raises(Boom):
            async with open_server(broker, listen=False):
                raise Boom


async def test_open_broker_raises_the_body_error_as_itself(autojump_clock: trio.abc.Clock) -> None:
    """``open_broker`` (the actor system under it) re-raises the body's error."""
    with pytest.raises(headwater.UnknownTopicError):
        async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
            await broker.handle(p.DescribeTopic("no-such-topic"))
    with pytest.raises(Boom):
        async with open_broker(DATA, fs=SimulatedFileSystem()):
            raise Boom


@asynccontextmanager
async def _actor_client(system: ActorSystem) -> AsyncIterator[headwater.actors.ActorClient]:
    async with trio.open_nursery() as nursery:

        async def opener(host: str, port: int) -> trio.abc.Stream:
            client_end, server_end = trio.testing.memory_stream_pair()
            nursery.start_soon(lambda: serve_actor_stream(system, KIT_REGISTRY, server_end))
            return client_end

        async with open_actor_client(KIT_REGISTRY, opener=opener) as client:
            yield client
        nursery.cancel_scope.cancel()


async def test_actor_system_and_remote_client_raise_typed_errors(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``open_actor_system`` and ``open_actor_client`` re-raise a typed error
    from their block as itself."""
    with pytest.raises(headwater.ActorNotFound):
        async with open_actor_system() as system, _actor_client(system) as client:
            await client.lookup("headwater://mem:1/no-such-actor")
    with pytest.raises(Boom):
        async with open_actor_system() as system, _actor_client(system):
            raise Boom


async def test_connect_given_an_embedded_broker_says_to_use_broker_connect() -> None:
    """``headwater.connect(broker)`` (a natural first try) is a typed error that
    names the call to make instead."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        with pytest.raises(headwater.InvalidArgument, match=r"broker\.connect\(\)"):
            async with headwater.connect(broker):  # type: ignore[arg-type]
                pass
