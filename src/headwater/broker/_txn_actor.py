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

Each command runs the core, persists its events, then performs what they
ask for, in that order:

* ``AddPartitionsToTransaction`` admits ``(producer id, epoch)`` at each new
  partition (:class:`~headwater.broker._actors.AdmitTransaction`), so only
  transactions the coordinator knows can open one there.
* ``EndTransaction`` persists ``prepare_commit`` / ``prepare_abort`` (the
  decision is durable from then on), then writes a marker to each partition,
  waits until the marker is durable, and records it written; the answer comes
  when every marker is durable, so a committed transaction is visible to
  read_committed readers once ``end`` returns.
* On start, and at every timer tick, decided transactions whose markers are
  not all recorded are driven again (a marker re-sent to a partition whose
  transaction is already closed is answered as done): a kill -9 after the
  decision, after some markers or after all of them ends in the same state.
* ``InitTransactions`` for an id whose old instance left a transaction open
  aborts it under a bumped epoch and writes its markers before answering with
  the new identity.

* Refusals (a fenced or timed-out producer, a transaction still completing)
  are answered as the error value, which the service raises: they are the
  caller's problem and must not count as crashes of this actor (a zombie
  retrying would otherwise exhaust its restart intensity and stop the broker).

* ``SendOffsetsToTxn`` adds the group to the transaction, then hands the
  offsets to the group's actor (held pending there); phase two completes
  them in each group (:class:`~headwater.broker._actors.CompleteTxnOffsets`)
  like a marker. Both run inside this actor's turn, so a new instance's init
  cannot slip between the epoch check and the group's write.
