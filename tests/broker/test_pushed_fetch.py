"""Pushed fetches (protocol v2, docs/protocol.md section 12) through the real
server connection code and the real TCP channel over memory streams, under
MockClock: order, credit (a slow reader bounds what the server sends),
reconnects, version 1 clients, read_committed, and group rebalances."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from headwater import InvalidArgument
from headwater import _protocol as p
from headwater.broker import Broker, Server, ServerConfig, open_broker, open_server
from headwater.client import Client, TcpChannel, connect_channel
from headwater.client import _tcp as tcp_module
from headwater.journal import SimulatedFileSystem
from headwater.journal._record import iter_records
from headwater.testing import FaultyStream, connect_in_memory
from headwater.transport._connection import ClientConnection, HandshakeComplete, ResponseReceived
from headwater.transport._operations import encode_request

DATA = "/data"


@asynccontextmanager
async def served(**config: Any) -> AsyncIterator[tuple[Broker, Server]]:
    async with (
        open_broker(DATA, fs=SimulatedFileSystem()) as broker,
        open_server(broker, listen=False) as server,
    ):
        yield broker, server


def subscriptions(broker: Broker) -> list[list[str]]:
    """The pushed fetches open on each client connection."""
    return [c.subscriptions for c in broker.service.stats.connections.values()]


async def fill(client: Client, topic: str, count: int, batch: int = 100) -> None:
    async with client.producer(max_batch_events=batch, linger=0) as producer:
        await producer.send_many(topic, [f"v{i:05d}" for i in range(count)])


async def test_events_arrive_in_order_with_several_batches_in_flight(
    autojump_clock: trio.abc.Clock,
) -> None:
    """3,000 events in 30 records, pushed in frames of about one record with
    a credit of four: every event once, in order, and the connection held a
    subscription (not pulled fetches) while it read."""
    async with served() as (broker, server), connect_in_memory(server) as client:
        await client.create_topic("t")
        await fill(client, "t", 3000)
        record_size = len(
            (await client._channel.request(p.Fetch("t", 0, 0, 1, 0))).records  # type: ignore[attr-defined]
        )
        seen: list[Any] = []
        async with client.consumer("t", fetch_credit=4 * record_size) as consumer:
            while len(seen) < 3000:
                seen.extend(await consumer.getmany(500, timeout=1))
                assert [["t/0"]] == subscriptions(broker)
        assert list(range(3000)) == [e.offset for e in seen]
        assert [f"v{i:05d}" for i in range(3000)] == [e.value for e in seen]
        await trio.testing.wait_all_tasks_blocked()
        assert [[]] == subscriptions(broker)  # closing the consumer closed it


async def test_a_slow_reader_bounds_what_is_pushed_by_its_credit(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A subscription whose reader returns no credit gets at most its credit
    (plus one record) pushed, however much is stored; returning credit lets
    exactly that much more through, and everything arrives in order."""
    async with served() as (_broker, server), connect_in_memory(server) as client:
        await client.create_topic("t")
        await fill(client, "t", 5000)  # 50 records
        channel = client._channel  # type: ignore[attr-defined]
        record_size = len((await channel.request(p.Fetch("t", 0, 0, 1, 0))).records)
        credit = 3 * record_size + record_size // 2
        sub = await channel.open_fetch_subscription(
            "t", 0, 0, credit=credit, max_bytes=record_size, isolation="read_committed"
        )
        assert sub is not None
        await trio.testing.wait_all_tasks_blocked()
        pushed = list(sub._items)
        assert 4 == len(pushed)  # 3.5 records of credit: the 4th overdraws by less than one
        assert credit <= sum(len(r.records) for r in pushed) < credit + record_size
        await trio.sleep(60)  # nothing more without credit, however long
        await trio.testing.wait_all_tasks_blocked()
        assert 4 == len(sub._items)
        offsets = []
        for _ in range(4):
            result = await sub.receive(1)
            offsets.extend(h.base_offset for h, _ in iter_records(result.records))
        await sub.consumed(2 * record_size)  # two records' worth back
        await trio.testing.wait_all_tasks_blocked()
        assert 2 == len(sub._items)
        for _ in range(2):
            result = await sub.receive(1)
            offsets.extend(h.base_offset for h, _ in iter_records(result.records))
        assert [100 * i for i in range(6)] == offsets
        await sub.aclose()


