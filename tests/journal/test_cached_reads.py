"""Catch-up reads of a log on a blocking disk: bytes the page cache holds are
read on the event loop's thread (a hop to a worker thread per pushed fetch
cost more than the copy), anything else still in a worker thread, and both
ways return the same records."""

from __future__ import annotations

import threading

from headwater.journal import LogConfig, SimulatedFileSystem
from headwater.journal._async import open_log
from headwater.journal._record import HEADER_SIZE, encode_record, iter_records

DIR = "/log"


class CachingFileSystem(SimulatedFileSystem):
    """A simulated disk that says it blocks (so reads may go to a thread),
    with a page cache the test switches on and off; notes which threads read."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.cached = True
        self.loop_thread = threading.current_thread()
        self.reads_off_loop = 0

    def pread(self, handle: int, size: int, offset: int) -> bytes:
        if threading.current_thread() is not self.loop_thread:
            self.reads_off_loop += 1
        return super().pread(handle, size, offset)

    def pread_cached(self, handle: int, size: int, offset: int) -> bytes | None:
        return super().pread(handle, size, offset) if self.cached else None


def payload(i: int) -> bytes:
    return bytes([i % 251]) * 1000


def record(i: int) -> bytes:
    return encode_record(payload(i), count=1)


async def test_a_catch_up_read_of_cached_bytes_stays_on_the_loop_thread() -> None:
    """1,000 records (about 1 MB) behind the end: read from offset 0 in
    256 KiB steps with the bytes cached, no read leaves the loop's thread;
    with nothing cached, the same reads go to a worker thread; the records
    are the same either way."""
    fs = CachingFileSystem()
    config = LogConfig(durability="never", segment_bytes=256 * 1024)
    async with open_log(DIR, fs=fs, config=config, writer_thread=False) as log:
        for i in range(1000):
            log.write(record(i))
        await log.wait_durable(log.next_offset, log.generation)

        async def read_all() -> list[tuple[int, bytes]]:
            out: list[tuple[int, bytes]] = []
            offset = 0
            while offset < log.visible_end:
                data = await log.read(offset, 256 * 1024)
                for header, rec in iter_records(data):
                    out.append((header.base_offset, bytes(rec[HEADER_SIZE:])))
                    offset = header.next_offset
            return out

        cached = await read_all()
        assert 0 == fs.reads_off_loop
        fs.cached = False
        from_disk = await read_all()
        assert 0 < fs.reads_off_loop
    assert [(i, payload(i)) for i in range(1000)] == cached == from_disk


async def test_a_closed_segment_file_is_read_in_a_worker_thread() -> None:
    """A read_cached that would have to open a segment file (the file cache
    closed it) answers None instead, leaving the opening to a worker thread."""
    fs = CachingFileSystem()
    config = LogConfig(durability="never", segment_bytes=64 * 1024)
    async with open_log(DIR, fs=fs, config=config, writer_thread=False) as log:
        for i in range(300):
            log.write(record(i))
        await log.wait_durable(log.next_offset, log.generation)
        first = log.log.segments[0]
        assert first.handle >= 0
        log.log._close_handle(first)  # as the file cache does to an idle file
        assert log.log.read_cached(0, 256 * 1024) is None
        before = fs.reads_off_loop
        data = await log.read(0, 128 * 1024)
        assert fs.reads_off_loop > before
        first_two = [(h.base_offset, bytes(r[HEADER_SIZE:])) for h, r in iter_records(data)][:2]
        assert [(0, payload(0)), (1, payload(1))] == first_two
