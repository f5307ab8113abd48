"""Share subscription actors: one per partition, plus the subscription's members.

Theory of operation
-------------------
A share subscription ``name`` of topic ``T`` is a supervisor
``/broker/shares/<name>`` (``one_for_one``) with children:

* ``members``: :class:`ShareMembersActor`, the live consumers (in memory:
  consumers rejoin after a restart) and the ``exclusive`` rule;
* ``0``, ``1``, ...: one :class:`SharePartitionActor` per partition of ``T``.

A partition actor feeds a :class:`~headwater.broker._share.ShareCore` and
keeps its state in a state journal *with its partition*
(``topics/<T>/<p>/shares/<name>/``, DECISIONS #25): every delta is
appended and fsynced before the actor acts on it, so a delivery is counted
before the event leaves the broker and an ack is never forgotten. It reads
and decodes the partition's batches itself (DECISIONS #23's exception to
"the broker never decodes events") to fill its window, writes dead letters to
``<T>.<name>.dlq`` with ``hw.dlq.*`` headers, and runs a timer for lock
deadlines and backoffs (``next_deadline``). Each change that may make events
deliverable sets :attr:`SharePartitionActor.changed`, which long-polling
fetches wait on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
import trio

from headwater._errors import (
    ClosedError,
    HeadwaterError,
    StorageError,
    SubscriptionBusyError,
    UnknownMemberError,
)
from headwater._logging import get_logger
from headwater._protocol import ShareRecord
from headwater.actors._actor import Actor
from headwater.broker._actors import AppendBatch, Appended, BrokerSettings, GetStableCell
from headwater.broker._share import (
    ShareCore,
    ShareSettings,
    ShareState,
    apply_delta,
    dead_letter_headers,
    state_from_plain,
    state_to_plain,
)
from headwater.broker._stable import StableCell, aborted_by_producer, is_hidden
from headwater.journal._async import AsyncLog
from headwater.journal._batch import Event, decode_record_events, encode_events, key_bytes
from headwater.journal._record import encode_record, iter_records
from headwater.journal._state import StateJournal, start_state_journal
from headwater.supervision._specs import ChildSpec, SupervisorSpec

__all__ = [
    "DLQ_HEADERS",
    "ShareMembersActor",
    "SharePartitionActor",
    "dead_letter_topic",
    "share_supervisor",
]

_log = get_logger("headwater.broker")

#: The dead-letter headers (DECISIONS #23), added after the event's own.
DLQ_HEADERS = (
    "hw.dlq.topic",
    "hw.dlq.partition",
    "hw.dlq.offset",
    "hw.dlq.delivery_count",
    "hw.dlq.error",
    "hw.dlq.subscription",
)


def dead_letter_topic(topic: str, name: str) -> str:
    """The dead-letter topic of subscription ``name`` of ``topic``."""
    return f"{topic}.{name}.dlq"


# ------------------------------------------------------------------ messages


@attrs.frozen
class Acquire:
    """Hand up to ``max_events`` ready events to ``consumer`` (``members``:
    the live consumers, for ``key_shared``)."""

    consumer: str
    max_events: int
    members: tuple[str, ...] = ()


@attrs.frozen
class Durable:
    """Where the deltas of one request end in the state journal: the caller
    awaits ``log.wait_durable(end, generation)`` before answering."""

    log: AsyncLog
    end: int
    generation: int

    async def wait(self) -> None:
        """Return once the deltas are fsynced (raises a storage error if the
        fsync failed: nothing of that request may be acted on)."""
        try:
            await self.log.wait_durable(self.end, self.generation)
        except ClosedError:
            raise StorageError(
                "the share subscription restarted before its state was synced; retry"
            ) from None


@attrs.frozen
class Acquired:
    """Events handed out (counted as delivered once ``durable`` waits), and
    the signal to wait on when there were none."""

    records: list[ShareRecord]
    signal: trio.Event
    durable: Durable | None


@attrs.frozen
class Settle:
    """A consumer's outcomes: ``(offset, outcome, delay_ms, error)``."""

    consumer: str
    items: list[tuple[int, str, int | None, str | None]]


@attrs.frozen
class ReleaseConsumer:
    """Give back what ``consumer`` holds (it left or its session expired)."""

    consumer: str


@attrs.frozen
class DescribeShare:
    """Ask for ``(state, counts, log end, loaded)``."""


