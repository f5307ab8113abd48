"""A broker with more partitions than its cap on open segment files
(``max_open_files``): every partition serves produce and fetch, the open
files stay under the cap between requests, and everything survives a
reopen and a power loss."""

from __future__ import annotations

import trio

from headwater._protocol import CreateTopic, DescribeTopic, Fetch, Produce
from headwater.broker import open_broker
from headwater.journal import HEADER_SIZE, SimulatedFileSystem, encode_record, iter_records

DATA = "/data"
PARTITIONS = 30
CAP = 6


def batch(tag: bytes) -> bytes:
    return encode_record(tag, count=1)


def payloads(records: bytes) -> list[bytes]:
    return [bytes(r[HEADER_SIZE:]) for _, r in iter_records(records)]


def open_partition_files(fs: SimulatedFileSystem) -> int:
    """Segment files of partitions open now (state journals not counted)."""
    paths = [path for path, _ in fs._handles.values()]
    return sum(1 for p in paths if p.startswith(DATA + "/topics/") and p.endswith(".log"))


async def test_more_partitions_than_open_files(autojump_clock: trio.abc.Clock) -> None:
    """30 partitions under a cap of 6: each takes writes and reads in turn,
    at most 6 partition files stay open, and a reopened broker (and one after
    a power loss) has every event."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs, max_open_files=CAP) as broker:
        await broker.handle(CreateTopic("wide", partitions=PARTITIONS))
        assert open_partition_files(fs) <= CAP
        for rnd in range(3):
            for p in range(PARTITIONS):
                await broker.handle(Produce("wide", p, batch(b"%d-%d" % (p, rnd))))
                assert open_partition_files(fs) <= CAP + 1  # the one just synced
            for p in range(PARTITIONS):
                got = await broker.handle(Fetch("wide", p, 0, max_wait=0))
                assert [b"%d-%d" % (p, r) for r in range(rnd + 1)] == payloads(got.records)
                assert open_partition_files(fs) <= CAP
        assert broker.service.settings.files.evicted > 0
    assert 0 == open_partition_files(fs)
    for crash in (False, True):
        if crash:
            fs.crash()
        async with open_broker(DATA, fs=fs, max_open_files=CAP) as broker:
            assert open_partition_files(fs) <= CAP
            desc = await broker.handle(DescribeTopic("wide"))
            assert [3] * PARTITIONS == [p.next_offset for p in desc.partitions]
            for p in range(PARTITIONS):
                got = await broker.handle(Fetch("wide", p, 0, max_wait=0))
                assert [b"%d-%d" % (p, r) for r in range(3)] == payloads(got.records)
            assert open_partition_files(fs) <= CAP
