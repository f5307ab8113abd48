"""The transaction coordinator actor: a thin loop around
:class:`~headwater.broker._transactions.TransactionCoordinator`.

Theory of operation
-------------------
One actor, ``/broker/transactions``, owns the coordinator of state partition 0
of ``__transactions`` (DECISIONS #25). Its state is a state journal at
``meta/__transactions/<partition>`` whose events are the core's deltas, every
one carrying its transactional id (``"tid"``): the journal is keyed the way an
internal partitioned topic is, so it can move into a replicated
``__transactions`` partition when the cluster comes (:func:`state_partition`
already says which partition an id belongs to; there is one today).

Each command runs the core and appends its events to the journal without
waiting for the fsync, so the actor never blocks on the disk and the
requests of many transactional ids share one fsync (commits of different
ids never queue behind each other). The actor answers with a
:class:`TxnReply`; :func:`ask_coordinator` (the broker service's way in)
waits *outside* the actor for the journal to be durable up to the request's
events before the answer leaves the broker:

* ``AddPartitionsToTransaction`` admits ``(producer id, epoch)`` at each new
  partition (:class:`~headwater.broker._actors.AdmitTransaction`), so only
  transactions the coordinator knows can open one there. The producer sends
  its batches only after the add is durable, so a crash can never leave a
  batch in a partition that the replayed coordinator does not know of.
* ``EndTransaction`` appends ``prepare_commit`` / ``prepare_abort``; the answer
  comes once that decision is durable (Kafka answers EndTxn at the same
  point). Phase two runs in a task of its own (:meth:`TransactionActor._complete`):
  it writes a marker to each partition, waits until the markers are durable
  (the partitions' fsyncs side by side), records them written, completes the
  groups' offsets, then records the transaction complete. A read_committed
  reader sees nothing of the transaction before its marker is durable in
  that partition (the LSO moves with the durable marker; DECISIONS #27).
* The next ``add`` (or ``init``) of a transactional id whose previous
  transaction is still in phase two is queued behind it: the reply carries
  the completion event, and :func:`ask_coordinator` asks again once it is
  set. So a partition never sees the next transaction's batch before the
  previous one's marker.
* On start, and at every timer tick, decided transactions whose markers are
  not all recorded are driven again (a marker re-sent to a partition whose
  transaction is already closed is answered as done): a kill -9 after the
  decision, after some markers or after all of them ends in the same state.
  Re-sending is safe even though the same producer id writes on: the next
  transaction's add is appended after the previous one's completion record,
  and a journal is durable as a prefix.
* ``InitTransactions`` for an id whose old instance left a transaction open
  aborts it under a bumped epoch and queues the new instance behind its
  markers, then answers with the new identity.

* ``SendOffsetsToTxn`` adds the group to the transaction, then hands the
  offsets to the group's actor (held pending there); phase two completes
  them in each group (:class:`~headwater.broker._actors.CompleteTxnOffsets`)
  like a marker. Both run inside this actor's turn, so a new instance's init
  cannot slip between the epoch check and the group's write.

Errors a producer caused (fenced, timed out, concurrent) come back as values
in the reply: raising them would restart the actor. A journal whose fsync
failed (memory ahead of disk) crashes the actor, whose next incarnation
replays what is durable.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from headwater._errors import (
    ActorNotFound,
    ClosedError,
    ConcurrentTransactionsError,
    FsyncFailedError,
    HeadwaterError,
    InvalidArgument,
    ProducerFencedError,
    StorageError,
    UsageError,
)
from headwater._logging import get_logger
from headwater._protocol import (
    AddPartitionsToTxn,
    DescribeTransaction,
    EndTxn,
    InitTransactions,
    ListTransactions,
    ProducerIdentity,
    SendOffsetsToTxn,
    TopicPartition,
    TransactionDescription,
    TransactionList,
)
from headwater.actors._actor import Actor, ActorRef
from headwater.broker._actors import (
    AdmitTransaction,
    Appended,
    BrokerSettings,
    CompleteTxnOffsets,
    NewProducerId,
    TxnOffsets,
    WriteMarker,
)
from headwater.broker._transactions import (
    MAX_EPOCH,
    MarkerPlan,
    TransactionCoordinator,
    TxnMetadata,
    TxnState,
    apply,
    state_from_plain,
    state_to_plain,
)
from headwater.journal._async import AsyncLog
from headwater.journal._state import StateJournal, start_state_journal

TP = tuple[str, int]

__all__ = [
    "STATE_PARTITIONS",
    "Readmit",
    "TransactionActor",
    "TxnReply",
    "ask_coordinator",
    "describe",
    "state_partition",
]

_log = get_logger("headwater.broker")

STATE_PARTITIONS = 1
"""Partitions of ``__transactions`` (one coordinator each); one per broker today."""


def describe(meta: TxnMetadata) -> TransactionDescription:
    """A transactional id's state as the protocol describes it."""
    return TransactionDescription(
        meta.transactional_id,
        meta.producer_id,
        meta.epoch,
        meta.status,
        meta.timeout,
        tuple(TopicPartition(t, p) for t, p in sorted(meta.partitions)),
        tuple(TopicPartition(t, p) for t, p in sorted(meta.pending_partitions)),
        tuple(sorted(meta.groups)),
    )


