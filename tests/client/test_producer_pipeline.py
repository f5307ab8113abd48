"""Several produce batches in flight per partition (``max_in_flight``), over the
remote client (the real server and TCP channel over memory streams): order
kept, a failed batch resent with what was behind it and stored once, a batch
that fails for good failing the ones in flight behind it, deduplication across
a reconnect, and ``max_in_flight=1`` sending one batch at a time as before."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from headwater import _protocol as p
from headwater._errors import (
    ConfigError,
    HeadwaterError,
    InvalidArgument,
    StorageError,
)
from headwater.broker import Broker, Server, open_broker, open_server
from headwater.broker._idempotence import BATCHES_KEPT
from headwater.client import Client, ProducerConfig
from headwater.client._producer import MAX_IN_FLIGHT
from headwater.client._tcp import TcpChannel
from headwater.journal import SimulatedFileSystem
from headwater.journal._record import decode_header
from headwater.testing import connect_in_memory

# A produce as the service saw it: (base sequence, answer or error).
Seen = list[tuple[int, str]]


@asynccontextmanager
async def remote() -> AsyncIterator[tuple[Broker, Server, Client]]:
    """A broker on a simulated disk, its server and a remote client of it
    with topic ``t`` (1 partition)."""
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        open_server(broker, listen=False) as server,
        connect_in_memory(server) as client,
    ):
        await client.create_topic("t")
        yield broker, server, client


def watch_in_flight(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, at each produce submitted, how many requests the connection
    has in flight (the channel's pending answers)."""
    seen: list[int] = []
    channel = client._channel
    assert isinstance(channel, TcpChannel)
    submit = channel.submit

    async def counting(request: Any, **options: Any) -> Any:
        pending = await submit(request, **options)
        if isinstance(request, p.Produce) and channel._session is not None:
            seen.append(len(channel._session.pending))
        return pending

    monkeypatch.setattr(channel, "submit", counting)
    return seen


def fail_produces(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, fault: Callable[[int], HeadwaterError | None]
) -> Seen:
    """Make the broker's handler fail the n-th produce (from 0, counted as
    they reach it) with ``fault(n)`` (``None``: no fault), before storing it;
    return what it saw."""
    real = broker.service.handle
    seen: Seen = []
    arrivals = itertools.count()

    async def handle(request: Any, **options: Any) -> Any:
        if not isinstance(request, p.Produce):
            return await real(request, **options)
        sequence = decode_header(request.record, check_crc=False).base_sequence  # type: ignore[union-attr]
        turn = options.get("turn")
        if turn is not None:
            await turn.wait()  # count in arrival order (the service's wait is then a no-op)
        error = fault(next(arrivals))
        if error is not None:
            seen.append((sequence, type(error).__name__))
            raise error  # the server releases the turn
        try:
            result = await real(request, **options)
        except HeadwaterError as exc:
            seen.append((sequence, type(exc).__name__))
            raise
        seen.append((sequence, "duplicate" if result.duplicate else "stored"))
        return result

    monkeypatch.setattr(broker.service, "handle", handle)
    return seen