async def test_a_reconnect_mid_subscription_resumes_at_the_next_offset(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The connection breaks while records are being pushed: the consumer
    reconnects, subscribes again from the offset after the last record it
    received, and hands out every event exactly once, in order."""
    streams: list[FaultyStream] = []
    async with served() as (_broker, server):

        async def open_stream() -> trio.abc.Stream:
            client_end, server_end = trio.testing.memory_stream_pair()
            await server.serve_stream(server_end, "faulty")
            stream = FaultyStream(client_end)
            streams.append(stream)
            return stream

        channel = TcpChannel(open_stream, address="memory", connect_timeout=1)
        async with connect_channel(channel) as client:
            await client.create_topic("t")
            await fill(client, "t", 2000)
            seen: list[Any] = []
            async with client.consumer("t", fetch_credit=20_000, prefetch=1) as consumer:
                seen.extend(await consumer.getmany(300, timeout=1))
                assert 300 == len(seen)
                streams[-1].break_stream()
                while len(seen) < 2000:
                    seen.extend(await consumer.getmany(1000, timeout=5))
            assert 2 <= len(streams)
            assert list(range(2000)) == [e.offset for e in seen]
            assert [f"v{i:05d}" for i in range(2000)] == [e.value for e in seen]
            assert 1 <= channel.reconnects


async def test_a_version_1_client_pulls_from_a_version_2_server(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that offers only version 1 gets no pushes: its consumer
    pulls and reads everything; a subscription request over version 1 is
    refused as invalid (the connection stays up)."""
    monkeypatch.setattr(tcp_module, "ClientConnection", partial(ClientConnection, versions=(1,)))
    async with served() as (broker, server), connect_in_memory(server) as client:
        channel = client._channel  # type: ignore[attr-defined]
        assert 1 == channel._session.conn.version
        await client.create_topic("t")
        await fill(client, "t", 500)
        async with client.consumer("t") as consumer:
            seen = await consumer.getmany(1000, timeout=1)
            while len(seen) < 500:
                seen.extend(await consumer.getmany(1000, timeout=1))
                assert [[]] == subscriptions(broker)
        assert list(range(500)) == [e.offset for e in seen]
        with pytest.raises(InvalidArgument, match="protocol version 2"):
            await channel.request(p.FetchSubscribe(1, "t", 0, 0, 1000))
        assert 1 == len(await client.list_topics())


async def test_bad_subscriptions_are_refused(autojump_clock: trio.abc.Clock) -> None:
    """A subscription to a missing topic, a reused id or no credit fails
    that request; an embedded client cannot subscribe (it pulls)."""
    async with served() as (broker, server), connect_in_memory(server) as client:
        await client.create_topic("t")
        channel = client._channel  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="does not exist"):
            await channel.request(p.FetchSubscribe(1, "nope", 0, 0, 1000))
        with pytest.raises(InvalidArgument, match="credit"):
            await channel.request(p.FetchSubscribe(1, "t", 0, 0, 0))
        await channel.request(p.FetchSubscribe(7, "t", 0, 0, 1000))
        with pytest.raises(InvalidArgument, match="already open"):
            await channel.request(p.FetchSubscribe(7, "t", 0, 0, 1000))
        async with broker.connect() as local:
            assert (
                await local._channel.open_fetch_subscription(  # type: ignore[attr-defined]
                    "t", 0, 0, credit=1, max_bytes=1, isolation="read_committed"
                )
                is None
            )
            with pytest.raises(InvalidArgument, match="TCP connection"):
                await local._channel.request(p.FetchSubscribe(1, "t", 0, 0, 1000))  # type: ignore[attr-defined]


