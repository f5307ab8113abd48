"""A partition whose files are damaged is parked as failed; the rest serves
(issue 11 point 3, DECISIONS #16). MockClock and the simulated disk; the same
with a real server process is in tests/crash/test_failed_partition_process.py."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
import trio

from headwater import CorruptionError, DataDirLockedError
from headwater import _protocol as p
from headwater.broker import open_broker
from headwater.broker._repair import repair_data_dir
from headwater.journal import SimulatedFileSystem
from headwater.journal._record import HEADER_SIZE, encode_record, iter_records
from headwater.supervision import ActorSnapshot

from .conftest import Connect

DATA = "/data"
SEG = f"{DATA}/topics/t/1/00000000000000000000.log"


async def _damaged_broker_files(connect: Connect) -> SimulatedFileSystem:
    """Topic t (3 partitions, 4 events each), then a flipped byte in the first
    record of partition 1 and its index gone, so the damage is found at open
    and lies before the clean checkpoint: interior damage."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker, connect(broker) as client:
        await client.create_topic("t", partitions=3)
        async with client.producer(max_batch_events=1) as producer:
            for i in range(4):
                for q in range(3):
                    await producer.send("t", f"v{i}".encode(), partition=q)
    fs.corrupt(SEG, HEADER_SIZE + 3)
    fs.remove(SEG.replace(".log", ".index"))
    return fs


async def test_damaged_partition_is_failed_and_the_others_serve(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """The damaged partition restarts 5 times (1.15 s) and is parked as failed:
    produce and fetch to it raise CorruptionError naming file and byte at once;
    the tree and topics describe say failed with the reason; producing to and
    consuming from the other partitions of the same topic works."""
    fs = await _damaged_broker_files(connect)
    async with open_broker(DATA, fs=fs) as broker, connect(broker) as client:
        start = trio.current_time()
        async with client.producer(max_batch_events=1) as producer:
            with trio.fail_after(5):  # used to time out: describe waited on partition 1
                stored = await producer.send("t", b"ok", partition=0)
                assert (0, 4) == (stored.partition, stored.offset)
                with pytest.raises(CorruptionError, match=f"{SEG}: corrupt data at byte 0"):
                    await producer.send("t", b"lost", partition=1)
        assert pytest.approx(1.15) == trio.current_time() - start
        failed_at = trio.current_time()
        for request in (
            p.Fetch("t", 1, 0, 1 << 20, 0),
            p.ListOffset("t", 1, "latest"),
            p.Produce("t", 1, encode_record(b"x", count=1)),
        ):
            with pytest.raises(CorruptionError, match="headwater repair --data-dir /data"):
                await client._ask(request)
        assert failed_at == trio.current_time()  # no waiting, no timeout
        desc = await client.describe_topic("t")
        states = [(info.partition, info.state) for info in desc.partitions]
        assert [(0, "serving"), (1, "failed"), (2, "serving")] == states
        assert desc.partitions[1].error is not None
        assert f"{SEG}: corrupt data at byte 0" in desc.partitions[1].error
        assert (0, 5) == (desc.partitions[0].earliest_offset, desc.partitions[0].next_offset)
        tree = ActorSnapshot.from_dict(await client.tree())
        nodes = {n.path: n for n in tree.walk()}
        assert "failed" == nodes["/broker/topics/t/1"].state
        assert "running" == nodes["/broker/topics/t/0"].state
        assert "running" == nodes["/broker/topics/t"].state
        assert 5 == nodes["/broker/topics/t/1"].restarts
        fetched = await client._ask(p.Fetch("t", 2, 0, 1 << 20, 0))
        assert [0, 1, 2, 3] == [h.base_offset for h, _ in iter_records(fetched.records)]


async def test_stray_garbage_log_file_fails_once_and_repair_removes_it(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """A garbage ``.log`` file in a partition directory: the partition is
    parked as failed after 5 restarts and stays so (no restart loop), the
    other partitions serve; the repair removes that file only and the next
    broker serves every event."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker, connect(broker) as client:
        await client.create_topic("t", partitions=2)
        async with client.producer() as producer:
            for i in range(5):
                await producer.send("t", f"v{i}".encode(), partition=0)
    stray = f"{DATA}/topics/t/0/{99:020d}.log"
    handle = fs.open(stray)
    fs.write(handle, b"\x00garbage" * 40)
    fs.close(handle)
    async with open_broker(DATA, fs=fs) as broker, connect(broker) as client:
        await trio.sleep(60)
        node = next(n for n in broker.tree().walk() if n.path == "/broker/topics/t/0")
        assert ("failed", 5) == (node.state, node.restarts)
        assert node.last_failure is not None
        assert stray in node.last_failure
        stored = await client._ask(p.Produce("t", 1, encode_record(b"ok", count=1)))
        assert 0 == stored.base_offset
    results = repair_data_dir(DATA, apply=True, fs=fs)
    assert [("t", 0, ["stray"]), ("t", 1, [])] == [
        (r.topic, r.partition, [d.kind for d in r.report.damages]) for r in results
    ]
    assert not fs.exists(stray)
    async with open_broker(DATA, fs=fs) as broker, connect(broker) as client:
        fetched = await client._ask(p.Fetch("t", 0, 0, 1 << 20, 0))
        assert 5 == sum(h.count for h, _ in iter_records(fetched.records))


def test_repair_refuses_a_data_directory_in_use(tmp_path: Path) -> None:
    """While another process holds the data directory's lock (a running
    broker), repair refuses in one line and changes nothing."""
    (tmp_path / "topics").mkdir()
    fd = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"4242")
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(DataDirLockedError, match=r"process 4242 holds .*; stop it"):
            repair_data_dir(str(tmp_path), apply=True)
    finally:
        os.close(fd)
    assert [] == repair_data_dir(str(tmp_path), apply=True)


async def test_a_group_whose_journal_is_damaged_fails_alone(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A consumer group whose state journal cannot be read is parked as
    failed like a partition: its requests get the CorruptionError at once,
    other groups and every topic serve, and the broker stays up (it used to
    restart the group for ever, or give up the whole broker)."""
    fs = SimulatedFileSystem()
    commit = p.PartitionOffset("t", 0, 1)
    async with open_broker(DATA, fs=fs) as broker:
        await broker.handle(p.CreateTopic("t", 1, None, None, False, None))
        await broker.handle(p.Produce("t", 0, encode_record(b"x", count=1)))
        for group in ("g", "h"):
            await broker.handle(p.CommitOffsets(group, None, -1, (commit,)))
    journal = f"{DATA}/meta/groups/g/log/{0:020d}.log"
    fs.corrupt(journal, HEADER_SIZE + 3)
    fs.remove(journal.replace(".log", ".index"))
    async with open_broker(DATA, fs=fs) as broker:
        with trio.fail_after(5):
            with pytest.raises(CorruptionError, match="corrupt data at byte 0"):
                await broker.handle(p.FetchCommitted("g", ()))
        await trio.sleep(120)
        node = next(n for n in broker.tree().walk() if n.path == "/broker/groups/g")
        assert "failed" == node.state
        assert "running" == broker.tree().walk()[0].state
        fetched = await broker.handle(p.FetchCommitted("h", ()))
        assert (commit,) == fetched.offsets
        assert (
            1 == (await broker.handle(p.Produce("t", 0, encode_record(b"y", count=1)))).base_offset
        )