"""

from __future__ import annotations

import math
import os
import zlib
from typing import Any

import attrs
import trio

from headwater._errors import (
    ActorNotFound,
    ClosedError,
    ConcurrentTransactionsError,
    HeadwaterError,
    InvalidArgument,
    ProducerFencedError,
    TransactionTimedOutError,
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
from headwater.actors._actor import Actor
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
from headwater.journal._state import StateJournal, start_state_journal

__all__ = ["STATE_PARTITIONS", "TransactionActor", "describe", "state_partition"]

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


class TransactionActor(Actor):
    """The transaction coordinator of one ``__transactions`` state partition."""

    snapshot_every = 1000

    def __init__(self, settings: BrokerSettings, partition: int = 0) -> None:
        self.settings = settings
        self.partition = partition
        self.journal: StateJournal | None = None
        self.core: TransactionCoordinator | None = None
        self._timer_moved = trio.Event()

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
        self.core = TransactionCoordinator.from_state(self.journal.state, trio.current_time())
        self.context.nursery.start_soon(self._timer)

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

    async def _persist(self) -> None:
        assert self.core is not None
        assert self.journal is not None
        events = self.core.take_events()
        if events:
            await self.journal.persist_many(events)
        self._timer_moved.set()

    async def _drive(self, plan: MarkerPlan) -> None:
        """Phase two of one decided transaction: every marker written, all
        made durable together (the partitions' fsyncs run side by side),
        then recorded in one journal write; then every group's offsets."""
        assert self.core is not None
        system = self.context.system
        written: list[tuple[str, int]] = []
        waits: list[tuple[str, int, Appended]] = []
        failure: HeadwaterError | None = None
        for topic, partition in plan.partitions:
            try:
                ref = system.lookup(f"/broker/topics/{topic}/{partition}")
            except ActorNotFound:
                reply: Any = None  # the topic was deleted: nothing to mark
            else:
                reply = await ref.ask(WriteMarker(plan.producer_id, plan.epoch, plan.commit))
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
                continue
            elif isinstance(reply, Appended):
                waits.append((topic, partition, reply))
                continue
            written.append((topic, partition))

        async def durable(topic: str, partition: int, reply: Appended) -> None:
            nonlocal failure
            try:
                await reply.log.wait_durable(reply.end_offset, reply.generation)
            except ClosedError:
                failure = failure or ConcurrentTransactionsError(
                    f"partition {topic}/{partition} restarted while its transaction "
                    "marker was synced; the broker retries it, retry shortly"
                )
            except HeadwaterError as exc:
                failure = failure or exc
            else:
                written.append((topic, partition))

        async with trio.open_nursery() as nursery:
            for topic, partition, reply in waits:
                nursery.start_soon(durable, topic, partition, reply)
        if written:
            self.core.marker_written(plan.transactional_id, partitions=written)
            await self._persist()
        if failure is not None:
            raise failure  # the rest is retried (pending_markers)
        for group in plan.groups:
            try:
                ref = system.lookup(f"/broker/groups/{group}")
            except ActorNotFound:
                pass  # the group was deleted: nothing to complete
            else:
                await ref.ask(CompleteTxnOffsets(plan.producer_id, plan.commit))
            self.core.marker_written(plan.transactional_id, groups=[group])
            await self._persist()
        if not plan.partitions and not plan.groups:
            self.core.marker_written(plan.transactional_id)
            await self._persist()

    async def _drive_pending(self) -> None:
        assert self.core is not None
        for plan in self.core.pending_markers():
            try:
                await self._drive(plan)
            except HeadwaterError as exc:
                _log.warning(
                    "transaction_markers_retry",
                    transactional_id=plan.transactional_id,
                    error=str(exc),
                )

    async def handle(self, message: Any) -> Any:
        """Init, add, end, describe and list transactions; abort timed-out ones."""
        core = self.core
        assert core is not None
        now = trio.current_time()
        if isinstance(message, _Tick):
            aborted = core.tick(now)
            if aborted:
                _log.info("transactions_timed_out", transactional_ids=aborted)
            await self._persist()
            await self._drive_pending()
            return None
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
        try:
            return await self._command(message, now)
        except (ProducerFencedError, TransactionTimedOutError, ConcurrentTransactionsError) as exc:
            # A refusal, not a failure of the coordinator: answered as a value
            # (the service raises it) so a zombie that keeps calling cannot
            # crash this actor past its restart intensity and the broker with it.
            return exc

    async def _command(self, message: Any, now: float) -> Any:
        core = self.core
        assert core is not None
        try:
            if isinstance(message, InitTransactions):
                return await self._init(message, now)
            if isinstance(message, AddPartitionsToTxn):
                return await self._add(message, now)
            if isinstance(message, SendOffsetsToTxn):
                core.add(
                    message.transactional_id,
                    message.producer_id,
                    message.epoch,
                    now,
                    groups=[message.group],
                )
                await self._persist()
                if not message.offsets:
                    return None  # Kafka's AddOffsetsToTxn: the group alone
                ref = self.context.system.lookup(f"/broker/groups/{message.group}")
                await ref.ask(
                    TxnOffsets(
                        message.producer_id,
                        message.member_id,
                        message.generation,
                        message.offsets,
                    )
                )
                return None
            if isinstance(message, EndTxn):
                plan = core.end(
                    message.transactional_id,
                    message.producer_id,
                    message.epoch,
                    message.commit,
                    now,
                )
                await self._persist()  # phase one: the decision is durable
                await self._drive(plan)
                return None
        finally:
            await self._persist()
        return await super().handle(message)

    async def _init(self, message: InitTransactions, now: float) -> ProducerIdentity:
        ident = await self._init_core(message, now)
        return ProducerIdentity(ident.producer_id, ident.epoch)

    async def _init_core(self, message: InitTransactions, now: float) -> Any:
        core = self.core
        assert core is not None
        tid = message.transactional_id
        meta = core.state.transactions.get(tid)
        new_id: list[int] = []
        if meta is None or meta.status == "dead" or meta.epoch >= MAX_EPOCH - 1:
            registry = self.context.system.lookup("/broker/registry")
            new_id.append(await registry.ask(NewProducerId()))
        try:
            return core.init_producer(tid, message.timeout, now, new_id.pop)
        except ConcurrentTransactionsError:
            # The old instance's transaction is aborted (or was being
            # completed): finish it, then the new instance may start.
            await self._persist()
            for plan in core.pending_markers():
                if plan.transactional_id == tid:
                    await self._drive(plan)
            return core.init_producer(tid, message.timeout, now, new_id.pop)

    async def _add(self, message: AddPartitionsToTxn, now: float) -> None:
        core = self.core
        assert core is not None
        tid = message.transactional_id
        partitions = [(tp.topic, tp.partition) for tp in message.partitions]
        if not partitions:
            raise InvalidArgument(f"add to {tid!r}'s transaction: name at least one partition")
        for topic, partition in partitions:
            try:
                self.context.system.lookup(f"/broker/topics/{topic}/{partition}")
            except ActorNotFound:
                raise InvalidArgument(
                    f"{topic}/{partition} does not exist; create the topic first"
                ) from None
        meta: TxnMetadata | None = core.state.transactions.get(tid)
        known = meta.partitions if meta is not None and meta.status == "ongoing" else frozenset()
        core.add(tid, message.producer_id, message.epoch, now, partitions=partitions)
        await self._persist()
        system = self.context.system
        for topic, partition in partitions:
            if (topic, partition) not in known:
                ref = system.lookup(f"/broker/topics/{topic}/{partition}")
                await ref.ask(AdmitTransaction(message.producer_id, message.epoch))
