"""The consumer: partitions in, decoded events out, in order per partition.

Theory of operation
-------------------
The consumer owns a set of partitions: every partition of its topics (no
group; narrow with :meth:`Consumer.assign`), or the assignment its group
gives it. A *fetcher* task per owned partition resolves where to start (the
group's committed offset, else the ``start`` rule through ``ListOffset``),
then, over a connection that can push (protocol v2), opens a pushed fetch
with ``fetch_credit`` bytes of credit: the server sends records as they
come while credit lasts, and the fetcher returns credit as it hands each
result on, so several batches are on their way while the reader decodes.
A pushed result that arrives while the reader waits on an empty queue and
the fetcher holds nothing is queued by the connection's reader task itself
(one task step sooner; order and credit as through the fetcher, which
returns its credit when due).
Otherwise (embedded, a version 1 server, ``fetch_credit=0``) it long-polls
``Fetch`` (up to ``max_wait`` seconds, ``max_bytes`` per request). Either
way it puts each result's records into one bounded channel (``prefetch``
chunks), so partitions are served as data arrives and memory is bounded
(credit plus prefetch). Once a result is queued (and its credit is on its
way back), the fetcher decodes it unless the reader took it already, while
at most ``fetch_credit`` (pulling: ``max_bytes``) bytes of decoded chunks
wait unread; further chunks wait raw and the reader decodes them. So a
reader that waits (for data, or for its commit) finds events ready, and the
decode is off its path (with a built-in deserializer only: an application's
own runs in the reader's task, as always). Events below the requested offset inside a fetched
record are skipped (records start at their base offset). A lost connection
or a pushed error is handled as a failed fetch: retry (subscribing again
from the position), reset, or stall.

Each chunk carries its partition's *token*; :meth:`seek` and a rebalance
bump the token and restart the fetcher, so stale chunks are dropped on
receipt. :meth:`position` is the offset after the last event handed to the
caller; :meth:`commit` commits those positions (or explicit ones).

With a group (see ``broker/_group.py`` for the coordinator's side):
``JoinGroup`` on entry, then the member learns what to do from
:class:`~headwater.Membership` notices: pushed by the broker at once
(protocol v2, and embedded), and answered to every heartbeat (every
``session_timeout / 3`` s; the fallback for v1 servers). A notice may

* ask it to **release** partitions: done at the app's next *poll* (a call of
  ``__anext__``/``getmany``, or at once if the app is waiting inside one),
  as in Kafka, so that ``on_revoked`` and the final commit see only events
  the app has finished with: stop the fetchers, call ``on_revoked``, commit
  (with ``auto_commit``), then ``ReleasePartitions``. The coordinator hands
  the partition to its next owner only after that (or after the member's
  ``max_poll_interval``), so no partition is read by two members at once and
  commits never meet a stale generation. A poll's ``timeout`` bounds its
  wait for events, not a release under way; a release that fails (a lost
  connection) or is cancelled stays pending, the partition stopped, and the
  next poll sends it again (``on_revoked`` runs once);
* give it **new partitions** (after a completed rebalance): their fetchers
  start at once; ``on_assigned`` runs at the next poll, before any of their
  events is handed out.

A member that does not poll for ``max_poll_interval`` seconds leaves the group
(its heartbeat task notices; a hung handler cannot hold partitions forever);
its next :meth:`commit` raises :class:`~headwater.UnknownMemberError` (those
offsets belong to the new owners now) and its next poll joins again. A member
the group forgot (missed heartbeats) joins again at once. ``LeaveGroup`` on
exit, after ``on_revoked`` (and the auto-commit) for what it owned.

:meth:`Client.consumer` returns :meth:`Consumer.open`, an async context
manager that owns the consumer's nursery and raises a failure as the typed
:class:`~headwater.HeadwaterError` itself (never an exception group).
"""

from __future__ import annotations

import datetime as dt
import inspect
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal

import attrs
import trio

from headwater import _protocol as p
from headwater._aio import unwrapping_groups
from headwater._errors import (
    ClosedError,
    ConfigError,
    CorruptionError,
    HeadwaterError,
    InvalidArgument,
    OffsetOutOfRangeError,
    StaleGenerationError,
    UnknownMemberError,
    UnknownPartitionError,
)
from headwater._logging import get_logger
from headwater.journal._batch import Event, decode_record_events
from headwater.journal._record import RecordHeader, iter_records

from ._channel import Channel
from ._serializers import (
    BytesSerializer,
    CborSerializer,
    JsonSerializer,
    Serializer,
    StrSerializer,
    get_serializer,
)

__all__ = ["Consumer", "ConsumerConfig", "PartitionsCallback", "Start", "Timestamp"]

log = get_logger("headwater.client.consumer")

TP = tuple[str, int]


class _Ahead:
    """A chunk's events if its fetcher decoded them before the reader took it."""

    __slots__ = ("events", "taken")

    def __init__(self) -> None:
        self.events: list[Event] | None = None
        self.taken = False


# (partition, ownership token, first wanted offset, records as fetched, the
# offset after them, its decoded-ahead slot)
_Chunk = tuple[TP, int, int, list[tuple[RecordHeader, memoryview]], int, _Ahead]

_SYNC_RETRY = 0.1
"""Seconds a waiting poll lets pass before it serves the group again after a
rejoin or a release failed (a retriable error: the connection is down)."""

PartitionsCallback = Callable[[list[tuple[str, int]]], Awaitable[None] | None]
"""``on_assigned`` / ``on_revoked``: called with sorted (topic, partition)
pairs; a plain function or a coroutine function."""


@attrs.frozen
class Timestamp:
    """A start position by time: the first event at or after ``ms`` (ms since
    the epoch)."""

    ms: int = attrs.field()

    @ms.validator
    def _check(self, _attr: attrs.Attribute[int], value: int) -> None:
        if type(value) is not int or value < 0:
            raise InvalidArgument(f"Timestamp ms must be an int >= 0, not {value!r}")


Start = Literal["earliest", "latest"] | int | dt.datetime | Timestamp


def _check_start(start: object) -> str | int:
    """The ``ListOffset`` position or an offset for a ``start`` value."""
    if start in ("earliest", "latest"):
        return str(start)
    if isinstance(start, Timestamp):
        return start.ms
    if isinstance(start, dt.datetime):
        if start.tzinfo is None:
            raise InvalidArgument(
                f"start={start!r} has no timezone; pass an aware datetime "
                "(e.g. tzinfo=datetime.timezone.utc)"
            )
        return int(start.timestamp() * 1000)
    raise InvalidArgument(
        f"start={start!r} is invalid; use 'earliest', 'latest', an offset >= 0, "
        "an aware datetime or Timestamp(ms)"
    )


