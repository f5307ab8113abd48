"""The consumer: partitions in, decoded events out, in order per partition.

Theory of operation
-------------------
The consumer owns a set of partitions: every partition of its topics (no
group; narrow with :meth:`Consumer.assign`), or the assignment its group
gives it. A *fetcher* task per owned partition resolves where to start (the
group's committed offset, else the ``start`` rule through ``ListOffset``),
then long-polls ``Fetch`` (up to ``max_wait`` seconds, ``max_bytes`` per
request) and puts each decoded chunk into one bounded channel
(``prefetch`` chunks), so partitions are served as data arrives and memory
is bounded. Events below the requested offset inside a fetched record are
skipped (records start at their base offset).

Each chunk carries its partition's *token*; :meth:`seek` and a rebalance
bump the token and restart the fetcher, so stale chunks are dropped on
receipt. :meth:`position` is the offset after the last event handed to the
caller; :meth:`commit` commits those positions.

With a group: ``JoinGroup`` on entry, a heartbeat task every
``session_timeout / 3`` seconds, and a rebalance when the membership's
generation changes (revoked partitions' fetchers stop and their positions
are dropped; new ones start from the committed offset or ``start``). A member
the group forgot (missed heartbeats) joins again. ``LeaveGroup`` on exit.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from collections.abc import Iterable
from functools import partial
from types import TracebackType
from typing import Any, Literal

import attrs
import structlog
import trio

from headwater import _protocol as p
from headwater._errors import (
    ClosedError,
    ConfigError,
    HeadwaterError,
    InvalidArgument,
    OffsetOutOfRangeError,
    StaleGenerationError,
    UnknownMemberError,
    UnknownPartitionError,
)
from headwater.journal._batch import Event, decode_record_events
from headwater.journal._record import RecordHeader, iter_records

from ._channel import Channel
from ._serializers import BytesSerializer, Serializer, get_serializer

__all__ = ["Consumer", "ConsumerConfig", "Start", "Timestamp"]

log = structlog.get_logger("headwater.client.consumer")

TP = tuple[str, int]
# (partition, ownership token, first wanted offset, records as fetched)
_Chunk = tuple[TP, int, int, list[tuple[RecordHeader, memoryview]]]


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


@attrs.frozen
class ConsumerConfig:
    """Consumer settings: ``max_wait`` (s a fetch waits for new data),
    ``max_bytes`` (per fetch), ``prefetch`` (decoded chunks buffered),
    ``session_timeout`` (s, groups), ``auto_commit`` and
    ``auto_commit_interval`` (s), ``request_timeout`` (s), ``deserializer``
    (as the producer's serializer; ``"bytes"`` reads raw values),
    ``client_id`` (names the group member)."""

    max_wait: float = attrs.field(default=0.5, validator=_positive("max_wait"))
    max_bytes: int = attrs.field(default=1 << 20, validator=_positive("max_bytes"))
    prefetch: int = attrs.field(default=16, validator=_positive("prefetch"))
    session_timeout: float = attrs.field(default=10.0, validator=_positive("session_timeout"))
    auto_commit: bool = False
    auto_commit_interval: float = attrs.field(
        default=5.0, validator=_positive("auto_commit_interval")
    )
    request_timeout: float = attrs.field(default=30.0, validator=_positive("request_timeout"))
    deserializer: Any = None
    client_id: str = ""


@attrs.define(eq=False)
class _Owned:
    token: int
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)


class Consumer:
    """Reads events (see the module docs). Use as an async context manager,
    then ``async for event in consumer`` or :meth:`getmany`."""

    def __init__(
        self,
        channel: Channel,
        topics: tuple[str, ...],
        group: str | None,
        start: Start,
        config: ConsumerConfig | None = None,
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
        self._deserializer: Serializer = get_serializer(config.deserializer)
        self._owned: dict[TP, _Owned] = {}
        self._positions: dict[TP, int] = {}
        self._tokens = 0
        self._send, self._receive = trio.open_memory_channel[_Chunk](config.prefetch)
        self._buffer: deque[Event] = deque()
        self._membership: p.Membership | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Consumer:
        self._manager = trio.open_nursery()
        self._nursery = await self._manager.__aenter__()
        try:
            if self.group is None:
                tps: list[TP] = []
                for topic in self.topics:
                    d = await self._ask(p.DescribeTopic(topic))
                    tps.extend((topic, i) for i in range(d.topic.partitions))
                self._own(tps)
            else:
                await self._join(None)
                self._nursery.start_soon(self._heartbeats)
            if self.config.auto_commit:
                self._nursery.start_soon(self._auto_commit)
        except BaseException as exc:
            self._nursery.cancel_scope.cancel()
            await self._manager.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None
        failed: BaseException | None = None
        try:
            if self.config.auto_commit and exc is None and self._membership is not None:
                await self.commit()
        except BaseException as commit_error:
            # Exit the nursery whatever happens (skipping it corrupts Trio's
            # nursery stack); the error goes through it.
            failed = commit_error
            exc_type, exc, tb = type(failed), failed, failed.__traceback__
        finally:
            self._closed = True
            self._nursery.cancel_scope.cancel()
            if self._membership is not None and self.group is not None:
                # Best effort and short: if the broker is unreachable, the
                # session timeout removes this member anyway.
                leave_timeout = min(self.config.request_timeout, 2.0)
                with trio.CancelScope(shield=True), trio.move_on_after(leave_timeout):
                    try:
                        await self._ask(p.LeaveGroup(self.group, self._membership.member_id))
                    except HeadwaterError as err:
                        log.info("leave_group_failed", group=self.group, error=repr(err))
        suppressed = await self._manager.__aexit__(exc_type, exc, tb)
        if failed is not None and not suppressed:
            raise failed
        return suppressed

    async def _ask(self, request: Any) -> Any:
        return await self._channel.request(request, timeout=self.config.request_timeout)

    # ------------------------------------------------------------ ownership

    def _own(self, tps: Iterable[TP]) -> None:
        """Make the owned set exactly ``tps``: stop the others, start new ones."""
        wanted = set(tps)
        for tp in [tp for tp in self._owned if tp not in wanted]:
            self._owned.pop(tp).scope.cancel()
            self._positions.pop(tp, None)
        for tp in sorted(wanted - set(self._owned)):
            self._start_fetcher(tp, None)

    def _start_fetcher(self, tp: TP, offset: int | None) -> None:
        old = self._owned.get(tp)
        if old is not None:
            old.scope.cancel()
        self._tokens += 1
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
        tps = []
        for item in partitions:
            if (
                not isinstance(item, tuple | p.TopicPartition)
                or len(attrs.astuple(item) if isinstance(item, p.TopicPartition) else item) != 2
            ):
                raise InvalidArgument(f"assign takes (topic, partition) pairs, not {item!r:.80}")
            topic, partition = (
                (item.topic, item.partition) if isinstance(item, p.TopicPartition) else item
            )
            if topic not in self.topics:
                raise InvalidArgument(
                    f"topic {topic!r} is not one of this consumer's topics {list(self.topics)}"
                )
            if type(partition) is not int or partition < 0:
                raise UnknownPartitionError(f"partition {partition!r} of {topic!r} is invalid")
            tps.append((topic, partition))
        self._own(tps)

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this consumer reads now, sorted."""
        return sorted(self._owned)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read ``topic``/``partition`` from ``offset`` next (an owned partition)."""
        tp = (topic, partition)
        if tp not in self._owned:
            raise UnknownPartitionError(
                f"{topic}/{partition} is not assigned to this consumer; "
                f"it reads {self.assignment()}"
            )
        if type(offset) is not int or offset < 0:
            raise OffsetOutOfRangeError(f"seek offset {offset!r} must be an int >= 0")
        self._positions[tp] = offset
        self._buffer = deque(e for e in self._buffer if (e.topic, e.partition) != tp)
        self._start_fetcher(tp, offset)

    def position(self, topic: str, partition: int) -> int | None:
        """The next offset this consumer hands out for a partition (``None``
        before it has resolved where to start)."""
        return self._positions.get((topic, partition))

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
        while True:
            try:
                return int(await ask())
            except HeadwaterError as exc:
                if not exc.retriable:
                    raise
                log.info(f"{what}_retry", topic=tp[0], partition=tp[1], error=repr(exc))
                await trio.sleep(0.1)

    async def _fetcher(self, tp: TP, owned: _Owned, offset: int | None) -> None:
        with owned.scope:
            if offset is None:
                offset = await self._retrying(tp, "resolve", lambda: self._resolve(tp))
                self._positions.setdefault(tp, offset)
            topic, partition = tp
            cfg = self.config
            while True:
                try:
                    result: p.FetchResult = await self._channel.request(
                        p.Fetch(topic, partition, offset, cfg.max_bytes, cfg.max_wait),
                        timeout=cfg.request_timeout + cfg.max_wait,
                    )
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
                        offset=offset,
                        reset_to=reset_to,
                        error=str(exc),
                    )
                    offset = reset_to
                    self._positions[tp] = offset
                    continue
                except HeadwaterError as exc:
                    if not exc.retriable:
                        raise
                    log.info("fetch_retry", topic=topic, partition=partition, error=repr(exc))
                    await trio.sleep(0.1)
                    continue
                if not result.records:
                    continue
                # Only headers here (checksums included): the next fetch goes
                # out at once while the reader decodes these records.
                records = iter_records(result.records)
                if records:
                    await self._send.send((tp, owned.token, offset, records))
                    offset = records[-1][0].next_offset

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

    async def _refill(self, timeout: float = math.inf) -> bool:
        """Receive chunks until one is current; return False on timeout."""
        if self._closed:
            raise ClosedError("this consumer is closed")
        with trio.move_on_after(timeout):
            while True:
                tp, token, start, records = await self._receive.receive()
                owned = self._owned.get(tp)
                if owned is None or owned.token != token:
                    continue
                position = self._positions.get(tp, 0)
                fresh = self._decode(tp, max(start, position), records)
                if fresh:
                    self._buffer.extend(fresh)
                    return True
        return False

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Event:
        while True:
            while self._buffer:
                event = self._buffer.popleft()
                tp = (event.topic, event.partition)
                if tp in self._owned and event.offset >= self._positions.get(tp, 0):
                    self._positions[tp] = event.offset + 1
                    return event
            await self._refill()

    async def getmany(self, max_events: int = 1000, timeout: float = 1.0) -> list[Event]:
        """Up to ``max_events`` events, waiting up to ``timeout`` seconds for
        the first one (returns ``[]`` if none arrive)."""
        if type(max_events) is not int or max_events < 1:
            raise InvalidArgument(f"max_events must be an int >= 1, not {max_events!r}")
        if not self._buffer:
            await self._refill(timeout)
        out: list[Event] = []
        while self._buffer and len(out) < max_events:
            event = self._buffer.popleft()
            tp = (event.topic, event.partition)
            if tp in self._owned and event.offset >= self._positions.get(tp, 0):
                self._positions[tp] = event.offset + 1
                out.append(event)
        return out

    # ------------------------------------------------------------ groups

    async def _join(self, member_id: str | None) -> None:
        assert self.group is not None
        membership = await self._ask(
            p.JoinGroup(
                self.group,
                tuple(sorted(set(self.topics))),
                member_id,
                self.config.session_timeout,
                self.config.client_id,
            )
        )
        self._apply(membership)

    def _apply(self, membership: p.Membership) -> None:
        old = self._membership
        self._membership = membership
        if (
            old is None
            or old.generation != membership.generation
            or old.member_id != membership.member_id
        ):
            log.info(
                "consumer_rebalanced",
                group=self.group,
                member_id=membership.member_id,
                generation=membership.generation,
                partitions=len(membership.assignment),
            )
            self._own((tp.topic, tp.partition) for tp in membership.assignment)

    async def _heartbeats(self) -> None:
        assert self.group is not None
        interval = self.config.session_timeout / 3
        while True:
            await trio.sleep(interval)
            await self.poll_group()

    async def poll_group(self) -> None:
        """Heartbeat now and apply any rebalance (the background task does
        this every ``session_timeout / 3`` seconds)."""
        if self.group is None or self._nursery is None:
            return
        m = self._membership
        try:
            if m is None:  # a rejoin failed (a lost connection): try again
                await self._join(None)
                return
            self._apply(await self._ask(p.Heartbeat(self.group, m.member_id, m.generation)))
        except UnknownMemberError:
            assert m is not None
            log.info("consumer_rejoin", group=self.group, member_id=m.member_id)
            self._own(())
            self._membership = None
            try:
                await self._join(None)
            except HeadwaterError as exc:
                if not exc.retriable:
                    raise
                log.info("rejoin_failed", group=self.group, error=repr(exc))
        except HeadwaterError as exc:
            if not exc.retriable:
                raise
            log.info("heartbeat_failed", group=self.group, error=repr(exc))

    @property
    def membership(self) -> p.Membership | None:
        """The group membership (member id, generation, assignment), if any."""
        return self._membership

    async def commit(self) -> None:
        """Commit the position (offset after the last event handed out) of
        every owned partition to the group. A commit by a member whose
        generation is stale raises :class:`~headwater.StaleGenerationError`;
        the consumer then picks up the new generation and assignment at once
        (as the next heartbeat would), so the next commit goes through."""
        if self.group is None:
            raise InvalidArgument("commit needs a group: create the consumer with group=...")
        offsets = tuple(
            p.PartitionOffset(t, part, off)
            for (t, part), off in sorted(self._positions.items())
            if (t, part) in self._owned
        )
        if not offsets:
            return
        m = self._membership
        try:
            await self._ask(
                p.CommitOffsets(
                    self.group,
                    m.member_id if m else None,
                    m.generation if m else 0,
                    offsets,
                )
            )
        except StaleGenerationError:
            await self.poll_group()
            raise

    async def _auto_commit(self) -> None:
        while True:
            await trio.sleep(self.config.auto_commit_interval)
            try:
                await self.commit()
            except HeadwaterError as exc:
                log.info("auto_commit_failed", group=self.group, error=repr(exc))
