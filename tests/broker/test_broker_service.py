"""The embedded broker through its request handler (the same one TCP uses):
topics, produce, fetch, idempotence, groups, restarts and reopen."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from headwater import (
    DataDirLockedError,
    InvalidArgument,
    InvalidTopicName,
    OffsetOutOfRangeError,
    StaleGenerationError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownTopicError,
)
from headwater._protocol import (
    CommitOffsets,
    CreateTopic,
    DeleteTopic,
    DescribeGroup,
    DescribeTopic,
    Fetch,
    FetchCommitted,
    Heartbeat,
    InitProducer,
    JoinGroup,
    LeaveGroup,
    ListOffset,
    ListTopics,
    PartitionOffset,
    Produce,
)
from headwater.broker import open_broker
from headwater.journal import HEADER_SIZE, SimulatedFileSystem, encode_record, iter_records

DATA = "/data"


def batch(tag: bytes, count: int = 1, ts: int = 0, pid: int = -1, seq: int = -1) -> bytes:
    return encode_record(
        tag,
        count=count,
        first_timestamp=ts,
        max_timestamp=ts,
        producer_id=pid,
        producer_epoch=0 if pid >= 0 else -1,
        base_sequence=seq,
    )


def payloads(records: bytes) -> list[tuple[int, bytes]]:
    return [(h.base_offset, bytes(r[HEADER_SIZE:])) for h, r in iter_records(records)]


async def test_topics_produce_fetch_and_reopen(autojump_clock: trio.abc.Clock) -> None:
    """Create, produce, fetch in order; everything survives closing and reopening."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker:
        info = await broker.handle(CreateTopic("orders", partitions=2))
        assert (2, "always") == (info.partitions, info.durability)
        with pytest.raises(TopicExistsError):
            await broker.handle(CreateTopic("orders"))
        with pytest.raises(InvalidTopicName):
            await broker.handle(CreateTopic("bad/name"))
        offsets = []
        for i in range(5):
            r = await broker.handle(Produce("orders", 1, batch(b"e%d" % i, count=2)))
            offsets.append(r.base_offset)
        assert [0, 2, 4, 6, 8] == offsets
        got = await broker.handle(Fetch("orders", 1, 3, max_wait=0))
        assert [2, 4, 6, 8] == [o for o, _ in payloads(got.records)]
        assert 10 == got.high_watermark
        assert ["/broker/topics/orders/0", "/broker/topics/orders/1"] == [
            n.path for n in broker.tree().walk() if n.path.startswith("/broker/topics/orders/")
        ]
    async with open_broker(DATA, fs=fs) as broker:
        assert ["orders"] == [t.name for t in (await broker.handle(ListTopics())).topics]
        got = await broker.handle(Fetch("orders", 1, 0, max_wait=0))
        assert [b"e0", b"e1", b"e2", b"e3", b"e4"] == [p for _, p in payloads(got.records)]
        desc = await broker.handle(DescribeTopic("orders"))
        assert [0, 10] == [p.next_offset for p in desc.partitions]


