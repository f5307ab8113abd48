"""The share-subscription client against a scripted channel (no broker)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio

from headwater import ActorRestarted, LockLostError
from headwater import _protocol as p
from headwater.client import Channel
from headwater.client._share import Subscription, build_request, open_subscription


class Scripted(Channel):
    """Answers each request type from a list of outcomes (an exception is raised)."""

    def __init__(self, script: dict[type, list[Any]]) -> None:
        self.script = script
        self.sent: list[Any] = []

    async def request(self, request: Any, *, timeout: float | None = None) -> Any:
        self.sent.append(request)
        await trio.lowlevel.checkpoint()
        outcomes = self.script.get(type(request))
        outcome = outcomes.pop(0) if outcomes else p.Done()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        pass


def _request() -> p.ShareSubscribe:
    return build_request(
        "t",
        "q",
        mode="shared",
        start="earliest",
        ack_timeout=30,
        max_deliveries=5,
        backoff=(),
        window=100,
        session_timeout=10,
        client_id="",
    )


def _subscribe(channel: Channel, *, max_wait: float) -> AbstractAsyncContextManager[Subscription]:
    """A subscription on ``channel`` (bytes, 5 unacked at most, 5 s requests)."""
    return open_subscription(
        channel,
        _request(),
        max_unacked=5,
        max_wait=max_wait,
        deserializer="bytes",
        request_timeout=5,
    )


async def test_fetch_and_ack_retry_a_restarting_share_actor(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A retriable error (the share actor restarted under the request) is
    retried for fetches and acks; a nack is not retried (not idempotent), and
    a non-retriable error (lock lost) reaches the caller at once."""
    record = p.ShareRecord(0, 7, 1000, b"k", b"v", [], 1)
    channel = Scripted(
        {
            p.ShareSubscribe: [p.ShareMembership("q", "t", "c-1", "shared", 1)],
            p.ShareFetch: [ActorRestarted("restarted"), p.ShareBatch("q", (record, record))],
            p.ShareAck: [
                ActorRestarted("restarted"),
                p.Done(),
                ActorRestarted("again"),
                LockLostError("gone"),
            ],
        }
    )
    async with _subscribe(channel, max_wait=0.1) as sub:
        event = await sub.__anext__()
        assert (7, b"v", 1) == (event.offset, event.value, event.delivery_count)
        await sub.ack(event)
        with pytest.raises(ActorRestarted):
            await sub.nack(event)
        with pytest.raises(LockLostError):
            await sub.ack(event)
    kinds = [type(r).__name__ for r in channel.sent]
    assert [
        "ShareSubscribe",
        "ShareFetch",
        "ShareFetch",
        "ShareAck",
        "ShareAck",
        "ShareAck",
        "ShareAck",
        "ShareLeave",
    ] == kinds


class LongPolling(Channel):
    """A broker that answers each fetch asking for events with the next batch
    of ``batches`` (empty when none is left) at the end of its long poll plus
    ``latency`` seconds, as a real broker over a network does; session
    keep-alives (``max_events == 0``) and the rest are answered at once."""

    def __init__(self, batches: list[tuple[p.ShareRecord, ...]], latency: float = 0.05) -> None:
        self.batches = batches
        self.latency = latency
        self.fetches: list[p.ShareFetch] = []

    async def request(self, request: Any, *, timeout: float | None = None) -> Any:
        if isinstance(request, p.ShareSubscribe):
            await trio.lowlevel.checkpoint()
            return p.ShareMembership("q", "t", "c-1", "shared", 1)
        if isinstance(request, p.ShareFetch) and request.max_events > 0:
            self.fetches.append(request)
            await trio.sleep(request.max_wait + self.latency)
            return p.ShareBatch("q", self.batches.pop(0) if self.batches else ())
        if isinstance(request, p.ShareFetch):
            await trio.lowlevel.checkpoint()
            return p.ShareBatch("q", ())
        await trio.lowlevel.checkpoint()
        return p.Done()

    async def aclose(self) -> None:
        pass


async def test_getmany_timeout_never_drops_a_fetch_in_flight(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An answered fetch dealt its events to this consumer (counted, locked):
    ``getmany``'s timeout bounds the broker's long poll and waits for the
    answer, never cancels it. (Dropping it stranded the events until their
    lock expired and burnt a delivery each time: a share subscription that
    idles with ``getmany(n, timeout=max_wait)`` lost what arrived at the end
    of a poll, again and again, until it was dead-lettered.)"""
    record = p.ShareRecord(0, 7, 1000, b"k", b"v", [], 1)
    channel = LongPolling([(record,)], latency=0.05)
    async with _subscribe(channel, max_wait=0.5) as sub:
        got = await sub.getmany(5, timeout=0.5)
        assert [(7, 1)] == [(e.offset, e.delivery_count) for e in got]
        assert 0.5 >= channel.fetches[0].max_wait  # the long poll ends by the timeout
        started = trio.current_time()
        assert [] == await sub.getmany(5, timeout=0.2)  # nothing more: about 0.2 s
        assert 0.2 <= trio.current_time() - started < 0.3
        assert 0.2 >= channel.fetches[1].max_wait
        assert [] == await sub.getmany(5, timeout=0)  # a poll that does not wait
        assert 0 == channel.fetches[2].max_wait


async def test_a_buffered_event_whose_lock_expired_is_never_handed_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Events fetched ahead (buffered) whose lock may have expired by the time
    they would be handed out are dropped, and their credit fetches again: the
    broker may have dealt them to another consumer with a higher delivery
    count, so handing them out made delivery counts go back and two
    consumers work on one event."""
    first = tuple(p.ShareRecord(0, o, 1000, None, b"v", [], 1) for o in (1, 2, 3))
    again = (p.ShareRecord(0, 2, 1000, None, b"v", [], 2),)
    channel = LongPolling([first, again], latency=0)
    async with _subscribe(channel, max_wait=0) as sub:  # ack_timeout=30
        event = await sub.__anext__()
        assert (1, 1) == (event.offset, event.delivery_count)
        await trio.sleep(29.9)
        event = await sub.__anext__()  # the lock still holds (less than 30 s)
        assert (2, 1) == (event.offset, event.delivery_count)
        await trio.sleep(0.1)
        got = await sub.getmany(5, timeout=1)  # offset 3's lock expired
        assert [(2, 2)] == [(e.offset, e.delivery_count) for e in got]
        assert 5 - 2 == channel.fetches[1].max_events  # two held, none buffered
        assert 2 == sub.unacked  # offsets 1 and 2 (3 went back)