async def test_an_offset_out_of_range_ends_the_subscription_with_its_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A subscription from past the end is ended by a pushed error, which
    ``receive`` raises as the typed error a pulled fetch would raise."""
    from headwater import OffsetOutOfRangeError

    async with served() as (broker, server), connect_in_memory(server) as client:
        await client.create_topic("t")
        channel = client._channel  # type: ignore[attr-defined]
        sub = await channel.open_fetch_subscription(
            "t", 0, 50, credit=1000, max_bytes=1000, isolation="read_committed"
        )
        with pytest.raises(OffsetOutOfRangeError):
            await sub.receive(1)
        await trio.testing.wait_all_tasks_blocked()
        assert [[]] == subscriptions(broker)


async def test_read_committed_through_pushes_honours_the_lso(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Pushed to a read_committed consumer: a committed transaction's events,
    never an aborted one's, nothing of an open one until it commits (the
    last stable offset holds it back), never a marker; the position passes
    the markers."""
    async with served() as (broker, server), connect_in_memory(server) as client:
        await client.create_topic("a")
        async with (
            client.producer(transactional_id="w") as producer,
            client.consumer("a") as consumer,
        ):
            async with producer.transaction():
                await producer.send("a", "c1")
                await producer.send("a", "c2")
            with pytest.raises(KeyError):
                async with producer.transaction():
                    await producer.send("a", "aborted")
                    raise KeyError
            assert ["c1", "c2"] == [e.value for e in await consumer.getmany(timeout=1)]
            assert [["a/0"]] == subscriptions(broker)
            async with producer.transaction():
                await producer.send("a", "c3")
                assert [] == await consumer.getmany(timeout=1)  # open: held back
            assert ["c3"] == [e.value for e in await consumer.getmany(timeout=1)]
            assert [] == await consumer.getmany(timeout=1)
            # c1 c2 commit aborted abort c3 commit
            assert 7 == consumer.position("a", 0)