def state_partition(transactional_id: str, partitions: int = STATE_PARTITIONS) -> int:
    """The ``__transactions`` partition that holds ``transactional_id``'s state."""
    return zlib.crc32(transactional_id.encode()) % partitions


@attrs.frozen
class _Tick:
    pass


@attrs.frozen
class Readmit:
    """A partition refused a transactional batch of ``(producer_id, epoch)``
    for want of an admission (it restarted since the add): if that producer's
    ongoing transaction includes the partition, the coordinator admits it
    there again and answers True."""

    producer_id: int
    epoch: int
    topic: str
    partition: int


class _JournalBehind(StorageError):
    """The journal's fsync failed, so its state is ahead of the disk: the
    actor must restart and replay (never caught inside the actor)."""


@attrs.frozen
class TxnReply:
    """The coordinator actor's answer, finished outside the actor by
    :func:`ask_coordinator`: ``error`` is raised; with ``retry`` set, the
    transactional id's previous transaction is still in phase two (wait for
    the event, then ask again); otherwise the answer is ``value`` once the
    journal is durable up to ``end`` (``log`` ``None``: nothing to wait for)."""

    value: Any = None
    log: AsyncLog | None = None
    end: int = 0
    generation: int = 0
    retry: trio.Event | None = None
    error: HeadwaterError | None = None

    async def wait_durable(self) -> None:
        """Return once the request's journal events are durable."""
        if self.log is None:
            return
        try:
            await self.log.wait_durable(self.end, self.generation)
        except ClosedError:
            raise StorageError(
                "the transaction coordinator restarted before its journal was synced; retry"
            ) from None


async def ask_coordinator(ref: ActorRef, message: Any) -> Any:
    """Ask the transaction coordinator actor ``ref`` and finish its
    :class:`TxnReply`: wait out a previous transaction's phase two (asking
    again), then wait until the answer is durable. Cancellation-safe: a
    cancelled wait leaves the coordinator's state as it would be had the
    answer been lost on the wire."""
    while True:
        reply = await ref.ask(message, timeout=None)
        if not isinstance(reply, TxnReply):
            return reply
        if reply.error is not None:
            raise reply.error
        if reply.retry is not None:
            await reply.retry.wait()
            continue
        await reply.wait_durable()
        return reply.value


