"""The idempotent producer: events in, acknowledged stored events out.

Theory of operation
-------------------
``send_nowait`` serializes one event, picks its partition (the
:class:`~headwater.client.Partitioner`) and appends it to the sans-IO
:class:`~headwater.client.Accumulator`; it returns a :class:`SendHandle`. A
*flusher* task sleeps until the accumulator's next deadline (linger, on
Trio's clock), drains ready batches and queues each on its partition. One
*sender* task per partition with queued batches sends them in order as
``Produce`` requests carrying one journal record each, up to
``max_in_flight`` (default 5) before the first is answered
(:meth:`~headwater.client.Channel.submit`: the TCP channel writes them in
call order and the server appends the produces of one connection and
partition in arrival order; the embedded channel answers each before the
next goes). A partition's window counts its queued batches too: while it is
full, the open batch keeps growing (the flusher leaves it open).

Idempotence: at start the producer asks for an id and epoch
(``InitProducer``); every batch carries them and its base sequence. The
first batch of an identity to a partition goes alone (a partition that does
not know the producer accepts any sequence; once it does, it refuses a gap).
When the oldest batch in flight fails with a retriable error, the producer
waits for the answers of the ones behind it (refused as a gap, or stored if
the failed one was stored after all: those are done), then after an
exponential backoff resends the failed ones unchanged, in order (same
sequences, so the broker stores each once: it remembers the last 5 batches,
hence at most 5 in flight), until ``delivery_timeout`` seconds after it was
queued; then its handles fail with the last error, and those of the batches
that were in flight behind it with an error of the same class saying so.
After a batch fails for good the producer takes a new identity and
renumbers the batches still queued for that partition, so they are not
refused as out of order.

Per event the work is: serialize, choose a partition, append. Everything
else (encode, header, request, result) is per batch: a batch shares one
:class:`_BatchResult` that all its events' handles read. A *plain* event
(no key, headers, partition or timestamp given) to a topic whose sticky
partition has a batch open skips the partitioner: ``send_nowait`` appends it
to that batch (:meth:`~headwater.client.Accumulator.add_plain`) until the
batch closes (``_batch_closed`` forgets it).

With ``linger=0`` and no transaction, ``send`` to a partition with nothing
queued or in flight takes the *direct path*: it closes the event's batch at
once and delivers it from the caller's task (``_send_now``), and returns the
answer without another task step once it is in.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
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
    InvalidTransactionStateError,
    ProducerFencedError,
    TransactionTimedOutError,
)
from headwater._logging import get_logger
from headwater.journal._batch import Event, Headers, Key
from headwater.journal._record import ATTR_TRANSACTIONAL, encode_record

from ._accumulator import Accumulator, AccumulatorConfig, ReadyBatch, _OpenBatch
from ._channel import Channel, PendingRequest
from ._partitioner import Partitioner
from ._serializers import BytesSerializer, Serializer, get_serializer

__all__ = ["Producer", "ProducerConfig", "SendHandle", "open_producer"]

log = get_logger("headwater.client.producer")


_time_ns = time.time_ns


def _wall_clock_ms() -> int:
    return _time_ns() // 1_000_000


def _seconds(
    name: str, low: float = 0.0
) -> Callable[[object, attrs.Attribute[float], float], None]:
    def check(_inst: object, _attr: attrs.Attribute[float], value: float) -> None:
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not low <= value < math.inf
        ):
            raise ConfigError(f"{name} must be a number of seconds >= {low}, not {value!r}")

    return check


#: The most produce batches in flight per partition: the broker remembers
#: each producer's last 5 batches per partition for deduplication
#: (``broker/_idempotence.py``, ``BATCHES_KEPT``), so a resend of any batch in
#: flight is still recognised as a duplicate.
MAX_IN_FLIGHT = 5


def _in_flight(_inst: object, _attr: Any, value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_IN_FLIGHT:
        raise ConfigError(
            f"max_in_flight must be an int from 1 to {MAX_IN_FLIGHT} (the batches per "
            f"partition the broker remembers for deduplication), not {value!r}"
        )


def _transactional_id(_inst: object, _attr: Any, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"transactional_id must be a non-empty str or None, not {value!r}")


@attrs.frozen
class ProducerConfig:
    """Producer settings. ``linger`` (s), ``max_batch_events``,
    ``max_batch_bytes`` and ``max_event_bytes`` shape batches;
    ``delivery_timeout`` bounds retries of a batch (s after it is queued);
    ``retry_backoff``/``retry_backoff_max`` (s) the delay between them;
    ``request_timeout`` (s) one request. ``serializer`` turns values into
    bytes (a name: ``"cbor"`` (default), ``"json"``, ``"str"``, ``"bytes"``,
    or a :class:`~headwater.client.Serializer`). ``clock`` returns the event
    timestamp in ms (default: wall time). ``transactional_id`` makes the
    producer transactional (every send inside :meth:`Producer.transaction`;
    a new producer with the same id fences this one), and
    ``transaction_timeout`` (s, 0.1..900) is how long the broker lets one of
    its transactions stay open before aborting it. ``max_in_flight`` (1 to
    5, default 5) is how many batches of one partition may be sent before
    the first is acknowledged (over TCP; the embedded channel sends one at a
    time)."""

    linger: float = 0.005
    max_batch_events: int = 1000
    max_batch_bytes: int = 1 << 20
    max_event_bytes: int = 1 << 20
    delivery_timeout: float = attrs.field(default=120.0, validator=_seconds("delivery_timeout"))
    retry_backoff: float = attrs.field(default=0.05, validator=_seconds("retry_backoff"))
    retry_backoff_max: float = attrs.field(default=2.0, validator=_seconds("retry_backoff_max"))
    request_timeout: float = attrs.field(default=30.0, validator=_seconds("request_timeout", 0.001))
    serializer: Any = None
    clock: Callable[[], int] = _wall_clock_ms
    transactional_id: str | None = attrs.field(default=None, validator=_transactional_id)
    transaction_timeout: float = attrs.field(
        default=60.0, validator=_seconds("transaction_timeout", 0.1)
    )
    max_in_flight: int = attrs.field(default=MAX_IN_FLIGHT, validator=_in_flight)


@attrs.define(eq=False)
class _BatchResult:
    """The outcome of one batch, shared by its events' handles."""

    done: trio.Event = attrs.field(factory=trio.Event)
    base_offset: int = -1
    error: HeadwaterError | None = None


