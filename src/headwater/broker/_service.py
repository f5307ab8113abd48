"""The broker's request handler: one entry point for embedded and TCP clients.

Theory of operation
-------------------
:meth:`BrokerService.handle` takes one request message from
:mod:`headwater._protocol` and returns its response, raising a
:class:`~headwater.HeadwaterError` for anything refused. It runs in the
caller's task (embedded) or in a connection's task (TCP), never inside an
actor, so waiting for an fsync or a long poll blocks only that caller.

* Admin requests go to the topic registry; group requests to the group's
  actor (started on first use under ``/broker/groups``).
* ``Produce`` appends (a fast, non-blocking write) in the caller's task
  while the partition is idle (``StableCell.append``), else asks the
  partition actor to; then waits here for durability (a lone small batch is
  fsynced here, not by the log's flusher task).
* ``Fetch`` reads the partition's log directly (reads never queue behind
  appends) and long-polls on the log's new-data signal.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

import trio

from headwater._errors import (
    ActorNotFound,
    ClosedError,
    HeadwaterError,
    InvalidArgument,
    OffsetOutOfRangeError,
    StorageError,
    SubscriptionConflictError,
    UnknownGroupError,
    UnknownPartitionError,
    UnknownTopicError,
    UnstableOffsetError,
)
from headwater._logging import get_logger
from headwater._protocol import (
    CONNECTION_REQUEST_TYPES,
    MAX_FETCH_WAIT,
    PUSH_SINK,
    AddPartitions,
    AddPartitionsToTxn,
    CommitOffsets,
    CommittedOffsets,
    CreateTopic,
    DeleteTopic,
    DescribeGroup,
    DescribeTopic,
    DescribeTransaction,
    Done,
    EndTxn,
    Fetch,
    FetchCommitted,
    FetchResult,
    GetTree,
    GroupList,
    Heartbeat,
    InitProducer,
    InitTransactions,
    JoinGroup,
    LeaveGroup,
    ListGroups,
    ListOffset,
    ListTopics,
    ListTransactions,
    OffsetResult,
    PartitionInfo,
    Produce,
    ProduceResult,
    ProducerIdentity,
    ReleasePartitions,
    SendOffsetsToTxn,
    ShareAck,
    ShareFetch,
    ShareLeave,
    ShareSubscribe,
    SyncGroup,
    TopicDescription,
    TopicInfo,
    TopicList,
    TreeSnapshot,
)
from headwater.actors._system import ActorSystem
from headwater.broker._actors import (
    AppendBatch,
    Appended,
    BrokerSettings,
    DeleteTopicRequest,
    DescribePartition,
    GetStableCell,
    GroupRequest,
    GroupSnapshot,
    ListTopicConfigs,
    NewProducerId,
    NotAdmittedError,
    RunCompaction,
    RunRetention,
    group_spec,
)
from headwater.broker._config import TopicConfig, validate_group_name, validate_topic_name
from headwater.broker._group import GroupCoordinator
from headwater.broker._order import Turn
from headwater.broker._share_service import ShareService
from headwater.broker._stable import StableCell, filter_records
from headwater.broker._stats import count_events
from headwater.broker._txn_actor import Readmit, ask_coordinator
from headwater.journal._async import AsyncLog
from headwater.journal._batch import decode_record_events
from headwater.journal._record import ATTR_CONTROL, RecordHeader, decode_header, iter_records
from headwater.supervision._specs import ActorSnapshot

__all__ = ["BrokerService", "MAX_FETCH_BYTES", "MAX_FETCH_WAIT"]

ISOLATIONS = ("read_committed", "read_uncommitted")

_requests_log = get_logger("headwater.broker.requests")

MAX_FETCH_BYTES = 8 * 1024 * 1024
"""A fetch asking for more bytes gets this many (still at least one whole
record), so one request can never make the broker read unbounded data."""


class BrokerService:
    """Answers client requests for one broker (see the module docstring)."""

    def __init__(self, system: ActorSystem, settings: BrokerSettings) -> None:
        self.system = system
        self.settings = settings
        self._topics: dict[str, TopicConfig] = {}
        self._logs: dict[tuple[str, int], AsyncLog] = {}
        self._cells: dict[tuple[str, int], StableCell] = {}
        self._asks: dict[tuple[str, int], int] = {}  # produce asks in flight, by partition
        self.topics_deleted = 0
        """Topics deleted since start (``serve``'s refreeze looks: their objects died)."""
        self._groups_lock = trio.Lock()
        self.shares = ShareService(self)
        self.stats = settings.stats

    async def start(self) -> None:
        """Load the topic list and start the actors of groups found on disk."""
        registry = self.system.lookup("/broker/registry")
        self._topics = await registry.ask(ListTopicConfigs())
        fs = self.settings.fs
        groups_dir = f"{self.settings.data_dir}/meta/groups"
        if fs.exists(groups_dir):
            for name in sorted(fs.listdir(groups_dir)):
                await self._group(name, create=True)
        await self.shares.start()

    # ----------------------------------------------------------- helpers

    def _config(self, topic: object) -> TopicConfig:
        name = validate_topic_name(topic)
        try:
            return self._topics[name]
        except KeyError:
            raise UnknownTopicError(
                f"topic {name!r} does not exist; create it first (existing: "
                f"{_some(sorted(self._topics))})"
            ) from None

    def _partition_path(self, topic: object, partition: object) -> tuple[TopicConfig, str]:
        config = self._config(topic)
        if isinstance(partition, bool) or not isinstance(partition, int):
            raise InvalidArgument(f"partition {partition!r} is not an int")
        if not 0 <= partition < config.partitions:
            raise UnknownPartitionError(
                f"topic {config.name!r} has partitions 0..{config.partitions - 1}, not {partition}"
            )
        return config, f"/broker/topics/{config.name}/{partition}"

    def _partition(self, topic: str, path: str) -> Any:
        """The ref of a partition actor. Its topic may have been deleted since
        the caller checked it exists: that is an unknown topic, not a missing
        actor."""
        try:
            return self.system.lookup(path)
        except ActorNotFound:
            raise UnknownTopicError(
                f"topic {topic!r} was deleted; create it again before you use it"
            ) from None

    async def _log(self, topic: str, partition: int) -> AsyncLog:
        _config, path = self._partition_path(topic, partition)
        key = (topic, partition)
        log = self._logs.get(key)
        if log is None or log.closed:
            opened = self.settings.opened.get(key)
            if opened is not None and not opened[0].closed:
                # Published by the partition once open: no ask (about 0.1 ms
                # per partition on its first produce, 10,000 of them in a
                # produce spread over every partition). Still a checkpoint,
                # as the ask was: a caller polling a new partition (a fetch
                # with max_wait=0) must let other tasks run, and a cancelled
                # request stops here, before it appends.
                await trio.lowlevel.checkpoint()
                log, cell = opened
            else:
                # One ask: a second would queue behind a compaction.
                log, cell = await self._partition(topic, path).ask(GetStableCell())
            self._cells[key] = cell
            self._logs[key] = log
        return log

    async def _group(self, group: object, *, create: bool) -> Any:
        group = validate_group_name(group)
        path = f"/broker/groups/{group}"
        try:
            return self.system.lookup(path)
        except HeadwaterError:
            if not create:
                raise UnknownGroupError(f"consumer group {group!r} does not exist") from None
        if self.shares.exists(group):
            raise SubscriptionConflictError(
                f"{group!r} is a share subscription; consumer groups and share "
                "subscriptions share one namespace, so pick another group name"
            )
        async with self._groups_lock:
            try:
                return self.system.lookup(path)
            except HeadwaterError:
                spec = group_spec(self.settings, group)
                return await self.system.start_child(spec, parent="/broker/groups")

    def is_group(self, name: str) -> bool:
        """Whether ``name`` is a consumer group (running or on disk)."""
        try:
            self.system.lookup(f"/broker/groups/{name}")
            return True
        except HeadwaterError:
            return self.settings.fs.exists(f"{self.settings.data_dir}/meta/groups/{name}")

    def topic_configs(self) -> dict[str, TopicConfig]:
        """Every topic's config, by name (a copy)."""
        return dict(self._topics)

    async def log_statistics(self, topic: str, partition: int) -> dict[str, Any]:
        """Offsets, size, segments and sync count of one partition's log
        (:meth:`AsyncLog.statistics`); raises the partition's error when it
        is not serving."""
        return (await self._log(topic, partition)).statistics()

    async def read_events(
        self, topic: str, partition: int, offset: int, limit: int
    ) -> tuple[list[Any], int, int]:
        """Up to ``limit`` stored events from ``offset`` (values as stored
        bytes), with the partition's earliest and end offsets: the console's
        browser. Not counted as client fetches."""
        log = await self._log(topic, partition)
        start = max(offset, log.earliest_offset)
        events: list[Any] = []
        while len(events) < limit and start < log.visible_end:
            data = await log.read(start, 256 * 1024)
            if not data:
                break
            for header, record in iter_records(data):
                for event in decode_record_events(header, record, topic=topic, partition=partition):
                    if event.offset >= start and len(events) < limit:
                        events.append(event)
                start = header.next_offset
        return events, log.earliest_offset, log.visible_end

    async def group_descriptions(self) -> list[tuple[str, Any]]:
        """``(name, description)`` of every group, the description being the
        error when it cannot be described now. For observers: not counted as
        client requests."""
        out: list[tuple[str, Any]] = []
        for name in (await self._list_groups(ListGroups())).groups:
            try:
                out.append((name, await self._describe_group(DescribeGroup(name))))
            except HeadwaterError as exc:
                out.append((name, exc))
        return out

    def _counts(self) -> dict[str, int]:
        return {name: c.partitions for name, c in self._topics.items()}

    # ----------------------------------------------------------- dispatch

    async def handle(self, request: Any, *, turn: Turn | None = None) -> Any:
        """Answer one request (see :mod:`headwater._protocol`). ``turn``: a
        ``Produce``'s place in its connection's arrival order (it appends
        when the turn comes, then releases it)."""
        handler = self._handlers.get(type(request))
        if handler is None:
            if isinstance(request, CONNECTION_REQUEST_TYPES):
                raise InvalidArgument(
                    f"{type(request).__name__} (a pushed fetch) needs a TCP connection "
                    "speaking protocol version 2; fetch instead"
                )
            raise InvalidArgument(f"unknown request {type(request).__name__}")
        began = time.perf_counter()
        failed = True
        try:
            if turn is None or type(request) is not Produce:
                result = await handler(self, request)
            else:
                result = await self._produce(request, turn)
            failed = False
            return result
        finally:
            seconds = time.perf_counter() - began
            op = _OP_NAMES[type(request)]
            self.stats.request(op, seconds, failed=failed)
            _requests_log.debug("request", op=op, seconds=round(seconds, 6), failed=failed)

    async def _produce(self, r: Produce, turn: Turn | None = None) -> ProduceResult:
        _config, path = self._partition_path(r.topic, r.partition)
        if not isinstance(r.record, bytes | bytearray | memoryview):
            raise InvalidArgument(f"a produce record must be bytes, not {type(r.record).__name__}")
        ref = self._partition(r.topic, path)
        record = bytes(r.record)
        key = (r.topic, r.partition)
        await self._log(r.topic, r.partition)  # the partition's cell (published when it opened)
        cell = self._cells[key]
        reply: Any = None
        if turn is not None:
            await turn.wait()  # the produces read before it on its connection append first
        try:
            if cell.append is not None and not self._asks.get(key):
                # The partition idle: appended here, no hop to its actor and
                # back. Never while an ask of ours is on its way there (it
                # goes first).
                reply = cell.append(record)
            alone = reply is not None  # then no other append waits for this fsync
            if reply is None:
                reply = await self._ask_append(key, ref, record)
            if isinstance(reply, NotAdmittedError):
                # The partition restarted since the add (admissions are in memory).
                header = decode_header(r.record, check_crc=False)
                assert isinstance(header, RecordHeader)  # the partition decoded it
                readmit = Readmit(header.producer_id, header.producer_epoch, r.topic, r.partition)
                if await self.system.lookup("/broker/transactions").ask(readmit):
                    reply = await self._ask_append(key, ref, record)
        finally:
            if turn is not None:
                turn.release()  # appended (or refused): the next may append
        if isinstance(reply, HeadwaterError):
            raise reply
        assert isinstance(reply, Appended)
        try:
            await reply.log.wait_durable(reply.end_offset, reply.generation, sync_here=alone)
        except ClosedError:
            raise StorageError(
                f"partition {r.topic}/{r.partition} restarted before the batch was synced; "
                "retry it (idempotent producers store it once)"
            ) from None
        if not reply.duplicate:
            counters = self.stats.partition(r.topic, r.partition)
            counters.produced_events += reply.end_offset - reply.base_offset
            counters.produced_bytes += len(r.record)
        return ProduceResult(
            r.topic, r.partition, reply.base_offset, reply.append_time, reply.duplicate
        )

    async def _ask_append(self, key: tuple[str, int], ref: Any, record: bytes) -> Any:
        """Append through the partition's mailbox, counted so that no
        append in a caller's task overtakes it (see ``StableCell.append``)."""
        self._asks[key] = self._asks.get(key, 0) + 1
        try:
            return await ref.ask(AppendBatch(record))
        finally:
            if self._asks[key] == 1:
                del self._asks[key]
            else:
                self._asks[key] -= 1

    def check_fetch(self, r: Fetch) -> None:
        """Refuse a fetch whose fields are bad or whose topic or partition
        does not exist (without reading anything)."""
        if not isinstance(r.max_bytes, int) or r.max_bytes < 1:
            raise InvalidArgument(f"max_bytes={r.max_bytes!r}; give a positive int")
        if not isinstance(r.max_wait, int | float) or not 0 <= r.max_wait <= MAX_FETCH_WAIT:
            raise InvalidArgument(f"max_wait={r.max_wait!r}; give 0..{MAX_FETCH_WAIT} seconds")
        if isinstance(r.offset, bool) or not isinstance(r.offset, int):
            raise InvalidArgument(f"offset {r.offset!r} is not an int")
        if r.isolation not in ISOLATIONS:
            raise InvalidArgument(f"isolation={r.isolation!r}; give one of {', '.join(ISOLATIONS)}")
        self._partition_path(r.topic, r.partition)

    async def _fetch(self, r: Fetch) -> FetchResult:
        self.check_fetch(r)
        log = await self._log(r.topic, r.partition)
        if not log.earliest_offset <= r.offset <= log.visible_end:
            raise OffsetOutOfRangeError(
                f"offset {r.offset} of {r.topic}/{r.partition} is outside "
                f"[{log.earliest_offset}, {log.visible_end}]; seek to earliest or latest"
            )
        committed = r.isolation == "read_committed"
        cell = self._cells[(r.topic, r.partition)]
        max_bytes = min(r.max_bytes, MAX_FETCH_BYTES)
        deadline = trio.current_time() + r.max_wait
        woken = False
        try:
            while True:
                # No hop to the partition's actor: its published snapshot.
                snapshot = cell.snapshot
                hw = log.visible_end
                lso = snapshot.last_stable_offset(hw)
                limit = lso if committed else hw
                if r.offset < limit:
                    data = await log.read(r.offset, max_bytes, limit, woken=woken)
                    records = iter_records(data)
                    if records:
                        next_offset = records[-1][0].next_offset
                        kept = data
                        if snapshot.aborted or any(h.attributes & ATTR_CONTROL for h, _ in records):
                            aborted = snapshot.aborted_from(r.offset) if committed else ()
                            kept = filter_records(data, aborted, committed=committed)
                        if kept:
                            counters = self.stats.partition(r.topic, r.partition)
                            counters.fetched_events += count_events(kept)
                            counters.fetched_bytes += len(kept)
                        return FetchResult(
                            r.topic,
                            r.partition,
                            kept,
                            hw,
                            log.earliest_offset,
                            next_offset,
                            lso,
                        )
                if trio.current_time() >= deadline:
                    break
                # Wait for anything new: data, or a marker moving the LSO.
                with trio.move_on_at(deadline):
                    await log.wait_for_data(max(log.visible_end, r.offset))
                woken = True  # it yielded: the read needs no checkpoint of its own
        except ClosedError:
            # The partition restarted (its log closed) under this fetch.
            raise StorageError(
                f"partition {r.topic}/{r.partition} restarted during the fetch; retry it"
            ) from None
        except OffsetOutOfRangeError:
            # Retention removed the offset between the check above and the read.
            raise OffsetOutOfRangeError(
                f"offset {r.offset} of {r.topic}/{r.partition} was removed by retention; "
                f"the partition now starts at {log.earliest_offset}: seek to earliest"
            ) from None
        hw = log.visible_end
        return FetchResult(
            r.topic,
            r.partition,
            b"",
            hw,
            log.earliest_offset,
            r.offset,
            cell.snapshot.last_stable_offset(hw),
        )

    async def _list_offset(self, r: ListOffset) -> OffsetResult:
        log = await self._log(r.topic, r.partition)
        if r.position == "earliest":
            offset = log.earliest_offset
        elif r.position == "latest":
            offset = log.visible_end
        elif isinstance(r.position, int) and not isinstance(r.position, bool):
            offset = self._offset_for_time(log, r.topic, r.partition, r.position)
        else:
            raise InvalidArgument(
                f"position {r.position!r}; use 'earliest', 'latest' or a timestamp in ms"
            )
        return OffsetResult(r.topic, r.partition, offset)

    def _offset_for_time(self, log: AsyncLog, topic: str, partition: int, ts: int) -> int:
        """The first offset whose event timestamp is >= ``ts`` (else the end).

        The time index finds the batch; this admin lookup (not the hot path)
        then decodes that one batch to find the exact event, as Kafka does."""
        found = log.log.offset_for_time(ts)
        if found is None or found >= log.visible_end:
            return log.visible_end
        for header, record in iter_records(log.log.read(found, 1)):
            try:
                events = decode_record_events(header, record, topic=topic, partition=partition)
            except HeadwaterError:
                return found  # not our event encoding: batch precision
            for event in events:
                if event.timestamp >= ts:
                    return event.offset
            return header.next_offset
        return found

    async def _create_topic(self, r: CreateTopic) -> TopicInfo:
        config = await self.system.lookup("/broker/registry").ask(r, timeout=30)
        self._topics[config.name] = config
        return config.to_info()  # type: ignore[no-any-return]

    async def _delete_topic(self, r: DeleteTopic) -> Done:
        config = self._config(r.name)

        async def delete() -> None:
            await self.system.lookup("/broker/registry").ask(
                DeleteTopicRequest(config.name), timeout=60
            )
            self._topics.pop(config.name, None)

        # Share subscriptions keep their state with the topic's partitions:
        # they go with it (see drop_topic for the order).
        await self.shares.drop_topic(config.name, delete)
        for key in [k for k in self._logs if k[0] == config.name]:
            del self._logs[key]
        for key in [k for k in self.settings.opened if k[0] == config.name]:
            del self.settings.opened[key]
        self.stats.forget_topic(config.name)
        self.topics_deleted += 1
        return Done()

    async def _add_partitions(self, r: AddPartitions) -> TopicInfo:
        config = self._config(r.name)
        grown = await self.system.lookup("/broker/registry").ask(
            AddPartitions(config.name, r.partitions), timeout=30
        )
        self._topics[config.name] = grown
        return grown.to_info()  # type: ignore[no-any-return]

    async def _list_topics(self, r: Any) -> TopicList:
        return TopicList(tuple(c.to_info() for _, c in sorted(self._topics.items())))

    async def _describe_topic(self, r: DescribeTopic) -> TopicDescription:
        config = self._config(r.name)
        infos: list[PartitionInfo] = []
        for p in range(config.partitions):
            path = f"/broker/topics/{config.name}/{p}"
            try:
                infos.append(await self._partition(config.name, path).ask(DescribePartition()))
            except HeadwaterError:
                # A partition parked as failed (its files cannot be opened)
                # is described with its reason; the others answer as usual.
                node = self._node(path)
                if node is None or node.state != "failed":
                    raise
                infos.append(PartitionInfo(p, 0, 0, 0, "failed", node.last_failure))
        return TopicDescription(config.to_info(), tuple(infos))

    def _node(self, path: str) -> ActorSnapshot | None:
        return next((n for n in self.system.tree().walk() if n.path == path), None)

    async def _init_producer(self, r: InitProducer) -> ProducerIdentity:
        pid = await self.system.lookup("/broker/registry").ask(NewProducerId())
        return ProducerIdentity(pid, 0)

    async def _transaction_request(self, r: Any) -> Any:
        if isinstance(r, AddPartitionsToTxn):
            for tp in r.partitions:
                self._partition_path(tp.topic, tp.partition)
        if isinstance(r, SendOffsetsToTxn):
            await self._group(r.group, create=True)
        result = await ask_coordinator(self.system.lookup("/broker/transactions"), r)
        return Done() if result is None else result

    async def _group_request(self, r: Any) -> Any:
        if isinstance(r, JoinGroup):
            if not isinstance(r.topics, tuple | list) or not r.topics:
                raise InvalidArgument(f"topics={r.topics!r}; give one or more topic names")
            for topic in r.topics:
                self._config(topic)
        ref = await self._group(r.group, create=isinstance(r, JoinGroup | CommitOffsets))
        result = await ref.ask(GroupRequest(r, self._counts(), PUSH_SINK.get()))
        if isinstance(result, UnstableOffsetError):
            raise result  # answered as a value: the group actor carries on
        if isinstance(r, FetchCommitted):
            return CommittedOffsets(r.group, result)
        return Done() if result is None else result

    async def _list_groups(self, r: ListGroups) -> GroupList:
        groups = self.system.tree().walk()
        prefix = "/broker/groups/"
        names = {n.path[len(prefix) :] for n in groups if n.path.startswith(prefix)}
        names = {n for n in names if "/" not in n}
        return GroupList(tuple(sorted(names | set(self.shares.names()))))

    async def _describe_group(self, r: DescribeGroup) -> Any:
        if self.shares.exists(validate_group_name(r.group)):
            return await self.shares.describe(r.group)
        ref = await self._group(r.group, create=False)
        coordinator: GroupCoordinator = await ref.ask(GroupSnapshot())
        ends: dict[tuple[str, int], int] = {}
        for topic in set(coordinator.state.topic_partitions) | {
            t for t, _ in coordinator.state.committed
        }:
            if topic not in self._topics:
                continue
            for p in range(self._topics[topic].partitions):
                # Lag is measured against the last stable offset (DECISIONS #21).
                try:
                    log = await self._log(topic, p)
                    ends[(topic, p)] = self._cells[(topic, p)].snapshot.last_stable_offset(
                        log.visible_end
                    )
                except HeadwaterError:
                    node = self._node(f"/broker/topics/{topic}/{p}")
                    if node is None or node.state != "failed":
                        raise
        return coordinator.describe(ends)

    async def _tree(self, r: GetTree) -> TreeSnapshot:
        return TreeSnapshot(self.system.tree().as_dict())

    async def retention(self) -> int:
        """Apply retention (and compaction, for compacted topics) to every
        partition now; returns the number of segments deleted."""
        removed = 0
        for name, config in list(self._topics.items()):
            for p in range(config.partitions):
                try:
                    ref = self.system.lookup(f"/broker/topics/{name}/{p}")
                    removed += len(await ref.ask(RunRetention()))
                    if config.compacted:
                        await ref.ask(RunCompaction(), timeout=600)
                except HeadwaterError:
                    continue
        return removed

    _handlers: ClassVar[dict[type, Any]] = {
        Produce: _produce,
        Fetch: _fetch,
        InitTransactions: _transaction_request,
        AddPartitionsToTxn: _transaction_request,
        EndTxn: _transaction_request,
        SendOffsetsToTxn: _transaction_request,
        DescribeTransaction: _transaction_request,
        ListTransactions: _transaction_request,
        ListOffset: _list_offset,
        CreateTopic: _create_topic,
        DeleteTopic: _delete_topic,
        AddPartitions: _add_partitions,
        ListTopics: _list_topics,
        DescribeTopic: _describe_topic,
        InitProducer: _init_producer,
        JoinGroup: _group_request,
        Heartbeat: _group_request,
        ReleasePartitions: _group_request,
        LeaveGroup: _group_request,
        SyncGroup: _group_request,
        CommitOffsets: _group_request,
        FetchCommitted: _group_request,
        ListGroups: _list_groups,
        DescribeGroup: _describe_group,
        GetTree: _tree,
        ShareSubscribe: lambda self, r: self.shares.subscribe(r),
        ShareFetch: lambda self, r: self.shares.fetch(r),
        ShareAck: lambda self, r: self.shares.ack(r),
        ShareLeave: lambda self, r: self.shares.leave(r),
    }


def _some(names: list[str], shown: int = 5) -> str:
    """``a, b, c, d, e and 35 more``: a few names, and how many others."""
    if not names:
        return "none"
    head = ", ".join(names[:shown])
    return head if len(names) <= shown else f"{head} and {len(names) - shown} more"


_OP_NAMES = {
    kind: re.sub(r"(?<!^)(?=[A-Z])", "_", kind.__name__).lower() for kind in BrokerService._handlers
}
