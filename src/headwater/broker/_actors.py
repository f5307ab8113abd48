"""The broker's domain actors: partitions, the topic registry, group coordinators.

Theory of operation
-------------------
Each actor is a thin loop around a core that has no Trio in it:

* :class:`PartitionActor` owns one :class:`~headwater.journal.AsyncLog` and the
  partition's :class:`~headwater.broker.ProducerStates`. An :class:`AppendBatch`
  is validated (header, checksum, size: never the events), checked for
  idempotence, and *written* at once; the reply carries the offsets and the
  log's failure generation, and the caller waits for durability in its own
  task. So the actor never blocks on fsync and concurrent producers share
  fsyncs. Disk errors are returned as values, not raised: a full disk must
  not crash (and restart) the partition.
* :class:`TopicRegistry` is a persistent actor whose state (topics, configs,
  the producer-id counter) is a journal of events; it starts and stops the
  per-topic supervisors.
* :class:`GroupActor` feeds a :class:`~headwater.broker.GroupCoordinator` and
  persists every event it emits before replying; a timer expires sessions and
  rebalance timeouts. After each change it pushes the coordinator's notices
  (a changed :class:`~headwater.Membership`) to the members' clients, through
  the sink each member's last join or heartbeat came with.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from headwater._errors import (
    CorruptionError,
    HeadwaterError,
    InvalidArgument,
    InvalidTransactionStateError,
    TopicExistsError,
    UnknownTopicError,
    UnstableOffsetError,
)
from headwater._logging import get_logger
from headwater._protocol import (
    AddPartitions,
    CommitOffsets,
    CreateTopic,
    FetchCommitted,
    Heartbeat,
    JoinGroup,
    LeaveGroup,
    Membership,
    PartitionInfo,
    PartitionOffset,
    PushSink,
    ReleasePartitions,
    SyncGroup,
)
from headwater.actors._actor import Actor, as_failure
from headwater.actors._persistent import PersistentActor
from headwater.broker._compaction import StoredEvent, compact_segment, latest_offsets
from headwater.broker._config import MAX_PARTITIONS, TopicConfig
from headwater.broker._group import (
    GroupCoordinator,
    GroupState,
    state_from_plain,
    state_to_plain,
)
from headwater.broker._group import apply as group_apply
from headwater.broker._grouplog import group_changes
from headwater.broker._idempotence import Duplicate, ProducerStates, RecordInfo
from headwater.broker._stable import AbortedTxn, PartitionTransactions, StableCell
from headwater.broker._stats import BrokerStats
from headwater.journal._async import AsyncLog, open_log, run_blocking
from headwater.journal._batch import decode_record_events
from headwater.journal._fdcache import FileCache
from headwater.journal._files import FileSystem, remove_tree_durably
from headwater.journal._log import LogConfig
from headwater.journal._record import (
    ATTR_COMMIT,
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    encode_record,
    iter_records,
)
from headwater.journal._state import StateJournal, start_state_journal
from headwater.supervision._specs import ChildSpec, SupervisorSpec

__all__ = [
    "AppendBatch",
    "Appended",
    "BrokerSettings",
    "GetLog",
    "GroupActor",
    "PartitionActor",
    "TopicRegistry",
]

_log = get_logger("headwater.broker")


@attrs.frozen
class BrokerSettings:
    """What every broker actor needs to know: where the data lives and how."""

    data_dir: str
    fs: FileSystem
    clock: Callable[[], int]
    default_durability: str = "always"
    segment_bytes: int = 64 * 1024 * 1024
    max_batch_bytes: int = 16 * 1024 * 1024
    interval_ms: int = 200
    stats: BrokerStats = attrs.field(factory=BrokerStats, eq=False, repr=False)
    #: Counts and caps the segment files every partition keeps open.
    files: FileCache = attrs.field(factory=FileCache, eq=False, repr=False)
    #: Every started partition's open log and :class:`StableCell`, by
    #: (topic, partition), as a ``GetStableCell`` ask would answer: the
    #: request handler takes them from here on a partition's first produce
    #: instead of asking (an entry whose log is closed is stale: ask then).
    opened: dict[tuple[str, int], tuple[AsyncLog, StableCell]] = attrs.field(
        factory=dict, eq=False, repr=False
    )

    def partition_dir(self, topic: str, partition: int) -> str:
        return os.path.join(self.data_dir, "topics", topic, str(partition))

    def topic_dir(self, topic: str) -> str:
        return os.path.join(self.data_dir, "topics", topic)


# ---------------------------------------------------------------- partitions


@attrs.frozen
class AppendBatch:
    """Append one record (a producer's batch) to the partition."""

    record: bytes


@attrs.frozen
class Appended:
    """Where a batch went; wait with ``log.wait_durable(end_offset, generation)``."""

    base_offset: int
    end_offset: int
    append_time: int
    duplicate: bool
    generation: int
    log: AsyncLog


@attrs.frozen
class GetLog:
    """Ask a partition for its open log (readers use it directly)."""


@attrs.frozen
class DescribePartition:
    """Ask a partition for its offsets and size."""


@attrs.frozen
class WriteMarker:
    """The transaction coordinator's commit or abort marker for a producer's
    transaction on this partition. Answered with :class:`Appended` (wait for
    its durability before recording it written), or ``None`` when the
    producer has no open transaction here (a marker re-sent after a restart)."""

    producer_id: int
    epoch: int
    commit: bool


@attrs.frozen
class AdmitTransaction:
    """The transaction coordinator added this partition to the transaction of
    ``(producer_id, epoch)``: its transactional batches may be written here."""

    producer_id: int
    epoch: int


class NotAdmittedError(InvalidTransactionStateError):
    """A transactional batch from a producer this partition has no admission
    for (the broker service asks the coordinator again: admissions are in
    memory and a restarted partition has lost them)."""


@attrs.frozen
class StableView:
    """A partition's last stable offset and the aborted transactions at or
    after the offset asked for (what a read_committed fetch needs)."""

    last_stable_offset: int
    high_watermark: int
    aborted: tuple[AbortedTxn, ...]


@attrs.frozen
class GetStableCell:
    """Ask a partition for its open log and the
    :class:`~headwater.broker._stable.StableCell` it publishes its
    transaction state in (fetches read both directly), as one answer."""


@attrs.frozen
class GetStableView:
    """Ask a partition for its :class:`StableView` from ``offset`` on."""

    offset: int = 0


@attrs.frozen
class RunRetention:
    """Delete whole segments past the topic's retention."""


@attrs.frozen
class RunCompaction:
    """Compact the sealed segments of a compacted topic's partition."""


class PartitionActor(Actor):
    """One partition: its log and its producers' idempotence state."""

    def __init__(self, settings: BrokerSettings, config: TopicConfig, partition: int) -> None:
        self.settings = settings
        self.config = config
        self.partition = partition
        self.states = ProducerStates(config.name, partition)
        self.txns = PartitionTransactions()
        self.stable = StableCell()
        self._published = -1
        self.log: AsyncLog | None = None
        self._generation = -1
        self._busy = 0  # messages being handled (a handler may await)

    async def started(self) -> None:
        """Open (recover) the log and rebuild idempotence state from its headers."""
        cfg = LogConfig(
            durability=self.config.durability,
            interval_ms=self.settings.interval_ms,
            segment_bytes=self.settings.segment_bytes,
            retention_ms=self.config.retention_ms or None,
            retention_bytes=self.config.retention_bytes or None,
            max_record_bytes=self.settings.max_batch_bytes,
        )
        path = self.settings.partition_dir(self.config.name, self.partition)

        async def hold(task_status: trio.TaskStatus[AsyncLog]) -> None:
            try:
                async with open_log(
                    path,
                    config=cfg,
                    fs=self.settings.fs,
                    clock=self.settings.clock,
                    files=self.settings.files,
                ) as log:
                    task_status.started(log)
                    await trio.sleep_forever()
            except CorruptionError as exc:
                raise self._cannot_open(exc) from exc

        began = time.perf_counter()
        self.log = await self.context.nursery.start(hold)
        stats = self.settings.stats
        self.log.sync_latency = stats.fsync_latency
        self.log.sync_batch = stats.fsync_batch
        self._rebuild()
        self.stable.append = self.append_now
        self.settings.opened[(self.config.name, self.partition)] = (self.log, self.stable)
        seconds = time.perf_counter() - began
        stats.recovery_seconds[(self.config.name, self.partition)] = seconds
        _log.info(
            "partition_recovered",
            topic=self.config.name,
            partition=self.partition,
            seconds=round(seconds, 4),
            next_offset=self.log.next_offset,
            segments=len(self.log.log.segments),
            size_bytes=self.log.log.size_bytes,
        )

    def _cannot_open(self, exc: CorruptionError) -> CorruptionError:
        # Restarting cannot mend damaged files: say which partition and how
        # to repair it. After its restarts the supervisor parks it as failed
        # (on_give_up="fail") and every request gets this error.
        return CorruptionError(
            f"partition {self.config.name}/{self.partition} cannot open: {exc} -- "
            f"stop the broker and run `headwater repair --data-dir "
            f"{self.settings.data_dir} --topic {self.config.name} "
            f"--partition {self.partition}` (it drops only the damaged records), "
            "or restore the file"
        )

    def _rebuild(self) -> None:
        assert self.log is not None
        headers = self.log.log.headers()
        self.states.rebuild(
            RecordInfo(
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                h.count,
                h.base_offset,
                bool(h.attributes & ATTR_CONTROL),
            )
            for h in headers
        )
        self.txns.rebuild(headers)
        self.log.log.files.trim()  # reading the headers opened every segment
        self._publish()
        self._generation = self.log.generation

    def _publish(self) -> None:
        """Hand readers a new snapshot when the transaction state changed."""
        if self.txns.version != self._published:
            self.stable.snapshot = self.txns.snapshot()
            self._published = self.txns.version

    def append_now(self, record: bytes) -> Appended | HeadwaterError | None:
        """Append ``record`` now, in the caller's task, as an
        :class:`AppendBatch` would be (same checks, same reply), when this
        incarnation is idle: its log open, no message being handled, none
        waiting in its mailbox. Two task switches fewer than an ``ask``.
        ``None``: not idle, ask instead (the caller must also not have an
        ask of its own in flight, so it never overtakes one). An unexpected
        error crashes this incarnation as its handler's would, and the
        caller gets what an asker would have."""
        log = self.log
        if log is None or log.closed or self._busy or not self.context.mailbox_idle():
            return None
        self.context.note_handled()
        try:
            return self._append(log, record)
        except Exception as exc:
            try:
                self.context.nursery.start_soon(_raise, exc)
            except RuntimeError:
                pass  # this incarnation is ending anyway
            return as_failure(exc)

    async def handle(self, message: Any) -> Any:
        """Append, describe, hand out the log, or apply retention."""
        self._busy += 1
        try:
            return await self._handle(message)
        finally:
            self._busy -= 1

    def _append(self, log: AsyncLog, record: bytes) -> Appended | HeadwaterError:
        if log.generation != self._generation:
            self._rebuild()  # a failed fsync cut the log back
        try:
            header = log.log.validate(record)
            if header.attributes & ATTR_CONTROL:
                raise InvalidArgument(
                    "a client may not write control records (transaction markers); "
                    "clear attribute bit 3"
                )
            decision = self.states.check(
                header.producer_id, header.producer_epoch, header.base_sequence, header.count
            )
            if isinstance(decision, Duplicate):
                return Appended(
                    decision.base_offset,
                    decision.base_offset + header.count,
                    0,
                    True,
                    log.generation,
                    log,
                )
            if header.attributes & ATTR_TRANSACTIONAL and not self.txns.may_append(
                header.producer_id, header.producer_epoch
            ):
                raise NotAdmittedError(
                    f"{self.config.name}/{self.partition} is not in a transaction of "
                    f"producer {header.producer_id} epoch {header.producer_epoch}; "
                    "send through a transactional producer inside transaction()"
                )
            generation = log.generation
            stored = log.write(record, header)
        except HeadwaterError as exc:
            return exc  # the caller raises it; this partition carries on
        self.states.record(
            stored.producer_id,
            stored.producer_epoch,
            stored.base_sequence,
            stored.count,
            stored.base_offset,
        )
        self.txns.observe(stored)
        self._publish()
        return Appended(
            stored.base_offset, stored.next_offset, stored.append_time, False, generation, log
        )

    async def _handle(self, message: Any) -> Any:
        log = self.log
        assert log is not None
        if type(message) is AppendBatch:
            return self._append(log, message.record)
        if isinstance(message, GetStableCell):
            return log, self.stable
        if isinstance(message, AdmitTransaction):
            self.txns.admit(message.producer_id, message.epoch)
            return None
        if isinstance(message, WriteMarker):
            return self._write_marker(message)
        if isinstance(message, GetStableView):
            hw = log.visible_end
            return StableView(
                self.txns.last_stable_offset(hw), hw, tuple(self.txns.aborted(message.offset))
            )
        if isinstance(message, GetLog):
            return log
        if isinstance(message, DescribePartition):
            hw = log.visible_end
            return PartitionInfo(
                self.partition,
                log.earliest_offset,
                hw,
                log.log.size_bytes,
                last_stable_offset=self.txns.last_stable_offset(hw),
            )
        if isinstance(message, RunRetention):
            removed = log.log.apply_retention()
            self.txns.forget_before(log.earliest_offset)
            self._publish()
            return removed
        if isinstance(message, RunCompaction):
            return await self._compact()
        return await super().handle(message)

    def _write_marker(self, message: WriteMarker) -> Appended | HeadwaterError | None:
        log = self.log
        assert log is not None
        if log.generation != self._generation:
            self._rebuild()
        pid = message.producer_id
        try:
            self.states.fence(pid, message.epoch)
        except HeadwaterError as exc:
            return exc
        if not self.txns.is_open(pid):
            self.txns.revoke(pid)  # added to the transaction, never written to
            return None
        record = encode_record(
            b"",
            count=1,
            first_timestamp=self.settings.clock(),
            attributes=ATTR_CONTROL | (ATTR_COMMIT if message.commit else 0),
            producer_id=pid,
            producer_epoch=message.epoch,
        )
        try:
            header = log.log.validate(record)
            generation = log.generation
            stored = log.write(record, header)
        except HeadwaterError as exc:
            return exc
        self.txns.observe(stored)
        self._publish()
        return Appended(
            stored.base_offset, stored.next_offset, stored.append_time, False, generation, log
        )

    def _stored_events(
        self, base: int, end: int, aborted: tuple[AbortedTxn, ...] | None = None
    ) -> list[StoredEvent] | None:
        """Decode the events stored in ``[base, end)`` (blocking; any thread),
        leaving out markers and the batches of the ``aborted`` transactions.
        With ``aborted=None``, ``None`` when the range holds a transactional
        record: compaction leaves such a segment as it is (DECISIONS #18:
        markers stay while their data does)."""
        assert self.log is not None
        log = self.log.log
        out: list[StoredEvent] = []
        offset = base
        while offset < end:
            data = log.read(offset, 1 << 20, end)
            if not data:
                break
            for header, record in iter_records(data):
                offset = header.next_offset
                if header.attributes & (ATTR_CONTROL | ATTR_TRANSACTIONAL):
                    if aborted is None:
                        return None
                    if header.attributes & ATTR_CONTROL or any(
                        a.producer_id == header.producer_id
                        and a.first_offset <= header.base_offset <= a.last_offset
                        for a in aborted
                    ):
                        continue
                events = decode_record_events(
                    header, record, topic=self.config.name, partition=self.partition
                )
                out.extend(StoredEvent(event, header.append_time) for event in events)
        return out

    def _latest(self, base: int, end: int, aborted: tuple[AbortedTxn, ...]) -> dict[bytes, int]:
        # With ``aborted`` given, committed transactional events count and
        # aborted ones do not: an aborted write never hides an older value.
        events = self._stored_events(base, end, aborted)
        assert events is not None
        return latest_offsets(s.event for s in events)

    def _compacted(
        self, base: int, end: int, latest: dict[bytes, int], now_ms: int
    ) -> list[bytes] | None:
        events = self._stored_events(base, end)
        if events is None:
            return None
        return compact_segment(
            events,
            latest,
            now_ms=now_ms,
            tombstone_grace_ms=self.config.tombstone_grace_ms,
        )

    async def _compact(self) -> int:
        """Compact every sealed segment below the last stable offset; returns
        how many were rewritten (DECISIONS #18: never at or past the LSO; a
        segment holding transactional records is kept as it is).

        Reading, rewriting and fsyncing run in worker threads (the log's
        pinned handles make that safe beside fetches and retention); only
        swapping each new segment in runs on the event loop."""
        log = self.log
        assert log is not None
        if not self.config.compacted or len(log.log.segments) < 2:
            return 0
        await log.sync()
        stable = self.txns.last_stable_offset(log.next_offset)
        aborted = tuple(self.txns.aborted())
        latest = await log.run_blocking(self._latest, log.earliest_offset, stable, aborted)
        rewritten = 0
        for base, end in log.log.sealed_segments():
            if end > stable:
                break
            records = await log.run_blocking(
                self._compacted, base, end, latest, self.settings.clock()
            )
            if records is not None:
                await log.replace_segment(base, records)
                rewritten += 1
        if rewritten:
            _log.info(
                "partition_compacted",
                topic=self.config.name,
                partition=self.partition,
                segments=rewritten,
            )
        return rewritten


# ------------------------------------------------------------------ registry


def _registry_apply(state: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    topics = dict(state.get("topics", {}))
    kind = event["type"]
    if kind == "created":
        topics[event["config"]["name"]] = event["config"]
    elif kind == "deleted":
        topics.pop(event["name"], None)
    elif kind == "partitions_added":
        topics[event["name"]] = {**topics[event["name"]], "partitions": event["partitions"]}
    next_pid = state.get("next_producer_id", 1)
    if kind == "producer_id":
        next_pid = event["next"]
    return {"topics": topics, "next_producer_id": next_pid}


def topic_supervisor(settings: BrokerSettings, config: TopicConfig) -> SupervisorSpec:
    """The supervisor of one topic: one partition actor per partition.

    A partition that crashes 6 times within 10 s of running time (at every
    start, say, because its files are damaged) is parked as ``failed``
    (``on_give_up="fail"``): requests to it get its last error at once, and
    the topic's other partitions keep serving. Its 5 restarts take 1.15 s
    (backoff 0.05 s doubling to 0.4 s); a partition killed or crashing now and
    then is simply restarted.
    """
    return SupervisorSpec(
        config.name,
        [
            ChildSpec(
                str(p),
                lambda p=p: PartitionActor(settings, config, p),
                shutdown=30.0,
                on_give_up="fail",
            )
            for p in range(config.partitions)
        ],
        strategy="one_for_one",
        max_restarts=5,
        within=10.0,
        backoff=0.05,
        backoff_max=0.4,
    )


def group_spec(settings: BrokerSettings, group: str) -> ChildSpec:
    """The child spec of one consumer group's actor. A group that keeps
    crashing (its journal cannot be read, say) is parked as ``failed`` like a
    partition: its requests get its last error, the other groups serve."""
    return ChildSpec(group, lambda: GroupActor(settings, group), shutdown=10.0, on_give_up="fail")


@attrs.frozen
class ListTopicConfigs:
    """Ask the registry for every topic's config."""


@attrs.frozen
class DeleteTopicRequest:
    """Ask the registry to delete a topic (stop its actors, remove its data)."""

    name: str


@attrs.frozen
class NewProducerId:
    """Ask the registry for a new producer id."""


class TopicRegistry(PersistentActor):
    """The persistent list of topics; starts and stops their supervisors."""

    snapshot_every = 1000

    def __init__(self, settings: BrokerSettings) -> None:
        super().__init__(os.path.join(settings.data_dir, "meta", "topics"), fs=settings.fs)
        self.settings = settings

    def initial_state(self) -> dict[str, Any]:
        return {"topics": {}, "next_producer_id": 1}

    def apply(self, state: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
        return _registry_apply(state, event)

    def configs(self) -> dict[str, TopicConfig]:
        return {n: TopicConfig.from_dict(c) for n, c in self.state["topics"].items()}

    async def started(self) -> None:
        """Replay, then make sure every known topic has its supervisor running."""
        await super().started()
        system = self.context.system
        for config in self.configs().values():
            try:
                system.lookup(f"/broker/topics/{config.name}")
            except HeadwaterError:
                await system.start_child(
                    topic_supervisor(self.settings, config), parent="/broker/topics"
                )
        self._warn_orphans()
        # Group actors are started on demand under /broker/groups; when that
        # supervisor restarts (we restart after it: rest_for_one) they must
        # come back too, or their cells wait for ever and every group request
        # times out. Starting one adopts its waiting cell, so refs stay valid.
        fs = self.settings.fs
        groups_dir = os.path.join(self.settings.data_dir, "meta", "groups")
        if fs.exists(groups_dir):
            running = {
                node.path
                for node in system.tree().walk()
                if node.path.startswith("/broker/groups/")
            }
            for name in sorted(fs.listdir(groups_dir)):
                if f"/broker/groups/{name}" in running:
                    continue
                try:
                    await system.start_child(
                        group_spec(self.settings, name), parent="/broker/groups"
                    )
                except HeadwaterError as exc:  # started meanwhile by a request
                    _log.info("group_restart_skipped", group=name, error=str(exc))

    async def handle(self, message: Any) -> Any:
        """Create and delete topics, list them, hand out producer ids."""
        fs = self.settings.fs
        if isinstance(message, CreateTopic):
            config = TopicConfig.from_request(
                message,
                default_durability=self.settings.default_durability,  # type: ignore[arg-type]
            )
            if config.name in self.state["topics"]:
                raise TopicExistsError(
                    f"topic {config.name!r} already exists; delete it first or pick another name"
                )
            # What a delete killed midway left (its partitions' logs, share
            # state) must not come back as the new topic's.
            await run_blocking(fs, remove_tree_durably, fs, self.settings.topic_dir(config.name))
            await self.persist({"type": "created", "config": config.to_dict()})
            await self.context.system.start_child(
                topic_supervisor(self.settings, config), parent="/broker/topics"
            )
            _log.info("topic_created", topic=config.name, partitions=config.partitions)
            return config
        if isinstance(message, AddPartitions):
            return await self._add_partitions(message)
        if isinstance(message, ListTopicConfigs):
            return self.configs()
        if isinstance(message, DeleteTopicRequest):
            if message.name not in self.state["topics"]:
                raise UnknownTopicError(f"topic {message.name!r} does not exist")
            await self.persist({"type": "deleted", "name": message.name})
            try:
                await self.context.system.stop_child(f"/broker/topics/{message.name}")
            except HeadwaterError:
                pass
            await run_blocking(fs, remove_tree_durably, fs, self.settings.topic_dir(message.name))
            _log.info("topic_deleted", topic=message.name)
            return None
        if isinstance(message, NewProducerId):
            pid = self.state["next_producer_id"]
            await self.persist({"type": "producer_id", "next": pid + 1})
            return pid
        return await super().handle(message)

    def _warn_orphans(self) -> None:
        """Say which topic directories no topic owns (a delete killed
        before its files were gone, or files copied in). They are never
        removed here: a lost registry must not cost every topic's data."""
        fs = self.settings.fs
        topics_dir = os.path.join(self.settings.data_dir, "topics")
        if not fs.exists(topics_dir):
            return
        for name in sorted(set(fs.listdir(topics_dir)) - set(self.state["topics"])):
            _log.warning(
                "topic_directory_orphaned",
                path=os.path.join(topics_dir, name),
                hint="no topic of this name exists (a delete was interrupted, or the files "
                "were copied in); creating the topic again removes it first; delete the "
                "directory to free its space",
            )

    async def _add_partitions(self, message: AddPartitions) -> TopicConfig:
        """Grow a topic: persist the new count, then start the new partitions'
        actors under the topic's supervisor."""
        current = self.configs().get(message.name)
        if current is None:
            raise UnknownTopicError(f"topic {message.name!r} does not exist")
        count = message.partitions
        if type(count) is not int or not current.partitions < count <= MAX_PARTITIONS:
            raise InvalidArgument(
                f"topic {message.name!r} has {current.partitions} partitions; a topic can "
                f"only grow: give a count in {current.partitions + 1}..{MAX_PARTITIONS}, "
                f"not {count!r}"
            )
        grown = attrs.evolve(current, partitions=count)
        await self.persist(
            {"type": "partitions_added", "name": message.name, "partitions": grown.partitions}
        )
        for p in range(current.partitions, grown.partitions):
            await self.context.system.start_child(
                ChildSpec(
                    str(p),
                    lambda p=p: PartitionActor(self.settings, grown, p),
                    shutdown=30.0,
                ),
                parent=f"/broker/topics/{message.name}",
            )
        _log.info("partitions_added", topic=message.name, partitions=grown.partitions)
        return grown


# -------------------------------------------------------------------- groups


@attrs.frozen
class GroupRequest:
    """A group operation with what the coordinator needs from the broker, and
    where the requesting client takes pushed notices (``None``: it cannot)."""

    request: Any
    partition_counts: dict[str, int]
    sink: PushSink | None = None


@attrs.frozen
class TxnOffsets:
    """The transaction coordinator passes on offsets sent in a transaction
    (held pending until :class:`CompleteTxnOffsets`)."""

    producer_id: int
    member_id: str | None
    generation: int
    offsets: tuple[PartitionOffset, ...]


@attrs.frozen
class CompleteTxnOffsets:
    """The transaction of ``producer_id`` ended: commit or drop its offsets."""

    producer_id: int
    commit: bool


@attrs.frozen
class GroupSnapshot:
    """Ask a group actor for its coordinator's state."""


@attrs.frozen
class _Tick:
    pass


class GroupActor(Actor):
    """One consumer group's coordinator, persisted as a journal of group events
    (snapshotted every ``snapshot_every`` events, so commits do not grow it forever)."""

    snapshot_every = 1000

    def __init__(self, settings: BrokerSettings, group: str) -> None:
        self.settings = settings
        self.group = group
        self.journal: StateJournal | None = None
        self.coordinator: GroupCoordinator | None = None
        self._timer_moved = trio.Event()
        self._sinks: dict[str, PushSink] = {}

    async def started(self) -> None:
        """Replay the group's journal, then start the session timer."""
        path = os.path.join(self.settings.data_dir, "meta", "groups", self.group)

        self.journal = await start_state_journal(
            self.context.nursery,
            path,
            apply=group_apply,
            initial=GroupState(self.group),
            fs=self.settings.fs,
            snapshot_every=self.snapshot_every,
            to_plain=state_to_plain,
            from_plain=state_from_plain,
        )
        self.coordinator = GroupCoordinator.from_state(self.journal.state, trio.current_time())
        self._logged_state = self.coordinator.state
        self.context.nursery.start_soon(self._timer)

    async def _timer(self) -> None:
        me = self.context.ref
        while True:
            assert self.coordinator is not None
            deadline = self.coordinator.next_deadline()
            moved = self._timer_moved
            with trio.move_on_at(
                deadline if deadline is not None else trio.current_time() + 3600
            ) as scope:
                await moved.wait()
            if moved is self._timer_moved:
                self._timer_moved = trio.Event()
            if scope.cancelled_caught:
                await me.tell(_Tick())  # a session deadline passed

    async def _persist(self) -> None:
        assert self.coordinator is not None
        assert self.journal is not None
        events = self.coordinator.take_events()
        if events:
            await self.journal.persist_many(events)
            self._log_changes()
        self._timer_moved.set()
        self._notify()

    def _notify(self) -> None:
        """Push every changed membership to its member (made durable first)."""
        assert self.coordinator is not None
        members = self.coordinator.state.members
        for mid in [mid for mid in self._sinks if mid not in members]:
            del self._sinks[mid]
        for notice in self.coordinator.take_notices():
            sink = self._sinks.get(notice.member_id)
            if sink is None:
                continue
            try:
                sink(notice)
            except Exception as exc:  # a sink must never fail the group actor
                _log.error("group_push_failed", group=self.group, exc_info=exc)
                self._sinks.pop(notice.member_id, None)

    def _log_changes(self) -> None:
        """Log joins, leaves, state changes and rebalances, now durable."""
        assert self.coordinator is not None
        state = self.coordinator.state
        for event, fields in group_changes(self._logged_state, state):
            _log.info(event, group=self.group, **fields)
        self._logged_state = state

    async def handle(self, message: Any) -> Any:
        """Join, heartbeat, release, leave, commit, read commits, expire members."""
        c = self.coordinator
        assert c is not None
        now = trio.current_time()
        if isinstance(message, _Tick):
            expired = c.tick(now)
            if expired:
                _log.info("group_members_expired", group=self.group, members=expired)
            await self._persist()
            return None
        if isinstance(message, GroupSnapshot):
            return c
        if isinstance(message, TxnOffsets):
            try:
                c.txn_commit(
                    message.producer_id, message.member_id, message.generation, message.offsets
                )
            finally:
                await self._persist()
            return None
        if isinstance(message, CompleteTxnOffsets):
            c.complete_txn(message.producer_id, message.commit, now)
            await self._persist()
            return None
        if not isinstance(message, GroupRequest):
            return await super().handle(message)
        request = message.request
        try:
            if isinstance(request, JoinGroup):
                result: Any = c.join(
                    request.topics,
                    message.partition_counts,
                    now,
                    member_id=request.member_id,
                    client_id=request.client_id,
                    session_timeout=request.session_timeout,
                    rebalance_timeout=request.rebalance_timeout,
                    protocol_type=request.protocol_type,
                    force=request.rebalance,
                    instance_id=request.instance_id,
                    assignor=request.assignor,  # type: ignore[arg-type]  # checked by join
                )
                self._adopt_sink(result, message.sink)
            elif isinstance(request, Heartbeat):
                # A topic that grew or was deleted (count 0) plans a rebalance.
                counts = {t: message.partition_counts.get(t, 0) for t in c.state.topic_partitions}
                c.update_topics(counts, now)
                result = c.heartbeat(request.member_id, request.generation, now)
                self._adopt_sink(result, message.sink)
            elif isinstance(request, ReleasePartitions):
                result = c.release(request.member_id, request.partitions, now)
            elif isinstance(request, SyncGroup):
                result = c.sync(
                    request.member_id,
                    request.generation,
                    {a.member_id: a.partitions for a in request.assignment},
                    now,
                )
            elif isinstance(request, LeaveGroup):
                c.leave(request.member_id, now)
                result = None
            elif isinstance(request, CommitOffsets):
                c.commit(request.member_id, request.generation, request.offsets)
                result = None
            elif isinstance(request, FetchCommitted):
                try:
                    result = c.committed(request.partitions, require_stable=request.require_stable)
                except UnstableOffsetError as exc:
                    # A refusal the reader retries, not a failure of the group:
                    # answered as a value (the service raises it), so readers
                    # waiting out a transaction cannot crash this actor past
                    # its restart intensity (it would be parked as failed).
                    result = exc
            else:
                return await super().handle(request)
        finally:
            # Whatever the command emitted is made durable before we answer.
            await self._persist()
        return result

    def _adopt_sink(self, membership: Membership, sink: PushSink | None) -> None:
        """Pushes for this member go where its latest join or heartbeat came from."""
        if sink is not None:
            self._sinks[membership.member_id] = sink
        else:
            self._sinks.pop(membership.member_id, None)


async def _raise(exc: BaseException) -> None:
    """Crash the incarnation whose nursery runs this with ``exc``."""
    raise exc
