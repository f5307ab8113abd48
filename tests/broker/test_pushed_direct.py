"""Pushed results handed straight to a waiting reader (issue 17): the TCP
channel's reader task queues a pushed result for a consumer that waits on
an empty queue itself, without waking the partition's fetcher. Order stays
per partition, credit is still returned (so pushes keep coming, and a slow
reader still bounds them), errors still end the subscription through
``receive``, and results taken directly count as arrivals for the silence
timeout. Real server and TCP channel over memory streams, MockClock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from headwater import ConnectionLostError, OffsetOutOfRangeError
from headwater import _protocol as p
from headwater.client import Client
from headwater.client import _tcp as tcp_module
from headwater.testing import connect_in_memory

from .test_pushed_fetch import fill, served

Hook = Callable[[p.FetchResult], bool]


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(task name, bytes) of each pushed result a consumer took directly."""
    seen: list[tuple[str, int]] = []
    real = tcp_module._TcpFetchSubscription.take_directly

    def spy(self: tcp_module._TcpFetchSubscription, hook: Hook | None) -> None:
        if hook is None:
            real(self, None)
            return
        inner = hook

        def counting(result: p.FetchResult) -> bool:
            took = inner(result)
            if took:
                seen.append((trio.lowlevel.current_task().name, len(result.records)))
            return took

        real(self, counting)

    monkeypatch.setattr(tcp_module._TcpFetchSubscription, "take_directly", spy)
    return seen


async def record_size(client: Client) -> int:
    """The size of partition t/0's first record (one event)."""
    result = await client._channel.request(p.Fetch("t", 0, 0, 1, 0))  # type: ignore[attr-defined]
    return len(result.records)


async def test_a_waiting_reader_gets_each_push_without_the_fetcher(
    autojump_clock: trio.abc.Clock, taken: list[tuple[str, int]]
) -> None:
    """A reader waiting in ``getmany`` while events are sent one at a time
    gets each one in order, taken on the connection's task (not the
    fetcher's); with a credit of four records, 60 records only keep coming
    because the credit of those taken directly goes back."""
    async with served() as (_broker, server), connect_in_memory(server) as client:
        await client.create_topic("t")
        await fill(client, "t", 1)
        size = await record_size(client)
        seen: list[Any] = []
        async with (
            client.consumer("t", fetch_credit=4 * size) as consumer,
            client.producer(linger=0) as producer,
        ):
            assert ["v00000"] == [e.value for e in await consumer.getmany(10, timeout=1)]

            async def read() -> None:
                while len(seen) < 60:
                    got = await consumer.getmany(10, timeout=5)
                    assert got, "pushes stopped: credit taken directly was not returned"
                    seen.extend(got)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for i in range(60):
                    await trio.testing.wait_all_tasks_blocked()  # the reader waits
                    await producer.send("t", f"e{i:02d}")
        assert [f"e{i:02d}" for i in range(60)] == [e.value for e in seen]
        assert list(range(1, 61)) == [e.offset for e in seen]
        assert 60 <= len(taken)  # every one (the first event's too, if it was pushed)
        assert not any(name.endswith("_fetcher") for name, _ in taken), taken


async def test_results_queued_behind_a_busy_reader_keep_their_order(
    autojump_clock: trio.abc.Clock, taken: list[tuple[str, int]]
) -> None:
    """Records pushed while the reader is busy go through the fetcher (none
    is taken directly: the reader is not waiting); once it waits again, new
    ones go to it directly, after those queued: every event once, in order."""
    async with served() as (_broker, server), connect_in_memory(server) as client:
        await client.create_topic("t")
        await fill(client, "t", 1)
        size = await record_size(client)
        async with (
            client.consumer("t", fetch_credit=8 * size, prefetch=2) as consumer,
            client.producer(linger=0) as producer,
        ):
            seen = list(await consumer.getmany(1, timeout=1))
            taken.clear()
            for i in range(1, 30):  # the reader is away
                await producer.send("t", f"v{i:05d}")
            await trio.testing.wait_all_tasks_blocked()
            assert [] == taken
            while len(seen) < 30:
                seen.extend(await consumer.getmany(7, timeout=1))

            async def read() -> None:
                while len(seen) < 60:
                    seen.extend(await consumer.getmany(3, timeout=5))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for i in range(30, 60):
                    await trio.testing.wait_all_tasks_blocked()
                    await producer.send("t", f"v{i:05d}")
        assert [f"v{i:05d}" for i in range(60)] == [e.value for e in seen]
        assert len(taken) >= 30


