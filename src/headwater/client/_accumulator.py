"""The producer's record accumulator: events in, ready batches out (sans-IO).

Theory of operation
-------------------
The producer serializes each event, picks its partition, and calls
:meth:`Accumulator.append` with the current time. Events collect in one *open*
batch per (topic, partition). A batch is *closed* (queued, ready to send) when

* it holds ``max_batch_events`` events, or its estimated size reaches
  ``max_batch_bytes`` (an event that would overflow it closes it first and
  starts a new batch), or
* ``linger`` seconds have passed since its first event (checked by
  :meth:`drain` with the caller's ``now``), or
* the caller forces it (``drain(now, force=True)``: ``flush()``/close).

:meth:`drain` returns closed batches as :class:`ReadyBatch` objects, each
with its encoded payload (the events are kept as columns and encoded in one
pass, :func:`~headwater.journal._batch.encode_columns`) and the
journal header fields: event count, first/max timestamp, producer id, epoch and
**base sequence**. Sequences are per partition and assigned at drain time, in
drain order: the next batch for a partition gets ``base_sequence = previous
base + previous count`` (wrapping at 2**31, as Kafka's do). A ReadyBatch is
immutable: a retried batch is the same object, so it keeps its sequence and
the broker recognises it as a duplicate (see ``broker/_idempotence.py``).

:meth:`next_deadline` is the time the caller's flusher should next call
``drain`` (the earliest linger expiry; "now" when a closed batch is waiting).
Nothing here blocks, sleeps or reads a clock.

An event larger than ``max_event_bytes`` raises
:class:`~headwater.EventTooLarge` and a key or header of the wrong type raises
:class:`~headwater.InvalidArgument`, before the accumulator changes at all.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import attrs

from headwater._errors import ConfigError, EventTooLarge, InvalidArgument
from headwater.journal._batch import Headers, Key, encode_columns

__all__ = ["Accumulator", "AccumulatorConfig", "BatchSlot", "ReadyBatch"]

#: Per-event bytes added to the size estimate (timestamp, CBOR framing).
EVENT_OVERHEAD = 16
#: Sequence numbers wrap here, as in Kafka (int32).
SEQUENCE_MODULUS = 1 << 31
NO_PRODUCER_ID = -1


def _positive(name: str) -> Callable[[object, attrs.Attribute[int], int], None]:
    def check(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
        if type(value) is not int or value < 1:
            raise ConfigError(f"{name} must be a positive int, not {value!r}")

    return check


def _check_linger(_inst: object, _attr: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 3600:
        raise ConfigError(f"linger must be seconds in [0, 3600), not {value!r}")


@attrs.frozen
class AccumulatorConfig:
    """Batching limits: events and estimated bytes per batch, linger (seconds),
    and the largest single event accepted (estimated bytes)."""

    max_batch_events: int = attrs.field(default=1000, validator=_positive("max_batch_events"))
    max_batch_bytes: int = attrs.field(default=1 << 20, validator=_positive("max_batch_bytes"))
    linger: float = attrs.field(default=0.005, validator=_check_linger)
    max_event_bytes: int = attrs.field(default=1 << 20, validator=_positive("max_event_bytes"))


@attrs.frozen
class BatchSlot:
    """Where an appended event sits: its batch (``batch_id``) and index in it.
    The event's offset is the stored batch's base offset + ``index``."""

    topic: str
    partition: int
    batch_id: int
    index: int


@attrs.frozen(eq=False)
class ReadyBatch:
    """A closed batch, ready to be sent as one journal record. Immutable: a
    retry resends this same object, with the same ``base_sequence``."""

    batch_id: int
    topic: str
    partition: int
    payload: bytes
    count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    epoch: int
    base_sequence: int
    size_estimate: int

    @property
    def last_sequence(self) -> int:
        """The sequence number of the batch's last event."""
        return (self.base_sequence + self.count - 1) % SEQUENCE_MODULUS


@attrs.define
class _OpenBatch:
    """A batch being filled, held as columns (what :func:`encode_columns`
    takes): no per-event object beyond the caller's values."""

    batch_id: int
    topic: str
    partition: int
    created_at: float
    stamps: list[int] = attrs.field(factory=list)
    keys: list[Key | None] = attrs.field(factory=list)
    values: list[bytes | None] = attrs.field(factory=list)
    #: ``None`` until an event of the batch has headers; then one flattened
    #: ``[name, value, ...]`` list (or ``None``) per event.
    headers: list[list[Any] | None] | None = None
    size: int = 0

    def add_headers(self, index: int, headers: Headers) -> None:
        """Record event ``index``'s (non-empty) headers."""
        column = self.headers
        if column is None:
            column = self.headers = [None] * index
        column.append([x for pair in headers for x in pair])


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"an event {what} must be valid Unicode text: {exc}") from None


