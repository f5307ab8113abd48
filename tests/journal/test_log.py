"""The segmented log on the simulated disk: append, read, roll, indexes,
time lookup, retention, truncation, recovery and corruption."""

from __future__ import annotations

import pytest

from headwater import CorruptionError, DiskFullError, InvalidArgument, OffsetOutOfRangeError
from headwater.journal import (
    HEADER_SIZE,
    Log,
    LogConfig,
    RecordHeader,
    SimulatedFileSystem,
    encode_record,
    iter_records,
    patch_header,
)
from headwater.testing import capture_logs

DIR = "/data/topic/0"


class Clock:
    """A settable millisecond clock."""

    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def rec(i: int, count: int = 1, size: int = 100) -> bytes:
    """Record number i: payload bytes derived from i, timestamp 10*i."""
    payload = bytes([i % 251]) * size
    return encode_record(payload, count=count, first_timestamp=10 * i, max_timestamp=10 * i + 5)


def open_log(fs: SimulatedFileSystem, clock: Clock | None = None, **cfg: object) -> Log:
    return Log.open(DIR, fs, LogConfig(**cfg), clock=clock or Clock())  # type: ignore[arg-type]


def payloads(data: bytes) -> list[tuple[int, bytes]]:
    return [(h.base_offset, bytes(r[HEADER_SIZE:])) for h, r in iter_records(data)]


def test_append_assigns_contiguous_offsets_and_reads_whole_records() -> None:
    """Offsets are base..base+n-1 per batch; reads start at the record holding the offset."""
    fs = SimulatedFileSystem()
    log = open_log(fs)
    bases = [log.write(rec(i, count=3)).base_offset for i in range(10)]
    assert list(range(0, 30, 3)) == bases
    assert 30 == log.next_offset
    got = payloads(log.read(7, 10_000))
    assert [6, 9, 12] == [o for o, _ in got[:3]]
    assert 8 == len(got)
    # At least one record even when the budget is smaller than it.
    assert 1 == len(payloads(log.read(0, 1)))
    assert b"" == log.read(30, 100)
    with pytest.raises(OffsetOutOfRangeError):
        log.read(31, 100)


def test_roll_by_size_and_age_and_reopen_with_indexes() -> None:
    """Segments roll at the size and age limits; after close and reopen every
    record reads back and rolled segments' index files are used."""
    fs = SimulatedFileSystem()
    clock = Clock()
    log = open_log(fs, clock, segment_bytes=1000, segment_ms=60_000, index_interval=200)
    for i in range(20):
        log.write(rec(i))
    log.sync()
    assert 4 == len(log.segments)
    clock.now += 60_000
    log.write(rec(20))
    assert 5 == len(log.segments)
    log.close()
    names = fs.listdir(DIR)
    assert "00000000000000000000.index" in names
    assert "00000000000000000006.log" in names
    log = open_log(fs, clock, segment_bytes=1000, index_interval=200)
    assert 21 == log.next_offset
    assert list(range(21)) == [o for o, _ in payloads(log.read(0, 1 << 20))]
    assert [(13, bytes([13]) * 100)] == payloads(log.read(13, 1))


def test_time_lookup() -> None:
    """offset_for_time finds the first record whose max timestamp reaches the time."""
    fs = SimulatedFileSystem()
    log = open_log(fs, segment_bytes=700)
    for i in range(20):
        log.write(rec(i))
    assert 0 == log.offset_for_time(-5)
    assert 7 == log.offset_for_time(71)
    assert 7 == log.offset_for_time(75)
    assert 8 == log.offset_for_time(76)
    assert log.offset_for_time(10_000) is None


def test_retention_by_size_and_age() -> None:
    """Whole old segments go; the active one never does; earliest offset moves."""
    fs = SimulatedFileSystem()
    clock = Clock()
    log = open_log(fs, clock, segment_bytes=500, retention_bytes=1200)
    for i in range(12):
        log.write(rec(i))
    log.sync()
    assert [] != log.apply_retention()
    assert log.size_bytes <= 1200 + 500
    assert log.earliest_offset > 0
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100)
    log2 = open_log(SimulatedFileSystem(), clock, segment_bytes=500, retention_ms=1000)
    for i in range(6):
        log2.write(rec(i))
    log2.sync()
    assert [] == log2.apply_retention()
    clock.now += 5_000
    log2.write(rec(6))
    log2.sync()
    removed = log2.apply_retention()
    assert removed
    assert log2.earliest_offset == log2.segments[0].base


