"""The server's connection handling over memory streams (MockClock): limits,
authentication, pipelining, reconnects, hostile frames and draining."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import cbor2
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater import (
    AuthenticationError,
    ConnectionLostError,
    InvalidArgument,
    ServerBusyError,
    UnknownTopicError,
)
from headwater import _protocol as p
from headwater.broker import Broker, Server, ServerConfig, open_broker, open_server
from headwater.journal import SimulatedFileSystem
from headwater.testing import connect_in_memory
from headwater.transport import ClientConnection, ResponseReceived, encode_frame

DATA = "/data"


@asynccontextmanager
async def serving(**config: Any) -> AsyncIterator[tuple[Broker, Server]]:
    async with (
        open_broker(DATA, fs=SimulatedFileSystem()) as broker,
        open_server(broker, ServerConfig(**config), listen=False) as server,
    ):
        yield broker, server


async def raw_session(server: Server) -> trio.abc.Stream:
    """A bare memory stream served by ``server`` (the test speaks bytes)."""
    client_end, server_end = trio.testing.memory_stream_pair()
    await server.serve_stream(server_end, "raw")
    return client_end


async def read_frames(stream: trio.abc.Stream) -> list[dict[str, Any]]:
    """Every frame the server sends until it closes the stream."""
    data = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    frames = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        frames.append(cbor2.loads(data[4 : 4 + length]))
        data = data[4 + length :]
    return frames


async def handshake(stream: trio.abc.Stream) -> ClientConnection:
    conn = ClientConnection()
    await stream.send_all(conn.data_to_send())
    while conn.state != "READY":
        conn.receive_data(await stream.receive_some(65536))
        conn.next_event()
    return conn


async def test_remote_client_is_a_connection_child_and_errors_keep_their_class(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A remote client shows up as /server/conn-N; a broker error reaches it as itself."""
    async with serving() as (broker, server), connect_in_memory(server) as client:
        await client.create_topic("orders", partitions=2)
        paths = [n.path for n in broker.tree().walk()]
        assert "/server/conn-1" in paths
        with pytest.raises(UnknownTopicError, match="does not exist"):
            await client.describe_topic("nope")
        assert ["orders"] == [t.name for t in await client.list_topics()]
        tree = await client.tree()
        assert "/" == tree["path"]


async def test_pipelined_requests_share_one_connection(autojump_clock: trio.abc.Clock) -> None:
    """Two hundred concurrent requests on one connection all get their own answer,
    while a long poll waits among them."""
    async with serving(max_in_flight=16) as (_broker, server), connect_in_memory(server) as client:
        await client.create_topic("t", partitions=4)
        results: dict[int, Any] = {}
        async with trio.open_nursery() as nursery:
            channel = client._channel
            nursery.start_soon(channel.request, p.Fetch("t", 3, 0, 1024, 5.0))

            async def one(i: int) -> None:
                results[i] = await channel.request(p.DescribeTopic("t"))

            for i in range(200):
                nursery.start_soon(one, i)
        assert 200 == len(results)
        assert {4} == {len(r.partitions) for r in results.values()}
        assert 1 == server.connections


