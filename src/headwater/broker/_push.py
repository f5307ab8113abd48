"""Pushed fetches: the subscriptions of one server connection (protocol v2).

Theory of operation
-------------------
A client opens a subscription (:class:`~headwater._protocol.FetchSubscribe`)
on a partition from an offset, with a credit in bytes. The connection then
runs one task per subscription: it reads the partition through the broker
service's own fetch (same checks, isolation, LSO, markers and aborted
transactions left out, long poll on new data), pushes each result as a
``push{kind: "fetch", sub}`` frame and takes the records' size from the
credit; with no credit left it waits for a
:class:`~headwater._protocol.FetchCredit`. So several batches of one
partition are on their way at once (as much as the credit allows) and the
client decodes one while the next is read and sent, yet what the server
holds for a slow client is bounded by the credit it granted
(docs/protocol.md section 12).

A subscription's frames leave in order (one task produces them, each queued
on the connection before the next read). An error ends the subscription
with one ``push{kind: "fetch_error", sub}`` frame carrying the error's code
and message (the client treats it as it treats a failed pull fetch: retry,
reset or stall, then subscribe again). With no new data for
``MAX_FETCH_WAIT`` seconds the task pushes an empty result, so a client can
tell a quiet partition from a dead connection. Subscriptions die with their
connection; a client that reconnects subscribes again from its position.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from headwater._errors import HeadwaterError, InvalidArgument
from headwater._logging import get_logger
from headwater._protocol import Done, Fetch, FetchCredit, FetchSubscribe, FetchUnsubscribe
from headwater.broker._service import MAX_FETCH_BYTES, MAX_FETCH_WAIT, BrokerService
from headwater.broker._stats import ConnectionStats
from headwater.journal._record import iter_records
from headwater.transport._messages import error_to_frame
from headwater.transport._operations import encode_response

__all__ = ["PushedFetches"]

_log = get_logger("headwater.server")

Push = Callable[[str, dict[str, Any], int], None]
"""``push(kind, body, sub)``: queue one push frame (never blocks)."""


class _Subscription:
    __slots__ = ("changed", "credit", "request", "scope")

    def __init__(self, request: FetchSubscribe) -> None:
        self.request = request
        self.credit = request.credit
        self.changed = trio.Event()
        self.scope = trio.CancelScope()

    def grant(self, n: int) -> None:
        self.credit += n
        self.changed.set()
        self.changed = trio.Event()


class PushedFetches:
    """The pushed-fetch subscriptions of one connection (see the module
    docstring). ``push`` queues a frame, ``flush`` sends what is queued;
    subscription tasks run in ``nursery`` (the connection's)."""

    def __init__(
        self,
        service: BrokerService,
        push: Push,
        flush: Callable[[], Awaitable[None]],
        nursery: trio.Nursery,
        *,
        limit: int,
        stats: ConnectionStats | None = None,
    ) -> None:
        self._service = service
        self._push = push
        self._flush = flush
        self._nursery = nursery
        self._limit = limit
        self._subs: dict[int, _Subscription] = {}
        self._stats = stats

    def _changed(self) -> None:
        if self._stats is not None:
            self._stats.subscriptions = sorted(
                f"{s.request.topic}/{s.request.partition}" for s in self._subs.values()
            )

    def __len__(self) -> int:
        return len(self._subs)

    def handle(self, request: Any) -> Done:
        """Answer a subscribe, credit or unsubscribe request (at once)."""
        if isinstance(request, FetchSubscribe):
            self._subscribe(request)
        elif isinstance(request, FetchCredit):
            if type(request.bytes) is not int or request.bytes < 0:
                raise InvalidArgument(f"credit bytes={request.bytes!r}; give an int >= 0")
            sub = self._subs.get(request.sub)
            if sub is not None:  # else it ended meanwhile (an error was pushed)
                sub.grant(request.bytes)
        elif isinstance(request, FetchUnsubscribe):
            sub = self._subs.pop(request.sub, None)
            if sub is not None:
                sub.scope.cancel()
                self._changed()
        else:  # pragma: no cover - the caller dispatches only these
            raise InvalidArgument(f"not a subscription request: {type(request).__name__}")
        return Done()

    def close(self) -> None:
        """Cancel every subscription (the connection is ending)."""
        for sub in self._subs.values():
            sub.scope.cancel()
        self._subs.clear()
        self._changed()

    def _subscribe(self, r: FetchSubscribe) -> None:
        for name in ("sub", "offset", "credit", "max_bytes"):
            value = getattr(r, name)
            least = 1 if name in ("credit", "max_bytes") else 0
            if type(value) is not int or value < least:
                raise InvalidArgument(f"{name}={value!r}; give an int >= {least}")
        if r.sub in self._subs:
            raise InvalidArgument(
                f"subscription {r.sub} is already open on this connection; pick another id"
            )
        if len(self._subs) >= self._limit:
            raise InvalidArgument(
                f"{len(self._subs)} subscriptions are open on this connection (at most "
                f"{self._limit}); close one first or use another connection"
            )
        # Checked now, so a bad topic or isolation fails the request itself.
        self._service.check_fetch(
            Fetch(r.topic, r.partition, r.offset, min(r.max_bytes, MAX_FETCH_BYTES), 0, r.isolation)
        )
        sub = self._subs[r.sub] = _Subscription(r)
        self._changed()
        self._nursery.start_soon(self._run, sub)

    async def _run(self, sub: _Subscription) -> None:
        r = sub.request
        offset = r.offset
        try:
            with sub.scope:
                while True:
                    while sub.credit <= 0:
                        await sub.changed.wait()
                    result = await self._service.handle(
                        Fetch(
                            r.topic,
                            r.partition,
                            offset,
                            min(r.max_bytes, sub.credit, MAX_FETCH_BYTES),
                            MAX_FETCH_WAIT,
                            r.isolation,
                        )
                    )
                    end = result.next_offset
                    if end < 0:  # pragma: no cover - the service always sets it
                        records = iter_records(result.records)
                        end = records[-1][0].next_offset if records else offset
                    # An empty result (the long poll ran out) is pushed too:
                    # it tells the client that the connection still works.
                    sub.credit -= len(result.records)
                    offset = max(offset, end)
                    self._push("fetch", encode_response(result), r.sub)
                    with trio.CancelScope(shield=True):  # never cancel a send midway
                        await self._flush()
        except Exception as exc:  # a HeadwaterError, or a bug: ended, answered, logged
            if not isinstance(exc, HeadwaterError):
                _log.error(
                    "fetch_subscription_failed", topic=r.topic, partition=r.partition, exc_info=exc
                )
            if self._subs.get(r.sub) is sub:
                del self._subs[r.sub]
                self._changed()
            frame = error_to_frame(None, exc)
            self._push(
                "fetch_error",
                {"code": frame.code, "message": frame.message, "details": frame.details},
                r.sub,
            )
            with trio.CancelScope(shield=True):
                await self._flush()
        finally:
            if self._subs.get(r.sub) is sub:
                del self._subs[r.sub]
                self._changed()