def slow_answers(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold each produce's answer for 10 ms (Trio time) after it is stored,
    so that the producer's window fills."""
    real = broker.service.handle

    async def handle(request: Any, **options: Any) -> Any:
        result = await real(request, **options)
        if isinstance(request, p.Produce):
            await trio.sleep(0.01)
        return result

    monkeypatch.setattr(broker.service, "handle", handle)


async def stored_values(client: Client) -> list[Any]:
    async with client.consumer("t") as consumer:
        return [e.value for e in await consumer.getmany(10_000, timeout=1)]


async def send_in_order(client: Client, n: int, **options: Any) -> None:
    """Send ``0..n-1`` to ``t`` through a producer made with ``options``;
    check that they were acknowledged and stored in send order."""
    async with client.producer(**options) as producer:
        events = await producer.send_many("t", range(n))
    assert list(range(n)) == [e.offset for e in events]
    assert list(range(n)) == await stored_values(client)


async def test_batches_in_flight_keep_their_order(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty batches of one partition go out up to five at a time (the
    first alone) and are stored, and acknowledged, in send order."""
    async with remote() as (broker, _server, client):
        slow_answers(broker, monkeypatch)
        in_flight = watch_in_flight(client, monkeypatch)
        await send_in_order(client, 200, max_batch_events=10, linger=1.0)
    assert 1 == in_flight[0]  # the first batch of the identity goes alone
    assert MAX_IN_FLIGHT == max(in_flight)
    assert 20 == len(in_flight)


async def test_max_in_flight_one_sends_one_batch_at_a_time(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With max_in_flight=1 a batch goes out only once the one before it is
    answered, as before pipelining."""
    async with remote() as (broker, _server, client):
        slow_answers(broker, monkeypatch)
        in_flight = watch_in_flight(client, monkeypatch)
        await send_in_order(client, 100, max_batch_events=10, max_in_flight=1)
    assert [1] * 10 == in_flight


async def test_a_failed_middle_batch_is_resent_with_the_ones_behind_it(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retriable failure of the third batch: the batches in flight behind
    it are refused (a sequence gap), then all are resent in order; nothing
    is reordered or stored twice."""
    async with remote() as (broker, _server, client):
        seen = fail_produces(
            broker, monkeypatch, lambda n: StorageError("disk hiccup") if n == 2 else None
        )
        await send_in_order(client, 100, max_batch_events=10, linger=1.0)
    assert 1 == seen.count((20, "StorageError"))
    refused = {sequence for sequence, outcome in seen if outcome == "OutOfOrderSequenceError"}
    assert {30, 40, 50, 60} == refused  # in flight behind it: a gap
    stored = sorted(sequence for sequence, outcome in seen if outcome == "stored")
    assert list(range(0, 100, 10)) == stored  # each batch stored once (in order: above)


async def test_batches_stored_but_unanswered_are_deduplicated_after_a_reconnect(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops with five batches stored but unanswered: the
    producer resends them on the new connection, in order, and the broker
    recognises every one as a duplicate."""
    async with remote() as (broker, _server, client):
        real = broker.service.handle
        outcomes: list[str] = []
        held: list[int] = []
        all_held = trio.Event()
        holding = True

        async def handle(request: Any, **options: Any) -> Any:
            result = await real(request, **options)
            if isinstance(request, p.Produce):
                outcomes.append("duplicate" if result.duplicate else "stored")
                if holding and len(outcomes) > 1:  # the first batch goes alone: answer it
                    held.append(result.base_offset)
                    if len(held) == MAX_IN_FLIGHT:
                        all_held.set()
                    await trio.sleep_forever()  # stored, never answered
            return result

        monkeypatch.setattr(broker.service, "handle", handle)
        async with client.producer(max_batch_events=10, linger=1.0) as producer:
            await producer.partitions_of("t")
            handles = [producer.send_nowait("t", i) for i in range(100)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer.flush)
                await all_held.wait()
                holding = False
                conns = [n.path for n in broker.tree().walk() if "/conn-" in n.path]
                await broker.kill(conns[0])
            events = [await h.wait() for h in handles]
        assert list(range(100)) == [e.offset for e in events]
        assert list(range(100)) == await stored_values(client)
    # Appended in arrival order (the offsets say so); their fsync waits may
    # end in any order, so the handler saw them return in any order.
    assert [10, 20, 30, 40, 50] == sorted(held)
    assert ["stored"] * 6 + ["duplicate"] * 5 + ["stored"] * 4 == outcomes
    assert 1 == client._channel.reconnects  # type: ignore[attr-defined]


async def test_a_batch_failing_for_good_fails_the_ones_in_flight_behind_it(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-retriable failure of the third batch fails it and the batches
    in flight behind it (with an error of its class that says so); the
    batches queued after them are renumbered under a new identity and
    stored, in order."""
    async with remote() as (broker, _server, client):
        fail_produces(broker, monkeypatch, lambda n: InvalidArgument("refused") if n == 2 else None)
        async with client.producer(max_batch_events=10, linger=1.0) as producer:
            await producer.partitions_of("t")
            first = producer.identity
            handles = [producer.send_nowait("t", i) for i in range(100)]
            await producer.flush()
            assert first != producer.identity  # renumbered under a new identity
        failed = [h for h in handles if _error(h) is not None]
        # The refused batch and the four in flight behind it.
        assert list(range(20, 70)) == [h.value for h in failed]
        assert ["refused"] * 10 == [str(_error(h)) for h in failed[:10]]
        for h in failed[10:]:
            error = _error(h)
            assert isinstance(error, InvalidArgument)
            assert "an earlier batch of t/0 failed (refused)" in str(error)
            assert "in flight behind it" in str(error)
        kept = [*range(20), *range(70, 100)]
        assert kept == await stored_values(client)
        assert [e.offset for e in [h.result() for h in handles if h.value in kept]] == list(
            range(len(kept))
        )


def _error(handle: Any) -> HeadwaterError | None:
    try:
        handle.result()
    except HeadwaterError as exc:
        return exc
    return None


@pytest.mark.parametrize("value", [0, 6, -1, 2.0, "5", True, None])
def test_max_in_flight_must_be_an_int_from_1_to_5(value: Any) -> None:
    """A bad max_in_flight raises ConfigError naming the range."""
    with pytest.raises(ConfigError, match=r"max_in_flight must be an int from 1 to 5"):
        ProducerConfig(max_in_flight=value)


def test_max_in_flight_matches_what_the_broker_deduplicates() -> None:
    """The limit is the number of batches the broker remembers per producer
    and partition: a resend of any batch in flight is still a duplicate."""
    assert BATCHES_KEPT == MAX_IN_FLIGHT == ProducerConfig().max_in_flight


async def test_the_embedded_channel_sends_one_batch_at_a_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The embedded channel runs a request in the caller's task: submit
    returns it answered, so batches still go one after another, in order."""
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        broker.connect() as client,
    ):
        await client.create_topic("t")
        await send_in_order(client, 50, max_batch_events=10)


@pytest.mark.parametrize("answered", [0, 1])
async def test_batches_that_get_no_answer_fail_after_delivery_timeout(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch, answered: int
) -> None:
    """A broker that answers no produce after the first ``answered``: the
    batches in flight and queued (the second waiting behind a first that
    must go alone, or five in flight) fail once delivery_timeout has
    passed, each with a retriable timeout or connection error; the producer
    neither spins nor hangs."""
    async with remote() as (broker, _server, client):
        real = broker.service.handle
        produces = itertools.count()

        async def handle(request: Any, **options: Any) -> Any:
            if isinstance(request, p.Produce) and next(produces) >= answered:
                await trio.sleep_forever()
            return await real(request, **options)

        monkeypatch.setattr(broker.service, "handle", handle)
        async with client.producer(
            max_batch_events=10, delivery_timeout=2.0, request_timeout=0.5, retry_backoff=0.1
        ) as producer:
            await producer.partitions_of("t")
            start = trio.current_time()
            handles = [producer.send_nowait("t", i) for i in range(20 + 40 * answered)]
            await producer.flush()
            waited = trio.current_time() - start
        errors = [_error(h) for h in handles]
        assert [None] * (10 * answered) == errors[: 10 * answered]
        failed = errors[10 * answered :]
        assert all(e is not None and e.retriable for e in failed), failed
        assert 1.0 < waited <= 2.0  # given up when the next backoff would pass the deadline
