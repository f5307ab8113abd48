"""The share-subscription client against a scripted channel (no broker)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from headwater import ActorRestarted, LockLostError
from headwater import _protocol as p
from headwater.client import Channel
from headwater.client._share import build_request, open_subscription


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
    async with open_subscription(
        channel,
        _request(),
        max_unacked=5,
        max_wait=0.1,
        deserializer="bytes",
        request_timeout=5,
    ) as sub:
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