class SendHandle(tuple[Any, ...]):
    """A queued event: ``await handle.wait()`` (or ``await handle``) returns the
    stored :class:`~headwater.client.Event` or raises why it was not stored.

    Attributes ``topic``, ``partition``, ``timestamp`` (ms), ``key``,
    ``value`` and ``headers`` describe the event as queued. (Built in C as a
    tuple, one per event, for speed; handles compare by identity.)"""

    __slots__ = ()

    def __new__(
        cls,
        result: _BatchResult,
        index: int,
        topic: str,
        partition: int,
        timestamp: int,
        key: Key | None,
        value: Any,
        headers: Headers,
    ) -> SendHandle:
        """A handle for event ``index`` of the batch whose outcome is ``result``."""
        return _new_handle(cls, (result, index, topic, partition, timestamp, key, value, headers))

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)  # copy.copy() builds a handle of the same event

    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return (
            f"SendHandle(topic={self[2]!r}, partition={self[3]!r}, timestamp={self[4]!r}, "
            f"key={self[5]!r}, value={self[6]!r:.80}, headers={self[7]!r:.80}, "
            f"done={self.done()})"
        )

    @property
    def topic(self) -> str:
        """The event's topic."""
        return self[2]  # type: ignore[no-any-return]

    @property
    def partition(self) -> int:
        """The partition the event went to."""
        return self[3]  # type: ignore[no-any-return]

    @property
    def timestamp(self) -> int:
        """The event's timestamp, ms since the epoch."""
        return self[4]  # type: ignore[no-any-return]

    @property
    def key(self) -> Key | None:
        """The event's key."""
        return self[5]  # type: ignore[no-any-return]

    @property
    def value(self) -> Any:
        """The event's value, as given (before serialization)."""
        return self[6]

    @property
    def headers(self) -> Headers:
        """The event's headers, as ``(name, bytes)`` pairs."""
        return self[7]  # type: ignore[no-any-return]

    def done(self) -> bool:
        """Whether the event's batch has been stored or has failed."""
        return self[0].done.is_set()  # type: ignore[no-any-return]

    def result(self) -> Event:
        """The stored event, once :meth:`done`. Raises the batch's error if it
        failed, :class:`~headwater.InvalidArgument` if it is not done yet."""
        r, index, topic, partition, timestamp, key, value, headers = self
        if not r.done.is_set():
            raise InvalidArgument("this event is not stored yet: await handle.wait() first")
        if r.error is not None:
            raise r.error
        return Event(topic, partition, r.base_offset + index, timestamp, key, value, headers)

    async def wait(self) -> Event:
        """Wait until the event is stored; return it (or raise its error)."""
        await self[0].done.wait()
        return self.result()

    def __await__(self) -> Any:
        return self.wait().__await__()


_new_handle = tuple.__new__


def _timestamp_ms(timestamp: object) -> int:
    if isinstance(timestamp, dt.datetime):
        if timestamp.tzinfo is None:
            raise InvalidArgument(
                f"timestamp {timestamp!r} has no timezone; pass an aware datetime "
                "(e.g. tzinfo=datetime.timezone.utc) or ms since the epoch"
            )
        return int(timestamp.timestamp() * 1000)
    if type(timestamp) is int and timestamp >= 0:
        return timestamp
    raise InvalidArgument(
        f"timestamp={timestamp!r} is invalid; give ms since the epoch (an int >= 0) "
        "or an aware datetime"
    )


def _check_headers(headers: object) -> Headers:
    if headers is None:
        return ()
    items: Iterable[Any]
    if isinstance(headers, Mapping):
        items = headers.items()
    elif isinstance(headers, list | tuple):
        items = headers
    else:
        raise InvalidArgument(
            f"headers must be a mapping or a list of (name, value) pairs, not {headers!r:.80}"
        )
    out = []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise InvalidArgument(f"a header must be a (name, value) pair, not {item!r:.80}")
        name, value = item
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(name, str) or not isinstance(value, bytes):
            raise InvalidArgument(f"a header must be a (str, bytes or str) pair, not {item!r:.80}")
        out.append((name, value))
    return tuple(out)


def _with_deliver_at(
    headers: Any, deliver_at: int | dt.datetime | None, deliver_after: Any, now_ms: int
) -> Any:
    """``headers`` plus the reserved ``hw.deliver_at`` header (ms since the
    epoch, ASCII) when a not-before time is given (docs/batch-format.md)."""
    if deliver_at is None and deliver_after is None:
        return headers
    if deliver_at is not None and deliver_after is not None:
        raise InvalidArgument("give deliver_at or deliver_after, not both")
    if deliver_after is not None:
        if isinstance(deliver_after, dt.timedelta):
            seconds = deliver_after.total_seconds()
        elif isinstance(deliver_after, int | float) and not isinstance(deliver_after, bool):
            seconds = float(deliver_after)
        else:
            raise InvalidArgument(
                f"deliver_after={deliver_after!r}; give seconds >= 0 or a timedelta"
            )
        if not 0 <= seconds < 10**9:
            raise InvalidArgument(f"deliver_after={deliver_after!r}; give seconds >= 0")
        at = now_ms + int(seconds * 1000)
    else:
        try:
            at = _timestamp_ms(deliver_at)
        except InvalidArgument:
            raise InvalidArgument(
                f"deliver_at={deliver_at!r}; give ms since the epoch or an aware datetime"
            ) from None
    return (*_check_headers(headers), (DELIVER_AT_HEADER, str(at).encode()))