async def test_a_rebalance_closes_the_subscriptions_of_revoked_partitions(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A member alone in its group reads both partitions through two
    subscriptions; when a second member joins and takes one partition, the
    first member's connection keeps exactly one subscription, and the
    second member's connection opens one."""
    async with (
        served() as (broker, server),
        connect_in_memory(server) as first_client,
        connect_in_memory(server) as second_client,
    ):
        await first_client.create_topic("t", partitions=2)
        async with first_client.consumer("t", group="g") as first:
            await first.getmany(timeout=0.5)
            await trio.testing.wait_all_tasks_blocked()
            assert [["t/0", "t/1"], []] == sorted(subscriptions(broker), key=len, reverse=True)
            async with second_client.consumer("t", group="g") as second:
                with trio.fail_after(30):
                    while len(first.assignment()) != 1 or len(second.assignment()) != 1:
                        await first.getmany(timeout=0.2)
                        await second.getmany(timeout=0.2)
                await trio.testing.wait_all_tasks_blocked()
                owned = sorted(f"{t}/{n}" for t, n in first.assignment() + second.assignment())
                assert ["t/0", "t/1"] == owned
                assert sorted(subscriptions(broker)) == sorted(
                    [[f"{t}/{n}"] for t, n in first.assignment() + second.assignment()]
                )


async def test_partitions_past_the_servers_limit_are_pulled(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A server that allows 4 requests in flight allows 4 subscriptions per
    connection: a consumer of 6 partitions subscribes to 4 and pulls the
    other 2, and reads every event."""
    async with (
        open_broker(DATA, fs=SimulatedFileSystem()) as broker,
        open_server(broker, ServerConfig(max_in_flight=4), listen=False) as server,
        connect_in_memory(server) as client,
    ):
        await client.create_topic("t", partitions=6)
        async with client.producer() as producer:
            for n in range(6):
                await producer.send_many("t", [{"value": f"{n}", "partition": n}] * 10)
        seen: list[Any] = []
        async with client.consumer("t") as consumer:
            while len(seen) < 60:
                seen.extend(await consumer.getmany(100, timeout=1))
            assert [4] == [len(s) for s in subscriptions(broker)]
        assert sorted((n, i) for n in range(6) for i in range(10)) == sorted(
            (e.partition, e.offset) for e in seen
        )


async def test_a_quiet_subscription_keeps_its_connection(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With an idle timeout of 5 s and no new data for 100 s, a subscribed
    consumer's connection is neither closed by the server (a subscription
    counts as work in flight) nor re-made by the client (the server pushes
    an empty result every 30 s); the next event arrives on it."""
    async with (
        open_broker(DATA, fs=SimulatedFileSystem()) as broker,
        open_server(broker, ServerConfig(idle_timeout=5), listen=False) as server,
        connect_in_memory(server) as client,
    ):
        await client.create_topic("t")
        channel = client._channel  # type: ignore[attr-defined]
        async with client.consumer("t", request_timeout=10) as consumer:
            assert [] == await consumer.getmany(timeout=100)
            assert [["t/0"]] == subscriptions(broker)
            assert 1 == channel._subs  # never subscribed again
            async with client.producer() as producer:
                await producer.send("t", "late")
            assert ["late"] == [e.value for e in await consumer.getmany(timeout=1)]
        assert 0 == channel.reconnects


async def test_a_failing_subscription_is_ended_with_actor_failed(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while serving a subscription (not a HeadwaterError) ends that
    subscription with an actor_failed push; the connection keeps serving."""
    from headwater import ActorFailed

    async with served() as (broker, server), connect_in_memory(server) as client:
        await client.create_topic("t")
        await fill(client, "t", 10)
        real = broker.service.handle

        async def broken(request: Any, **options: Any) -> Any:
            if isinstance(request, p.Fetch):
                raise ZeroDivisionError("boom")
            return await real(request, **options)

        monkeypatch.setattr(broker.service, "handle", broken)
        channel = client._channel  # type: ignore[attr-defined]
        sub = await channel.open_fetch_subscription(
            "t", 0, 0, credit=1000, max_bytes=1000, isolation="read_committed"
        )
        with pytest.raises(ActorFailed, match="boom"):
            await sub.receive(1)
        assert 1 == len(await client.list_topics())


async def test_a_connection_reads_requests_while_a_pushed_fetch_waits_for_the_client(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A client subscribes, then stops reading: the pushed records wait in a
    send that cannot finish. Requests it sends meanwhile (here: two topic
    creations) are still read and carried out, so credit and commits are
    not held up behind a large pushed fetch."""
    async with served() as (_broker, server), connect_in_memory(server) as client:
        await client.create_topic("t")
        await fill(client, "t", 500)
        client_end, server_end = trio.testing.lockstep_stream_pair()
        await server.serve_stream(server_end, "stalled")
        conn = ClientConnection()

        async def send(request: Any) -> int:
            request_id = conn.send_request(*encode_request(request))
            await client_end.send_all(conn.data_to_send())
            return request_id

        async def until(wanted: type, request_id: int | None = None) -> None:
            while True:
                event = conn.next_event()
                if event is None:
                    conn.receive_data(await client_end.receive_some(64))
                elif isinstance(event, wanted) and getattr(event, "id", None) == request_id:
                    return

        await client_end.send_all(conn.data_to_send())  # hello
        await until(HandshakeComplete)
        subscribed = await send(p.FetchSubscribe(1, "t", 0, 0, 1 << 20, 1 << 20))
        await until(ResponseReceived, subscribed)
        # The pushed records (all 500 events) now wait for this client to read.
        for name in ("a", "b"):
            with trio.move_on_after(5):
                await send(p.CreateTopic(name))
        await trio.testing.wait_all_tasks_blocked()
        assert {"t", "a", "b"} <= {t.name for t in await client.list_topics()}
