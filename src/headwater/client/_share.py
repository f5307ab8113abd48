"""Share subscriptions, client side: a work queue over one topic.

Theory of operation
-------------------
``client.subscribe(topic, name)`` joins (creating on first use) the share
subscription ``name``; the broker deals the topic's events to its consumers
event by event, each delivery locked to one consumer until it is acked,
nacked, rejected or its lock (``ack_timeout``) expires.

Flow control is by credit (DECISIONS #23): the subscription holds at most
``max_unacked`` events (handed out and buffered, not yet settled) and asks
the broker only for the difference, so the broker never sends more. When the
limit is reached, ``__anext__`` waits until another task settles an event.

A background task (owned by the ``async with`` block) keeps the session alive
with empty fetches while the consumer is busy; a consumer the broker forgot
(its session expired) joins again as itself. Leaving the block leaves the
subscription: events it still holds go back at once.

A fetch the broker answered has dealt its events to this consumer (counted,
locked): an answer dropped on the client's side strands them until their
lock expires, and each such loss burns one of their ``max_deliveries``. So
:meth:`Subscription.getmany` never abandons a fetch in flight: its timeout
bounds the broker's long poll instead of cancelling the request. (Cancelling
a task that waits in ``async for`` still drops the answer of the fetch in
flight, if any: prefer ``getmany``'s timeout to an outer one.)

A buffered event whose lock may have expired (``ack_timeout`` counted from
when its fetch was sent, which is no later than the broker's count) is
dropped, never handed out: the broker may have dealt it to another consumer
already, with a higher delivery count.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from headwater import _protocol as p
from headwater._aio import unwrapping_groups
from headwater._errors import (
    ClosedError,
    ConfigError,
    HeadwaterError,
    InvalidArgument,
    UnknownMemberError,
)
from headwater.journal._batch import Event, Headers, Key

from ._channel import Channel
from ._serializers import BytesSerializer, get_serializer

__all__ = ["ExponentialBackoff", "SharedEvent", "Subscription", "open_subscription"]

MODES = ("shared", "exclusive", "failover", "key_shared")

#: How many times a fetch or an ack is tried on a retriable error.
RETRIES = 5

#: How long leaving a subscription may take (seconds) before it is given up.
LEAVE_TIMEOUT = 2.0


class SharedEvent(Event):
    """An event delivered by a share subscription: an :class:`Event` plus
    ``delivery_count`` (1 on the first delivery, counted durably by the broker).
    Immutable, like :class:`Event`: a tuple of eight, ``delivery_count`` last."""

    __slots__ = ()

    def __new__(
        cls,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int,
        key: Key | None,
        value: Any,
        headers: Headers = (),
        delivery_count: int = 1,
    ) -> SharedEvent:
        """An event of ``topic``/``partition`` at ``offset``, delivered
        ``delivery_count`` times."""
        return tuple.__new__(
            cls, (topic, partition, offset, timestamp, key, value, headers, delivery_count)
        )

    @property
    def delivery_count(self) -> int:
        """How many times the broker delivered this event (1 the first time)."""
        return self[7]  # type: ignore[misc,no-any-return]

    def __repr__(self) -> str:
        fields = (*Event._fields, "delivery_count")
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(fields, self, strict=True))
        return f"SharedEvent({shown})"

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    def _replace(self, **changes: Any) -> SharedEvent:
        fields = (*Event._fields, "delivery_count")
        values = dict(zip(fields, self, strict=True))
        values.update(changes)
        return SharedEvent(**values)


@attrs.frozen
class ExponentialBackoff:
    """Redelivery backoff ``min(base * 2**(n-1), max)`` seconds before the
    n-th redelivery (after a nack or a lock timeout)."""

    base: float
    max: float = 60.0


def _seconds(name: str, value: object, *, zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 0 if zero else value > 0)
        or value == math.inf
    ):
        raise ConfigError(
            f"{name} must be a {'' if zero else 'positive '}number of seconds, not {value!r}"
        )
    return float(value)


def build_request(
    topic: str,
    name: str,
    *,
    mode: str,
    start: str,
    ack_timeout: float,
    max_deliveries: int,
    backoff: Sequence[float] | ExponentialBackoff,
    window: int,
    session_timeout: float,
    client_id: str,
) -> p.ShareSubscribe:
    """Check the settings and build the subscribe request."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not supported; use one of {', '.join(MODES)}")
    if start not in ("earliest", "latest"):
        raise ConfigError(f"start={start!r}; a share subscription starts at 'earliest' or 'latest'")
    if (
        isinstance(max_deliveries, bool)
        or not isinstance(max_deliveries, int)
        or max_deliveries < 1
    ):
        raise ConfigError(f"max_deliveries must be an int >= 1, not {max_deliveries!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an int >= 1, not {window!r}")
    backoff_ms: tuple[int, ...] = ()
    base_ms = 0
    max_ms = 60_000
    if isinstance(backoff, ExponentialBackoff):
        base_ms = int(_seconds("backoff base", backoff.base) * 1000)
        max_ms = int(_seconds("backoff max", backoff.max) * 1000)
    elif isinstance(backoff, Sequence) and not isinstance(backoff, str | bytes):
        backoff_ms = tuple(int(_seconds("each backoff", b, zero=True) * 1000) for b in backoff)
    else:
        raise ConfigError(
            f"backoff={backoff!r}; give a list of seconds or ExponentialBackoff(base, max)"
        )
    return p.ShareSubscribe(
        topic,
        name,
        mode=mode,
        start=start,
        ack_timeout_ms=int(_seconds("ack_timeout", ack_timeout) * 1000),
        max_deliveries=max_deliveries,
        backoff_ms=backoff_ms,
        backoff_base_ms=base_ms,
        backoff_max_ms=max_ms,
        window=window,
        session_timeout=_seconds("session_timeout", session_timeout),
        client_id=client_id,
    )


