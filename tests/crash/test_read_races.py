"""Catch-up reads in worker threads against retention and compaction, on real
files with real threads (issue 11 item 2).

Readers start at offset 0 again and again while a writer appends, retention
deletes the oldest segments and compaction rewrites sealed ones. Every read
must return whole records whose checksums hold and whose offsets are what the
reader asked for (or a compacted gap after it), or a typed
:class:`OffsetOutOfRangeError`; never an ``OSError`` or another file's bytes.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from headwater import OffsetOutOfRangeError
from headwater._protocol import CreateTopic, Fetch, Produce
from headwater.broker import open_broker
from headwater.journal import (
    HEADER_SIZE,
    AsyncLog,
    LogConfig,
    RealFileSystem,
    encode_record,
    iter_records,
    open_log,
)
from headwater.journal._batch import decode_record_events, encode_events
from headwater.journal._record import ATTR_COMPACTED

pytestmark = pytest.mark.crash

RECORDS = 10_000  # records the writer appends (about 2.5 MB in 16 KiB segments)
PASSES = 5  # full passes from offset 0 each reader makes at least
BOUND = 90.0  # seconds; the run takes about 10 on a shared 2-core machine


def payload(offset: int) -> bytes:
    """The payload stored at ``offset``: seeded, 100..399 bytes."""
    return random.Random(offset).randbytes(100 + offset % 300)


def check(data: bytes, offset: int) -> int:
    """Check one read from ``offset``; return the offset to read next."""
    records = iter_records(data)  # checks every record's CRC-32C
    assert records, f"empty read at {offset}"
    expected = offset
    for header, record in records:
        assert 1 == header.count
        if header.attributes & ATTR_COMPACTED:
            assert header.base_offset >= expected, (header, expected)
        else:
            assert header.base_offset == expected, (header, expected)
        assert payload(header.base_offset) == bytes(record[HEADER_SIZE:])
        expected = header.next_offset
    return expected


def thinned(log: AsyncLog, base: int, end: int) -> list[bytes]:
    """Compact ``[base, end)``: keep its ends and every third offset
    (blocking: reads through the thread-safe ``Log.read``)."""
    out: list[bytes] = []
    offset = base
    while offset < end:
        data = log.log.read(offset, 1 << 20, end)
        for header, _record in iter_records(data):
            o = header.base_offset
            if o in (base, end - 1) or o % 3 == 0:
                out.append(
                    encode_record(
                        payload(o),
                        count=1,
                        base_offset=o,
                        attributes=ATTR_COMPACTED,
                        append_time=header.append_time,
                    )
                )
            offset = header.next_offset
    return out


async def test_reads_from_the_start_survive_retention_and_compaction(tmp_path: Path) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    config = LogConfig(
        durability="interval",
        interval_ms=5,
        segment_bytes=16 * 1024,
        retention_bytes=400 * 1024,
    )
    stats = {"reads": 0, "out_of_range": 0, "retained": 0, "compacted": 0}
    passes: list[int] = []
    with trio.fail_after(BOUND):
        async with open_log(str(tmp_path / "p0"), config=config, fs=RealFileSystem()) as log:
            written = trio.Event()

            async def writer() -> None:
                for i in range(RECORDS):
                    log.write(encode_record(payload(i), count=1))
                    if i % 8 == 0:
                        await trio.lowlevel.checkpoint()
                await log.sync()
                written.set()

            async def maintenance() -> None:
                compacted: set[int] = set()
                while not (written.is_set() and min(passes) >= PASSES):
                    stats["retained"] += len(log.log.apply_retention())
                    for base, end in log.log.sealed_segments():
                        if base not in compacted and end - base > 2:
                            records = await log.run_blocking(thinned, log, base, end)
                            await log.replace_segment(base, records)
                            compacted.add(base)
                            stats["compacted"] += 1
                            break
                    await trio.sleep(0.002)

            async def reader(me: int, read: Callable[[int], Awaitable[bytes]]) -> None:
                while not (written.is_set() and passes[me] >= PASSES):
                    offset = 0
                    while offset < log.visible_end:
                        try:
                            data = await read(offset)
                        except OffsetOutOfRangeError:
                            stats["out_of_range"] += 1
                            offset = log.earliest_offset
                            continue
                        stats["reads"] += 1
                        offset = check(data, offset)
                    passes[me] += 1
                    await trio.sleep(0.001)

            async def big(offset: int) -> bytes:
                # AsyncLog.read: a worker thread when far from the tail.
                return await log.read(offset, 256 * 1024)

            async def small(offset: int) -> bytes:
                # Many short reads straight in a thread: the most pin churn.
                return await trio.to_thread.run_sync(log.log.read, offset, 2048, log.visible_end)

            readers = [big, small, small, small]
            passes.extend(0 for _ in readers)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                nursery.start_soon(maintenance)
                for me, read in enumerate(readers):
                    nursery.start_soon(reader, me, read)
    assert stats["retained"] > 0, stats
    assert stats["compacted"] > 0, stats
    assert stats["reads"] > 100 * len(readers), stats
    assert len(os.listdir("/proc/self/fd")) == fds_before  # no handle leaked


class ThreadNotingFileSystem(RealFileSystem):
    """Real files; notes which thread renames a rewritten segment into place."""

    def __init__(self) -> None:
        self.rewrite_threads: list[bool] = []  # True: on the event loop's thread

    def rename(self, src: str, dst: str) -> None:
        if src.endswith(".log.tmp"):
            self.rewrite_threads.append(threading.current_thread() is threading.main_thread())
        super().rename(src, dst)


async def test_broker_compacts_off_the_event_loop_while_fetches_read_from_the_start(
    tmp_path: Path,
) -> None:
    """A compacted topic's partition rewrites its segments in worker threads
    while fetches read the partition from offset 0 again and again: every
    fetched event is the one produced at its offset, offsets only rise."""
    fs = ThreadNotingFileSystem()
    keys = 40

    def event(offset: int) -> tuple[int, bytes, bytes, tuple[()]]:
        return (offset, f"k{offset % keys}".encode(), b"%d" % offset + b"." * 60, ())

    fetched = 0
    with trio.fail_after(BOUND):
        async with open_broker(
            str(tmp_path), fs=fs, segment_bytes=16 * 1024, retention_check_interval=3600
        ) as broker:
            await broker.handle(CreateTopic("c", compacted=True))
            for base in range(0, 8_000, 10):
                payload = encode_events([event(o) for o in range(base, base + 10)])
                await broker.handle(Produce("c", 0, encode_record(payload, count=10)))
            compacted = trio.Event()

            async def compact() -> None:
                await broker.service.retention()
                compacted.set()

            async def fetch_from_start() -> None:
                nonlocal fetched
                passes = 0
                while not (compacted.is_set() and passes >= 2):
                    offset = 0
                    while True:
                        got = await broker.handle(Fetch("c", 0, offset, 128 * 1024, 0))
                        if not got.records:
                            break
                        for header, record in iter_records(got.records):
                            for e in decode_record_events(header, record, topic="c", partition=0):
                                assert e.offset >= offset
                                assert event(e.offset)[1:3] == (e.key, e.value)
                                offset = e.offset + 1
                                fetched += 1
                            offset = max(offset, header.next_offset)
                    passes += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(compact)
                nursery.start_soon(fetch_from_start)
                nursery.start_soon(fetch_from_start)
    assert fs.rewrite_threads  # segments were rewritten ...
    assert not any(fs.rewrite_threads)  # ... never on the event loop's thread
    assert fetched > 8_000