def _positive(name: str) -> Any:
    def check(_inst: object, _attr: Any, value: object) -> None:
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not 0 < value < math.inf
        ):
            raise ConfigError(f"{name} must be a positive number, not {value!r}")

    return check


def _isolation(_inst: object, _attr: Any, value: object) -> None:
    if value not in ("read_committed", "read_uncommitted"):
        raise ConfigError(
            f"isolation must be 'read_committed' or 'read_uncommitted', not {value!r}"
        )


def _instance_id(_inst: object, _attr: Any, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > 255):
        raise ConfigError(
            "group_instance_id must be a non-empty str of at most 255 characters, "
            f"not {value!r:.80}"
        )


def _assignor(_inst: object, _attr: Any, value: object) -> None:
    if value not in (None, "sticky", "range"):
        raise ConfigError(f"assignor must be 'sticky', 'range' or None, not {value!r:.80}")


def _credit(_inst: object, _attr: Any, value: object) -> None:
    if type(value) is not int or value < 0:
        raise ConfigError(f"fetch_credit must be an int >= 0 (bytes; 0: pull), not {value!r}")


@attrs.frozen
class ConsumerConfig:
    """Consumer settings: ``max_wait`` (s a fetch waits for new data),
    ``max_bytes`` (per fetch), ``prefetch`` (decoded chunks buffered),
    ``session_timeout`` (s, groups: a member that stops heartbeating that
    long is removed), ``max_poll_interval`` (s, groups: a member whose app
    does not ask for events that long leaves the group, and the longest it
    may take to release partitions in a rebalance), ``auto_commit`` and
    ``auto_commit_interval`` (s), ``request_timeout`` (s), ``deserializer``
    (as the producer's serializer; ``"bytes"`` reads raw values),
    ``client_id`` (names the group member), ``isolation``
    (``"read_committed"``, the default: only committed transactions' events,
    up to the last stable offset; ``"read_uncommitted"``: every stored event,
    open and aborted transactions' included), ``fetch_credit`` (bytes per
    partition a server may push ahead of the reader over a protocol v2
    connection, in frames of at most a quarter of it and of ``max_bytes``;
    ``0`` pulls with one ``Fetch`` at a time instead, as over version 1),
    ``group_instance_id``
    (groups: makes this member static, as Kafka's ``group.instance.id``:
    while a live member of the group holds the same id, joining raises
    :class:`~headwater.MemberInstanceInUseError`; a copy restarted after a
    crash takes over the dead copy's partitions without a rebalance),
    ``assignor`` (groups: ``"sticky"`` or ``"range"``, fixed by the group's
    first member; ``None``, the default, is the broker's sticky assignor;
    ``"range"`` gives partition ``p`` of every subscribed topic with the
    same partition count to one member, as stream processing needs)."""

    max_wait: float = attrs.field(default=0.5, validator=_positive("max_wait"))
    max_bytes: int = attrs.field(default=1 << 20, validator=_positive("max_bytes"))
    prefetch: int = attrs.field(default=16, validator=_positive("prefetch"))
    session_timeout: float = attrs.field(default=10.0, validator=_positive("session_timeout"))
    max_poll_interval: float = attrs.field(default=300.0, validator=_positive("max_poll_interval"))
    auto_commit: bool = False
    auto_commit_interval: float = attrs.field(
        default=5.0, validator=_positive("auto_commit_interval")
    )
    request_timeout: float = attrs.field(default=30.0, validator=_positive("request_timeout"))
    deserializer: Any = None
    client_id: str = ""
    isolation: str = attrs.field(default="read_committed", validator=_isolation)
    group_instance_id: str | None = attrs.field(default=None, validator=_instance_id)
    assignor: str | None = attrs.field(default=None, validator=_assignor)
    fetch_credit: int = attrs.field(default=2 << 20, validator=_credit)


@attrs.define(eq=False)
class _Owned:
    token: int
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    # What its fetcher does now, and from which offset (for diagnostics).
    state: str = "starting"
    fetching: int = -1
    sub: Any = None


def _rank(m: p.Membership) -> tuple[int, int]:
    """Notices may arrive out of order: a later generation wins; within one,
    a rebalance under way is newer than the stable state before it."""
    return (m.generation, 0 if m.state == "stable" else 1)


def _check_callback(name: str, value: object) -> PartitionsCallback | None:
    if value is not None and not callable(value):
        raise InvalidArgument(
            f"{name} must be a function taking a list of partitions, not {value!r}"
        )
    return value