class Subscription:
    """One consumer of a share subscription (made by ``client.subscribe``).

    ``async for event in subscription`` yields :class:`SharedEvent`; settle
    each with :meth:`ack`, :meth:`nack`, :meth:`reject` (or renew its lock
    with :meth:`extend`). Safe to use from several tasks at once."""

    def __init__(
        self,
        channel: Channel,
        request: p.ShareSubscribe,
        *,
        max_unacked: int,
        max_wait: float,
        deserializer: Any,
        request_timeout: float,
    ) -> None:
        self._channel = channel
        self._request = request
        self._max_unacked = max_unacked
        self._max_wait = max_wait
        self._timeout = request_timeout
        self._deserializer = get_serializer(deserializer)
        self._buffer: deque[tuple[SharedEvent, float]] = deque()  # (event, lock ends)
        self._lock_seconds = request.ack_timeout_ms / 1000
        self._held: set[tuple[int, int]] = set()
        self._freed = trio.Event()
        self._fetch_lock = trio.Lock()
        self._membership: p.ShareMembership | None = None
        self._last_contact = -math.inf
        self._closed = False

    @property
    def consumer_id(self) -> str:
        """This consumer's id in the subscription."""
        assert self._membership is not None
        return self._membership.consumer_id

    @property
    def name(self) -> str:
        """The subscription's name."""
        return self._request.name

    @property
    def unacked(self) -> int:
        """Events handed out or buffered and not yet settled."""
        return len(self._held) + len(self._buffer)

    async def _ask(self, request: Any, extra: float = 0.0) -> Any:
        if self._closed:
            raise ClosedError("this subscription is closed; subscribe again")
        result = await self._channel.request(request, timeout=self._timeout + extra)
        self._last_contact = trio.current_time()
        return result

    async def _join(self) -> None:
        consumer_id = None if self._membership is None else self._membership.consumer_id
        self._membership = await self._ask(attrs.evolve(self._request, consumer_id=consumer_id))

    async def _retrying(self, request: Any, extra: float = 0.0) -> Any:
        """``_ask``, retrying a retriable failure (a restarting share actor, a
        dropped connection) a few times with a short backoff. Only for
        requests whose repetition is harmless: a fetch (what a lost answer
        delivered comes back after the lock) and an ack (a second is a no-op)."""
        for attempt in range(1, RETRIES + 1):
            try:
                return await self._ask(request, extra)
            except HeadwaterError as exc:
                if not exc.retriable or attempt == RETRIES:
                    raise
                await trio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch(self, max_events: int, max_wait: float) -> p.ShareBatch:
        try:
            batch: p.ShareBatch = await self._retrying(
                p.ShareFetch(self.name, self.consumer_id, max_events, max_wait), max_wait
            )
        except UnknownMemberError:
            await self._join()
            batch = await self._retrying(
                p.ShareFetch(self.name, self.consumer_id, max_events, max_wait), max_wait
            )
        return batch

    async def _keepalive(self, period: float) -> None:
        while True:
            await trio.sleep(period)
            if trio.current_time() - self._last_contact >= period:
                try:
                    await self._fetch(0, 0)
                except HeadwaterError:
                    continue

    def _decode(self, r: p.ShareRecord) -> SharedEvent:
        value = r.value
        if value is not None and not isinstance(self._deserializer, BytesSerializer):
            value = self._deserializer.deserialize(value)
        flat = list(r.headers or ())
        headers = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
        return SharedEvent(
            self._request.topic,
            r.partition,
            r.offset,
            r.timestamp,
            r.key,
            value,
            headers,
            r.delivery_count,
        )

    def __aiter__(self) -> Subscription:
        return self

    def _pop(self) -> SharedEvent | None:
        """The next buffered event whose lock still holds (dropping those
        whose lock may have expired: see the module docstring), or ``None``."""
        now = trio.current_time()
        dropped = False
        try:
            while self._buffer:
                event, lock_ends = self._buffer.popleft()
                if lock_ends > now:
                    self._held.add((event.partition, event.offset))
                    return event
                dropped = True
            return None
        finally:
            if dropped:  # credit came back
                self._freed.set()
                self._freed = trio.Event()

    async def _next(self, deadline: float) -> SharedEvent | None:
        """The next event, or ``None`` at ``deadline`` (``trio.current_time()``).

        The deadline bounds the broker's long poll and the waits that lose
        nothing (for the fetch lock, for credit); it never cancels a fetch in
        flight, whose answer holds events locked to this consumer."""
        while True:
            event = self._pop()
            if event is not None:
                return event
            try:
                self._fetch_lock.acquire_nowait()  # (so a timeout of 0 polls once)
            except trio.WouldBlock:
                acquired = False
                with trio.move_on_at(deadline):
                    await self._fetch_lock.acquire()
                    acquired = True
                if not acquired:
                    return None  # the deadline passed while another task fetched
            try:
                if self._buffer:
                    continue
                credit = self._max_unacked - self.unacked
                if credit <= 0:
                    freed = self._freed
                else:
                    sent = trio.current_time()
                    wait = max(0.0, min(self._max_wait, deadline - sent))
                    batch = await self._fetch(credit, wait)
                    lock_ends = sent + self._lock_seconds
                    self._buffer.extend((self._decode(r), lock_ends) for r in batch.records)
                    if not batch.records and trio.current_time() >= deadline:
                        return None
                    continue
            finally:
                self._fetch_lock.release()
            with trio.move_on_at(deadline):
                await freed.wait()
            if trio.current_time() >= deadline and not self._buffer:
                return None

    async def __anext__(self) -> SharedEvent:
        event = await self._next(math.inf)
        assert event is not None
        return event

    async def getmany(self, max_events: int = 100, timeout: float = 1.0) -> list[SharedEvent]:
        """Up to ``max_events`` events (within the credit), waiting about
        ``timeout`` seconds for the first: the broker's long poll ends by
        then, and a fetch in flight is waited for, never dropped (its events
        are locked to this consumer)."""
        out: list[SharedEvent] = []
        first = await self._next(trio.current_time() + timeout)
        if first is None:
            return out
        out.append(first)
        while len(out) < max_events:
            event = self._pop()
            if event is None:
                break
            out.append(event)
        return out

    def _key(self, event: object) -> tuple[int, int]:
        if not isinstance(event, Event) or event.topic != self._request.topic:
            raise InvalidArgument(
                f"{event!r} is not an event of topic {self._request.topic!r} from this subscription"
            )
        return event.partition, event.offset

    async def _settle(self, events: Sequence[Any], outcome: str, delay: Any, error: Any) -> None:
        delay_ms: int | None = None
        if delay is not None:
            delay_ms = int(_seconds("delay", delay, zero=True) * 1000)
        if error is not None and not isinstance(error, str):
            raise InvalidArgument(f"error must be a str, not {error!r}")
        keys = [self._key(e) for e in events]
        outcomes = tuple(p.ShareOutcome(pt, off, outcome, delay_ms, error) for pt, off in keys)
        request = p.ShareAck(self.name, self.consumer_id, outcomes)
        try:
            if outcome == "ack":
                await self._retrying(request)
            else:
                await self._ask(request)
        finally:
            if outcome != "extend":
                for key in keys:
                    self._held.discard(key)
                self._freed.set()
                self._freed = trio.Event()

    async def ack(self, event: Event) -> None:
        """Acknowledge ``event``: it is done and never delivered again. A
        second ack of it is a no-op; raises :class:`~headwater.LockLostError`
        if its lock expired and it went back to the queue."""
        await self._settle([event], "ack", None, None)

    async def ack_many(self, events: Sequence[Event]) -> None:
        """Acknowledge several events in one request."""
        if events:
            await self._settle(list(events), "ack", None, None)

    async def nack(
        self, event: Event, *, delay: float | None = None, error: str | None = None
    ) -> None:
        """Give ``event`` back: redelivered after the subscription's backoff
        (or ``delay`` seconds), or dead-lettered once it used its
        ``max_deliveries``. ``error`` goes into the dead-letter headers."""
        await self._settle([event], "nack", delay, error)

    async def reject(self, event: Event, *, error: str | None = None) -> None:
        """Send ``event`` straight to the dead-letter topic."""
        await self._settle([event], "reject", None, error)

    async def extend(self, event: Event) -> None:
        """Renew ``event``'s lock for another ``ack_timeout`` (a slow job)."""
        await self._settle([event], "extend", None, None)

    async def aclose(self) -> None:
        """Leave the subscription (idempotent); held events go back at once."""
        if self._closed:
            return
        try:
            if self._membership is not None:
                # Best effort, briefly: if the broker is gone, what this
                # consumer holds goes back when its session expires instead.
                bound = min(self._timeout, LEAVE_TIMEOUT)
                with trio.CancelScope(shield=True), trio.move_on_after(bound):
                    await self._channel.request(
                        p.ShareLeave(self.name, self.consumer_id), timeout=bound
                    )
        except HeadwaterError:
            pass
        finally:
            self._closed = True


@asynccontextmanager
async def open_subscription(
    channel: Channel,
    request: p.ShareSubscribe,
    *,
    max_unacked: int,
    max_wait: float,
    deserializer: Any,
    request_timeout: float,
) -> AsyncIterator[Subscription]:
    """Join, yield the :class:`Subscription`, leave (module docstring)."""
    if isinstance(max_unacked, bool) or not isinstance(max_unacked, int) or max_unacked < 1:
        raise ConfigError(f"max_unacked must be an int >= 1, not {max_unacked!r}")
    _seconds("max_wait", max_wait, zero=True)
    subscription = Subscription(
        channel,
        request,
        max_unacked=max_unacked,
        max_wait=max_wait,
        deserializer=deserializer,
        request_timeout=request_timeout,
    )
    await subscription._join()
    try:
        with unwrapping_groups():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscription._keepalive, request.session_timeout / 3)
                try:
                    yield subscription
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        await subscription.aclose()
