"""Many logs under one cap on open segment files (``FileCache``).

Segments open on first use after recovery; beyond the cap the least recently
used idle ones are closed (never one a reader pins, one with unsynced
appends, or one compaction rewrites) and reopen when used again. Recovery
that a checkpoint already covers fsyncs nothing, and closing a log that
nothing changed writes nothing."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from headwater.journal import (
    HEADER_SIZE,
    FileCache,
    Log,
    LogConfig,
    SimulatedFileSystem,
    encode_record,
    iter_records,
    open_log,
)
from headwater.journal._record import ATTR_COMPACTED
from headwater.testing import capture_logs


def rec(i: int) -> bytes:
    return encode_record(bytes([i % 251]) * 100, count=1)


def payloads(data: bytes) -> list[tuple[int, bytes]]:
    return [(h.base_offset, bytes(r[HEADER_SIZE:])) for h, r in iter_records(data)]


def open_segments(fs: SimulatedFileSystem) -> list[str]:
    """Paths of the segment files open now."""
    return sorted(path for path, _ in fs._handles.values() if path.endswith(".log"))


def open_logs(fs: SimulatedFileSystem, files: FileCache, count: int, **cfg: object) -> list[Log]:
    config = LogConfig(segment_bytes=600, **cfg)  # type: ignore[arg-type]
    return [Log.open(f"/d/{i}", fs, config, clock=lambda: 1_000, files=files) for i in range(count)]


def write_synced(log: Log, first: int, n: int) -> None:
    for i in range(first, first + n):
        log.write(rec(i))
    log.sync()
    log.files.trim()


def test_open_segment_files_stay_under_the_cap() -> None:
    """Twenty logs written and read round robin under a cap of 4: never
    more than 4 segment files open once the owner trims."""
    fs = SimulatedFileSystem()
    files = FileCache(4)
    logs = open_logs(fs, files, 20)
    files.trim()
    assert len(open_segments(fs)) <= 4
    for rnd in range(3):
        for log in logs:
            write_synced(log, rnd * 5, 5)
            assert len(open_segments(fs)) <= 4
        for log in logs:
            assert 5 * (rnd + 1) == len(payloads(log.read(0, 1 << 20)))
            files.trim()
            assert len(open_segments(fs)) <= 4
    assert files.evicted > 0
    for log in logs:
        log.close()
    assert [] == open_segments(fs)


def test_reader_and_writer_on_a_partition_whose_file_was_closed() -> None:
    """A log whose active segment the cache closed reads and appends as
    before: the file reopens, offsets go on, the bytes are the same."""
    fs = SimulatedFileSystem()
    files = FileCache(1)
    a, b = open_logs(fs, files, 2)
    write_synced(a, 0, 4)
    write_synced(b, 0, 4)  # a's file is the least recently used idle one
    active = a.segments[-1]
    assert active.handle < 0
    assert [(i, bytes([i]) * 100) for i in range(4)] == payloads(a.read(0, 1 << 20))
    write_synced(a, 4, 3)
    assert list(range(7)) == [o for o, _ in payloads(a.read(0, 1 << 20))]
    assert [(i, bytes([i]) * 100) for i in range(7)] == payloads(a.read(0, 1 << 20))
    files.trim()  # the owner's job after reads (AsyncLog does it)
    assert len(open_segments(fs)) <= 1


def test_a_pinned_or_unsynced_segment_is_never_closed() -> None:
    """Over the cap, trim skips a segment a reader holds and one whose
    appends are not synced yet; both close once idle."""
    fs = SimulatedFileSystem()
    files = FileCache(1)
    a, b, c = open_logs(fs, files, 3)
    write_synced(a, 0, 2)
    pinned = a._pin(0)  # a reader in a worker thread holds a's segment
    b.write(rec(0))  # unsynced
    files.trim()
    write_synced(c, 0, 2)
    assert pinned.handle >= 0
    assert b.segments[-1].handle >= 0
    assert [(0, bytes([0]) * 100), (1, bytes([1]) * 100)] == payloads(a.read(0, 1 << 20))
    a._unpin(pinned)
    b.sync()
    files.trim()
    assert len(open_segments(fs)) <= 1
    assert b.segments[-1].handle < 0  # synced now, so closed


def test_recovery_after_a_crash_with_closed_files() -> None:
    """Power loss while most logs' files were closed by the cache: every
    synced record is back, offsets contiguous, writes go on."""
    fs = SimulatedFileSystem()
    files = FileCache(2)
    logs = open_logs(fs, files, 8)
    for rnd in range(2):
        for log in logs:
            write_synced(log, rnd * 4, 4)
    logs[3].write(rec(99))  # unsynced: may go
    fs.crash()
    again = open_logs(fs, FileCache(2), 8)
    for log in again:
        got = payloads(log.read(0, 1 << 20))
        assert [(i, bytes([i]) * 100) for i in range(8)] == got
        write_synced(log, 8, 1)
        assert 9 == log.next_offset
    assert len(open_segments(fs)) <= 2


def test_retention_and_compaction_of_a_closed_segment() -> None:
    """Retention deletes segments whose files the cache closed, and
    compaction rewrites one; reads then see the compacted file."""
    fs = SimulatedFileSystem()
    files = FileCache(1)
    log, other = open_logs(fs, files, 2)
    write_synced(log, 0, 15)  # five segments of three records
    write_synced(other, 0, 1)
    assert all(s.handle < 0 for s in log.segments)
    seg = log.segments[2]
    kept = [
        encode_record(bytes([o]) * 100, count=1, base_offset=o, attributes=ATTR_COMPACTED)
        for o in (seg.base, seg.next_offset - 1)
    ]
    log.replace_segment(seg.base, kept)
    files.trim()
    assert [6, 8] == [o for o, _ in payloads(log.read(6, 1 << 20, 9))]
    keep = log.size_bytes - log.segments[0].size - log.segments[1].size
    log.config = LogConfig(segment_bytes=600, retention_bytes=keep)
    assert [0, 3] == log.apply_retention()
    assert [6, 8, 9, 10, 11, 12, 13, 14] == [o for o, _ in payloads(log.read(6, 1 << 20))]
    files.trim()
    assert len(open_segments(fs)) <= 1
    assert not fs.exists("/d/0/00000000000000000000.log")
    assert not fs.exists("/d/0/00000000000000000003.log")


def test_reopening_a_cleanly_closed_log_fsyncs_and_writes_nothing() -> None:
    """A clean checkpoint covers everything: recovery fsyncs nothing, and
    closing the log again (nothing changed) neither fsyncs nor writes."""
    fs = SimulatedFileSystem()
    (log,) = open_logs(fs, FileCache(), 1)
    write_synced(log, 0, 5)
    log.close()
    fsyncs = fs.fsyncs
    before = {path: bytes(f.data) for path, f in fs._files.items()}
    (log,) = open_logs(fs, FileCache(), 1)
    assert fsyncs == fs.fsyncs
    log.close()
    assert fsyncs == fs.fsyncs
    assert before == {path: bytes(f.data) for path, f in fs._files.items()}
    (log,) = open_logs(fs, FileCache(), 1)
    assert [(i, bytes([i]) * 100) for i in range(5)] == payloads(log.read(0, 1 << 20))


def test_recovery_after_a_kill_with_everything_synced_fsyncs_nothing() -> None:
    """After kill -9 (files intact, checkpoint unclean) with every append
    synced, the checkpoint covers the files: no fsync at recovery."""
    fs = SimulatedFileSystem()
    (log,) = open_logs(fs, FileCache(), 1)
    write_synced(log, 0, 5)
    log.abandon()  # the process died; the page cache (here: the files) stays
    fsyncs = fs.fsyncs
    (log,) = open_logs(fs, FileCache(), 1)
    assert fsyncs == fs.fsyncs
    assert 5 == log.next_offset
    log.write(rec(5))  # unsynced, then killed again: recovery must fsync it
    log.abandon()
    (log,) = open_logs(fs, FileCache(), 1)
    assert fsyncs < fs.fsyncs
    assert 6 == log.next_offset


def test_a_bad_cap_is_a_config_error() -> None:
    """A cap that is not a positive int is refused, naming the setting."""
    from headwater import ConfigError

    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="max_open_files"):
            FileCache(bad)  # type: ignore[arg-type]


async def test_an_idle_interval_log_has_no_timer(autojump_clock: trio.abc.Clock) -> None:
    """Under ``interval`` the flusher sleeps only after a write: 10 idle
    seconds take no task step, and a write is fsynced ``interval_ms`` later."""
    steps: list[str] = []

    class Count(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("_flusher"):
                steps.append(task.name)

    fs = SimulatedFileSystem()
    async with open_log(
        "/d/i", fs=fs, config=LogConfig(durability="interval", interval_ms=200)
    ) as log:
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(Count())
        await trio.sleep(10)
        assert [] == steps
        log.write(rec(0))
        await trio.sleep(0.199)
        assert 0 == log.synced_offset
        await trio.sleep(0.002)
        assert 1 == log.synced_offset


def test_inline_recovery_gives_up_before_changing_anything() -> None:
    """Log.open(inline_budget=) opens a log its checkpoint covers without
    fsync; one needing a scan past the budget, an fsync or a new file raises
    Deferred and leaves every file as it was (the thread then recovers it)."""
    from headwater.journal._log import Deferred

    fs = SimulatedFileSystem()
    with pytest.raises(Deferred):
        Log.open("/d/new", fs, inline_budget=1 << 20)
    (log,) = open_logs(fs, FileCache(), 1)
    write_synced(log, 0, 5)
    log.abandon()  # killed with everything synced: covered
    (log,) = [Log.open("/d/0", fs, LogConfig(segment_bytes=600), inline_budget=1 << 20)]
    assert 5 == log.next_offset
    log.write(rec(5))  # unsynced when killed: recovery must fsync
    log.abandon()
    before = {path: bytes(f.data) for path, f in fs._files.items()}
    fsyncs = fs.fsyncs
    with pytest.raises(Deferred):
        Log.open("/d/0", fs, LogConfig(segment_bytes=600), inline_budget=1 << 20)
    assert (before, fsyncs) == ({p: bytes(f.data) for p, f in fs._files.items()}, fs.fsyncs)
    with pytest.raises(Deferred):
        Log.open("/d/0", fs, LogConfig(segment_bytes=600), inline_budget=100)  # too much to scan
    log = Log.open("/d/0", fs, LogConfig(segment_bytes=600))
    assert 6 == log.next_offset
    assert [] == [h for h in fs._handles.values() if h[0].endswith("checkpoint")]


def test_a_reader_never_creates_a_segment_file_the_writer_thread_owns() -> None:
    """A roll while staging (the writer thread's path) leaves the new
    segment's file for the writer to create; a reader pinning every segment
    (a lookup by time) must not create it early, or a directory fsync could
    make it durable before the records of the segment before it."""
    fs = SimulatedFileSystem()
    files = FileCache(1)
    (log,) = open_logs(fs, files, 1)
    for i in range(3):
        log.write(rec(i))  # fills the first segment (600 bytes)
    log.sync()
    header, staged = log.stage(rec(3))  # rolls: the new file is the writer's
    new = log.segments[-1]
    assert (3, new) == (header.base_offset, staged.segment)
    assert not fs.exists(new.path)
    log.offset_for_time(0)
    assert not fs.exists(new.path)
    assert new.handle < 0
    assert log.open_staged_segment(new) >= 0  # the writer thread's call
    assert fs.exists(new.path)
    assert 1 <= files.open_count


class _CountingDict(dict[int, object]):
    """A log's ``_dirty`` map that counts how often trim looks a segment up."""

    looks = 0

    def get(self, key: int, default: object = None) -> object:  # type: ignore[override]
        _CountingDict.looks += 1
        return super().get(key, default)


def test_trim_does_not_rewalk_segments_in_use() -> None:
    """Many logs with unsynced appends (``never`` before a roll) sit at the
    least recently used end: each trim steps over a bounded number of them
    and moves them to the recent end, instead of walking all of them again
    on every write (quadratic with 10,000 partitions). Idle segments behind
    them still close."""
    fs = SimulatedFileSystem()
    files = FileCache(4)
    busy = open_logs(fs, files, 400)
    for log in busy:
        log._dirty = _CountingDict(log._dirty)  # type: ignore[assignment]
        log.write(rec(0))  # unsynced: in use
    idle = [
        Log.open(f"/idle/{i}", fs, LogConfig(segment_bytes=600), clock=lambda: 1_000, files=files)
        for i in range(20)
    ]
    for log in idle:
        log.write(rec(0))
        log.sync()
    _CountingDict.looks = 0
    for _ in range(200):
        files.trim()
    assert _CountingDict.looks <= 200 * 70  # was 200 * 400 walking every busy one
    assert all(log.segments[-1].handle < 0 for log in idle[:-4])  # idle ones closed
    assert all(log.segments[-1].handle >= 0 for log in busy)  # in use: never closed


def test_files_used_in_a_cycle_larger_than_the_cap_stop_thrashing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twelve logs written round robin under a cap of 4: an LRU reopens all
    twelve files every round; once the cache sees most uses miss it closes
    the files it has just opened first, and about cap - 1 uses a round
    hit. A hot set that fits the cap then displaces the old files and the
    cache turns back into an LRU with no reopening at all."""
    from headwater.journal import _fdcache

    monkeypatch.setattr(_fdcache, "_WINDOW", 40)
    fs = SimulatedFileSystem()
    files = FileCache(4)
    config = LogConfig()  # one segment per log: every reopen is a cache miss
    logs = [Log.open(f"/d/{i}", fs, config, clock=lambda: 1_000, files=files) for i in range(12)]
    files.trim()
    reopened = []
    for rnd in range(12):
        before = files.opened
        for log in logs:
            write_synced(log, rnd * 5, 5)
            assert len(open_segments(fs)) <= 4
        reopened.append(files.opened - before)
    assert files.scan_resistant
    assert files.statistics() == {
        "open": 4,
        "max_open": 4,
        "opened": files.opened,
        "evicted": files.evicted,
        "scan_resistant": True,
    }
    assert [12, 12] == reopened[:2]  # an LRU until the first window closed
    assert max(reopened[4:]) <= 9, reopened
    for log in logs:
        assert [(i, bytes([i % 251]) * 100) for i in range(60)] == payloads(log.read(0, 1 << 20))
    hot = logs[:3]
    rounds = 0
    while files.scan_resistant or files.opened != before:
        rounds += 1
        assert rounds < 100, "the hot set never displaced the old files"
        before = files.opened
        for log in hot:
            write_synced(log, 60 + rounds, 1)
    before = files.opened
    for rnd in range(5):
        for log in hot:
            write_synced(log, 200 + rnd, 1)
    assert before == files.opened  # all hits
    for log in logs:
        log.close()
    assert [] == open_segments(fs)


def test_a_cache_whose_uses_hit_again_is_an_lru_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files opened while the cache thrashed are closed first only while it
    thrashes: once a window of uses mostly hits, none of them goes first."""
    from headwater.journal import _fdcache

    monkeypatch.setattr(_fdcache, "_WINDOW", 40)
    fs = SimulatedFileSystem()
    files = FileCache(4)
    logs = [
        Log.open(f"/d/{i}", fs, LogConfig(), clock=lambda: 1_000, files=files) for i in range(12)
    ]
    files.trim()
    rnd = 0
    with capture_logs() as logs_on:
        while not files.scan_resistant:  # round robin over 12 files under a cap of 4
            rnd += 1
            assert rnd < 20, "the cache never noticed it thrashed"
            for log in logs:
                write_synced(log, rnd, 1)
        write_synced(logs[0], rnd, 1)  # the owner's next trim logs it
    assert [("segment_files_thrashing", "warning", 4)] == [
        (e["event"], e["log_level"], e["max_open_files"])
        for e in logs_on
        if e["event"].startswith("segment_files")
    ]
    open_now = [log for log in logs if log.segments[-1].handle >= 0]
    assert len(open_now) == 4
    for log in open_now[:2]:
        log.close()
    reopened = [log for log in logs if log not in open_now][:2]
    for log in reopened:
        write_synced(log, rnd, 1)  # opened while scan resistant: transient
    assert files._transient
    working = open_now[2:] + reopened  # four files under a cap of 4: all hit
    rounds = 0
    with capture_logs() as logs_off:
        while files.scan_resistant:
            rounds += 1
            assert rounds < 100, "uses that all hit never turned the cache back into an LRU"
            before = files.opened
            for log in working:
                write_synced(log, rnd + rounds, 1)
            assert before == files.opened
    assert not files._transient
    assert ["segment_files_thrashing_ended"] == [
        e["event"] for e in logs_off if e["event"].startswith("segment_files")
    ]
    for log in logs:
        if log not in open_now[:2]:
            log.close()
    assert [] == open_segments(fs)


def test_first_opens_are_not_thrashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker opening many logs for the first time misses on every use,
    but closes nothing: the cache stays an LRU and logs nothing."""
    from headwater.journal import _fdcache

    monkeypatch.setattr(_fdcache, "_WINDOW", 40)
    fs = SimulatedFileSystem()
    files = FileCache(200)
    with capture_logs() as logs_seen:
        logs = [
            Log.open(f"/d/{i}", fs, LogConfig(), clock=lambda: 1_000, files=files)
            for i in range(120)
        ]
        for log in logs:
            write_synced(log, 0, 1)
    assert files.opened >= 120
    assert files.evicted == 0
    assert not files.scan_resistant
    assert not [e for e in logs_seen if e["event"].startswith("segment_files")]
    for log in logs:
        log.close()