class Consumer:
    """Reads events (see the module docs). Open it with ``async with
    client.consumer(...) as consumer``, then ``async for event in consumer``
    or :meth:`getmany`."""

    def __init__(
        self,
        channel: Channel,
        topics: tuple[str, ...],
        group: str | None,
        start: Start,
        config: ConsumerConfig | None = None,
        *,
        on_assigned: PartitionsCallback | None = None,
        on_revoked: PartitionsCallback | None = None,
    ) -> None:
        self._channel = channel
        self.topics = topics
        self.group = group
        self.config = config = config or ConsumerConfig()
        if type(start) is int:
            if start < 0:
                raise OffsetOutOfRangeError(f"start offset {start} is negative; offsets start at 0")
            self._start: str | int = start
            self._start_offset = True
        else:
            self._start = _check_start(start)
            self._start_offset = False
        self._on_assigned = _check_callback("on_assigned", on_assigned)
        self._on_revoked = _check_callback("on_revoked", on_revoked)
        if group is None and (on_assigned is not None or on_revoked is not None):
            raise InvalidArgument(
                "on_assigned/on_revoked need a group: without one, you choose the partitions"
            )
        self._deserializer: Serializer = get_serializer(config.deserializer)
        self._owned: dict[TP, _Owned] = {}
        self._positions: dict[TP, int] = {}
        # Records the broker left out after a chunk's last event (markers,
        # aborted events): once that event is taken, the position jumps on.
        self._skips: dict[TP, tuple[int, int]] = {}
        self._tokens = 0
        self._send, self._receive = trio.open_memory_channel[_Chunk](config.prefetch)
        # Decoded chunks not yet handed out, each (partition, events in
        # offset order); ``_head`` is the next event's index in the first.
        self._buffer: deque[tuple[TP, list[Event]]] = deque()
        self._head = 0
        # Bytes of the chunks the fetchers decoded ahead, not yet received.
        self._ahead_bytes = 0
        self._ahead_limit = max(config.fetch_credit, config.max_bytes)
        # An application's own deserializer runs where it always did: in the
        # reader's task (its context, its exceptions); the built-in ones are
        # pure, so the fetcher may run them ahead.
        if not isinstance(
            self._deserializer, BytesSerializer | StrSerializer | CborSerializer | JsonSerializer
        ):
            self._ahead_limit = 0
        self._membership: p.Membership | None = None  # the view this member acts on
        self._latest: p.Membership | None = None  # the newest notice received
        self._early: list[p.Membership] = []  # notices that came before our join answer
        self._joining = False
        self._unannounced: set[TP] = set()  # assigned, on_assigned not yet called
        self._evicted: str | None = None  # why we left the group without being asked
        self._idle_left = False  # we left for not polling: rejoin at the next poll only
        self._lost: set[TP] = set()  # taken from us without a release: on_revoked at a poll
        # Stopped for a release that has not gone through yet (interrupted or
        # failed: the next poll tries again), whose on_revoked ran already.
        self._revoked: set[TP] = set()
        self._join_lock = trio.Lock()
        self._commit_lock = trio.Lock()
        # Commits queued by commit_nowait() and not sent yet, newest row per
        # partition; the flusher task (at most one) sends them in order.
        self._queued_commits: dict[TP, p.PartitionOffset] = {}
        self._commit_flusher = False
        self._commit_error: HeadwaterError | None = None  # a queued commit failed
        self._wake: trio.CancelScope | None = None  # a poll waiting for data
        self._polling = 0
        self._last_poll = 0.0
        self._nursery: trio.Nursery | None = None
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Consumer]:
        """Run the consumer for the duration of the block (it owns its
        nursery); what :meth:`Client.consumer` returns. A failure leaves as
        the typed :class:`~headwater.HeadwaterError` itself."""
        if self._nursery is not None or self._closed:
            raise InvalidArgument("this consumer was already opened; ask the client for a new one")
        with unwrapping_groups():
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._last_poll = trio.current_time()
                if self.group is not None:
                    self._channel.add_push_listener(self.group, self._on_notice)
                clean = False
                try:
                    await self._begin()
                    yield self
                    clean = True
                finally:
                    try:
                        with trio.CancelScope(shield=not clean):
                            await self._end(clean=clean)
                    finally:
                        self._closed = True
                        if self.group is not None:
                            self._channel.remove_push_listener(self.group, self._on_notice)
                        nursery.cancel_scope.cancel()

    async def _begin(self) -> None:
        assert self._nursery is not None
        if self.group is None:
            tps: list[TP] = []
            for topic in self.topics:
                d = await self._ask(p.DescribeTopic(topic))
                tps.extend((topic, i) for i in range(d.topic.partitions))
            self._own(tps)
        else:
            await self._join()
            await self._sync()
            self._nursery.start_soon(self._heartbeats)
        if self.config.auto_commit:
            self._nursery.start_soon(self._auto_commit)

    async def _end(self, *, clean: bool) -> None:
        """Clean exit: on_revoked and the auto-commit for what we own (and
        the commits :meth:`commit_nowait` queued), then leave. Otherwise
        just leave (best effort, short: if the broker is unreachable, the
        session timeout removes this member anyway)."""
        m = self.membership
        if self.group is None or m is None or self._evicted is not None:
            return
        try:
            if clean:
                owned = sorted(self._owned)
                for tp in owned:
                    self._stop(tp)
                await self._call(self._on_revoked, [tp for tp in owned if tp not in self._revoked])
                if self.config.auto_commit:
                    await self.commit()
                elif self._queued_commits or self._commit_flusher:
                    await self._commit_positions(())  # what commit_nowait queued
                    self._raise_commit_error()
        finally:
            leave_timeout = min(self.config.request_timeout, 2.0)
            with trio.move_on_after(leave_timeout):
                try:
                    await self._channel.request(
                        p.LeaveGroup(self.group, m.member_id), timeout=leave_timeout
                    )
                except HeadwaterError as err:
                    log.info("leave_group_failed", group=self.group, error=repr(err))

    async def _ask(self, request: Any) -> Any:
        return await self._channel.request(request, timeout=self.config.request_timeout)

    # ------------------------------------------------------------ ownership

    def _own(self, tps: Iterable[TP]) -> None:
        """Make the owned set exactly ``tps``: stop the others, start new ones."""
        wanted = set(tps)
        for tp in [tp for tp in self._owned if tp not in wanted]:
            self._forget(tp)
        for tp in sorted(wanted - set(self._owned)):
            self._start_fetcher(tp, None)

    def _stop(self, tp: TP) -> None:
        """Stop reading ``tp`` (its position stays, for a last commit)."""
        owned = self._owned.get(tp)
        if owned is not None:
            owned.scope.cancel()
            owned.token = -1  # chunks already fetched are dropped on receipt
        self._drop_buffered(tp)

    def _drop_buffered(self, tp: TP) -> None:
        """Forget the decoded events of ``tp`` not handed out yet."""
        if self._buffer and self._buffer[0][0] == tp:
            self._head = 0
        self._buffer = deque(chunk for chunk in self._buffer if chunk[0] != tp)

    def _forget(self, tp: TP) -> None:
        self._stop(tp)
        self._owned.pop(tp, None)
        self._positions.pop(tp, None)
        self._unannounced.discard(tp)
        self._revoked.discard(tp)

    def _start_fetcher(self, tp: TP, offset: int | None) -> None:
        old = self._owned.get(tp)
        if old is not None:
            old.scope.cancel()
        self._tokens += 1
        self._revoked.discard(tp)  # given back before its release went through
        owned = self._owned[tp] = _Owned(self._tokens)
        assert self._nursery is not None
        self._nursery.start_soon(self._fetcher, tp, owned, offset)

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Read exactly these (topic, partition) pairs (no group only)."""
        if self.group is not None:
            raise InvalidArgument(
                f"this consumer is in group {self.group!r}, which assigns its partitions; "
                "create it without group= to assign partitions yourself"
            )
        tps = [self._check_tp(item, "assign") for item in partitions]
        self._own(tps)

    def _check_tp(self, item: object, what: str) -> TP:
        if (
            not isinstance(item, tuple | p.TopicPartition)
            or len(attrs.astuple(item) if isinstance(item, p.TopicPartition) else item) != 2
        ):
            raise InvalidArgument(f"{what} takes (topic, partition) pairs, not {item!r:.80}")
        topic, partition = (
            (item.topic, item.partition) if isinstance(item, p.TopicPartition) else item
        )
        if topic not in self.topics:
            raise InvalidArgument(
                f"topic {topic!r} is not one of this consumer's topics {list(self.topics)}"
            )
        if type(partition) is not int or partition < 0:
            raise UnknownPartitionError(f"partition {partition!r} of {topic!r} is invalid")
        return topic, partition

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this consumer reads now, sorted."""
        return sorted(tp for tp, owned in self._owned.items() if owned.token >= 0)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read ``topic``/``partition`` from ``offset`` next (an owned partition)."""
        tp = (topic, partition)
        if tp not in self._owned or self._owned[tp].token < 0:
            raise UnknownPartitionError(
                f"{topic}/{partition} is not assigned to this consumer; "
                f"it reads {self.assignment()}"
            )
        if type(offset) is not int or offset < 0:
            raise OffsetOutOfRangeError(f"seek offset {offset!r} must be an int >= 0")
        self._positions[tp] = offset
        self._skips.pop(tp, None)
        self._drop_buffered(tp)
        self._start_fetcher(tp, offset)

    def position(self, topic: str, partition: int) -> int | None:
        """The next offset this consumer hands out for a partition (``None``
        before it has resolved where to start)."""
        return self._positions.get((topic, partition))

    def _debug_state(self) -> str:
        """One line of this consumer's state for a stall report (a test
        aid): membership, owned partitions (token, position, fetcher
        state), buffered chunks, group flags and the channel."""
        owned = "; ".join(
            f"{t}/{n} token={o.token} position={self._positions.get((t, n))} "
            f"fetching={o.fetching} {o.state} sub={o.sub!r}"
            for (t, n), o in sorted(self._owned.items())
        )
        channel = self._channel
        return (
            f"membership={self._membership} latest={self._latest} owned=[{owned}] "
            f"buffered={len(self._buffer)} queued={self._receive.statistics().current_buffer_used} "
            f"evicted={self._evicted!r} lost={sorted(self._lost)} "
            f"unannounced={sorted(self._unannounced)} polling={self._polling} "
            f"idle={trio.current_time() - self._last_poll:.1f}s "
            f"channel={getattr(channel, 'connected', '?')}/"
            f"reconnects={getattr(channel, 'reconnects', '?')}"
        )

    # ------------------------------------------------------------ fetching

    async def _resolve(self, tp: TP) -> int:
        if self.group is not None:
            committed = await self._ask(p.FetchCommitted(self.group, (p.TopicPartition(*tp),)))
            for po in committed.offsets:
                if (po.topic, po.partition) == tp:
                    return int(po.offset)
        if self._start_offset:
            return int(self._start)
        result = await self._ask(p.ListOffset(tp[0], tp[1], self._start))
        return int(result.offset)

    async def _retrying(self, tp: TP, what: str, ask: Any) -> int:
        """``await ask()`` until it does not fail with a retriable error (a
        lost connection must not kill the fetcher: fetches retry too)."""
        damaged = 0
        while True:
            try:
                return int(await ask())
            except CorruptionError as exc:
                await self._stall_damaged(tp, damaged, exc)
                damaged += 1
            except HeadwaterError as exc:
                if not exc.retriable:
                    raise
                log.info(f"{what}_retry", topic=tp[0], partition=tp[1], error=repr(exc))
                await trio.sleep(0.1)

    async def _stall_damaged(self, tp: TP, attempt: int, exc: CorruptionError) -> None:
        """Wait before asking a damaged (failed) partition again. It stalls
        alone, as an offline partition does in Kafka: the others keep flowing,
        its lag grows, and it resumes once an operator repaired it. Warned once
        per stall; retried with backoff (0.5 s doubling to 30 s)."""
        if attempt == 0:
            log.warning("consumer_partition_damaged", topic=tp[0], partition=tp[1], error=str(exc))
        await trio.sleep(min(0.5 * 2**attempt, 30.0))

    async def _fetcher(self, tp: TP, owned: _Owned, offset: int | None) -> None:
        with owned.scope:
            if offset is None:
                owned.state = "resolving"
                offset = await self._retrying(tp, "resolve", lambda: self._resolve(tp))
                self._positions.setdefault(tp, offset)
            topic, partition = tp
            cfg = self.config
            damaged = 0  # fetches in a row refused because the partition is damaged
            position = offset  # where the next fetch (or subscription) starts

            async def hand_over(result: p.FetchResult) -> Callable[[], None] | None:
                """Queue ``result`` for the reader; returns what decodes it
                ahead (call it once the credit is on its way back)."""
                nonlocal position, damaged
                damaged = 0
                # Only headers here (checksums included): the next records are
                # already on their way while the reader decodes these.
                records = iter_records(result.records)
                end = result.next_offset
                if records and end < 0:  # a server that predates transactions
                    end = records[-1][0].next_offset
                if end <= position:
                    return None
                # Records the broker left out (markers, aborted events)
                # still move the position, so lag reaches 0.
                ahead = _Ahead()
                owned.state = "handing over"
                await self._send.send((tp, owned.token, position, records, end, ahead))
                decode = partial(self._decode_ahead, tp, position, records, ahead)
                position = end
                return decode

            idle = False  # parked in sub.receive(): no result on its way to the reader

            def direct(result: p.FetchResult) -> bool:
                """(The connection's reader task) queue a pushed result for
                a reader waiting on an empty queue at once, one task step
                sooner than through this fetcher. Only while the fetcher is
                idle (so nothing it holds goes after it: order stays) and
                the result is plain; anything else (an error, records to
                skip) is left to the fetcher."""
                nonlocal position, damaged
                if not idle or self._wake is None or owned.scope.cancel_called:
                    return False
                try:
                    records = iter_records(result.records)
                except Exception:  # damaged: the fetcher meets it as usual
                    return False
                end = result.next_offset
                if records and end < 0:  # a server that predates transactions
                    end = records[-1][0].next_offset
                if end <= position:
                    return False
                try:
                    self._send.send_nowait((tp, owned.token, position, records, end, _Ahead()))
                except trio.WouldBlock:
                    return False
                damaged = 0
                position = end
                return True

            while True:
                try:
                    sub = None
                    owned.state = "subscribing"
                    owned.fetching = position
                    if cfg.fetch_credit:
                        sub = await self._channel.open_fetch_subscription(
                            topic,
                            partition,
                            position,
                            credit=cfg.fetch_credit,
                            max_bytes=max(1, min(cfg.max_bytes, cfg.fetch_credit // 4)),
                            isolation=cfg.isolation,
                            timeout=cfg.request_timeout,
                        )
                    if sub is None:
                        owned.state = "pulling"
                        result: p.FetchResult = await self._channel.request(
                            p.Fetch(
                                topic,
                                partition,
                                position,
                                cfg.max_bytes,
                                cfg.max_wait,
                                cfg.isolation,
                            ),
                            timeout=cfg.request_timeout + cfg.max_wait,
                        )
                        decode = await hand_over(result)
                        if decode is not None:
                            decode()
                        continue
                    owned.sub = sub
                    try:
                        # Pushed: several batches on their way while these
                        # decode; one a reader waits for goes to it directly.
                        sub.take_directly(direct)
                        while True:
                            owned.state = "pushed"
                            owned.fetching = position
                            idle = True
                            try:
                                result = await sub.receive(p.MAX_FETCH_WAIT + cfg.request_timeout)
                            finally:
                                idle = False
                            decode = await hand_over(result)
                            await sub.consumed(len(result.records))
                            if decode is not None:
                                decode()
                    finally:
                        sub.take_directly(None)
                        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                            await sub.aclose()
                except CorruptionError as exc:
                    owned.state = "damaged"
                    await self._stall_damaged(tp, damaged, exc)
                    damaged += 1
                except OffsetOutOfRangeError as exc:
                    # Retention removed it, or a seek went past the end: reset.
                    where = self._start if isinstance(self._start, str) else "earliest"
                    reset_to = await self._retrying(
                        tp,
                        "offset_reset",
                        partial(self._reset_offset, topic, partition, where),
                    )
                    log.warning(
                        "consumer_offset_reset",
                        topic=topic,
                        partition=partition,
                        offset=position,
                        reset_to=reset_to,
                        error=str(exc),
                    )
                    position = reset_to
                    self._positions[tp] = position
                except HeadwaterError as exc:
                    if not exc.retriable:
                        raise
                    log.info("fetch_retry", topic=topic, partition=partition, error=repr(exc))
                    owned.state = f"retrying after {exc!r:.200}"
                    await trio.sleep(0.1)

    async def _reset_offset(self, topic: str, partition: int, where: str | int) -> int:
        result = await self._ask(p.ListOffset(topic, partition, where))
        return int(result.offset)

    def _decode(
        self, tp: TP, start: int, records: list[tuple[RecordHeader, memoryview]]
    ) -> list[Event]:
        des = self._deserializer.deserialize
        deserialize = None if isinstance(self._deserializer, BytesSerializer) else des
        events: list[Event] = []
        for header, record in records:
            events.extend(
                decode_record_events(
                    header,
                    record,
                    topic=tp[0],
                    partition=tp[1],
                    first_offset=start,
                    deserialize=deserialize,
                )
            )
        return events

    def _decode_ahead(
        self, tp: TP, start: int, records: list[tuple[RecordHeader, memoryview]], ahead: _Ahead
    ) -> None:
        """Decode a queued chunk on the fetcher's task (after its credit went
        back), so that the reader, waiting meanwhile (for data, or for its
        commit), finds it decoded: the decode leaves the reader's path. Not
        if the reader took the chunk already, nor beyond ``_ahead_limit``
        bytes of records decoded and unread (the fetch credit, or
        ``max_bytes`` when pulling): chunks past it stay raw, the smaller
        form, and the reader decodes them. A chunk that fails to decode is
        left to the reader, which gets the error itself."""
        if ahead.taken or not self._ahead_limit:
            return
        size = sum(len(record) for _, record in records)
        if self._ahead_bytes and self._ahead_bytes + size > self._ahead_limit:
            return
        try:
            ahead.events = self._decode(tp, start, records)
        except Exception:
            return
        self._ahead_bytes += size

    async def _refill(self, timeout: float = math.inf) -> bool:
        """Receive chunks until one is current; return False on timeout. A
        group notice wakes the wait, so a rebalance is served at once.

        ``timeout`` bounds the wait for data, not the serving of the group:
        a release (or join) cut off midway by it would start over at the
        next poll, and on a slow link might never finish."""
        if self._closed:
            raise ClosedError("this consumer is closed")
        deadline = trio.current_time() + timeout
        while True:
            await self._sync()
            with trio.CancelScope(deadline=deadline) as wake:
                self._wake = wake
                if self._needs_sync():
                    # _sync gave up (a rejoin or release failed): again soon.
                    wake.deadline = min(deadline, trio.current_time() + _SYNC_RETRY)
                try:
                    tp, token, start, records, end, ahead = await self._receive.receive()
                finally:
                    self._wake = None
            if wake.cancelled_caught:
                if trio.current_time() >= deadline:
                    return False
                continue  # woken by a group notice, or to retry
            ahead.taken = True
            if ahead.events is not None:
                self._ahead_bytes -= sum(len(record) for _, record in records)
            owned = self._owned.get(tp)
            if owned is None or owned.token != token:
                continue
            position = self._positions.get(tp, 0)
            decoded = ahead.events
            if decoded is None:
                fresh = self._decode(tp, max(start, position), records)
            elif decoded and decoded[0].offset < position:
                fresh = [e for e in decoded if e.offset >= position]
            else:
                fresh = decoded
            if fresh:
                self._buffer.append((tp, fresh))
                if end > fresh[-1].offset + 1:
                    self._skips[tp] = (fresh[-1].offset + 1, end)
                return True
            if end > position:  # only left-out records: move past them
                self._positions[tp] = end

    def _take(self, limit: int) -> list[Event]:
        """Up to ``limit`` buffered events, in order, moving positions on.
        Per chunk, not per event: a run of one partition's events is one
        slice and one position update."""
        out: list[Event] = []
        buffer = self._buffer
        while buffer and len(out) < limit:
            tp, events = buffer[0]
            start = self._head
            owned = self._owned.get(tp)
            if owned is None or owned.token < 0:
                buffer.popleft()
                self._head = 0
                continue
            position = self._positions.get(tp, 0)
            while start < len(events) and events[start].offset < position:
                start += 1  # handed out already (a chunk may overlap a seek)
            end = min(len(events), start + limit - len(out))
            if end > start:
                out.extend(events[start:end])
                nxt = events[end - 1].offset + 1
                skip = self._skips.get(tp)
                if skip is not None and skip[0] == nxt:
                    nxt = skip[1]
                    del self._skips[tp]
                self._positions[tp] = nxt
            if end >= len(events):
                buffer.popleft()
                self._head = 0
            else:
                self._head = end
        return out

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Event:
        self._polling += 1
        try:
            await self._sync()
            while True:
                got = self._take(1)
                if got:
                    return got[0]
                await self._refill()
        finally:
            self._polling -= 1
            self._last_poll = trio.current_time()

    async def getmany(self, max_events: int = 1000, timeout: float = 1.0) -> list[Event]:
        """Up to ``max_events`` events, waiting up to ``timeout`` seconds for
        the first one (returns ``[]`` if none arrive). A group rebalance is
        served here (see the module docs); a release under way is not cut off
        at ``timeout``: it finishes, or fails, within its requests' timeouts."""
        if type(max_events) is not int or max_events < 1:
            raise InvalidArgument(f"max_events must be an int >= 1, not {max_events!r}")
        self._polling += 1
        try:
            await self._sync()
            if not self._buffer:
                await self._refill(timeout)
            return self._take(max_events)
        finally:
            self._polling -= 1
            self._last_poll = trio.current_time()

    # ------------------------------------------------------------ groups

    async def _join(self) -> None:
        """Join as a new member (the group plans a rebalance; the answer may
        carry no partitions yet: they come with a notice)."""
        assert self.group is not None
        self._membership = None
        self._latest = None
        self._joining = True
        try:
            membership: p.Membership = await self._ask(
                p.JoinGroup(
                    self.group,
                    tuple(sorted(set(self.topics))),
                    None,
                    self.config.session_timeout,
                    self.config.client_id,
                    rebalance_timeout=self.config.max_poll_interval,
                    instance_id=self.config.group_instance_id,
                    assignor=self.config.assignor,
                )
            )
        finally:
            self._joining = False
        early, self._early = self._early, []
        self._evicted = None
        self._idle_left = False
        self._on_notice(membership)
        for notice in early:
            self._on_notice(notice)
        log.info(
            "consumer_joined",
            group=self.group,
            member_id=membership.member_id,
            generation=membership.generation,
            state=membership.state,
        )

    def _on_notice(self, m: p.Membership) -> None:
        """A membership arrived (push, heartbeat or answer): remember the
        newest, start fetchers for new partitions, wake a waiting poll. Never
        blocks (pushes arrive on the broker's or the connection's task)."""
        if self._closed or m.group != self.group:
            return
        if self._joining:
            self._early.append(m)  # may be ours: sorted out when the join answers
            return
        if self._evicted is not None:
            return  # about the member we were: only the next join's answer counts
        current = self._latest or self._membership
        if current is not None and (m.member_id != current.member_id or _rank(m) < _rank(current)):
            return
        self._latest = m
        self._adopt(m)
        if self._wake is not None:
            self._wake.cancel()

    def _missing(self, m: p.Membership) -> list[TP]:
        """Partitions a stable membership gives us that we do not read yet."""
        if m.state != "stable":
            return []
        releasing = {(tp.topic, tp.partition) for tp in m.release}
        running = set(self.assignment())
        return sorted({(tp.topic, tp.partition) for tp in m.assignment} - releasing - running)

    def _adopt(self, m: p.Membership) -> None:
        """Start reading newly assigned partitions (on_assigned comes at the
        next poll, before any of their events is handed out)."""
        if self._nursery is None:
            return
        for tp in self._missing(m):
            if tp in self._owned:  # stopped for a release, and given back
                self._positions.pop(tp, None)
            self._start_fetcher(tp, None)
            self._unannounced.add(tp)

    def _needs_sync(self) -> bool:
        if self.group is None:
            return False
        if self._evicted is not None or self._lost:
            return True
        m = self._latest
        if m is None:
            return bool(self._unannounced)
        owned = set(self._owned)  # a release that has not gone through counts
        if {(tp.topic, tp.partition) for tp in m.release} & owned:
            return True
        if m.state == "stable" and owned - {(tp.topic, tp.partition) for tp in m.assignment}:
            return True
        return bool(self._unannounced or self._missing(m)) or m != self._membership

    async def _call(self, callback: PartitionsCallback | None, tps: list[TP]) -> None:
        if callback is None or not tps:
            return
        result = callback(list(tps))
        if inspect.isawaitable(result):
            await result

    async def _sync(self) -> None:
        """Serve the group at a poll point: rejoin if we were removed,
        release what the rebalance asks for, drop what we lost, announce
        what we got."""
        if self.group is None:
            return
        while self._needs_sync():
            if self._lost:  # taken while we were away: tell the app (no commit possible)
                lost = sorted(self._lost)
                self._lost.clear()
                await self._call(self._on_revoked, lost)
                continue
            if self._evicted is not None:
                log.info("consumer_rejoin", group=self.group, reason=self._evicted)
                self._idle_left = False
                async with self._join_lock:
                    if self._evicted is not None:
                        try:
                            await self._join()
                        except HeadwaterError as exc:
                            if not exc.retriable:
                                raise
                            log.info("rejoin_failed", group=self.group, error=repr(exc))
                            return  # the next poll (or heartbeat) tries again
                continue
            m = self._latest
            if m is None:
                announce = sorted(self._unannounced)
                self._unannounced.clear()
                await self._call(self._on_assigned, announce)
                continue
            # Running, or stopped for a release that has not gone through.
            owned = set(self._owned)
            release = sorted({(tp.topic, tp.partition) for tp in m.release} & owned)
            if release:
                if not await self._release(m, release):
                    return  # the next poll tries again
                continue
            if m.state == "stable":
                lost = sorted(owned - {(tp.topic, tp.partition) for tp in m.assignment})
                if lost:
                    # Taken without our release (we missed the rebalance
                    # timeout, or its answer): no commit is possible for
                    # these any more.
                    log.warning("consumer_partitions_lost", group=self.group, partitions=lost)
                    revoke = [tp for tp in lost if tp not in self._revoked]
                    for tp in lost:
                        self._forget(tp)
                    await self._call(self._on_revoked, revoke)
            self._adopt(m)
            if self._membership != m:
                if self._membership is None or m.generation != self._membership.generation:
                    log.info(
                        "consumer_rebalanced",
                        group=self.group,
                        member_id=m.member_id,
                        generation=m.generation,
                        state=m.state,
                        partitions=len(m.assignment),
                    )
                self._membership = m
            announce = sorted(tp for tp in self._unannounced if tp in self._owned)
            self._unannounced.clear()
            await self._call(self._on_assigned, announce)

    async def _release(self, m: p.Membership, release: list[TP]) -> bool:
        """Stop reading ``release``, let the app flush (on_revoked), commit
        (auto_commit), then tell the coordinator, which may now hand them on.

        Returns whether the coordinator heard it. Until it has, the
        partitions stay stopped and owned (``_needs_sync`` sees them), so a
        release that failed (a lost connection, a timeout) or was cancelled
        midway is tried again at the next poll, without a second
        ``on_revoked``: a partition released by nobody would stall the
        rebalance, and the partition, until ``max_poll_interval``."""
        assert self.group is not None
        for tp in release:
            self._stop(tp)
        callback_error: BaseException | None = None
        try:
            await self._call(self._on_revoked, [tp for tp in release if tp not in self._revoked])
        except Exception as exc:  # the app's bug: release anyway, then raise it
            callback_error = exc
        self._revoked.update(release)
        rows: tuple[p.PartitionOffset, ...] = ()
        if self.config.auto_commit and callback_error is None:
            rows = tuple(
                p.PartitionOffset(t, n, self._positions[(t, n)], "")
                for t, n in release
                if (t, n) in self._positions
            )
        answer: p.Membership | None = None
        try:
            async with self._commit_lock:
                # Commits queued for these partitions go before they are released.
                await self._send_commits(rows)
                answer = await self._ask(
                    p.ReleasePartitions(
                        self.group,
                        m.member_id,
                        m.generation,
                        tuple(p.TopicPartition(t, n) for t, n in release),
                    )
                )
        except UnknownMemberError:
            # The group removed us meanwhile: the partitions have new owners
            # (on_revoked ran); the poll joins again.
            if self._evicted is None:
                self._evict("the group removed it")
        except HeadwaterError as exc:
            if not exc.retriable:
                raise
            log.info("release_failed", group=self.group, partitions=release, error=repr(exc))
        if answer is not None:
            for tp in release:
                owned = self._owned.get(tp)
                if owned is not None and owned.token < 0:  # not given back meanwhile
                    self._forget(tp)
            log.info("consumer_released", group=self.group, partitions=release)
            self._on_notice(answer)
        if callback_error is not None:
            raise callback_error
        return answer is not None or self._evicted is not None

    async def _heartbeats(self) -> None:
        assert self.group is not None
        interval = self.config.session_timeout / 3
        while True:
            await trio.sleep(interval)
            idle = trio.current_time() - self._last_poll
            if self._polling == 0 and idle > self.config.max_poll_interval:
                if self._evicted is None and self.membership is not None:
                    await self._leave_idle(idle)
                continue
            await self._heartbeat()

    async def _leave_idle(self, idle: float) -> None:
        """The app has not polled for max_poll_interval: give the partitions
        up (no commit: what it was handed may not be processed)."""
        m = self.membership
        assert m is not None
        assert self.group is not None
        log.warning(
            "consumer_poll_timeout",
            group=self.group,
            member_id=m.member_id,
            idle=idle,
            max_poll_interval=self.config.max_poll_interval,
        )
        self._evict(
            f"it did not ask for events for {idle:.1f}s (max_poll_interval="
            f"{self.config.max_poll_interval}s)",
            idle=True,
        )
        try:
            await self._ask(p.LeaveGroup(self.group, m.member_id))
        except HeadwaterError as exc:
            log.info("leave_group_failed", group=self.group, error=repr(exc))

    def _evict(self, reason: str, *, idle: bool = False) -> None:
        self._lost.update(
            tp for tp in self._owned if tp not in self._unannounced and tp not in self._revoked
        )
        for tp in list(self._owned):
            self._forget(tp)
        self._evicted = reason
        self._idle_left = idle
        # Commits queued by the member we were are not sent: their partitions
        # have new owners (as a commit() now would, they fail).
        self._queued_commits.clear()
        if self._wake is not None:
            self._wake.cancel()

    async def _heartbeat(self) -> None:
        if self.group is None or self._idle_left:
            return  # after a poll timeout the app's next poll joins again
        m = self.membership
        if m is None or self._evicted is not None:
            await self._rejoin()  # an earlier rejoin failed: try again
            return
        try:
            self._on_notice(await self._ask(p.Heartbeat(self.group, m.member_id, m.generation)))
        except UnknownMemberError:
            # The group forgot us (missed heartbeats): join again at once.
            log.info("consumer_rejoin", group=self.group, member_id=m.member_id)
            self._evict("the group removed it (missed heartbeats)")
            await self._rejoin()
        except HeadwaterError as exc:
            if not exc.retriable:
                raise
            log.info("heartbeat_failed", group=self.group, error=repr(exc))

    async def _rejoin(self) -> None:
        """Join again unless someone else (a poll, the heartbeat task) did."""
        async with self._join_lock:
            if self._evicted is None and self.membership is not None:
                return
            try:
                await self._join()
            except HeadwaterError as exc:
                if not exc.retriable:
                    raise
                log.info("rejoin_failed", group=self.group, error=repr(exc))

    async def poll_group(self) -> None:
        """Heartbeat now and serve any rebalance (a poll point; the background
        task heartbeats every ``session_timeout / 3`` seconds)."""
        if self.group is None or self._nursery is None:
            return
        self._polling += 1
        try:
            if self._evicted is None:
                await self._heartbeat()
            await self._sync()
        finally:
            self._polling -= 1
            self._last_poll = trio.current_time()

    @property
    def membership(self) -> p.Membership | None:
        """The newest group membership heard (member id, generation, group
        state, assignment), if any; the consumer acts on it at its next poll."""
        return self._latest or self._membership

    async def commit(
        self,
        offsets: Mapping[tuple[str, int], int] | None = None,
        *,
        metadata: str = "",
    ) -> None:
        """Commit positions to the group: by default the position (offset after
        the last event handed out) of every partition this member owns; or
        the explicit ``offsets`` ({(topic, partition): next offset to read}).
        ``metadata`` (text) is stored with each offset and shown by
        ``headwater groups describe``. Returns once the broker stored them
        (and every commit queued before by :meth:`commit_nowait`).

        In the normal flow this never raises: a partition is taken from this
        member only after it released it at a poll, so it commits what it
        owns (explicit offsets for partitions it no longer owns are skipped
        and logged). After the member left the group for not polling within
        ``max_poll_interval``, it raises :class:`~headwater.UnknownMemberError`:
        those partitions have new owners, and nothing was committed. A
        queued commit that failed raises here first."""
        rows = self._commit_rows(offsets, metadata)
        await self._commit_positions(rows)

    def commit_nowait(
        self,
        offsets: Mapping[tuple[str, int], int] | None = None,
        *,
        metadata: str = "",
    ) -> None:
        """Queue a commit (the same positions or ``offsets`` as :meth:`commit`)
        and return at once, as Kafka's ``commitAsync``: a reader commits each
        batch without waiting for the broker's answer before it reads on.

        Queued commits are sent in order, one at a time; those queued while
        one is on its way go together in the next (the newest offset per
        partition wins, as if each had been committed in turn). A later
        :meth:`commit`, a release in a rebalance and a clean close send
        them first and wait for them. A queued commit that failed raises its
        error at the next :meth:`commit` or :meth:`commit_nowait` call, which
        then commits nothing (call it again), or at a clean close; commits
        queued after the failed one are still sent."""
        if self._closed:
            raise ClosedError("this consumer is closed: commit before leaving its block")
        rows = self._commit_rows(offsets, metadata)
        if not rows:
            return
        for row in rows:
            self._queued_commits[(row.topic, row.partition)] = row
        if not self._commit_flusher and self._nursery is not None:
            self._commit_flusher = True
            self._nursery.start_soon(self._flush_commits)

    def _commit_rows(
        self, offsets: Mapping[tuple[str, int], int] | None, metadata: str
    ) -> tuple[p.PartitionOffset, ...]:
        """The rows a commit of ``offsets`` (default: the positions) sends;
        raises for bad input, an eviction, or a queued commit that failed."""
        if self.group is None:
            raise InvalidArgument("commit needs a group: create the consumer with group=...")
        if not isinstance(metadata, str):
            raise InvalidArgument(f"metadata must be text, not {metadata!r:.80}")
        if offsets is None:
            wanted = {tp: off for tp, off in self._positions.items() if tp in self._owned}
        else:
            if not isinstance(offsets, Mapping):
                raise InvalidArgument(
                    f"offsets must map (topic, partition) to an offset, not {offsets!r:.80}"
                )
            wanted = {}
            for key, off in offsets.items():
                tp = self._check_tp(key, "commit offsets")
                if type(off) is not int or off < 0:
                    raise OffsetOutOfRangeError(
                        f"cannot commit offset {off!r} for {tp[0]}/{tp[1]}: offsets are ints >= 0"
                    )
                wanted[tp] = off
        if self._evicted is not None:
            if isinstance(self._commit_error, UnknownMemberError):
                self._commit_error = None  # the same news as this error
            raise UnknownMemberError(
                f"not committed: this consumer left group {self.group!r} because {self._evicted}; "
                "its partitions went to other members, who resume from the last commit. It "
                "joins again at its next poll"
            )
        self._raise_commit_error()
        skipped = sorted(tp for tp in wanted if tp not in self._owned)
        if skipped:
            log.warning("commit_skipped_not_owned", group=self.group, partitions=skipped)
        return tuple(
            p.PartitionOffset(t, n, wanted[(t, n)], metadata)
            for t, n in sorted(tp for tp in wanted if tp in self._owned)
        )

    def _raise_commit_error(self) -> None:
        """Raise (once) the error of a queued commit that failed."""
        error, self._commit_error = self._commit_error, None
        if error is not None:
            raise error

    async def _flush_commits(self) -> None:
        """The flusher task: send queued commits until none are left. A
        failure is kept for the app's next commit call; later ones still go."""
        try:
            while self._queued_commits:
                try:
                    await self._commit_positions(())
                except HeadwaterError as exc:
                    log.info("queued_commit_failed", group=self.group, error=repr(exc))
                    if self._commit_error is None:
                        self._commit_error = exc
        finally:
            self._commit_flusher = False

    async def _commit_positions(self, rows: Iterable[p.PartitionOffset]) -> None:
        """Send the queued commits with ``rows`` (newer) in one request, after
        any commit already on its way."""
        assert self.group is not None
        async with self._commit_lock:
            await self._send_commits(rows)

    async def _send_commits(self, rows: Iterable[p.PartitionOffset] = ()) -> None:
        """(Holding the commit lock) send the queued commits merged with
        ``rows``, if any."""
        assert self.group is not None
        taken, self._queued_commits = self._queued_commits, {}
        merged = dict(taken)
        for row in rows:
            merged[(row.topic, row.partition)] = row
        for tp in [tp for tp in merged if tp not in self._owned]:
            del merged[tp]  # lost meanwhile (taken without a release): not ours to commit
        if not merged:
            return
        m = self.membership
        try:
            await self._ask(
                p.CommitOffsets(
                    self.group,
                    m.member_id if m else None,
                    m.generation if m else 0,
                    tuple(merged[tp] for tp in sorted(merged)),
                )
            )
        except StaleGenerationError:
            # Not the normal flow (we missed a rebalance timeout): learn
            # the current assignment at once, then say so.
            self._polling += 1
            try:
                await self._heartbeat()
            finally:
                self._polling -= 1
            raise
        except UnknownMemberError:
            self._evict("the group removed it")
            raise
        except trio.Cancelled:
            # The caller gave up (a timeout around commit()): the request
            # may not have gone out. The commit_nowait rows it took go with
            # the next commit (or the clean close), unless one queued since
            # is newer; sent twice at worst (a commit is idempotent).
            for tp, row in taken.items():
                self._queued_commits.setdefault(tp, row)
            raise

    async def _auto_commit(self) -> None:
        while True:
            await trio.sleep(self.config.auto_commit_interval)
            try:
                await self.commit()
            except HeadwaterError as exc:
                log.info("auto_commit_failed", group=self.group, error=repr(exc))