def _check_event(key: Key | None, value: bytes | None, headers: Headers) -> int:
    """Validate types; return the event's estimated encoded size."""
    size = EVENT_OVERHEAD
    if key is not None:
        if isinstance(key, bytes):
            size += len(key)
        elif isinstance(key, str):
            size += len(_utf8(key, "key"))
        else:
            raise InvalidArgument(
                f"an event key must be bytes, str or None, not {type(key).__qualname__}"
            )
    if value is not None:
        if not isinstance(value, bytes):
            raise InvalidArgument(
                f"a serialized value must be bytes or None, not {type(value).__qualname__}"
            )
        size += len(value)
    for header in headers:
        if (
            not isinstance(header, tuple)
            or len(header) != 2
            or not isinstance(header[0], str)
            or not isinstance(header[1], bytes)
        ):
            raise InvalidArgument(f"a header must be a (str, bytes) pair, not {header!r:.80}")
        size += len(_utf8(header[0], "header name")) + len(header[1]) + 2
    return size


@attrs.define
class Accumulator:
    """Per-partition batching with sequence numbers (see the module docs).

    ``on_batch_closed(topic, partition)`` is called whenever a batch closes
    (the producer's :class:`~headwater.client.Partitioner` uses it to move
    unkeyed events on). ``clock`` (seconds, monotonic) is read when an event
    passed with ``now=None`` opens a batch.
    """

    config: AccumulatorConfig = attrs.field(factory=AccumulatorConfig)
    on_batch_closed: Callable[[str, int], None] | None = None
    clock: Callable[[], float] | None = None
    _producer_id: int = NO_PRODUCER_ID
    _epoch: int = 0
    _open: dict[tuple[str, int], _OpenBatch] = attrs.field(factory=dict)
    _closed: deque[_OpenBatch] = attrs.field(factory=deque)
    _next_sequence: dict[tuple[str, int], int] = attrs.field(factory=dict)
    _ids: itertools.count[int] = attrs.field(factory=itertools.count)
    _buffered: int = 0
    # The config's limits, read per event (attrs lookups through the config
    # cost more than the rest of a fast append).
    _max_events: int = attrs.field(init=False)
    _max_bytes: int = attrs.field(init=False)
    _max_event: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._max_events = self.config.max_batch_events
        self._max_bytes = self.config.max_batch_bytes
        self._max_event = self.config.max_event_bytes

    # ------------------------------------------------------------ identity

    def set_identity(self, producer_id: int, epoch: int) -> None:
        """Use this producer id and epoch for batches drained from now on. A
        change of either resets every partition's sequence to 0."""
        if (producer_id, epoch) != (self._producer_id, self._epoch):
            self._producer_id = producer_id
            self._epoch = epoch
            self._next_sequence.clear()

    # ------------------------------------------------------------ append

    def append(
        self,
        topic: str,
        partition: int,
        timestamp: int,
        key: Key | None,
        value: bytes | None,
        headers: Headers,
        now: float,
    ) -> BatchSlot:
        """Add one serialized event; return where it sits.

        Raises :class:`~headwater.EventTooLarge` (size above
        ``max_event_bytes``) or :class:`~headwater.InvalidArgument` (bad key,
        value or header type) without changing anything.
        """
        batch_id, index = self.add(topic, partition, timestamp, key, value, headers, now)
        return BatchSlot(topic, partition, batch_id, index)

    def add(
        self,
        topic: str,
        partition: int,
        timestamp: int,
        key: Key | None,
        value: bytes | None,
        headers: Headers,
        now: float | None,
    ) -> tuple[int, int]:
        """:meth:`append` for the hot path: returns ``(batch_id, index)``.
        ``now`` may be ``None``: :attr:`clock` is then read, only if the
        event opens a new batch (the one time it is needed)."""
        if type(timestamp) is not int:
            raise InvalidArgument(
                f"an event timestamp must be an int (ms since the epoch), not {timestamp!r}"
            )
        if key is None and not headers and type(value) is bytes:
            size = EVENT_OVERHEAD + len(value)  # the common event: nothing to check
        else:
            size = _check_event(key, value, headers)
        if size > self._max_event:
            raise EventTooLarge(
                f"event for {topic}/{partition} is about {size} bytes encoded; "
                f"the limit (max_event_bytes) is {self._max_event}"
            )
        tp = (topic, partition)
        batch = self._open.get(tp)
        if batch is not None and batch.size + size > self._max_bytes:
            self._close(tp)
            batch = None
        if batch is None:
            if now is None:
                if self.clock is None:
                    raise InvalidArgument("pass now=, or set the accumulator's clock")
                now = self.clock()
            batch = _OpenBatch(next(self._ids), topic, partition, now)
            self._open[tp] = batch
        values = batch.values
        index = len(values)
        values.append(value)
        batch.keys.append(key)
        batch.stamps.append(timestamp)
        if headers:
            batch.add_headers(index, headers)
        elif batch.headers is not None:
            batch.headers.append(None)
        self._buffered += size
        size += batch.size
        batch.size = size
        if index + 1 >= self._max_events or size >= self._max_bytes:
            self._close(tp)
        return batch.batch_id, index

    def open_batch(self, tp: tuple[str, int]) -> _OpenBatch | None:
        """``tp``'s open batch (for :meth:`add_plain`), or ``None``."""
        return self._open.get(tp)

    def add_plain(self, batch: _OpenBatch, timestamp: int, value: bytes) -> int:
        """:meth:`add` of an unkeyed event without headers (``timestamp`` an
        int, ``value`` bytes: the caller checked) to ``batch``, an open batch
        of this accumulator (:meth:`open_batch`; it stays open until
        ``on_batch_closed`` names its partition). Returns the event's index,
        or -1 (nothing changed) if the event is too large or does not fit:
        then :meth:`add` it (which raises, or closes ``batch`` and opens
        the next). Closes ``batch`` when it is full, as :meth:`add` does."""
        size = EVENT_OVERHEAD + len(value)
        total = batch.size + size
        if total > self._max_bytes or size > self._max_event:
            return -1
        values = batch.values
        index = len(values)
        values.append(value)
        batch.keys.append(None)
        batch.stamps.append(timestamp)
        if batch.headers is not None:
            batch.headers.append(None)
        self._buffered += size
        batch.size = total
        if index + 1 >= self._max_events or total >= self._max_bytes:
            self._close((batch.topic, batch.partition))
        return index

    def _close(self, tp: tuple[str, int]) -> None:
        batch = self._open.pop(tp)
        self._closed.append(batch)
        if self.on_batch_closed is not None:
            self.on_batch_closed(tp[0], tp[1])

    # ------------------------------------------------------------ drain

    def next_deadline(self, busy: Collection[tuple[str, int]] = ()) -> float | None:
        """When :meth:`drain` next has something to return: the earliest
        linger expiry of a partition not in ``busy``, or an already-past time
        if a batch is closed and waiting; ``None`` when nothing is due."""
        if self._closed:
            return self._closed[0].created_at
        times = [b.created_at for tp, b in self._open.items() if tp not in busy]
        if not times:
            return None
        return min(times) + self.config.linger

    def drain(
        self, now: float, *, force: bool = False, busy: Collection[tuple[str, int]] = ()
    ) -> list[ReadyBatch]:
        """Close lingered batches (all open ones with ``force``) and return every
        closed batch, in closing order, with sequences assigned.

        Lingered batches of partitions in ``busy`` (a request in flight) stay
        open and keep growing until the partition is free: under load this
        makes batches as large as the round trip allows instead of queueing
        many small ones (Kafka's sender does the same). Full batches are
        returned regardless."""
        linger = self.config.linger
        due = [
            tp
            for tp, b in self._open.items()
            if force or (tp not in busy and now >= b.created_at + linger)
        ]
        for tp in due:
            self._close(tp)
        ready: list[ReadyBatch] = []
        while self._closed:
            ready.append(self._finish(self._closed.popleft()))
        return ready

    def take(self, tp: tuple[str, int]) -> ReadyBatch | None:
        """Close ``tp``'s open batch now and return it ready (sequence
        assigned), for a sender that delivers it at once; ``None`` if ``tp``
        has no open batch or a closed batch of ``tp`` must go first."""
        if tp not in self._open or (
            self._closed and any((b.topic, b.partition) == tp for b in self._closed)
        ):
            return None
        self._close(tp)
        return self._finish(self._closed.pop())

    def has_open(self, tp: tuple[str, int]) -> bool:
        """Whether ``tp`` has an open (lingering) batch."""
        return tp in self._open

    def _finish(self, batch: _OpenBatch) -> ReadyBatch:
        tp = (batch.topic, batch.partition)
        stamps = batch.stamps
        count = len(stamps)
        base_sequence = self._next_sequence.get(tp, 0)
        self._next_sequence[tp] = (base_sequence + count) % SEQUENCE_MODULUS
        self._buffered -= batch.size
        return ReadyBatch(
            batch_id=batch.batch_id,
            topic=batch.topic,
            partition=batch.partition,
            payload=encode_columns(stamps, batch.keys, batch.values, batch.headers),
            count=count,
            first_timestamp=stamps[0],
            max_timestamp=max(stamps),
            producer_id=self._producer_id,
            epoch=self._epoch,
            base_sequence=base_sequence,
            size_estimate=batch.size,
        )

    def resequence(self, batch: ReadyBatch) -> ReadyBatch:
        """Return ``batch`` stamped with the current producer id/epoch and the
        next sequence of its partition. For the producer after a new identity
        (:meth:`set_identity`, e.g. after an out-of-order error): resequence the
        unacknowledged batches in their original order, then resend them. Not
        for plain retries: a retry resends the same batch unchanged."""
        tp = (batch.topic, batch.partition)
        base_sequence = self._next_sequence.get(tp, 0)
        self._next_sequence[tp] = (base_sequence + batch.count) % SEQUENCE_MODULUS
        return attrs.evolve(
            batch, producer_id=self._producer_id, epoch=self._epoch, base_sequence=base_sequence
        )

    # ------------------------------------------------------------ state

    @property
    def buffered_bytes(self) -> int:
        """Estimated bytes of events appended but not yet drained (for
        backpressure: stop appending above a budget)."""
        return self._buffered

    @property
    def buffered_events(self) -> int:
        """Events appended but not yet drained."""
        return sum(len(b.values) for b in self._open.values()) + sum(
            len(b.values) for b in self._closed
        )
