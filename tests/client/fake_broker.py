"""A small in-memory broker answering the ``_protocol`` messages, for client tests.

It stores produced records as they come (patched with their offsets), checks
idempotence with the broker's own ``ProducerStates`` and runs groups with the
broker's ``GroupCoordinator``. Fault hooks let tests make produce requests fail.
The real broker replaces it once merged: tests only use the public client API.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import attrs
import trio

from headwater import _protocol as p
from headwater._errors import (
    HeadwaterError,
    InvalidArgument,
    OffsetOutOfRangeError,
    TopicExistsError,
    UnknownGroupError,
    UnknownPartitionError,
    UnknownTopicError,
)
from headwater.broker._config import validate_topic_name
from headwater.broker._group import GroupCoordinator
from headwater.broker._idempotence import Duplicate, ProducerStates
from headwater.client._channel import LocalChannel
from headwater.journal._batch import decode_events
from headwater.journal._record import HEADER_SIZE, RecordHeader, decode_header, patch_record


@attrs.define
class FakePartition:
    """One partition: records (bytes, patched) with their headers."""

    topic: str
    index: int
    records: list[tuple[RecordHeader, bytes]] = attrs.field(factory=list)
    next_offset: int = 0
    states: ProducerStates = attrs.field(factory=ProducerStates)
    changed: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class FakeBroker:
    """The fake (see the module docs). ``requests`` counts requests by type."""

    topics: dict[str, tuple[p.TopicInfo, list[FakePartition]]] = attrs.field(factory=dict)
    groups: dict[str, GroupCoordinator] = attrs.field(factory=dict)
    sinks: dict[str, p.PushSink] = attrs.field(factory=dict)
    requests: dict[str, int] = attrs.field(factory=dict)
    produce_faults: list[tuple[HeadwaterError, bool]] = attrs.field(factory=list)
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    # ------------------------------------------------------------ hooks

    def fail_produces(
        self, n: int, error: Callable[[], HeadwaterError], *, after_store: bool = False
    ) -> None:
        """Fail the next ``n`` produce requests with ``error()``; with
        ``after_store`` the batch is stored first (a lost response)."""
        self.produce_faults.extend((error(), after_store) for _ in range(n))

    async def values(self, topic: str, partition: int) -> list[bytes | None]:
        """:meth:`stored_values`, awaitable like the real broker's wrapper."""
        return self.stored_values(topic, partition)

    def channel(self) -> LocalChannel:
        """A channel to this broker."""
        return LocalChannel(self.handle)

    def stored_values(self, topic: str, partition: int) -> list[bytes | None]:
        """Raw values of every stored event of a partition, in offset order."""
        part = self.topics[topic][1][partition]
        out: list[bytes | None] = []
        for header, record in part.records:
            events = decode_events(
                record[HEADER_SIZE:],
                topic=topic,
                partition=partition,
                base_offset=header.base_offset,
                base_timestamp=header.first_timestamp,
            )
            out.extend(e.value for e in events)
        return out

    # ------------------------------------------------------------ dispatch

    async def handle(self, request: Any) -> Any:
        """Answer one request message."""
        name = type(request).__name__
        self.requests[name] = self.requests.get(name, 0) + 1
        now = trio.current_time()
        for group in self.groups.values():
            group.tick(now)
        method = getattr(self, "_" + name)
        try:
            result = method(request)
            if isinstance(request, p.JoinGroup | p.Heartbeat):
                sink = p.PUSH_SINK.get()
                if sink is not None:
                    self.sinks[result.member_id] = sink
        finally:
            self._push_notices()
        if isinstance(result, p.FetchResult) and not result.records and request.max_wait > 0:
            part = self._partition(request.topic, request.partition)
            with trio.move_on_after(request.max_wait):
                await part.changed.wait()
            result = method(request)
        await trio.lowlevel.checkpoint()
        return result

    def _push_notices(self) -> None:
        """Push each group's changed memberships, as the real group actor does."""
        for group in self.groups.values():
            for notice in group.take_notices():
                sink = self.sinks.get(notice.member_id)
                if sink is not None:
                    sink(notice)

    def _topic(self, name: str) -> tuple[p.TopicInfo, list[FakePartition]]:
        try:
            return self.topics[name]
        except KeyError:
            raise UnknownTopicError(f"no topic {name!r}") from None

    def _partition(self, topic: str, partition: int) -> FakePartition:
        parts = self._topic(topic)[1]
        if not 0 <= partition < len(parts):
            raise UnknownPartitionError(f"{topic!r} has no partition {partition}")
        return parts[partition]

    def _CreateTopic(self, r: p.CreateTopic) -> p.TopicInfo:
        validate_topic_name(r.name)
        if r.name in self.topics:
            raise TopicExistsError(f"topic {r.name!r} exists")
        info = p.TopicInfo(
            r.name,
            r.partitions,
            r.retention_ms,
            r.retention_bytes,
            r.compacted,
            r.durability or "always",
        )
        parts = [FakePartition(r.name, i) for i in range(r.partitions)]
        self.topics[r.name] = (info, parts)
        return info

    def _DeleteTopic(self, r: p.DeleteTopic) -> p.Done:
        self._topic(r.name)
        del self.topics[r.name]
        return p.Done()

    def _ListTopics(self, r: p.ListTopics) -> p.TopicList:
        return p.TopicList(tuple(info for info, _ in self.topics.values()))

    def _DescribeTopic(self, r: p.DescribeTopic) -> p.TopicDescription:
        info, parts = self._topic(r.name)
        return p.TopicDescription(
            info,
            tuple(
                p.PartitionInfo(
                    x.index,
                    x.records[0][0].base_offset if x.records else x.next_offset,
                    x.next_offset,
                    sum(len(b) for _, b in x.records),
                )
                for x in parts
            ),
        )

    def _InitProducer(self, r: p.InitProducer) -> p.ProducerIdentity:
        return p.ProducerIdentity(next(self._ids), 0)

    def _Produce(self, r: p.Produce) -> p.ProduceResult:
        part = self._partition(r.topic, r.partition)
        fault = self.produce_faults.pop(0) if self.produce_faults else None
        if fault is not None and not fault[1]:
            raise fault[0]
        header = decode_header(r.record)
        if not isinstance(header, RecordHeader):
            raise InvalidArgument(f"bad record: {header}")
        pid, epoch, seq = header.producer_id, header.producer_epoch, header.base_sequence
        decision = part.states.check(pid, epoch, seq, header.count)
        if isinstance(decision, Duplicate):
            result = p.ProduceResult(r.topic, r.partition, decision.base_offset, 0, True)
        else:
            base = part.next_offset
            append_time = int(trio.current_time() * 1000)
            record = bytes(patch_record(r.record, base, append_time))
            part.records.append((attrs.evolve(header, base_offset=base), record))
            part.next_offset += header.count
            part.states.record(pid, epoch, seq, header.count, base)
            part.changed.set()
            part.changed = trio.Event()
            result = p.ProduceResult(r.topic, r.partition, base, append_time)
        if fault is not None:
            raise fault[0]
        return result

    def _Fetch(self, r: p.Fetch) -> p.FetchResult:
        part = self._partition(r.topic, r.partition)
        if not 0 <= r.offset <= part.next_offset:
            raise OffsetOutOfRangeError(
                f"offset {r.offset} is outside 0..{part.next_offset} of {r.topic}/{r.partition}"
            )
        out = bytearray()
        for header, record in part.records:
            if header.base_offset + header.count <= r.offset:
                continue
            if out and len(out) + len(record) > r.max_bytes:
                break
            out += record
        earliest = part.records[0][0].base_offset if part.records else part.next_offset
        return p.FetchResult(r.topic, r.partition, bytes(out), part.next_offset, earliest)

    def _ListOffset(self, r: p.ListOffset) -> p.OffsetResult:
        part = self._partition(r.topic, r.partition)
        if r.position == "earliest":
            offset = part.records[0][0].base_offset if part.records else part.next_offset
        elif r.position == "latest":
            offset = part.next_offset
        else:
            offset = part.next_offset
            for header, record in part.records:
                if header.max_timestamp < int(r.position):
                    continue
                events = decode_events(
                    record[HEADER_SIZE:],
                    topic=r.topic,
                    partition=r.partition,
                    base_offset=header.base_offset,
                    base_timestamp=header.first_timestamp,
                )
                offset = next(e.offset for e in events if e.timestamp >= int(r.position))
                break
        return p.OffsetResult(r.topic, r.partition, offset)

    # ------------------------------------------------------------ groups

    def _group(self, name: str) -> GroupCoordinator:
        try:
            return self.groups[name]
        except KeyError:
            raise UnknownGroupError(f"no group {name!r}") from None

    def _JoinGroup(self, r: p.JoinGroup) -> p.Membership:
        group = self.groups.setdefault(r.group, GroupCoordinator.new(r.group))
        counts = {t: self._topic(t)[0].partitions for t in r.topics}
        return group.join(
            r.topics,
            counts,
            trio.current_time(),
            member_id=r.member_id,
            client_id=r.client_id,
            session_timeout=r.session_timeout,
            rebalance_timeout=r.rebalance_timeout,
            protocol_type=r.protocol_type,
        )

    def _Heartbeat(self, r: p.Heartbeat) -> p.Membership:
        return self._group(r.group).heartbeat(r.member_id, r.generation, trio.current_time())

    def _ReleasePartitions(self, r: p.ReleasePartitions) -> p.Membership:
        return self._group(r.group).release(r.member_id, r.partitions, trio.current_time())

    def _LeaveGroup(self, r: p.LeaveGroup) -> p.Done:
        self._group(r.group).leave(r.member_id, trio.current_time())
        return p.Done()

    def _CommitOffsets(self, r: p.CommitOffsets) -> p.Done:
        group = self.groups.setdefault(r.group, GroupCoordinator.new(r.group))
        group.commit(r.member_id, r.generation, r.offsets)
        return p.Done()

    def _FetchCommitted(self, r: p.FetchCommitted) -> p.CommittedOffsets:
        group = self.groups.get(r.group)
        offsets = group.committed(r.partitions) if group is not None else ()
        return p.CommittedOffsets(r.group, offsets)

    def _ListGroups(self, r: p.ListGroups) -> p.GroupList:
        return p.GroupList(tuple(sorted(self.groups)))

    def _DescribeGroup(self, r: p.DescribeGroup) -> p.GroupDescription:
        ends = {(t, x.index): x.next_offset for t, (_, parts) in self.topics.items() for x in parts}
        return self._group(r.group).describe(ends)

    def _GetTree(self, r: p.GetTree) -> p.TreeSnapshot:
        return p.TreeSnapshot({"path": "/fake", "children": []})
