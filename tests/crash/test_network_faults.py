"""Network faults between client and server (issue 7, item 5): a Trio proxy on
loopback delays, throttles, black-holes, drops, resets, half-closes and
refuses; idempotent producers and a consumer group recover with no loss and
no duplicate stored copies, and timeouts surface as clear errors.

Real sockets and the real clock (an in-process server on 127.0.0.1), every
wait bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import headwater
from headwater import ConnectionLostError, HeadwaterTimeoutError
from headwater.broker import ServerConfig, open_broker, open_server
from headwater.broker._server import Server
from headwater.testing import NetworkFaults, open_proxy
from headwater.testing._netchaos import FAULT_KINDS, check_stored, read_back, run_round

pytestmark = pytest.mark.crash


@asynccontextmanager
async def live_server(tmp_path: Path, **config: object) -> AsyncIterator[Server]:
    """A broker and its TCP server in this process, on a free loopback port."""
    async with (
        open_broker(str(tmp_path / "data")) as broker,
        open_server(broker, ServerConfig(port=0, **config)) as server,  # type: ignore[arg-type]
    ):
        yield server


def url(port: int) -> str:
    return f"headwater://127.0.0.1:{port}"


async def test_proxy_forwards_and_applies_faults_at_run_time(tmp_path: Path) -> None:
    """Through the proxy a client works; a delay slows it, a hold stops it,
    healing lets the held bytes through on the same connection."""
    with trio.fail_after(20):
        async with (
            live_server(tmp_path) as server,
            open_proxy(server.port) as proxy,
            headwater.connect(proxy.url, request_timeout=5) as client,
        ):
            await client.create_topic("t")
            assert 1 == len(proxy.live_links)
            proxy.faults.delay = 0.1
            started = trio.current_time()
            await client.list_topics()
            assert trio.current_time() - started >= 0.2  # one chunk each way
            proxy.faults.heal()
            proxy.faults.black_hole("down")
            with trio.move_on_after(0.3) as scope:
                await client.list_topics()
            assert scope.cancelled_caught
            proxy.heal()
            assert ["t"] == [t.name for t in await client.list_topics()]
            link = proxy.live_links[0]
            assert link.bytes["up"] > 0
            assert link.bytes["down"] > 0
            assert 0 == client._channel.reconnects  # type: ignore[attr-defined]


async def test_per_link_faults_and_refusal(tmp_path: Path) -> None:
    """A link given its own faults is the only one affected; ``refuse``
    resets new connections so connecting fails with a clear error naming
    the address."""
    with trio.fail_after(20):
        async with live_server(tmp_path) as server, open_proxy(server.port) as proxy:
            async with (
                headwater.connect(proxy.url, request_timeout=2) as one,
                headwater.connect(proxy.url, request_timeout=2) as two,
            ):
                first = proxy.live_links[0]
                first.faults = NetworkFaults(hold={"up"})
                await two.create_topic("ok")
                with pytest.raises(HeadwaterTimeoutError, match=f"127.0.0.1:{proxy.port}"):
                    await one._channel.request(  # type: ignore[attr-defined]
                        headwater._protocol.ListTopics(), timeout=0.3
                    )
                first.faults = proxy.faults
            proxy.refuse = True
            with pytest.raises(ConnectionLostError, match=f"127.0.0.1:{proxy.port}"):
                async with headwater.connect(proxy.url, connect_timeout=1):
                    pass
            assert proxy.refused >= 1


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_producers_and_group_recover_without_loss(tmp_path: Path, kind: str) -> None:
    """Two idempotent producers and a two-member group through the proxy while
    one fault of ``kind`` is injected and healed: every acknowledged event is
    stored exactly once at its offset, offsets have no gaps, nothing is stored
    twice, the group sees every acknowledged event, and the producers start
    acknowledging again after the fault heals."""
    async with live_server(tmp_path) as server:
        async with headwater.connect(url(server.port)) as admin:
            await admin.create_topic("events", partitions=3)
        result = await run_round(server.port, kind, topic="events", group="g")
        stored, ends = await read_back(url(server.port), "events")
    check = check_stored(result, stored, ends)
    assert check.acked > 0
    assert (0, 0, 0, 0, 0) == (
        check.lost,
        check.duplicates,
        check.gaps,
        check.undelivered,
        check.commits_backwards,
    ), check
    assert result.recovery is not None, f"no acknowledgement after {kind} healed"


async def test_request_timeout_is_a_clear_error_never_a_hang(tmp_path: Path) -> None:
    """With the network black-holed, a request fails with HeadwaterTimeoutError
    naming the server and the timeout; connecting fails with a clear error
    too; after healing the same client works again."""
    with trio.fail_after(20):
        async with (
            live_server(tmp_path) as server,
            open_proxy(server.port) as proxy,
            headwater.connect(proxy.url, request_timeout=0.5, connect_timeout=0.5) as c,
        ):
            await c.create_topic("t")
            proxy.faults.black_hole("both")
            with pytest.raises(HeadwaterTimeoutError, match=rf"127\.0\.0\.1:{proxy.port}.*0\.5"):
                await c.list_topics()
            proxy.heal()
            with trio.fail_after(5):
                while True:
                    try:
                        assert ["t"] == [t.name for t in await c.list_topics()]
                        break
                    except (HeadwaterTimeoutError, ConnectionLostError):
                        await trio.sleep(0.05)
            proxy.faults.black_hole("both")
            with pytest.raises((HeadwaterTimeoutError, ConnectionLostError), match=r"127\.0\.0\.1"):
                async with headwater.connect(proxy.url, connect_timeout=0.5):
                    pass


async def test_dropped_bytes_do_not_wedge_the_connection(tmp_path: Path) -> None:
    """Bytes thrown away mid-stream (both ways) leave a damaged connection;
    once the network heals, the client gets going again within a few request
    timeouts (it must not keep using a connection that answers nothing)."""
    with trio.fail_after(20):
        async with (
            live_server(tmp_path) as server,
            open_proxy(server.port) as proxy,
            headwater.connect(proxy.url, request_timeout=0.3, connect_timeout=0.5) as c,
        ):
            await c.create_topic("t")
            proxy.faults.drop_all("down")
            for _ in range(3):
                with pytest.raises((HeadwaterTimeoutError, ConnectionLostError)):
                    await c.list_topics()
            proxy.heal()
            healed = trio.current_time()
            while True:
                try:
                    await c.list_topics()
                    break
                except (HeadwaterTimeoutError, ConnectionLostError):
                    await trio.sleep(0.01)
            assert trio.current_time() - healed < 3.0


_ = socket


async def test_a_silently_dead_connection_is_abandoned(tmp_path: Path) -> None:
    """One connection black-holed for good (a firewall or NAT forgot the flow;
    no RST ever comes) while new connections work: the client gives up on it
    after a request times out with nothing received, and the next requests
    succeed on a new connection."""
    with trio.fail_after(20):
        async with (
            live_server(tmp_path) as server,
            open_proxy(server.port) as proxy,
            headwater.connect(proxy.url, request_timeout=0.3, connect_timeout=1) as c,
        ):
            await c.create_topic("t")
            proxy.live_links[0].faults = NetworkFaults(hold={"up", "down"})
            with pytest.raises(HeadwaterTimeoutError):
                await c.list_topics()
            started = trio.current_time()
            while True:
                try:
                    assert ["t"] == [t.name for t in await c.list_topics()]
                    break
                except (HeadwaterTimeoutError, ConnectionLostError):
                    await trio.sleep(0.01)
            assert trio.current_time() - started < 2.0
            assert 1 == c._channel.reconnects  # type: ignore[attr-defined]


@pytest.mark.parametrize("group", [None, "g"])
async def test_a_consumer_survives_a_reset_while_it_resolves_its_start(
    tmp_path: Path, group: str | None
) -> None:
    """The connection resets just as a consumer's fetchers start (they first
    ask where to start: the committed offset or the start rule): the consumer
    retries like any fetch and reads everything, it does not fail."""
    with trio.fail_after(20):
        async with (
            live_server(tmp_path) as server,
            open_proxy(server.port) as proxy,
            headwater.connect(proxy.url, request_timeout=1, connect_timeout=1) as c,
        ):
            await c.create_topic("t", partitions=2)
            async with c.producer() as producer:
                sent = await producer.send_many("t", [f"v{i}" for i in range(100)])
            async with c.consumer("t", group=group, request_timeout=1, max_wait=0.1) as consumer:
                proxy.reset_all()  # before the fetchers' first request goes out
                got: list[str] = []
                while len(got) < len(sent):
                    got.extend(e.value for e in await consumer.getmany(1000, timeout=0.2))
            assert sorted(e.value for e in sent) == sorted(got)


async def test_a_producer_under_a_lasting_black_hole_fails_clearly(tmp_path: Path) -> None:
    """The network stays black-holed: ``send`` gives up at its delivery
    timeout with a retriable error naming the server (no hang), and a
    consumer's ``getmany`` keeps returning (empty) on time."""
    async with (
        live_server(tmp_path) as server,
        open_proxy(server.port) as proxy,
        headwater.connect(proxy.url, request_timeout=0.5, connect_timeout=0.5) as c,
    ):
        await c.create_topic("t")
        async with (
            c.producer(request_timeout=0.5, delivery_timeout=1.5) as producer,
            c.consumer("t", request_timeout=0.5, max_wait=0.1) as consumer,
        ):
            await producer.send("t", "before")
            assert 1 == len(await consumer.getmany(10, timeout=2))
            proxy.faults.black_hole("both")
            started = trio.current_time()
            with (
                trio.fail_after(5),
                pytest.raises(
                    (HeadwaterTimeoutError, ConnectionLostError),
                    match=rf"127\.0\.0\.1:{proxy.port}",
                ) as info,
            ):
                await producer.send("t", "lost in the void")
            assert info.value.retriable
            assert trio.current_time() - started < 3.0
            with trio.fail_after(2):
                assert [] == await consumer.getmany(10, timeout=0.5)
            proxy.heal()


async def test_a_producer_survives_a_reset_on_its_first_send(tmp_path: Path) -> None:
    """The connection resets just before a producer's first send to a topic
    (which first looks up the topic's partitions): the send is retried like
    any produce and stores the event once."""
    with trio.fail_after(20):
        async with (
            live_server(tmp_path) as server,
            open_proxy(server.port) as proxy,
            headwater.connect(proxy.url, request_timeout=1, connect_timeout=1) as c,
        ):
            await c.create_topic("t", partitions=2)
            async with c.producer(request_timeout=1) as producer:
                proxy.reset_all()
                stored = await producer.send("t", "first")
            stored_events, _ = await read_back(url(server.port), "t")
            assert [("first", stored.offset)] == [(e.value, e.offset) for e in stored_events]