async def test_bad_requests_are_typed_errors(autojump_clock: trio.abc.Clock) -> None:
    """Unknown topics and partitions, bad offsets and garbage batches are refused
    with specific errors, and nothing is written."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t", partitions=1))
        with pytest.raises(UnknownTopicError, match="'nope'"):
            await broker.handle(Produce("nope", 0, batch(b"x")))
        with pytest.raises(UnknownPartitionError, match=r"0\.\.0"):
            await broker.handle(Produce("t", 3, batch(b"x")))
        with pytest.raises(InvalidArgument, match="invalid batch"):
            await broker.handle(Produce("t", 0, b"garbage" * 20))
        with pytest.raises(OffsetOutOfRangeError):
            await broker.handle(Fetch("t", 0, 5, max_wait=0))
        assert 0 == (await broker.handle(DescribeTopic("t"))).partitions[0].next_offset


async def test_long_poll_fetch_wakes_on_produce(autojump_clock: trio.abc.Clock) -> None:
    """A fetch at the end waits (up to max_wait) and returns as soon as data lands."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t"))
        results = []

        async def consume() -> None:
            results.append(await broker.handle(Fetch("t", 0, 0, max_wait=10)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.sleep(2)
            await broker.handle(Produce("t", 0, batch(b"late")))
        assert [(0, b"late")] == payloads(results[0].records)
        assert 2.0 == trio.current_time()
        empty = await broker.handle(Fetch("t", 0, 1, max_wait=1.5))
        assert b"" == empty.records
        assert 3.5 == trio.current_time()


async def test_a_woken_long_poll_reads_without_another_task_switch(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Once new data wakes a waiting fetch, it reads and returns in that
    same task step (the wake-up was its checkpoint): one step, not two."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t"))
        results = []
        steps: list[str] = []

        async def consume() -> None:
            results.append(await broker.handle(Fetch("t", 0, 0, max_wait=10)))

        class Steps(trio.abc.Instrument):
            def before_task_step(self, task: trio.lowlevel.Task) -> None:
                if task.name.endswith("consume"):
                    steps.append(task.name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            instrument = Steps()
            trio.lowlevel.add_instrument(instrument)
            await broker.handle(Produce("t", 0, batch(b"new")))
        trio.lowlevel.remove_instrument(instrument)
        assert [(0, b"new")] == payloads(results[0].records)
        assert 1 == len(steps)


async def test_idempotent_retry_across_partition_kill(autojump_clock: trio.abc.Clock) -> None:
    """A retried batch (same producer id, epoch, sequence) is stored once, even
    when the partition actor was killed in between."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t"))
        pid = (await broker.handle(InitProducer())).producer_id
        first = await broker.handle(Produce("t", 0, batch(b"a", 2, pid=pid, seq=0)))
        await broker.kill("/broker/topics/t/0")
        again = await broker.handle(Produce("t", 0, batch(b"a", 2, pid=pid, seq=0)))
        assert (0, False) == (first.base_offset, first.duplicate)
        assert (0, True) == (again.base_offset, again.duplicate)
        nxt = await broker.handle(Produce("t", 0, batch(b"b", 1, pid=pid, seq=2)))
        assert 2 == nxt.base_offset
        got = await broker.handle(Fetch("t", 0, 0, max_wait=0))
        assert [(0, b"a"), (2, b"b")] == payloads(got.records)


async def test_groups_join_rebalance_commit_and_fence(autojump_clock: trio.abc.Clock) -> None:
    """Two members split partitions; a member cannot commit another's partition; commits
    survive a group actor kill and a broker reopen; a silent member expires."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker:
        await broker.handle(CreateTopic("t", partitions=4))
        a = await broker.handle(JoinGroup("g", ("t",), session_timeout=5))
        b = await broker.handle(JoinGroup("g", ("t",), session_timeout=5))
        a = await broker.handle(Heartbeat("g", a.member_id, a.generation))
        owned = sorted(a.assignment + b.assignment, key=lambda tp: tp.partition)
        assert [0, 1, 2, 3] == [tp.partition for tp in owned]
        assert a.generation == b.generation
        mine, theirs = a.assignment[0].partition, b.assignment[0].partition
        with pytest.raises(StaleGenerationError, match="does not own"):
            await broker.handle(
                CommitOffsets("g", a.member_id, a.generation, (PartitionOffset("t", theirs, 5),))
            )
        await broker.handle(
            CommitOffsets("g", a.member_id, a.generation, (PartitionOffset("t", mine, 5),))
        )
        await broker.kill("/broker/groups/g")
        got = await broker.handle(FetchCommitted("g"))
        assert [PartitionOffset("t", mine, 5)] == list(got.offsets)
        # b stops heartbeating; a keeps going and inherits everything.
        for _ in range(4):
            await trio.sleep(2)
            a = await broker.handle(Heartbeat("g", a.member_id, a.generation))
        assert 4 == len(a.assignment)
        desc = await broker.handle(DescribeGroup("g"))
        assert [a.member_id] == [m.member_id for m in desc.members]
        await broker.handle(LeaveGroup("g", a.member_id))
    async with open_broker(DATA, fs=fs) as broker:
        got = await broker.handle(FetchCommitted("g"))
        assert [PartitionOffset("t", mine, 5)] == list(got.offsets)


async def test_list_offsets_and_delete(autojump_clock: trio.abc.Clock) -> None:
    """earliest/latest/timestamp lookups; deleting a topic removes its actors and data."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker:
        await broker.handle(CreateTopic("t"))
        for i in range(5):
            await broker.handle(Produce("t", 0, batch(b"x", ts=100 * i)))
        assert 0 == (await broker.handle(ListOffset("t", 0, "earliest"))).offset
        assert 5 == (await broker.handle(ListOffset("t", 0, "latest"))).offset
        assert 3 == (await broker.handle(ListOffset("t", 0, 250))).offset
        await broker.handle(DeleteTopic("t"))
        with pytest.raises(UnknownTopicError):
            await broker.handle(Fetch("t", 0, 0))
        assert not fs.exists(f"{DATA}/topics/t")
        await trio.testing.wait_all_tasks_blocked()
        assert [] == [n for n in broker.tree().walk() if n.path.startswith("/broker/topics/t")]


async def test_retention_by_size_and_time(autojump_clock: trio.abc.Clock) -> None:
    """The retention worker deletes whole old segments by size and by age; reads
    from earliest then start at the new first offset."""
    now = [1_000_000]
    fs = SimulatedFileSystem()
    async with open_broker(
        DATA, fs=fs, segment_bytes=400, clock=lambda: now[0], retention_check_interval=5.0
    ) as broker:
        await broker.handle(CreateTopic("sized", retention_bytes=800))
        await broker.handle(CreateTopic("aged", retention_ms=60_000))
        for i in range(20):
            await broker.handle(Produce("sized", 0, batch(b"s%03d" % i)))
            await broker.handle(Produce("aged", 0, batch(b"a%03d" % i)))
        await trio.sleep(6)  # one retention pass
        sized = (await broker.handle(DescribeTopic("sized"))).partitions[0]
        # 66-byte records, 6 per 400-byte segment: 20 records fill segments
        # 0, 6, 12 and 18 (1,320 bytes); dropping 0 (924) and 6 (528) gets
        # under retention_bytes=800.
        assert (12, 20, 8 * 66) == (sized.earliest_offset, sized.next_offset, sized.size_bytes)
        got = await broker.handle(Fetch("sized", 0, sized.earliest_offset, max_wait=0))
        assert sized.earliest_offset == payloads(got.records)[0][0]
        with pytest.raises(OffsetOutOfRangeError):
            await broker.handle(Fetch("sized", 0, 0, max_wait=0))
        aged = (await broker.handle(DescribeTopic("aged"))).partitions[0]
        assert 0 == aged.earliest_offset
        now[0] += 120_000
        await broker.handle(Produce("aged", 0, batch(b"new")))
        await trio.sleep(5)
        aged = (await broker.handle(DescribeTopic("aged"))).partitions[0]
        # 66-byte records, 6 per 400-byte segment: every segment but the active
        # one (offsets 18..20) is past retention.
        assert 18 == aged.earliest_offset


async def test_group_journal_snapshots_keep_commits(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group journals snapshot (so commits do not grow them forever) and the
    state after a reopen is the same as before."""
    from headwater.broker._actors import GroupActor, GroupSnapshot
    from headwater.broker._group import state_from_plain, state_to_plain

    monkeypatch.setattr(GroupActor, "snapshot_every", 5)
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker:
        await broker.handle(CreateTopic("t", partitions=2))
        m = await broker.handle(JoinGroup("g", ("t",), session_timeout=60))
        for i in range(23):
            await broker.handle(
                CommitOffsets("g", m.member_id, m.generation, (PartitionOffset("t", i % 2, i),))
            )
        coordinator = await broker.system.lookup("/broker/groups/g").ask(GroupSnapshot())
        before = coordinator.state
        assert before == state_from_plain(state_to_plain(before))
    assert fs.exists(f"{DATA}/meta/groups/g/snapshot")
    async with open_broker(DATA, fs=fs) as broker:
        got = await broker.handle(FetchCommitted("g"))
        assert [PartitionOffset("t", 0, 22), PartitionOffset("t", 1, 21)] == list(got.offsets)
        desc = await broker.handle(DescribeGroup("g"))
        assert (before.generation, [m.member_id]) == (
            desc.generation,
            [x.member_id for x in desc.members],
        )


async def test_one_broker_per_simulated_data_dir(autojump_clock: trio.abc.Clock) -> None:
    """The simulated disk has the data-directory lock too: a second broker on
    the same directory of the same disk is refused while the first is open;
    another directory, another disk, or after the first closes (or a power
    loss) is fine."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs):
        with pytest.raises(DataDirLockedError) as info:
            async with open_broker(DATA, fs=fs):
                pass  # pragma: no cover - must not open
        assert DATA == info.value.path
        async with open_broker("/other", fs=fs), open_broker(DATA, fs=SimulatedFileSystem()):
            pass
    async with open_broker(DATA, fs=fs):
        pass
    handle = fs.lock(DATA + "/.lock")
    fs.crash()  # a power loss ends the holder
    async with open_broker(DATA, fs=fs):
        pass
    fs.close(handle)


async def test_unknown_topic_names_a_few_others_and_ascii_is_said(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An unknown topic's error lists at most five existing names and counts
    the rest; a non-ASCII name is refused saying ASCII."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        for i in range(40):
            await broker.handle(CreateTopic(f"t{i:02d}", 1))
        with pytest.raises(UnknownTopicError) as info:
            await broker.handle(DescribeTopic("nope"))
        assert (
            "topic 'nope' does not exist; create it first "
            "(existing: t00, t01, t02, t03, t04 and 35 more)"
        ) == str(info.value)
        with pytest.raises(InvalidTopicName) as bad:
            await broker.handle(CreateTopic("café", 1))
        assert "contains 'é'; use only ASCII letters (A-Z, a-z), digits" in str(bad.value)


async def test_fetch_overtaken_by_retention_is_out_of_range_naming_the_partition(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention removing the offset between the fetch's range check and its
    read (a catch-up read in a worker thread) gives a typed out-of-range
    error naming the topic, the partition and where it now starts."""
    from headwater.journal import AsyncLog

    read = AsyncLog.read

    async def retention_first(self: AsyncLog, *args: Any, **kwargs: Any) -> bytes:
        self.log.apply_retention()
        return await read(self, *args, **kwargs)

    async with open_broker(
        DATA, fs=SimulatedFileSystem(), segment_bytes=400, retention_check_interval=3600
    ) as broker:
        await broker.handle(CreateTopic("sized", retention_bytes=800))
        for i in range(20):
            await broker.handle(Produce("sized", 0, batch(b"s%03d" % i)))
        monkeypatch.setattr(AsyncLog, "read", retention_first)
        with pytest.raises(OffsetOutOfRangeError) as info:
            await broker.handle(Fetch("sized", 0, 0, max_wait=0))
    assert "offset 0 of sized/0 was removed by retention" in str(info.value)
    assert "now starts at 12" in str(info.value)
    assert DATA not in str(info.value)