@attrs.frozen
class _Tick:
    pass


# ------------------------------------------------------------------ partition


def _event_key(event: Event) -> bytes | None:
    return None if event.key is None else key_bytes(event.key)


def _deliver_at(event: Event) -> int | None:
    """The ``hw.deliver_at`` header (docs/batch-format.md), if any."""
    for name, value in event.headers:
        if name == "hw.deliver_at":
            try:
                return int(value)
            except ValueError:
                return None  # not ours: deliver normally
    return None


class SharePartitionActor(Actor):
    """One partition of one share subscription (module docstring)."""

    snapshot_every = 2000

    def __init__(
        self, settings: BrokerSettings, name: str, share: ShareSettings, partition: int
    ) -> None:
        self.settings = settings
        self.name = name
        self.share = share
        self.partition = partition
        self.topic = share.topic
        self.journal: StateJournal | None = None
        self.core: ShareCore | None = None
        self.log: AsyncLog | None = None
        self.stable = StableCell()
        self.changed = trio.Event()
        self._timer_moved = trio.Event()
        self._generation = -1
        self._clock: Callable[[], int] = settings.clock

    # ---------------------------------------------------------------- start

    async def started(self) -> None:
        """Replay the state journal, find the log, start timer and watcher."""
        path = os.path.join(
            self.settings.partition_dir(self.topic, self.partition), "shares", self.name
        )

        self.journal = await start_state_journal(
            self.context.nursery,
            path,
            apply=apply_delta,
            initial=ShareState(),
            fs=self.settings.fs,
            snapshot_every=self.snapshot_every,
            to_plain=state_to_plain,
            from_plain=state_from_plain,
        )
        self._generation = self.journal.log.generation
        self.core = ShareCore(self.share, self.journal.state, _event_key, _deliver_at)
        log = await self._get_log()
        if not self.core.state.started:
            floor = log.earliest_offset if self.share.start == "earliest" else log.visible_end
            await self._persist([{"t": "start", "f": floor}])
        await self._fill()
        await self._dead_letters()
        self.context.nursery.start_soon(self._timer)
        self.context.nursery.start_soon(self._watch)

    async def _get_log(self) -> AsyncLog:
        if self.log is None or self.log.closed:
            ref = self.context.system.lookup(f"/broker/topics/{self.topic}/{self.partition}")
            self.log, self.stable = await ref.ask(GetStableCell())
        return self.log

    def _fire(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def _persist(self, deltas: list[dict[str, Any]]) -> Durable | None:
        """Append and apply ``deltas`` without waiting for the fsync (so the
        requests of many consumers share one); the caller waits on the
        returned :class:`Durable` before anything leaves the broker."""
        journal = self.journal
        assert journal is not None
        assert self.core is not None
        if journal.log.generation != self._generation:
            # A failed fsync cut the journal back: memory is ahead of disk.
            raise StorageError(
                f"share state of {self.topic}/{self.partition} failed to sync; reloading it"
            )
        durable = None
        if deltas:
            end, generation = journal.write_nowait(deltas)
            durable = Durable(journal.log, end, generation)
            self.core.state = journal.state
            self.core.forget_settled()
            if journal.snapshot_due:
                await journal.log.wait_durable(end, generation)
                await journal.snapshot()
        self._timer_moved.set()
        return durable

    # ----------------------------------------------------------- the window

    async def _fill(self) -> None:
        """Load events from the log into the window (decoding batches)."""
        core = self.core
        assert core is not None
        log = await self._get_log()
        if core.read_end < log.earliest_offset:
            # Retention removed offsets this subscription never settled.
            _log.warning(
                "share_offsets_removed_by_retention",
                subscription=self.name,
                topic=self.topic,
                partition=self.partition,
                floor=core.state.floor,
                earliest=log.earliest_offset,
            )
            await self._persist([{"t": "floor", "f": log.earliest_offset}])
            core.read_end = max(core.read_end, log.earliest_offset)
        while core.room() > 0:
            # Read committed (DECISIONS #21): up to the last stable offset,
            # markers and aborted transactions' events skipped (their offsets
            # settle as gaps).
            snapshot = self.stable.snapshot
            stable_end = snapshot.last_stable_offset(log.visible_end)
            if core.read_end >= stable_end:
                break
            limit = core.state.floor + self.share.window
            try:
                data = await log.read(core.read_end, 1 << 20, stable_end)
            except ClosedError:
                log = await self._get_log()
                continue
            if not data:
                break
            aborted = aborted_by_producer(snapshot.aborted_from(core.read_end))
            loaded: list[tuple[int, Event]] = []
            end = core.read_end
            for header, record in iter_records(data):
                if header.base_offset >= limit:
                    break
                end = min(header.next_offset, limit)
                if is_hidden(header, aborted):
                    continue
                events = decode_record_events(
                    header, record, topic=self.topic, partition=self.partition
                )
                loaded.extend((e.offset, e) for e in events if core.read_end <= e.offset < limit)
            if end <= core.read_end:
                break
            core.load(loaded, end)
        gap = core.gap_delta()
        if gap is not None:
            await self._persist([gap])

    # ----------------------------------------------------------- timers

    async def _timer(self) -> None:
        me = self.context.ref
        while True:
            assert self.core is not None
            now = self._clock()
            deadline = self.core.next_deadline(now)
            moved = self._timer_moved
            wait = 3600.0 if deadline is None else max(0.0, (deadline - now) / 1000)
            with trio.move_on_after(wait) as scope:
                await moved.wait()
            if moved is self._timer_moved:
                self._timer_moved = trio.Event()
            if scope.cancelled_caught:
                await me.tell(_Tick())

    async def _watch(self) -> None:
        """Wake waiting fetches when the partition grows."""
        while True:
            try:
                log = await self._get_log()
                await log.wait_for_data(log.visible_end)
            except HeadwaterError:
                await trio.sleep(0.05)
                continue
            self._fire()

    # -------------------------------------------------------- dead letters

    async def _dead_letters(self) -> None:
        core = self.core
        assert core is not None
        dead = core.dead_letters()
        if not dead:
            return
        dlq = dead_letter_topic(self.topic, self.name)
        now = self._clock()
        events = []
        for d in dead:
            event: Event = d.payload
            extra = dead_letter_headers(
                topic=self.topic,
                partition=self.partition,
                offset=d.offset,
                delivery_count=d.delivery_count,
                error=d.error or "",
                subscription=self.name,
            )
            events.append((event.timestamp, event.key, event.value, (*event.headers, *extra)))
        timestamps = [e[0] for e in events]
        record = encode_record(
            encode_events(events),
            count=len(events),
            first_timestamp=timestamps[0],
            max_timestamp=max(timestamps),
            append_time=now,
        )
        ref = self.context.system.lookup(f"/broker/topics/{dlq}/0")
        reply = await ref.ask(AppendBatch(record))
        if isinstance(reply, HeadwaterError):
            raise reply
        assert isinstance(reply, Appended)
        await reply.log.wait_durable(reply.end_offset, reply.generation)
        await self._persist([{"t": "archived", "o": [d.offset for d in dead]}])
        _log.info(
            "share_dead_lettered",
            subscription=self.name,
            topic=self.topic,
            partition=self.partition,
            offsets=[d.offset for d in dead],
        )

    # -------------------------------------------------------------- handle

    async def handle(self, message: Any) -> Any:
        """Acquire, settle, release, describe, tick."""
        core = self.core
        assert core is not None
        now = self._clock()
        if type(message) is Acquire:
            await self._fill()
            deltas, got = core.acquire(message.consumer, message.max_events, now, message.members)
            durable = await self._persist(deltas)
            records = []
            for d in got:
                e: Event = d.payload
                flat: list[Any] = [x for pair in e.headers for x in pair]
                records.append(
                    ShareRecord(
                        self.partition,
                        d.offset,
                        e.timestamp,
                        e.key,
                        e.value,
                        flat,
                        d.delivery_count,
                    )
                )
            return Acquired(records, self.changed, durable)
        if type(message) is Settle:
            deltas, refused = core.settle(message.consumer, message.items, now)
            durable = await self._persist(deltas)
            await self._after_change()
            return refused, durable
        if isinstance(message, _Tick):
            await self._persist(core.expire(now))
            await self._after_change()
            return None
        if isinstance(message, ReleaseConsumer):
            await self._persist(core.release_consumer(message.consumer, now))
            await self._after_change()
            return None
        if isinstance(message, DescribeShare):
            log = await self._get_log()
            return core.state, core.counts(), log.visible_end
        return await super().handle(message)

    async def _after_change(self) -> None:
        await self._dead_letters()
        await self._fill()
        self._fire()


# -------------------------------------------------------------------- members


@attrs.frozen
class Join:
    """Join as ``consumer_id`` (``None``: a new id)."""

    consumer_id: str | None
    session_timeout: float
    client_id: str


@attrs.frozen
class Seen:
    """A consumer is alive (raises UnknownMemberError for one not joined);
    answers ``(active, live consumers)``: whether it may be dealt events now
    (``failover``: only the active one), and who is live (``key_shared``)."""

    consumer_id: str


@attrs.frozen
class Leave:
    """A consumer leaves."""

    consumer_id: str


@attrs.frozen
class ListMembers:
    """Ask for the live consumers' ids."""


class ShareMembersActor(Actor):
    """The live consumers of one share subscription (in memory, in join order)
    and its mode's rules: ``exclusive`` refuses a second live consumer;
    ``failover`` deals only to the consumer that joined first among the live
    ones (the next takes over when it leaves or its session expires)."""

    def __init__(self, name: str, share: ShareSettings) -> None:
        self.name = name
        self.share = share
        self.members: dict[str, tuple[float, float]] = {}  # id -> (last seen, timeout)
        self._next = 0
        self._moved = trio.Event()

    async def started(self) -> None:
        """Start the session timer."""
        self.context.nursery.start_soon(self._timer)

    async def _timer(self) -> None:
        while True:
            now = trio.current_time()
            deadline = min((seen + t for seen, t in self.members.values()), default=now + 3600)
            moved = self._moved
            with trio.move_on_at(deadline):
                await moved.wait()
            if moved is self._moved:
                self._moved = trio.Event()
            now = trio.current_time()
            for cid, (seen, t) in list(self.members.items()):
                if seen + t <= now:
                    del self.members[cid]
                    _log.info("share_consumer_expired", subscription=self.name, consumer=cid)
                    await self._release(cid)

    async def _release(self, cid: str) -> None:
        system = self.context.system
        for node in system.tree().walk():
            if node.path.startswith(f"/broker/shares/{self.name}/") and not node.path.endswith(
                "/members"
            ):
                try:
                    await system.lookup(node.path).tell(ReleaseConsumer(cid))
                except HeadwaterError:
                    continue

    async def handle(self, message: Any) -> Any:
        """Join, seen, leave, list."""
        now = trio.current_time()
        if isinstance(message, Join):
            cid = message.consumer_id
            live = [m for m in self.members if m != cid]
            if self.share.mode == "exclusive" and live:
                raise SubscriptionBusyError(
                    f"share subscription {self.name!r} is exclusive and consumer "
                    f"{live[0]!r} is live; close it or wait for its session to expire"
                )
            if cid is None:
                self._next += 1
                cid = f"{message.client_id or 'consumer'}-{os.getpid()}-{self._next}-" + (
                    os.urandom(4).hex()
                )
            self.members[cid] = (now, message.session_timeout)
            self._moved.set()
            return cid
        if isinstance(message, Seen):
            entry = self.members.get(message.consumer_id)
            if entry is None:
                raise UnknownMemberError(
                    f"consumer {message.consumer_id!r} is not in share subscription "
                    f"{self.name!r} (its session expired); subscribe again"
                )
            self.members[message.consumer_id] = (now, entry[1])
            # failover: only the longest-joined live consumer is dealt events
            active = self.share.mode != "failover" or next(iter(self.members)) == (
                message.consumer_id
            )
            return active, tuple(sorted(self.members))
        if isinstance(message, Leave):
            if self.members.pop(message.consumer_id, None) is not None:
                self._moved.set()
            await self._release(message.consumer_id)
            return None
        if isinstance(message, ListMembers):
            return sorted(self.members)
        return await super().handle(message)


def share_supervisor(
    settings: BrokerSettings, name: str, share: ShareSettings, partitions: int
) -> SupervisorSpec:
    """The supervisor of one share subscription (module docstring)."""
    return SupervisorSpec(
        name,
        [
            ChildSpec("members", lambda: ShareMembersActor(name, share), shutdown=5.0),
            *(
                ChildSpec(
                    str(p),
                    lambda p=p: SharePartitionActor(settings, name, share, p),
                    shutdown=10.0,
                )
                for p in range(partitions)
            ),
        ],
        strategy="one_for_one",
        max_restarts=10,
        within=10.0,
        backoff=0.05,
        backoff_max=2.0,
    )