def test_truncate_to() -> None:
    """Truncation removes the record holding the offset and everything after."""
    fs = SimulatedFileSystem()
    log = open_log(fs, segment_bytes=500)
    for i in range(10):
        log.write(rec(i, count=2))
    log.truncate_to(9)
    assert 8 == log.next_offset
    assert 8 == log.write(rec(99)).base_offset
    log.close()
    assert 9 == open_log(fs, segment_bytes=500).next_offset


@pytest.mark.parametrize("method", ["write", "stage"])
def test_bad_records_are_refused_before_writing(method: str) -> None:
    """Garbage, a wrong checksum, trailing bytes and an oversized batch
    raise InvalidArgument, nothing placed and no offset handed out; the
    staging path (the writer thread's, which checks a client's record in
    one step with its stamping) refuses what write refuses with the same
    typed errors."""
    fs = SimulatedFileSystem()
    log = open_log(fs, max_record_bytes=1000)
    append = getattr(log, method)
    good = rec(1)
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    for record, match in [
        (b"junk" * 20, "invalid batch"),
        (bytes(bad), "checksum"),
        (good + b"x", "header says"),
        (rec(2, size=2000), "max_record_bytes"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            append(record)
    assert (0, 0) == (log.next_offset, log.segments[-1].size)


def test_stage_stores_the_same_bytes_validated_or_not_and_across_a_roll() -> None:
    """A record staged unchecked (stamped in one step) and the same record
    staged with the header validate() gave store the same header bytes;
    offsets stay contiguous across a roll, and the stored records read
    back whole with their offsets and append time."""
    fs = SimulatedFileSystem()
    clock = Clock()
    log = open_log(fs, clock, segment_bytes=500)
    heads = []
    for i in range(8):
        record = rec(i, count=2)
        validated = log.validate(record) if i % 2 else None
        header, staged = log.stage(record, validated)
        assert (2 * i, clock.now) == (header.base_offset, header.append_time)
        assert log.validate(record)._replace(base_offset=2 * i, append_time=clock.now) == header
        assert patch_header(record, 2 * i, clock.now) == staged.head
        heads.append(staged)
    assert len({id(staged.segment) for staged in heads}) > 1  # it rolled
    for staged in heads:  # what the writer thread does, in staging order
        handle = staged.segment.handle
        if handle < 0:
            handle = log.open_staged_segment(staged.segment)
        fs.write(handle, staged.head + bytes(staged.body))
        log.unstage(staged)
    log.sync()
    offsets: list[int] = []
    while len(offsets) < 8:  # one segment per read
        for h, _ in iter_records(log.read(len(offsets) * 2, 100_000)):
            offsets.append(h.base_offset)
            assert clock.now == h.append_time
    assert list(range(0, 16, 2)) == offsets


@pytest.mark.parametrize("keep", [0, 1, 30, 61, 62, 100, 161])
def test_torn_tail_truncated_at_every_cut(keep: int) -> None:
    """A last record cut anywhere (a torn, unsynced write) recovers to exactly
    the previous records, and the loss is logged."""
    fs = SimulatedFileSystem()
    log = open_log(fs)
    for i in range(3):
        log.write(rec(i))
    log.sync()
    log.write(rec(3))  # unsynced
    path = f"{DIR}/00000000000000000000.log"
    data = fs.file_bytes(path)
    cut = len(data) - 162 + keep
    fs.set_file_bytes(path, data[:cut])
    with capture_logs() as logs:
        log = open_log(fs)
    assert 3 == log.next_offset
    assert [0, 1, 2] == [o for o, _ in payloads(log.read(0, 1 << 20))]
    dropped = [e for e in logs if e["event"] == "journal_tail_truncated"]
    assert (1 if keep else 0) == len(dropped)


def test_bit_flip_in_unsynced_tail_is_truncated_but_interior_raises() -> None:
    """Damage after the synced checkpoint is tail (truncated); before it, interior
    (CorruptionError naming file and byte, unless repair=True)."""
    for position, interior in [(3 * 162 + 70, False), (162 + 70, True)]:
        fs = SimulatedFileSystem()
        log = open_log(fs)
        for i in range(3):
            log.write(rec(i))
        log.sync()
        log.write(rec(3))
        path = f"{DIR}/00000000000000000000.log"
        fs.corrupt(path, position)
        if interior:
            with pytest.raises(CorruptionError, match=f"byte {162}"):
                open_log(fs)
            repaired = Log.open(DIR, fs, LogConfig(), clock=Clock(), repair=True)
            # DECISIONS #16: only the damaged record goes; its offset is a gap.
            assert 4 == repaired.next_offset
            assert [0, 2, 3] == [o for o, _ in payloads(repaired.read(0, 1 << 20))]
            assert [2, 3] == [o for o, _ in payloads(repaired.read(1, 1 << 20))]
        else:
            assert 3 == open_log(fs).next_offset


def test_missing_or_damaged_index_is_rebuilt() -> None:
    """Index files that are missing or fail their checksum are rebuilt by a scan."""
    fs = SimulatedFileSystem()
    log = open_log(fs, segment_bytes=500, index_interval=100)
    for i in range(12):
        log.write(rec(i))
    log.close()
    fs.remove(f"{DIR}/00000000000000000000.index")
    fs.corrupt(f"{DIR}/00000000000000000003.timeindex", 3)
    log = open_log(fs, segment_bytes=500, index_interval=100)
    assert list(range(12)) == [o for o, _ in payloads(log.read(0, 1 << 20))]
    assert 9 == log.offset_for_time(95)


def test_missing_segment_in_the_middle_is_interior_damage() -> None:
    """A gap in offsets between segments is reported, never silently skipped."""
    fs = SimulatedFileSystem()
    log = open_log(fs, segment_bytes=500)
    for i in range(12):
        log.write(rec(i))
    log.close()
    fs.remove(f"{DIR}/00000000000000000003.log")
    with pytest.raises(CorruptionError, match="offset 6"):
        open_log(fs, segment_bytes=500)


def test_an_empty_last_segment_after_a_hole_is_a_stray_and_goes() -> None:
    """A crash during a roll can leave the new, empty segment file while
    records before it never reached the disk (older versions' writer created
    it first; a power loss can keep a directory entry and lose data pages).
    Nothing past the hole was acknowledged: recovery removes the empty file
    with a warning and carries on from the segment before."""
    fs = SimulatedFileSystem()
    log = open_log(fs, segment_bytes=500)
    for i in range(5):
        log.write(rec(i))  # segments 0 (0-2) and 3 (3-4)
    log.sync()
    log.abandon()  # killed: segment 3 has no index files (no sync sealed it)
    stray = f"{DIR}/00000000000000000007.log"
    fs.set_file_bytes(stray, b"")
    with capture_logs() as logs:
        log = open_log(fs, segment_bytes=500)
    assert 5 == log.next_offset
    assert not fs.exists(stray)
    assert ["journal_stray_segment_removed"] == [
        e["event"] for e in logs if e["log_level"] == "warning"
    ]
    log.write(rec(5))
    log.close()
    assert list(range(6)) == [o for o, _ in payloads(open_log(fs).read(0, 1 << 20))]


def test_before_an_empty_stray_the_unsynced_tail_may_be_torn() -> None:
    """The power loss case: the segment before the stray empty file lost a
    torn part of its unsynced tail. That tail is cut like a last segment's
    (the checkpoint names a synced point in it), not reported as damage."""
    fs = SimulatedFileSystem()
    log = open_log(fs, segment_bytes=500)
    for i in range(2):
        log.write(rec(i))
    log.sync()
    log.write(rec(2))  # unsynced, torn below
    path = f"{DIR}/00000000000000000000.log"
    fs.set_file_bytes(path, fs.file_bytes(path)[: 2 * 162 + 50])
    fs.set_file_bytes(f"{DIR}/00000000000000000003.log", b"")
    with capture_logs() as logs:
        log = open_log(fs, segment_bytes=500)
    assert 2 == log.next_offset
    assert {"journal_tail_truncated", "journal_stray_segment_removed"} == {
        e["event"] for e in logs if e["log_level"] == "warning"
    }


def test_a_hole_before_a_synced_or_nonempty_segment_still_raises() -> None:
    """Only an empty last file is a stray, and only when nothing says the
    records of the hole were synced: a hole before a file with records, one
    the checkpoint claims was synced, one after a segment a completed sync
    sealed (its index files), or damage with valid records after it is
    reported, even with a checkpoint that lags (a power loss)."""
    ckpt = f"{DIR}/checkpoint"
    fs = SimulatedFileSystem()
    log = open_log(fs, segment_bytes=500)
    for i in range(5):
        log.write(rec(i))
    log.close()
    fs.set_file_bytes(f"{DIR}/00000000000000000009.log", rec(9))
    with pytest.raises(CorruptionError, match="offset 5 was expected"):
        open_log(fs, segment_bytes=500)
    fs.remove(f"{DIR}/00000000000000000009.log")
    # Segment 3 loses its second record, which the checkpoint says was synced.
    path = f"{DIR}/00000000000000000003.log"
    log = open_log(fs, segment_bytes=500)
    log.write(rec(5))  # rolls: segment 5, synced below with segment 3
    log.sync()
    log.abandon()
    fs.remove(f"{DIR}/00000000000000000003.index")
    fs.set_file_bytes(path, fs.file_bytes(path)[:162])
    fs.set_file_bytes(f"{DIR}/00000000000000000005.log", b"")
    with pytest.raises(CorruptionError):
        open_log(fs, segment_bytes=500)

    # A lagging checkpoint (offset 3), a sealed segment 3..5 gone.
    fs = SimulatedFileSystem()
    log = open_log(fs, segment_bytes=500)
    for i in range(3):
        log.write(rec(i))
    log.sync()
    lagging = fs.file_bytes(ckpt)
    for i in range(3, 7):
        log.write(rec(i))  # segments 3 and 6
    log.sync()
    log.abandon()
    assert fs.exists(f"{DIR}/00000000000000000000.index")
    fs.remove(f"{DIR}/00000000000000000003.log")
    fs.set_file_bytes(f"{DIR}/00000000000000000006.log", b"")
    fs.set_file_bytes(ckpt, lagging)
    with pytest.raises(CorruptionError, match="offset 3 was expected"):
        open_log(fs, segment_bytes=500)

    # No checkpoint, no index files, a bit flip in record 1 of 0..2.
    fs = SimulatedFileSystem()
    log = open_log(fs, segment_bytes=500)
    for i in range(4):
        log.write(rec(i))
    log.sync()
    log.abandon()
    for name in ("checkpoint", "00000000000000000000.index", "00000000000000000000.timeindex"):
        fs.remove(f"{DIR}/{name}")
    fs.set_file_bytes(f"{DIR}/00000000000000000003.log", b"")
    fs.corrupt(f"{DIR}/00000000000000000000.log", 162 + 70)
    with pytest.raises(CorruptionError, match="byte 162"):
        open_log(fs, segment_bytes=500)


class Killed(BaseException):
    """The process dies here (what it wrote stays in the page cache)."""


class KilledAtRemove(SimulatedFileSystem):
    """A disk whose process is killed at its ``allowed + 1``-th file removal."""

    allowed: int | None = None

    def remove(self, path: str) -> None:
        if self.allowed is not None:
            if self.allowed == 0:
                raise Killed(path)
            self.allowed -= 1
        super().remove(path)


@pytest.mark.parametrize("cut", ["discard_unsynced", "truncate_to"])
def test_a_kill_while_cutting_segments_leaves_no_hole(cut: str) -> None:
    """Cutting a log back removes its later segments newest first: a kill
    midway leaves a shorter log, never a hole (oldest first left segments
    0 and 6 without 3: CorruptionError at every restart)."""
    fs = KilledAtRemove()
    log = open_log(fs, segment_bytes=500)
    log.write(rec(0))
    log.sync()
    for i in range(1, 8):
        log.write(rec(i))  # segments 0 (0-2), 3 (3-5), 6 (6-7)
    fs.allowed = 1  # one file goes, then the kill
    with pytest.raises(Killed):
        log.discard_unsynced() if cut == "discard_unsynced" else log.truncate_to(1)
    log.abandon()
    fs.allowed = None
    log = open_log(fs, segment_bytes=500)
    assert [0, 1, 2, 3, 4, 5] == [o for o, _ in payloads(log.read(0, 1 << 20))]


def test_disk_full_leaves_data_intact_and_recovers_without_restart() -> None:
    """ENOSPC fails the append with DiskFullError, cuts the partial write, and
    appends work again once space returns."""
    fs = SimulatedFileSystem()
    log = open_log(fs)
    log.write(rec(0))
    fs.set_disk_full(True)
    with pytest.raises(DiskFullError, match="disk full"):
        log.write(rec(1))
    assert 1 == log.next_offset
    fs.set_disk_full(False)
    assert 1 == log.write(rec(2)).base_offset
    log.sync()
    assert [0, 1] == [o for o, _ in payloads(log.read(0, 1 << 20))]
    assert [bytes([0]) * 100, bytes([2]) * 100] == [p for _, p in payloads(log.read(0, 1 << 20))]


def test_headers_rebuild_producer_state() -> None:
    """headers() lists every record's header (idempotence state is rebuilt from it)."""
    fs = SimulatedFileSystem()
    log = open_log(fs)
    log.write(encode_record(b"x", count=2, producer_id=7, producer_epoch=1, base_sequence=0))
    log.write(encode_record(b"y", count=3, producer_id=7, producer_epoch=1, base_sequence=2))
    headers = log.headers()
    assert all(isinstance(h, RecordHeader) for h in headers)
    assert [(7, 0, 0), (7, 2, 2)] == [
        (h.producer_id, h.base_sequence, h.base_offset) for h in headers
    ]


def test_age_retention_survives_reopen() -> None:
    """Segment ages come from stored append times, not from the time of reopening."""
    fs = SimulatedFileSystem()
    clock = Clock()
    log = open_log(fs, clock, segment_bytes=500)
    for i in range(12):
        log.write(rec(i))
    log.close()
    clock.now += 10_000
    log = open_log(fs, clock, segment_bytes=500, retention_ms=5_000)
    assert [0, 3, 6] == log.apply_retention()


class _CountingFS(SimulatedFileSystem):
    """Counts the small preads (record headers) a read makes."""

    def __init__(self) -> None:
        super().__init__()
        self.header_reads = 0

    def pread(self, handle: int, size: int, offset: int) -> bytes:
        if size == HEADER_SIZE:
            self.header_reads += 1
        return super().pread(handle, size, offset)


def test_a_read_at_the_tail_starts_at_the_newest_record_without_a_scan() -> None:
    """A consumer caught up reads the newest record: one header read, not one
    per record since the last index entry; still right after a cut and
    appends of other sizes, after a roll and after reopening."""
    fs = _CountingFS()
    log = open_log(fs, index_interval=1 << 20, segment_bytes=1 << 20)
    for i in range(200):
        log.write(rec(i))
    fs.header_reads = 0
    assert [(199, bytes([199]) * 100)] == payloads(log.read(199, 10_000))
    assert 1 == fs.header_reads
    fs.header_reads = 0
    assert 50 == len(payloads(log.read(150, 1 << 20)))  # an older offset still scans
    assert fs.header_reads > 100
    log.truncate_to(190)  # the newest record cut: the hint must not point past the end
    assert 190 == log.next_offset
    assert [(189, bytes([189]) * 100)] == payloads(log.read(189, 10_000))
    for i in range(190, 195):
        log.write(rec(i, size=7 + i))  # other sizes: other positions
    for offset in range(185, 195):
        (got,) = payloads(log.read(offset, 1))
        assert (offset, bytes([offset % 251]) * (100 if offset < 190 else 7 + offset)) == got
    log.close()
    log = open_log(fs, index_interval=1 << 20, segment_bytes=1 << 20)
    assert [(194, bytes([194]) * 201)] == payloads(log.read(194, 10_000))
    small = open_log(_CountingFS(), segment_bytes=1000)
    for i in range(30):  # rolls every few records: the hint is per segment
        small.write(rec(i))
    for offset in range(30):
        assert offset == payloads(small.read(offset, 1))[0][0]