#: The reserved header carrying an event's not-before time for share
#: subscriptions (docs/batch-format.md).
DELIVER_AT_HEADER = "hw.deliver_at"


def _identity_of(batch: ReadyBatch) -> tuple[int, int]:
    return batch.producer_id, batch.epoch


def _failed_behind(
    batch: ReadyBatch, failed: HeadwaterError, own: HeadwaterError
) -> HeadwaterError:
    """The error of ``batch``, in flight behind a batch of its partition
    that failed for good with ``failed`` (its own answer was ``own``): an
    error of ``failed``'s class, so it is handled the same way."""
    message = (
        f"an earlier batch of {batch.topic}/{batch.partition} failed ({failed}); this "
        f"batch was in flight behind it and fails with it (its own answer: {own}). "
        "Send its events again if they must be stored"
    )
    try:
        return type(failed)(message)
    except TypeError:  # an error class that takes more than a message
        return own


class Producer:
    """Sends events to a broker (see the module docs). Get one with ``async
    with client.producer() as producer`` (:func:`open_producer`), which owns
    its tasks; leaving the block flushes every queued event."""

    def __init__(self, channel: Channel, config: ProducerConfig | None = None) -> None:
        self._channel = channel
        self.config = config = config or ProducerConfig()
        if not callable(config.clock):
            raise ConfigError(f"clock must be a callable returning ms, not {config.clock!r}")
        self._serializer: Serializer = get_serializer(config.serializer)
        # Read per event: bound once here.
        self._serialize = self._serializer.serialize
        # bytes values pass through the bytes serializer unchanged: skip the call.
        self._passthrough = isinstance(self._serializer, BytesSerializer)
        self._clock = config.clock
        self._tid = config.transactional_id
        self._partitioner = Partitioner()
        self._accumulator = Accumulator(
            AccumulatorConfig(
                max_batch_events=config.max_batch_events,
                max_batch_bytes=config.max_batch_bytes,
                linger=config.linger,
                max_event_bytes=config.max_event_bytes,
            ),
            on_batch_closed=self._batch_closed,
            clock=trio.current_time,
        )
        self._partitions: dict[str, int] = {}
        self._results: dict[int, _BatchResult] = {}
        # Per topic, while its sticky partition's batch is open: that
        # partition, the batch and its result. ``send_nowait`` appends a
        # plain event (unkeyed, no headers, partition or timestamp given)
        # straight to it; ``_batch_closed`` drops the entry.
        self._hot: dict[str, tuple[int, _OpenBatch, _BatchResult]] = {}
        self._add_plain = self._accumulator.add_plain
        self._default_clock = config.clock is _wall_clock_ms  # read without its call
        self._queues: dict[tuple[str, int], deque[tuple[ReadyBatch, float]]] = {}
        # Per partition: the identity of its last acknowledged batch (batches
        # of that identity may be pipelined), and the event that wakes its
        # sender when a batch is queued while the window has room.
        self._acked: dict[tuple[str, int], tuple[int, int]] = {}
        self._kicks: dict[tuple[str, int], trio.Event] = {}
        self._wakeup = trio.Event()
        self._closed_batch = False
        self._force = False
        self._unfinished = 0
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self.identity: p.ProducerIdentity | None = None
        self._txn_open = False
        # Partitions of the open transaction -> their add request (shared by
        # the senders of a topic's partitions, awaited before the end).
        self._txn_adds: dict[tuple[str, int], _Add] = {}
        self._last_txn_partitions: frozenset[tuple[str, int]] = frozenset()
        self._txn_error: HeadwaterError | None = None
        self._txn_groups = False

    # ------------------------------------------------------------ lifecycle

    async def _request(self, request: Any, deadline: float, what: str, **context: Any) -> Any:
        """Send ``request``; retry retriable errors with exponential backoff
        (``retry_backoff`` doubling up to ``retry_backoff_max``) until
        ``deadline``, each attempt bounded by ``request_timeout``. The one
        retry loop of the producer: identities, partition counts, batches."""
        attempt = 0
        while True:
            timeout = min(self.config.request_timeout, max(deadline - trio.current_time(), 0.001))
            try:
                return await self._channel.request(request, timeout=timeout)
            except HeadwaterError as exc:
                attempt += 1
                delay = min(
                    self.config.retry_backoff * 2 ** (attempt - 1), self.config.retry_backoff_max
                )
                if not exc.retriable or trio.current_time() + delay >= deadline:
                    raise
                log.info(f"{what}_retry", attempt=attempt, error=type(exc).__name__, **context)
                await trio.sleep(delay)

    async def _init_producer(self) -> p.ProducerIdentity:
        """Ask for an identity, retrying retriable errors (a failed fsync of
        the broker's registry, a restart) with backoff for up to
        ``delivery_timeout`` seconds."""
        deadline = trio.current_time() + self.config.delivery_timeout
        tid = self.config.transactional_id
        request: Any = (
            p.InitProducer()
            if tid is None
            else p.InitTransactions(tid, self.config.transaction_timeout)
        )
        identity: p.ProducerIdentity = await self._request(request, deadline, "init_producer")
        return identity

    # ------------------------------------------------------------ transactions

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """``async with producer.transaction():`` groups the sends inside it
        into one transaction over any topics and partitions: leaving the
        block flushes and commits (read_committed consumers then see every
        event of it, or, after an abort, none); an exception aborts and
        propagates. A send's handle resolves when the event is stored, not
        committed. Leaving returns once the broker has made the decision
        durable; read_committed readers see the events once each
        partition's marker is durable too (a moment later), and this
        producer's next transaction waits for those markers. The partitions
        of the last transaction are added when the block begins (so
        ``transaction_timeout`` runs from there).

        Raises :class:`~headwater.InvalidTransactionStateError` without a
        ``transactional_id`` or while another transaction is open;
        :class:`~headwater.ProducerFencedError` once a newer producer with
        the same id started (close this one);
        :class:`~headwater.TransactionTimedOutError` if the broker aborted
        it after ``transaction_timeout``. If a send inside failed, the
        transaction is aborted and that error raised."""
        if self.config.transactional_id is None:
            raise InvalidTransactionStateError(
                "this producer is not transactional; open it with transactional_id=..."
            )
        if self._closed or self._nursery is None:
            raise ClosedError("this producer is closed (or not entered with `async with`)")
        if self._txn_open:
            raise InvalidTransactionStateError(
                "a transaction is already open on this producer; one at a time"
            )
        self._txn_open = True
        self._txn_adds = {}
        self._txn_groups = False
        self._txn_error = None
        self._txn_wrote = False
        if self._last_txn_partitions:
            # Most loops write the same partitions every time: add the last
            # transaction's now, so the add (which the broker holds until the
            # last transaction's markers are durable) overlaps with the
            # sends instead of delaying the first batch.
            self._start_add(self._last_txn_partitions, eager=True)
        try:
            try:
                yield
            except BaseException:
                # Abort (bounded, even when cancelled); if it cannot be
                # written the broker aborts at transaction_timeout.
                with trio.move_on_after(self.config.request_timeout) as scope:
                    scope.shield = True
                    await self._end_transaction(commit=False)
                raise
            await self.flush()
            error = self._failed_send()
            if error is not None:
                await self._end_transaction(commit=False)
                raise error
            await self._end_transaction(commit=True)
        finally:
            self._txn_open = False

    async def send_offsets(
        self,
        group: str,
        offsets: Mapping[tuple[str, int], int],
        *,
        generation: int = -1,
        member_id: str | None = None,
        metadata: str = "",
    ) -> None:
        """Commit ``group``'s positions ({(topic, partition): next offset to
        read}) as part of the open transaction: they become the group's
        committed offsets if and only if the transaction commits. Pass the
        consumer's ``member_id`` and ``generation`` (its ``membership``); a
        member may send offsets only for partitions it owns, like
        ``commit()``. Until the transaction ends, reading the group's
        committed offset for these partitions answers a retriable
        :class:`~headwater.UnstableOffsetError` (consumers wait it out).

        Raises :class:`~headwater.InvalidTransactionStateError` outside
        :meth:`transaction`, :class:`~headwater.StaleGenerationError` /
        :class:`~headwater.UnknownMemberError` as ``commit()`` does, and
        :class:`~headwater.ProducerFencedError` once a newer instance started."""
        tid = self.config.transactional_id
        if tid is None or not self._txn_open:
            raise InvalidTransactionStateError(
                "send_offsets works only inside `async with producer.transaction():` "
                "of a producer with a transactional_id"
            )
        if not isinstance(offsets, Mapping):
            raise InvalidArgument(
                f"offsets must map (topic, partition) to an offset, not {offsets!r:.80}"
            )
        rows = tuple(
            p.PartitionOffset(topic, partition, offset, metadata)
            for (topic, partition), offset in sorted(offsets.items())
        )
        assert self.identity is not None
        deadline = trio.current_time() + self.config.delivery_timeout
        await self._request(
            p.SendOffsetsToTxn(
                tid,
                self.identity.producer_id,
                self.identity.epoch,
                group,
                member_id,
                generation,
                rows,
            ),
            deadline,
            "send_offsets",
        )
        self._txn_groups = True

    def _failed_send(self) -> HeadwaterError | None:
        """The first error of a send of the open transaction (set by senders)."""
        return self._txn_error

    def _start_add(self, tps: Iterable[tuple[str, int]], *, eager: bool = False) -> _Add:
        """Send one AddPartitionsToTxn for ``tps`` in a task; every sender of
        those partitions waits for it."""
        add = _Add(frozenset(tps), eager)
        for tp in add.partitions:
            self._txn_adds[tp] = add
        assert self._nursery is not None
        self._nursery.start_soon(self._run_add, add)
        return add

    async def _run_add(self, add: _Add) -> None:
        tid = self.config.transactional_id
        assert tid is not None
        assert self.identity is not None
        request = p.AddPartitionsToTxn(
            tid,
            self.identity.producer_id,
            self.identity.epoch,
            tuple(p.TopicPartition(*x) for x in sorted(add.partitions)),
        )
        deadline = trio.current_time() + self.config.delivery_timeout
        try:
            await self._request(request, deadline, "add_partitions_to_txn")
        except HeadwaterError as exc:
            add.error = exc
        finally:
            add.done.set()

    async def _added(self) -> bool:
        """Wait for the open transaction's adds; whether any went through."""
        for add in set(self._txn_adds.values()):
            await add.done.wait()
        return any(add.error is None for add in self._txn_adds.values())

    async def _end_transaction(self, *, commit: bool) -> None:
        await self.flush()
        assert self.identity is not None
        tid = self.config.transactional_id
        assert tid is not None
        added = await self._added()
        failed = self._txn_error is not None
        self._last_txn_partitions = frozenset(
            tp for tp, add in self._txn_adds.items() if add.error is None
        )
        empty = not self._txn_wrote and not self._txn_groups
        try:
            if added or self._txn_groups:
                deadline = trio.current_time() + self.config.delivery_timeout
                await self._request(
                    p.EndTxn(tid, self.identity.producer_id, self.identity.epoch, commit),
                    deadline,
                    "end_txn",
                )
        except TransactionTimedOutError:
            if not empty:
                raise
            # Only the early add was in it (nothing sent): the user's block
            # outlived transaction_timeout without writing; carry on under
            # a new epoch.
            failed = True
        finally:
            self._txn_adds = {}
            self._txn_groups = False
        if failed and not isinstance(self._txn_error, ProducerFencedError):
            # A batch failed for good: take a new epoch so the next
            # transaction starts its sequences afresh.
            self.identity = await self._init_producer()
            self._accumulator.set_identity(self.identity.producer_id, self.identity.epoch)

    def _close_now(self) -> None:
        """Stop the tasks and fail every event not stored yet."""
        assert self._nursery is not None
        self._closed = True
        self._nursery.cancel_scope.cancel()
        for result in self._results.values():
            if not result.done.is_set():
                result.error = ClosedError("the producer closed before this event was stored")
                result.done.set()

    async def aclose(self) -> None:
        """Flush and close, as leaving the ``async with`` block does (the
        block then ends at once). Idempotent."""
        if not self._closed and self._nursery is not None:
            await self.flush()
            self._close_now()

    # ------------------------------------------------------------ sending

    async def partitions_of(self, topic: str) -> int:
        """The partition count of ``topic`` (asked once, then cached)."""
        count = self._partitions.get(topic)
        if count is None:
            # Retried like a produce (a lost connection must not fail a send
            # that the produce path itself would have retried).
            deadline = trio.current_time() + self.config.delivery_timeout
            description = await self._request(
                p.DescribeTopic(topic), deadline, "describe_topic", topic=topic
            )
            count = self._partitions[topic] = description.topic.partitions
        return count

    async def _learn_topics(self) -> None:
        """Learn every existing topic's partition count in one request, so
        that :meth:`send_nowait` works at once for any topic that existed
        when the producer opened (retried like a produce)."""
        deadline = trio.current_time() + self.config.delivery_timeout
        listing: p.TopicList = await self._request(p.ListTopics(), deadline, "list_topics")
        for info in listing.topics:
            self._partitions.setdefault(info.name, info.partitions)

    def send_nowait(
        self,
        topic: str,
        value: Any,
        key: Key | None = None,
        headers: Any = None,
        partition: int | None = None,
        timestamp: int | dt.datetime | None = None,
        *,
        deliver_at: int | dt.datetime | None = None,
        deliver_after: float | dt.timedelta | None = None,
    ) -> SendHandle:
        """Queue one event and return its :class:`SendHandle` at once.
        ``deliver_at`` / ``deliver_after``: see :meth:`send`.

        The topic's partition count must be known: the producer learns every
        topic that exists when it opens; a topic created after that is
        learned by :meth:`partitions_of` or any :meth:`send` to it. Otherwise
        :class:`~headwater.UnknownTopicError` is raised. Bad input raises a
        typed :class:`~headwater.HeadwaterError` and queues nothing."""
        if self._closed or self._nursery is None:
            raise ClosedError("this producer is closed (or not entered with `async with`)")
        hot = self._hot.get(topic)
        if (
            hot is not None
            and key is None
            and headers is None
            and partition is None
            and timestamp is None
            and deliver_at is None
            and deliver_after is None
        ):
            # The common event to a batch open already: straight in (what
            # ``_enqueue`` would do, minus its checks and calls).
            if type(value) is bytes and self._passthrough:
                raw = value
            elif value is None:
                raw = None
            else:
                raw = self._serialize(value)
            if type(raw) is bytes:
                ts = _time_ns() // 1_000_000 if self._default_clock else self._clock()
                chosen, batch, result = hot
                index = self._add_plain(batch, ts, raw)
                if index >= 0:
                    if self._closed_batch:  # it was full: the flusher takes it
                        self._wake()
                    return _new_handle(
                        SendHandle, (result, index, topic, chosen, ts, None, value, ())
                    )
        count = self._partitions.get(topic)
        if count is None:
            if not isinstance(topic, str):
                raise InvalidArgument(f"topic must be a str, not {type(topic).__qualname__}")
            from headwater._errors import UnknownTopicError

            raise UnknownTopicError(
                f"topic {topic!r} did not exist when this producer opened; create it first,"
                " then `await producer.partitions_of(topic)` (or `await send(...)`) before"
                " send_nowait"
            )
        if deliver_at is not None or deliver_after is not None:
            headers = _with_deliver_at(headers, deliver_at, deliver_after, self.config.clock())
        if timestamp is not None:
            ts = _timestamp_ms(timestamp)
        elif self._default_clock:
            ts = _time_ns() // 1_000_000  # the default clock, without its call
        else:
            ts = self._clock()
        result, index, chosen, hdrs = self._enqueue(
            topic, count, value, key, headers, partition, ts, None
        )
        return _new_handle(SendHandle, (result, index, topic, chosen, ts, key, value, hdrs))

    def _enqueue(
        self,
        topic: str,
        count: int,
        value: Any,
        key: Key | None,
        headers: Any,
        partition: int | None,
        ts: int,
        now: float | None,
        *,
        wake: bool = True,
    ) -> tuple[_BatchResult, int, int, Headers]:
        """The per-event hot path: serialize, partition, append (``ts`` is
        the event timestamp in ms, ``now`` the Trio clock)."""
        if self._tid is not None and not self._txn_open:
            raise InvalidTransactionStateError(
                "a transactional producer sends only inside `async with producer.transaction():`"
            )
        hdrs = _check_headers(headers) if headers else ()
        raw: bytes | None
        if type(value) is bytes and self._passthrough:
            raw = value
        else:
            raw = None if value is None else self._serialize(value)
        chosen = self._partitioner.choose(topic, key, count, partition)
        acc = self._accumulator
        batch_id, index = acc.add(topic, chosen, ts, key, raw, hdrs, now)
        result = self._results.get(batch_id)
        if result is None:
            result = self._results[batch_id] = _BatchResult()
            if self._unfinished == 0:
                self._idle = trio.Event()
            self._unfinished += 1
            if wake:
                self._wake()
        elif self._closed_batch and wake:
            self._wake()
        if key is None and partition is None and self._tid is None:
            # Unkeyed: ``chosen`` is the topic's sticky partition. While its
            # batch stays open, plain events go straight to it.
            open_batch = acc.open_batch((topic, chosen))
            if open_batch is not None and open_batch.batch_id == batch_id:
                self._hot[topic] = (chosen, open_batch, result)
        return result, index, chosen, hdrs

    def _batch_closed(self, topic: str, partition: int) -> None:
        self._partitioner.batch_closed(topic, partition)
        self._closed_batch = True
        hot = self._hot.get(topic)
        if hot is not None and hot[0] == partition:
            del self._hot[topic]

    def _wake(self) -> None:
        self._closed_batch = False
        self._wakeup.set()

    async def send(
        self,
        topic: str,
        value: Any,
        key: Key | None = None,
        headers: Any = None,
        partition: int | None = None,
        timestamp: int | dt.datetime | None = None,
        *,
        deliver_at: int | dt.datetime | None = None,
        deliver_after: float | dt.timedelta | None = None,
    ) -> Event:
        """Send one event and wait until it is stored; return the stored
        :class:`~headwater.client.Event` (its topic, partition, offset,
        timestamp, key, value and headers).

        ``deliver_at`` (ms since the epoch or an aware datetime) or
        ``deliver_after`` (seconds or a timedelta from now): share
        subscriptions do not deliver the event before then (plain consumers
        read it at once, with the ``hw.deliver_at`` header)."""
        count = self._partitions.get(topic)
        if count is None:
            count = await self.partitions_of(topic)
        direct = self.config.linger == 0 and self.config.transactional_id is None
        if not direct:
            handle = self.send_nowait(
                topic,
                value,
                key,
                headers,
                partition,
                timestamp,
                deliver_at=deliver_at,
                deliver_after=deliver_after,
            )
            return await handle.wait()
        if self._closed or self._nursery is None:
            raise ClosedError("this producer is closed (or not entered with `async with`)")
        if deliver_at is not None or deliver_after is not None:
            headers = _with_deliver_at(headers, deliver_at, deliver_after, self.config.clock())
        if timestamp is not None:
            ts = _timestamp_ms(timestamp)
        elif self._default_clock:
            ts = _time_ns() // 1_000_000  # the default clock, without its call
        else:
            ts = self._clock()
        result, index, chosen, hdrs = self._enqueue(
            topic, count, value, key, headers, partition, ts, None, wake=False
        )
        handle = _new_handle(SendHandle, (result, index, topic, chosen, ts, key, value, hdrs))
        tp = (topic, chosen)
        batch = None if tp in self._queues else self._accumulator.take(tp)
        if batch is None:
            self._wake()  # the flusher and the partition's sender take it
        else:
            # The direct path (linger 0, partition idle): encode and send
            # from this task, no hop through the flusher and a sender task.
            await self._send_now(tp, batch)
            if result.done.is_set():
                # Answered already (this task checkpointed on the way): no
                # extra task step for handle.wait().
                return handle.result()
        return await handle.wait()

    async def _send_now(self, tp: tuple[str, int], batch: ReadyBatch) -> None:
        """Deliver ``batch`` of idle partition ``tp`` from the caller's task
        (and whatever else is queued for ``tp`` meanwhile). Cancelled midway,
        a sender task takes over what is left: a batch whose answer was lost
        is resent with the same sequence, so it is stored once."""
        queue = deque([(batch, trio.current_time() + self.config.delivery_timeout)])
        self._queues[tp] = queue
        try:
            await self._deliver_queue(tp, queue)
        except BaseException:
            if queue and not self._closed and self._nursery is not None:
                self._nursery.start_soon(self._sender, tp)  # keeps the queue
            else:
                del self._queues[tp]
            raise
        del self._queues[tp]
        if self._accumulator.has_open(tp):
            self._wakeup.set()  # events of tp lingered meanwhile

    async def send_many(self, topic: str, events: Iterable[Any]) -> list[Event]:
        """Send many events to ``topic`` and wait until all are stored; return
        the stored events in order. Each item is a value, a ``(value, key)``
        pair, or a dict with ``value`` and optional ``key``, ``headers``,
        ``partition``, ``timestamp``. Validation errors raise before anything
        of the call is sent only for the item that fails: items before it are
        queued and sent."""
        count = await self.partitions_of(topic)
        queued: list[tuple[tuple[_BatchResult, int, int, Headers], Any, Any, int]] = []
        enqueue = self._enqueue
        clock = self.config.clock
        ts = 0
        now = 0.0
        for n, item in enumerate(events):
            if not n & 255:  # read the clocks every 256 events, not per event
                if n and not n & 1023:
                    # Let full batches go out while the rest is encoded.
                    await trio.lowlevel.checkpoint()
                ts = clock()
                now = trio.current_time()
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise InvalidArgument(
                        f"send_many takes values, (value, key) pairs or dicts, not {item!r:.80}"
                    )
                value, key = item
                queued.append(
                    (enqueue(topic, count, value, key, None, None, ts, now), value, key, ts)
                )
            elif isinstance(item, dict):
                unknown = set(item) - {"value", "key", "headers", "partition", "timestamp"}
                if unknown or "value" not in item:
                    raise InvalidArgument(
                        f"a send_many dict needs 'value' and may have key, headers, partition, "
                        f"timestamp; got keys {sorted(item)}"
                    )
                value, key = item["value"], item.get("key")
                given = item.get("timestamp")
                item_ts = ts if given is None else _timestamp_ms(given)
                queued.append(
                    (
                        enqueue(
                            topic,
                            count,
                            value,
                            key,
                            item.get("headers"),
                            item.get("partition"),
                            item_ts,
                            now,
                        ),
                        value,
                        key,
                        item_ts,
                    )
                )
            else:
                queued.append(
                    (enqueue(topic, count, item, None, None, None, ts, now), item, None, ts)
                )
        self._force = True
        self._wakeup.set()
        results = {id(q[0][0]): q[0][0] for q in queued}
        for r in results.values():
            await r.done.wait()
        for r in results.values():
            if r.error is not None:
                raise r.error
        return [
            Event(topic, chosen, r.base_offset + index, ts, key, value, hdrs)
            for (r, index, chosen, hdrs), value, key, ts in queued
        ]

    async def flush(self) -> None:
        """Send every queued event now (no linger) and wait until all are
        stored or failed."""
        self._force = True
        self._wakeup.set()
        await self._idle.wait()

    # ------------------------------------------------------------ tasks

    async def _flusher(self) -> None:
        acc = self._accumulator
        while True:
            # Partitions with max_in_flight batches queued or in flight keep
            # their batch open (it grows meanwhile); their sender wakes us
            # when one is answered.
            busy = self._busy()
            deadline = acc.next_deadline(busy)
            if not self._force:
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    await self._wakeup.wait()
            self._wakeup = trio.Event()
            force, self._force = self._force, False
            for batch in acc.drain(trio.current_time(), force=force, busy=self._busy()):
                self._queue(batch)
            await trio.lowlevel.checkpoint()

    def _busy(self) -> Collection[tuple[str, int]]:
        """The partitions whose window is full (every batch queued counts)."""
        limit = self.config.max_in_flight
        if limit == 1:
            return self._queues.keys()
        return {tp for tp, queue in self._queues.items() if len(queue) >= limit}

    def _queue(self, batch: ReadyBatch) -> None:
        tp = (batch.topic, batch.partition)
        queue = self._queues.get(tp)
        entry = (batch, trio.current_time() + self.config.delivery_timeout)
        if queue is None:
            self._queues[tp] = deque([entry])
            assert self._nursery is not None
            self._nursery.start_soon(self._sender, tp)
        else:
            queue.append(entry)
            kick = self._kicks.get(tp)
            if kick is not None:
                kick.set()  # the sender has room in its window

    async def _sender(self, tp: tuple[str, int]) -> None:
        try:
            await self._deliver_queue(tp, self._queues[tp])
        finally:
            del self._queues[tp]
            self._wakeup.set()  # a batch of tp may have lingered meanwhile

    async def _deliver_queue(
        self, tp: tuple[str, int], queue: deque[tuple[ReadyBatch, float]]
    ) -> None:
        """Send the batches queued for ``tp`` in order, up to
        ``max_in_flight`` at once (the first batch of an identity alone, so
        the partition knows the producer and refuses a gap before any other
        is sent). The batches stay in ``queue`` until answered (the first
        ``len(pendings)`` are in flight): cancelled, whoever takes the queue
        over resends them unchanged and the broker stores each once."""
        limit = self.config.max_in_flight
        pendings: deque[PendingRequest] = deque()
        attempt = 0
        while queue:
            while len(pendings) < len(queue) and (
                not pendings
                or (
                    len(pendings) < limit
                    and self._acked.get(tp) == _identity_of(queue[len(pendings)][0])
                )
            ):
                pendings.append(await self._submit(*queue[len(pendings)]))
            head = pendings[0]
            if len(pendings) < limit and not head.done():
                # Room in the window: wait for the answer or a new batch
                # (``_queue`` sets the kick), whichever comes first.
                kick = self._kicks[tp] = trio.Event()
                head.on_done = kick.set
                try:
                    with trio.move_on_at(head.deadline):
                        await kick.wait()
                finally:
                    head.on_done = None
                    del self._kicks[tp]
                if (
                    not head.done()
                    and len(pendings) < len(queue)
                    and trio.current_time() < head.deadline
                ):
                    continue  # a batch to send meanwhile
            batch, deadline = queue[0]
            try:
                response: p.ProduceResult = await head.result()
            except HeadwaterError as exc:
                error = exc
            else:
                pendings.popleft()
                queue.popleft()
                attempt = 0
                self._acked[tp] = _identity_of(batch)
                self._finish(batch, response.base_offset, None)
                if len(queue) == limit - 1 and limit > 1 and self._accumulator.has_open(tp):
                    self._wakeup.set()  # the window has room: a lingered batch may go
                continue
            # The first batch in flight failed: settle the others first.
            pendings.popleft()
            later: list[p.ProduceResult | HeadwaterError] = []
            for pending in pendings:
                try:
                    later.append(await pending.result())
                except HeadwaterError as exc:
                    later.append(exc)
            pendings.clear()
            where = {"topic": tp[0], "partition": tp[1]}
            attempt += 1
            delay = min(
                self.config.retry_backoff * 2 ** (attempt - 1), self.config.retry_backoff_max
            )
            if error.retriable and trio.current_time() + delay < deadline:
                log.info("produce_retry", attempt=attempt, error=type(error).__name__, **where)
                self._settle_later(queue, later, None)
                await trio.sleep(delay)
                continue
            attempt = 0
            log.warning("produce_failed", error=repr(error), **where)
            queue.popleft()
            self._finish(batch, -1, error)
            self._settle_later(queue, later, error)
            if self.config.transactional_id is not None:
                # The transaction will abort; the next one renumbers.
                if self._txn_error is None:
                    self._txn_error = error
            else:
                await self._renumber(tp, queue)

    def _settle_later(
        self,
        queue: deque[tuple[ReadyBatch, float]],
        later: list[p.ProduceResult | HeadwaterError],
        failed: HeadwaterError | None,
    ) -> None:
        """Act on the answers (``later``) of the batches that were in flight
        behind one that failed: the entries of ``queue`` right after it, or
        at its front once the failed one is gone (``failed``: its final
        error). A stored batch is done: it can only be stored if the failed
        one was (the broker refuses a gap). With ``failed`` the others fail
        with it; else they stay, to be resent in order with the same
        sequences (a stored one is then recognised as a duplicate)."""
        first = 1 if failed is None else 0
        behind = [queue[first + i] for i in range(len(later))]
        for _ in later:
            del queue[first]
        retry: list[tuple[ReadyBatch, float]] = []
        for entry, outcome in zip(behind, later, strict=True):
            if not isinstance(outcome, HeadwaterError):
                self._finish(entry[0], outcome.base_offset, None)
            elif failed is None:
                retry.append(entry)
            else:
                self._finish(entry[0], -1, _failed_behind(entry[0], failed, outcome))
        for entry in reversed(retry):
            queue.insert(first, entry)

    async def _submit(self, batch: ReadyBatch, deadline: float) -> PendingRequest:
        """Encode ``batch`` and send it as a ``Produce`` (in call order),
        bounded by ``request_timeout`` and ``deadline``."""
        tid = self.config.transactional_id
        record = encode_record(
            batch.payload,
            count=batch.count,
            first_timestamp=batch.first_timestamp,
            max_timestamp=batch.max_timestamp,
            attributes=0 if tid is None else ATTR_TRANSACTIONAL,
            producer_id=batch.producer_id,
            producer_epoch=batch.epoch,
            base_sequence=batch.base_sequence,
        )
        if tid is not None:
            try:
                await self._add_partition((batch.topic, batch.partition))
            except HeadwaterError as exc:
                return PendingRequest(error=exc)
            self._txn_wrote = True
        timeout = min(self.config.request_timeout, max(deadline - trio.current_time(), 0.001))
        return await self._channel.submit(
            p.Produce(batch.topic, batch.partition, record), timeout=timeout
        )

    async def _add_partition(self, tp: tuple[str, int]) -> None:
        """Wait until ``tp`` is in the open transaction (adding it if no add
        of it is under way). A failed add made ahead of the sends (for the
        last transaction's partitions) is retried for this topic alone."""
        while True:
            add = self._txn_adds.get(tp)
            if add is None or (add.eager and add.failed):
                # Every partition of the topic at once: one coordinator
                # write per topic and transaction instead of one per
                # partition (a partition never written to gets no marker).
                topic = tp[0]
                count = self._partitions.get(topic, tp[1] + 1)
                tps = {(topic, n) for n in range(count)}
                taken = {x for x in tps if x in self._txn_adds and not self._txn_adds[x].failed}
                add = self._start_add(tps - taken | {tp})
            await add.done.wait()
            if add.error is None:
                return
            if not add.eager:
                raise add.error

    def _finish(self, batch: ReadyBatch, base_offset: int, error: HeadwaterError | None) -> None:
        result = self._results.pop(batch.batch_id)
        result.base_offset = base_offset
        result.error = error
        result.done.set()
        self._unfinished -= 1
        if self._unfinished == 0:
            self._idle.set()

    async def _renumber(self, tp: tuple[str, int], queue: deque[tuple[ReadyBatch, float]]) -> None:
        """After a batch of ``tp`` failed for good, take a new identity and
        renumber the batches still queued for ``tp`` from sequence 0."""
        identity: p.ProducerIdentity = await self._request(
            p.InitProducer(), math.inf, "init_producer"
        )
        self.identity = identity
        self._accumulator.set_identity(identity.producer_id, identity.epoch)
        renumbered = [(self._accumulator.resequence(b), d) for b, d in queue]
        queue.clear()
        queue.extend(renumbered)


