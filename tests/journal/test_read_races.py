"""Reads in a worker thread against retention, compaction and close on the
owner's thread, forced into the bad interleaving: the reader is paused inside
``pread`` (after it chose its segment) while the owner takes that segment away.

Before segments were reference-counted, the paused read resumed on a closed
handle (``OSError: EBADF`` here; on a real disk, a reused descriptor and
another file's bytes)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from headwater import ClosedError, OffsetOutOfRangeError
from headwater.journal import (
    HEADER_SIZE,
    Log,
    LogConfig,
    SimulatedFileSystem,
    encode_record,
    iter_records,
)
from headwater.journal._record import ATTR_COMPACTED

DIR = "/data/topic/0"
WAIT = 10.0  # seconds; only reached if the test is broken


class PausingFileSystem(SimulatedFileSystem):
    """A simulated disk whose next ``pread`` from a thread other than the
    test's waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.paused = threading.Event()
        self.resume = threading.Event()
        self._main = threading.current_thread()

    def pread(self, handle: int, size: int, offset: int) -> bytes:
        if self.armed and threading.current_thread() is not self._main:
            self.armed = False
            self.paused.set()
            assert self.resume.wait(WAIT)
        return super().pread(handle, size, offset)


def rec(i: int) -> bytes:
    return encode_record(bytes([i % 251]) * 100, count=1)


def payloads(data: bytes) -> list[tuple[int, bytes]]:
    return [(h.base_offset, bytes(r[HEADER_SIZE:])) for h, r in iter_records(data)]


def filled_log(fs: PausingFileSystem, **cfg: object) -> Log:
    """Thirty 1-event records, three to a segment, all synced."""
    log = Log.open(DIR, fs, LogConfig(segment_bytes=600, **cfg), clock=lambda: 1_000)  # type: ignore[arg-type]
    for i in range(30):
        log.write(rec(i))
    log.sync()
    assert len(log.segments) > 3
    return log


def read_paused(
    fs: PausingFileSystem, log: Log, end: int, meanwhile: Callable[[], None]
) -> bytes | BaseException:
    """Read from 0 to ``end`` in a thread; run ``meanwhile`` while it is paused."""
    result: list[bytes | BaseException] = []

    def reader() -> None:
        try:
            result.append(log.read(0, 1 << 20, end))
        except BaseException as exc:
            result.append(exc)

    fs.armed = True
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert fs.paused.wait(WAIT)
        meanwhile()
    finally:
        fs.resume.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    return result[0]


def test_read_paused_while_retention_deletes_its_segment_returns_its_records() -> None:
    """Retention deletes the segment a reader holds: the read still returns
    exactly the records it asked for, and the handle closes after it."""
    fs = PausingFileSystem()
    log = filled_log(fs, retention_bytes=1)
    first = log.segments[0]
    expected = log.read(0, 1 << 20, first.next_offset)

    got = read_paused(fs, log, first.next_offset, lambda: log.apply_retention())

    assert expected == got
    assert [(i, bytes([i]) * 100) for i in range(3)] == payloads(got)
    assert first.path not in fs.open_paths()  # the last reader closed it
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 1 << 20)


def test_read_paused_while_compaction_replaces_its_segment_returns_the_old_records() -> None:
    """Compaction swaps in a new file under a reader: the reader finishes on
    the file it started with; the next read sees the compacted one."""
    fs = PausingFileSystem()
    log = filled_log(fs)
    seg = log.segments[0]
    expected = log.read(0, 1 << 20, seg.next_offset)
    kept = [
        encode_record(bytes([o]) * 100, count=1, base_offset=o, attributes=ATTR_COMPACTED)
        for o in (seg.base, seg.next_offset - 1)
    ]

    got = read_paused(fs, log, seg.next_offset, lambda: log.replace_segment(seg.base, kept))

    assert expected == got
    assert [0, 1, 2] == [o for o, _ in payloads(got)]
    # The old handle is closed; the new file opens on its first read.
    assert 0 == fs.open_paths().count(seg.path)
    assert [seg.base, seg.next_offset - 1] == [
        o for o, _ in payloads(log.read(0, 1 << 20, seg.next_offset))
    ]
    assert 1 == fs.open_paths().count(seg.path)


def test_read_paused_while_the_log_closes_finishes_then_closes_every_handle() -> None:
    fs = PausingFileSystem()
    log = filled_log(fs)
    end = log.segments[0].next_offset
    expected = log.read(0, 1 << 20, end)

    got = read_paused(fs, log, end, log.close)

    assert expected == got
    assert [] == fs.open_paths()
    with pytest.raises(ClosedError):
        log.read(0, 100)


def test_retention_skips_a_segment_being_rewritten() -> None:
    """A segment under compaction is not deleted by retention meanwhile (else
    the rewrite would bring a deleted file back)."""
    fs = PausingFileSystem()
    log = filled_log(fs, retention_bytes=1)
    seg = log.segments[0]
    with log._lock:
        seg.busy = True
    assert [] == log.apply_retention()
    with log._lock:
        seg.busy = False
    assert seg.base in log.apply_retention()