def bare_subscription(client: Client, credit: int) -> tcp_module._TcpFetchSubscription:
    """A subscription object the server does not know (it pushes nothing to
    it): results are delivered to it by hand."""
    channel = client._channel  # type: ignore[attr-defined]
    return tcp_module._TcpFetchSubscription(channel, channel._session, 10_000, credit)


def result(nbytes: int) -> p.FetchResult:
    return p.FetchResult("t", 0, b"x" * nbytes, 0, 0)


async def test_only_a_result_with_nothing_queued_before_it_is_offered(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Once a result is queued (the hook declined it), later ones queue behind
    it without being offered; an error is never offered and ends the
    subscription after them, raised by ``receive``."""
    async with served() as (_broker, server), connect_in_memory(server) as client:
        sub = bare_subscription(client, credit=1 << 20)
        offered: list[p.FetchResult] = []
        answers = [True, False]
        sub.take_directly(lambda r: offered.append(r) or answers.pop(0))
        first, second, third = result(1), result(2), result(3)
        sub._deliver(first)  # taken
        sub._deliver(second)  # declined: queued
        sub._deliver(third)  # queued behind it, not offered
        sub._deliver(OffsetOutOfRangeError("gone"))
        assert [first, second] == offered
        assert second is await sub.receive(1)
        assert third is await sub.receive(1)
        with pytest.raises(OffsetOutOfRangeError, match="gone"):
            await sub.receive(1)


async def test_credit_of_results_taken_directly_is_returned_once_due(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results taken directly owe their credit; a waiting ``receive`` sends
    it (one FetchCredit for the owed total) as soon as a quarter of the
    credit is owed, not before."""
    async with served() as (_broker, server), connect_in_memory(server) as client:
        sub = bare_subscription(client, credit=1000)  # due at 250 bytes
        sent: list[Any] = []
        channel = client._channel  # type: ignore[attr-defined]
        real = channel._send_nowait

        async def spy(session: Any, request: Any) -> None:
            sent.append(request)
            await real(session, request)

        monkeypatch.setattr(channel, "_send_nowait", spy)
        sub.take_directly(lambda r: True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sub.receive, 3600)
            await trio.testing.wait_all_tasks_blocked()
            sub._deliver(result(100))
            sub._deliver(result(100))
            await trio.testing.wait_all_tasks_blocked()
            assert [] == sent
            sub._deliver(result(100))
            await trio.testing.wait_all_tasks_blocked()
            assert [p.FetchCredit(10_000, 300)] == sent
            nursery.cancel_scope.cancel()
        await client.list_topics()  # the connection still serves


async def test_results_taken_directly_count_as_arrivals_for_the_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``receive(60)`` does not give up while results keep being taken
    directly (one every 20 s for 200 s), and does 60 s after the last."""
    async with served() as (_broker, server), connect_in_memory(server) as client:
        sub = bare_subscription(client, credit=1 << 20)
        sub.take_directly(lambda r: True)
        outcome: list[BaseException] = []

        async def receive() -> None:
            try:
                await sub.receive(60)
            except ConnectionLostError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            start = trio.current_time()
            for _ in range(10):
                await trio.sleep(20)
                sub._deliver(result(1))
            await trio.sleep(59)
            assert [] == outcome
            last = start + 200
            await trio.sleep(2)
            assert 1 == len(outcome)
            assert trio.current_time() >= last + 60


async def test_a_cancelled_receive_finishes_the_credit_frame_it_started(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The credit owed for results taken directly is sent shielded: a
    ``receive`` cancelled (or timing out) while that frame is on its way
    still sends it whole, and the connection keeps serving requests."""
    async with served() as (_broker, server), connect_in_memory(server) as client:
        sub = bare_subscription(client, credit=1000)
        channel = client._channel  # type: ignore[attr-defined]
        real = channel._send_nowait
        release = trio.Event()
        sent: list[Any] = []

        async def slow(session: Any, request: Any) -> None:
            await release.wait()  # the frame is on its way
            await real(session, request)
            sent.append(request)

        monkeypatch.setattr(channel, "_send_nowait", slow)
        sub.take_directly(lambda r: True)
        scope = trio.CancelScope()

        async def receive() -> None:
            with scope:
                await sub.receive(3600)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            sub._deliver(result(300))  # due: the receive starts the credit frame
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert [] == sent
            release.set()
        assert [p.FetchCredit(10_000, 300)] == sent
        await client.list_topics()  # the connection still serves
