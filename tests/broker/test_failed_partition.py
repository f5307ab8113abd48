"""A partition whose files are damaged is parked as failed; the rest serves
(issue 11 point 3, DECISIONS #16). MockClock and the simulated disk; the same
with a real server process is in tests/crash/test_failed_partition_process.py."""

from __future__ import annotations

import pytest
import trio

from headwater import CorruptionError
from headwater import _protocol as p
from headwater.broker import open_broker
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
    """The damaged partition restarts 3 times (0.35 s) and is parked as failed:
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
        assert pytest.approx(0.35) == trio.current_time() - start
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
        assert 3 == nodes["/broker/topics/t/1"].restarts
        fetched = await client._ask(p.Fetch("t", 2, 0, 1 << 20, 0))
        assert [0, 1, 2, 3] == [h.base_offset for h, _ in iter_records(fetched.records)]