@attrs.define(eq=False)
class _Add:
    """One AddPartitionsToTxn of the open transaction, in flight or done."""

    partitions: frozenset[tuple[str, int]]
    eager: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)
    error: HeadwaterError | None = None

    @property
    def failed(self) -> bool:
        """Whether this add is done and did not go through."""
        return self.done.is_set() and self.error is not None


def open_producer(
    channel: Channel, config: ProducerConfig | None = None
) -> AbstractAsyncContextManager[Producer]:
    """A :class:`Producer` over ``channel`` whose tasks (the flusher and one
    sender per busy partition) live in a nursery the ``async with`` block
    owns. The settings are checked at once (a bad one raises
    :class:`~headwater.ConfigError` here, before the block).

    Entering takes the producer's identity and learns every existing
    topic's partition count (one request each, retried like a produce). Leaving
    the block normally flushes every queued event and waits until each is
    stored or failed; leaving it with an error (or a cancellation) fails the
    events not stored yet with :class:`~headwater.ClosedError`. Errors come
    out as themselves, never as an ``ExceptionGroup`` of one: a typed
    :class:`~headwater.HeadwaterError` from a send, from the flush or from a
    background task, or whatever the block raised.
    """
    return _running(Producer(channel, config))


@asynccontextmanager
async def _running(producer: Producer) -> AsyncIterator[Producer]:
    with unwrapping_groups():
        async with trio.open_nursery() as nursery:
            producer._nursery = nursery
            try:
                producer.identity = await producer._init_producer()
                producer._accumulator.set_identity(
                    producer.identity.producer_id, producer.identity.epoch
                )
                await producer._learn_topics()
                nursery.start_soon(producer._flusher)
                yield producer
                if not producer._closed:
                    await producer.flush()
            finally:
                producer._close_now()