class TransactionActor(Actor):
    """The transaction coordinator of one ``__transactions`` state partition."""

    snapshot_every = 1000

    def __init__(self, settings: BrokerSettings, partition: int = 0) -> None:
        self.settings = settings
        self.partition = partition
        self.journal: StateJournal | None = None
        self.core: TransactionCoordinator | None = None
        self._timer_moved = trio.Event()
        self._generation = -1
        # tid -> set when its decided transaction is complete (or this
        # incarnation ends): what the next add/init of that id waits for.
        self._completions: dict[str, trio.Event] = {}
        self._driving: set[str] = set()  # tids with a phase-two task running

    async def started(self) -> None:
        """Replay the journal, start the timer, and drive unfinished commits."""
        path = os.path.join(self.settings.data_dir, "meta", "__transactions", str(self.partition))

        self.journal = await start_state_journal(
            self.context.nursery,
            path,
            apply=apply,
            initial=TxnState(),
            fs=self.settings.fs,
            snapshot_every=self.snapshot_every,
            to_plain=state_to_plain,
            from_plain=state_from_plain,
        )
        self._generation = self.journal.log.generation
        self.core = TransactionCoordinator.from_state(self.journal.state, trio.current_time())
        self.context.nursery.start_soon(self._timer)
        self.context.nursery.start_soon(self._release_waiters_at_exit)

    async def _release_waiters_at_exit(self) -> None:
        # Callers queued behind a phase two of this incarnation ask again
        # (and so reach the next incarnation) when it ends.
        try:
            await trio.sleep_forever()
        finally:
            for event in self._completions.values():
                event.set()

    async def _timer(self) -> None:
        me = self.context.ref
        retry = 0.0  # decided transactions found on start are driven at once
        while True:
            assert self.core is not None
            deadline = self.core.next_deadline()
            if self.core.pending_markers():  # unfinished, or a marker write failed
                deadline = min(deadline or math.inf, trio.current_time() + retry)
            retry = 1.0
            moved = self._timer_moved
            with trio.move_on_at(deadline if deadline is not None else math.inf) as scope:
                await moved.wait()
            if moved is self._timer_moved:
                self._timer_moved = trio.Event()
            if scope.cancelled_caught:
                await me.tell(_Tick())

    # ------------------------------------------------------------ the journal

    def _check_journal(self) -> None:
        assert self.journal is not None
        if self.journal.log.generation != self._generation:
            # A failed fsync cut the journal back: memory is ahead of disk.
            # Raising (not a UsageError) restarts the actor, which replays
            # what is durable.
            raise _JournalBehind(
                "the transaction coordinator's journal failed to sync; it restarts, retry"
            )

    def _write(self) -> None:
        """Append the core's new events without waiting for the fsync
        (never blocks; callers wait on a :class:`TxnReply`)."""
        assert self.core is not None
        assert self.journal is not None
        events = self.core.take_events()
        if events:
            self._check_journal()
            try:
                self.journal.write_nowait(events)
            except HeadwaterError as exc:
                # The core already applied the events (a full disk, say):
                # restart and replay what the journal holds.
                raise _JournalBehind(
                    f"the transaction coordinator could not write its journal ({exc}); "
                    "it restarts, retry"
                ) from exc
            self._timer_moved.set()

    def _reply(self, value: Any = None) -> TxnReply:
        """An answer that leaves once everything appended so far is durable.
        A journal cut back since this incarnation began (a failed fsync while
        the request waited) raises: its end offset would be the cut's, so the
        answer would report lost events as durable."""
        assert self.journal is not None
        self._check_journal()
        log = self.journal.log
        return TxnReply(value, log, log.next_offset, self._generation)

    async def _maybe_snapshot(self) -> None:
        journal = self.journal
        assert journal is not None
        if journal.snapshot_due:
            self._check_journal()  # (after a cut, next_offset is the cut's)
            await journal.log.wait_durable(journal.log.next_offset, self._generation)
            await journal.snapshot()

    # ------------------------------------------------------------ phase two

    def _complete_soon(self, tid: str) -> trio.Event:
        """Make sure phase two of ``tid``'s decided transaction runs; return
        the event set when it is complete."""
        event = self._completions.get(tid)
        if event is None:
            event = self._completions[tid] = trio.Event()
        if tid not in self._driving:
            self._driving.add(tid)
            reply = self._reply()
            self.context.nursery.start_soon(self._complete, tid, reply)
        return event

    async def _complete(self, tid: str, decision: TxnReply) -> None:
        """Phase two of ``tid``: once its decision is durable, every marker
        and group completion (failures are retried by the timer)."""
        core = self.core
        assert core is not None
        try:
            assert decision.log is not None
            await decision.log.wait_durable(decision.end, decision.generation)
            plan = next((p for p in core.pending_markers() if p.transactional_id == tid), None)
            if plan is not None:
                await self._write_markers(plan)
        except ClosedError:
            return  # this incarnation is ending; the next one drives it
        except (FsyncFailedError, _JournalBehind):
            raise  # the journal is behind memory: restart and replay
        except HeadwaterError as exc:
            _log.warning("transaction_markers_retry", transactional_id=tid, error=str(exc))
            return
        finally:
            self._driving.discard(tid)
        meta = core.state.transactions.get(tid)
        if meta is None or meta.status not in ("prepare_commit", "prepare_abort"):
            event = self._completions.pop(tid, None)
            if event is not None:
                event.set()
                # The requests queued behind this transaction (the next add)
                # write the completion with their own events, in one fsync
                # instead of two; a few scheduler passes give them the chance.
                # Deferring is safe: until the completion is durable a
                # restart replays the decision and re-sends the markers,
                # which are idempotent.
                for _ in range(4):
                    await trio.lowlevel.checkpoint()
            self._write()

    async def _write_markers(self, plan: MarkerPlan) -> None:
        """Phase two of one decided transaction: every marker written, all
        made durable together (the partitions' fsyncs run side by side),
        then recorded; then every group's offsets; then the completion."""
        assert self.core is not None
        system = self.context.system
        written: list[tuple[str, int]] = []
        failure: HeadwaterError | None = None

        async def mark(topic: str, partition: int) -> None:
            # One task per partition: the markers are written and synced
            # side by side.
            nonlocal failure
            try:
                ref = system.lookup(f"/broker/topics/{topic}/{partition}")
            except ActorNotFound:
                reply: Any = None  # the topic was deleted: nothing to mark
            else:
                try:
                    reply = await ref.ask(WriteMarker(plan.producer_id, plan.epoch, plan.commit))
                except HeadwaterError as exc:  # restarting, stopped: retried later
                    reply = exc
            if isinstance(reply, ProducerFencedError):
                _log.warning(
                    "transaction_marker_fenced",
                    transactional_id=plan.transactional_id,
                    topic=topic,
                    partition=partition,
                    error=str(reply),
                )
            elif isinstance(reply, HeadwaterError):
                failure = failure or reply
                return
            elif isinstance(reply, Appended):
                try:
                    await reply.log.wait_durable(reply.end_offset, reply.generation)
                except ClosedError:
                    failure = failure or ConcurrentTransactionsError(
                        f"partition {topic}/{partition} restarted while its transaction "
                        "marker was synced; the broker retries it, retry shortly"
                    )
                    return
                except HeadwaterError as exc:
                    failure = failure or exc
                    return
            written.append((topic, partition))

        async with trio.open_nursery() as nursery:
            for topic, partition in plan.partitions:
                nursery.start_soon(mark, topic, partition)
        if written:
            self._written(plan.transactional_id, partitions=written)
        if failure is not None:
            raise failure  # the rest is retried (pending_markers)
        for group in plan.groups:
            try:
                ref = system.lookup(f"/broker/groups/{group}")
            except ActorNotFound:
                pass  # the group was deleted: nothing to complete
            else:
                await ref.ask(CompleteTxnOffsets(plan.producer_id, plan.commit))
            self._written(plan.transactional_id, groups=[group])
        if not plan.partitions and not plan.groups:
            self._written(plan.transactional_id)

    def _written(
        self, tid: str, *, partitions: Iterable[TP] = (), groups: Iterable[str] = ()
    ) -> None:
        """Record markers written; the completion itself is left for
        :meth:`_complete` to write (see there)."""
        assert self.core is not None
        if not self.core.marker_written(tid, partitions=partitions, groups=groups):
            self._write()

    def _drive_pending(self) -> None:
        assert self.core is not None
        for plan in self.core.pending_markers():
            self._complete_soon(plan.transactional_id)

    # ------------------------------------------------------------ requests

    async def handle(self, message: Any) -> Any:
        """Init, add, end, describe and list transactions; abort timed-out ones."""
        core = self.core
        assert core is not None
        self._check_journal()
        now = trio.current_time()
        if isinstance(message, _Tick):
            aborted = core.tick(now)
            if aborted:
                _log.info("transactions_timed_out", transactional_ids=aborted)
            self._write()
            self._drive_pending()
            await self._maybe_snapshot()
            return None
        if isinstance(message, Readmit):
            return await self._readmit(message)
        if isinstance(message, DescribeTransaction):
            return describe(core.describe(message.transactional_id))
        if isinstance(message, ListTransactions):
            return TransactionList(
                tuple(
                    describe(m)
                    for _, m in sorted(core.state.transactions.items())
                    if m.status != "dead"
                )
            )
        if not isinstance(
            message, InitTransactions | AddPartitionsToTxn | SendOffsetsToTxn | EndTxn
        ):
            return await super().handle(message)
        tid = message.transactional_id
        try:
            if isinstance(message, InitTransactions):
                value: Any = await self._init(message, now)
            elif isinstance(message, AddPartitionsToTxn):
                await self._add(message, now)
                value = None
            elif isinstance(message, SendOffsetsToTxn):
                await self._send_offsets(message, now)
                value = None
            else:
                core.end(tid, message.producer_id, message.epoch, message.commit, now)
                self._write()  # phase one: answered once the decision is durable
                self._start_phase_two(tid)
                value = None
        except (_JournalBehind, FsyncFailedError):
            raise  # memory is ahead of the disk: restart and replay
        except ConcurrentTransactionsError:
            # The previous transaction of ``tid`` is in phase two: queue.
            self._write()
            return TxnReply(retry=self._complete_soon(tid))
        except UsageError:
            self._write()
            raise
        except HeadwaterError as exc:
            self._write()
            return TxnReply(error=exc)  # raising it would restart the actor
        self._write()
        await self._maybe_snapshot()
        return self._reply(value)

    async def _readmit(self, message: Readmit) -> bool:
        assert self.core is not None
        tp = (message.topic, message.partition)
        for meta in self.core.state.transactions.values():
            if (
                meta.producer_id == message.producer_id
                and meta.epoch == message.epoch
                and meta.status == "ongoing"
                and tp in meta.partitions
            ):
                # Answered once the add is durable (a reply waits for the journal).
                await self._reply().wait_durable()
                ref = self.context.system.lookup(f"/broker/topics/{tp[0]}/{tp[1]}")
                await ref.ask(AdmitTransaction(message.producer_id, message.epoch))
                return True
        return False

    def _start_phase_two(self, tid: str) -> None:
        assert self.core is not None
        meta = self.core.state.transactions[tid]
        if meta.status in ("prepare_commit", "prepare_abort"):
            self._complete_soon(tid)

    async def _init(self, message: InitTransactions, now: float) -> ProducerIdentity:
        core = self.core
        assert core is not None
        tid = message.transactional_id
        meta = core.state.transactions.get(tid)
        new_id: list[int] = []
        if meta is None or meta.status == "dead" or meta.epoch >= MAX_EPOCH - 1:
            registry = self.context.system.lookup("/broker/registry")
            new_id.append(await registry.ask(NewProducerId()))
        # An open transaction of an older instance is aborted here, and the
        # ConcurrentTransactionsError queues this instance behind its markers.
        ident = core.init_producer(tid, message.timeout, now, new_id.pop)
        return ProducerIdentity(ident.producer_id, ident.epoch)

    async def _add(self, message: AddPartitionsToTxn, now: float) -> None:
        core = self.core
        assert core is not None
        tid = message.transactional_id
        partitions = [(tp.topic, tp.partition) for tp in message.partitions]
        if not partitions:
            raise InvalidArgument(f"add to {tid!r}'s transaction: name at least one partition")
        system = self.context.system
        for topic, partition in partitions:
            try:
                system.lookup(f"/broker/topics/{topic}/{partition}")
            except ActorNotFound:
                raise InvalidArgument(
                    f"{topic}/{partition} does not exist; create the topic first"
                ) from None
        meta: TxnMetadata | None = core.state.transactions.get(tid)
        known = meta.partitions if meta is not None and meta.status == "ongoing" else frozenset()
        core.add(tid, message.producer_id, message.epoch, now, partitions=partitions)
        self._write()
        # Admitted before the add is durable, but the producer writes only
        # after its answer, which waits for the journal.
        for topic, partition in partitions:
            if (topic, partition) not in known:
                ref = system.lookup(f"/broker/topics/{topic}/{partition}")
                await ref.ask(AdmitTransaction(message.producer_id, message.epoch))

    async def _send_offsets(self, message: SendOffsetsToTxn, now: float) -> None:
        core = self.core
        assert core is not None
        core.add(
            message.transactional_id,
            message.producer_id,
            message.epoch,
            now,
            groups=[message.group],
        )
        self._write()
        if not message.offsets:
            return  # Kafka's AddOffsetsToTxn: the group alone
        # The group must be in the durable transaction before it holds
        # pending offsets (else a crash could leave them pending for ever).
        await self._reply().wait_durable()
        ref = self.context.system.lookup(f"/broker/groups/{message.group}")
        await ref.ask(
            TxnOffsets(
                message.producer_id,
                message.member_id,
                message.generation,
                message.offsets,
            )
        )