async def test_dropped_connection_reconnects_and_idempotence_holds(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Killing the connection actor mid-stream: the client reconnects with
    backoff and the idempotent producer stores every event exactly once."""
    async with serving() as (broker, server), connect_in_memory(server) as client:
        await client.create_topic("t", partitions=1)
        async with client.producer(max_batch_events=10) as producer:
            await producer.partitions_of("t")
            for round in range(3):
                for i in range(100 * round, 100 * round + 100):
                    producer.send_nowait("t", i)
                for _ in range(3):
                    await trio.lowlevel.checkpoint()  # batches are now in flight
                conns = [n.path for n in broker.tree().walk() if "/conn-" in n.path]
                assert [f"/server/conn-{round + 1}"] == conns
                await broker.kill(conns[0])
                await producer.flush()
        assert 3 == client._channel.reconnects
        async with client.consumer("t") as consumer:
            values = [e.value for e in await consumer.getmany(1000, timeout=1)]
        assert list(range(300)) == values


async def test_token_authentication(autojump_clock: trio.abc.Clock) -> None:
    """The right token gets in; a wrong or missing one gets AuthenticationError."""
    async with serving(auth_token="s3cret") as (_broker, server):
        async with connect_in_memory(server, token="s3cret") as client:
            await client.create_topic("t")
        with pytest.raises(AuthenticationError, match="wrong"):
            async with connect_in_memory(server, token="guess"):
                pass
        with pytest.raises(AuthenticationError, match="requires a token"):
            async with connect_in_memory(server):
                pass
        # An unauthenticated client can do nothing but the handshake.
        stream = await raw_session(server)
        conn = ClientConnection()
        await stream.send_all(conn.data_to_send())
        frame = {"t": "req", "id": 1, "op": "list_topics", "body": {}}
        await stream.send_all(encode_frame(frame))
        frames = await read_frames(stream)
        assert "authentication_failed" == frames[-1]["code"]


async def test_connection_limit_refuses_with_server_busy(autojump_clock: trio.abc.Clock) -> None:
    """Beyond max_connections a client is refused with server_busy; others keep working."""
    async with (
        serving(max_connections=1) as (_broker, server),
        connect_in_memory(server) as first,
    ):
        with pytest.raises(ServerBusyError, match="limit"):
            async with connect_in_memory(server):
                pass
        await first.create_topic("still-works")


async def test_silent_and_idle_clients_are_closed(autojump_clock: trio.abc.Clock) -> None:
    """A client that never speaks is closed after handshake_timeout; an idle one
    after idle_timeout; each gets a timeout error frame first."""
    async with serving(handshake_timeout=3, idle_timeout=7) as (_broker, server):
        silent = await raw_session(server)
        start = trio.current_time()
        frames = await read_frames(silent)
        assert "timeout" == frames[-1]["code"]
        assert 3 == pytest.approx(trio.current_time() - start)
        idle = await raw_session(server)
        await handshake(idle)
        start = trio.current_time()
        frames = await read_frames(idle)
        assert "timeout" == frames[-1]["code"]
        assert 7 == pytest.approx(trio.current_time() - start)
        await trio.testing.wait_all_tasks_blocked()
        assert 0 == server.connections


async def test_the_idle_clock_restarts_when_the_last_answer_goes_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A long poll (20 s) on a connection with idle_timeout=7 keeps it open;
    once answered and quiet, it is closed 7 s later (it used to wait for
    bytes for ever: the idle clock only started at the next read)."""
    async with serving(idle_timeout=7) as (broker, server):
        async with broker.connect() as client:
            await client.create_topic("t")
        stream = await raw_session(server)
        conn = await handshake(stream)
        start = trio.current_time()
        conn.send_request("fetch", {"topic": "t", "partition": 0, "offset": 0, "max_wait": 20.0})
        await stream.send_all(conn.data_to_send())
        with trio.fail_after(60):
            frames = await read_frames(stream)
        assert ["res", "error"] == [f["t"] for f in frames]
        assert "timeout" == frames[-1]["code"]
        assert 20 + 7 == pytest.approx(trio.current_time() - start)


async def test_a_bad_request_fails_alone(autojump_clock: trio.abc.Clock) -> None:
    """Wrong field types and unknown operations fail that request with
    invalid_argument; the connection keeps serving."""
    async with serving() as (_broker, server):
        stream = await raw_session(server)
        conn = await handshake(stream)
        bad = [
            ("produce", {"topic": 1, "partition": 0, "record": b""}),
            ("fetch", {"topic": "t"}),
            ("no_such_op", {}),
            ("create_topic", {"name": "ok", "partitions": "3"}),
        ]
        for op, body in bad:
            conn.send_request(op, body)
        good = conn.send_request("list_topics", {})
        await stream.send_all(conn.data_to_send())
        answers: dict[int, Any] = {}
        while len(answers) < len(bad) + 1:
            conn.receive_data(await stream.receive_some(65536))
            while (event := conn.next_event()) is not None:
                answers[event.id] = event  # type: ignore[union-attr]
        assert isinstance(answers[good], ResponseReceived)
        for i in range(1, len(bad) + 1):
            assert isinstance(answers[i].error, InvalidArgument), answers[i]


CORPUS = [
    b"\x00\x00\x00\x05hello",  # not CBOR
    b"\xff\xff\xff\xff",  # a 4 GiB length prefix
    b"\x00\x00\x00\x10\xa1",  # truncated frame, then EOF
    encode_frame({"t": "bogus"}),  # unknown frame type
    encode_frame({"t": "req", "id": 1, "op": "list_topics", "body": {}}),  # before hello
    encode_frame({"t": "hello", "versions": ["1"]}),  # wrong type in a field
    encode_frame({"t": "hello", "versions": [99]}),  # unsupported version
    struct.pack(">I", 3) + b"\x83\x01\x02",  # CBOR, but not a map
    struct.pack(">I", 2) + b"\xc1\x00",  # a CBOR tag
]


@pytest.mark.parametrize("garbage", CORPUS, ids=range(len(CORPUS)))
async def test_hostile_bytes_close_that_connection_only(
    autojump_clock: trio.abc.Clock, garbage: bytes
) -> None:
    """Each malformed input gets an error frame or a close; another client keeps
    working and no stored data changes."""
    async with serving() as (_broker, server), connect_in_memory(server) as client:
        await client.create_topic("t")
        async with client.producer() as producer:
            await producer.send("t", "kept")
        before = await client.describe_topic("t")
        stream = await raw_session(server)
        await stream.send_all(garbage)
        await stream.send_eof() if hasattr(stream, "send_eof") else None
        frames = await read_frames(stream)
        assert all(f.get("t") == "error" and f.get("id") is None for f in frames[-1:])
        assert before == await client.describe_topic("t")
        await client.create_topic("still-serving")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    frames=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.dictionaries(
                st.sampled_from(["t", "id", "op", "body", "versions", "token"]),
                st.one_of(
                    st.sampled_from(["hello", "req", "auth", "produce", "fetch"]),
                    st.integers(-5, 2**40),
                    st.binary(max_size=16),
                    st.none(),
                    st.lists(st.integers(0, 3), max_size=3),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
                ),
                max_size=5,
            ).map(lambda m: encode_frame(m) if "t" in m and isinstance(m["t"], str) else b"\0"),
        ),
        max_size=6,
    )
)
def test_generated_frames_never_hurt_the_server(frames: list[bytes]) -> None:
    """Hypothesis: any sequence of frames and byte runs ends in answers or a
    close, never a server failure; stored data stays the same."""

    async def main() -> None:
        async with (
            serving(handshake_timeout=1, idle_timeout=1) as (_broker, server),
            connect_in_memory(server) as client,
        ):
            await client.create_topic("t")
            before = await client.describe_topic("t")
            stream = await raw_session(server)
            for chunk in frames:
                try:
                    await stream.send_all(chunk)
                except trio.BrokenResourceError:
                    break
            with trio.fail_after(30):
                await read_frames(stream)
            assert before == await client.describe_topic("t")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_drain_finishes_requests_in_flight(autojump_clock: trio.abc.Clock) -> None:
    """Draining lets a long poll in flight finish, then closes the connection;
    requests made after fail with a retriable error."""
    async with serving() as (_broker, server), connect_in_memory(server) as client:
        await client.create_topic("t")
        channel = client._channel
        got: list[Any] = []

        async def long_poll() -> None:
            got.append(await channel.request(p.Fetch("t", 0, 0, 1024, 2.0)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.5)
            await server.drain()
        assert 1 == len(got)
        assert b"" == got[0].records
        with pytest.raises((ServerBusyError, ConnectionLostError)):
            await channel.request(p.ListTopics(), timeout=1)


async def test_a_client_that_never_reads_is_bounded_then_dropped(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A client pipelining fetches of 1 MiB without reading its socket: the
    server holds at most max_bytes_in_flight of answers, stops reading its
    requests, and drops it after send_timeout; others are served meanwhile."""
    async with (
        serving(max_bytes_in_flight=4 << 20, send_timeout=20) as (broker, server),
        connect_in_memory(server) as good,
    ):
        await good.create_topic("big")
        async with good.producer(serializer="bytes") as producer:
            await producer.send_many("big", [bytes(1000)] * 20_000)  # ~20 MB
        client_end, server_end = trio.testing.lockstep_stream_pair()
        await server.serve_stream(server_end, "stalled")
        conn = ClientConnection()
        await client_end.send_all(conn.data_to_send())
        conn.receive_data(await client_end.receive_some(65536))
        conn.next_event()
        for i in range(100):  # 100 x 1 MiB asked; the client never reads again
            conn.send_request("fetch", {"topic": "big", "partition": 0, "offset": i * 1000})
        with trio.move_on_after(5):
            await client_end.send_all(conn.data_to_send())
        await trio.sleep(5)
        assert "/server/conn-2" in [n.path for n in broker.tree().walk()]
        assert ["big"] == [t.name for t in await good.list_topics()]
        await trio.sleep(30)
        assert "/server/conn-2" not in [n.path for n in broker.tree().walk()]


async def test_a_refusal_cancelled_midway_still_closes_the_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A connection refused while the listener is being cancelled (a drain
    stopping it mid-refusal) is still closed: an unclosed socket would leak
    its descriptor and warn whenever the collector finds it."""
    async with (
        serving(max_connections=1) as (_broker, server),
        connect_in_memory(server),
    ):
        client_end, server_end = trio.testing.memory_stream_pair()
        with trio.CancelScope() as scope:
            scope.cancel()
            await server.serve_stream(server_end, "refused")
        with trio.fail_after(5):
            assert b"" == await client_end.receive_some(65536)
