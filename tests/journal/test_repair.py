"""Repair drops only the damaged records; their offsets become a gap that
recovery accepts and readers skip (issue 11 point 3, DECISIONS #16)."""

from __future__ import annotations

import random

import pytest

from headwater import CorruptionError
from headwater.journal import (
    HEADER_SIZE,
    Damage,
    Log,
    LogConfig,
    SimulatedFileSystem,
    encode_record,
    iter_records,
    repair_log,
)

DIR = "/data/topic/0"
REC = HEADER_SIZE + 100  # bytes per record below; 3 records per 500-byte segment


def rec(i: int) -> bytes:
    return encode_record(bytes([i % 251]) * 100, count=1, first_timestamp=i)


def seg(base: int) -> str:
    return f"{DIR}/{base:020d}.log"


def open_log(fs: SimulatedFileSystem) -> Log:
    return Log.open(DIR, fs, LogConfig(segment_bytes=500), clock=lambda: 1000)


def offsets(log: Log, start: int | None = None) -> list[int]:
    """Every offset a reader sees from ``start``, reading as a consumer does."""
    out: list[int] = []
    offset = log.earliest_offset if start is None else start
    while offset < log.next_offset:
        data = log.read(offset, 1 << 20)
        if not data:
            break
        for header, _ in iter_records(data):
            out.append(header.base_offset)
            offset = header.next_offset
    return out


def written(n: int) -> SimulatedFileSystem:
    """A log of n one-event records (offsets 0..n-1), closed cleanly."""
    fs = SimulatedFileSystem()
    log = open_log(fs)
    for i in range(n):
        log.write(rec(i))
    log.close()
    return fs


def snapshot(fs: SimulatedFileSystem) -> dict[str, bytes]:
    return {p: bytes(f.data) for p, f in fs._files.items()}


def test_interior_damage_drops_one_record_and_keeps_the_rest() -> None:
    """A flipped byte in offset 4 (middle of a sealed segment): the dry run
    reports it and changes nothing; the repair drops that record only, offset
    4 becomes a gap, every later record keeps its offset, the log opens again
    without repair and new appends continue at 12."""
    fs = written(12)
    fs.corrupt(seg(3), REC + HEADER_SIZE + 5)
    fs.remove(seg(3).replace(".log", ".index"))
    with pytest.raises(CorruptionError, match=f"{seg(3)}: corrupt data at byte {REC}"):
        open_log(fs)
    before = snapshot(fs)
    plan = repair_log(DIR, fs, apply=False)
    assert before == snapshot(fs)
    assert (4, 5) == (plan.damages[0].first_offset, plan.damages[0].end_offset)
    assert [Damage(seg(3), REC, REC, 4, 5, plan.damages[0].reason, "interior")] == list(
        plan.damages
    )
    assert "checksum" in plan.damages[0].reason
    assert "offsets 4..4 become a gap" in plan.damages[0].describe()
    done = repair_log(DIR, fs, apply=True)
    assert ((4, 5),) == done.gaps
    log = open_log(fs)
    assert [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11] == offsets(log)
    assert [5, 6] == offsets(log, 4)[:2]  # a reader at the gap skips it
    assert 12 == log.write(rec(12)).base_offset
    log.close()
    assert repair_log(DIR, fs, apply=False).clean
    assert 13 == open_log(fs).next_offset


def test_a_repair_killed_midway_and_run_again_keeps_every_valid_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gaps file is written before any segment is rewritten: a repair
    killed after rewriting a segment and run again finds the gap it made
    (otherwise the second run resynced past the valid record after it,
    dropping it)."""
    from headwater.journal import _files

    class Killed(BaseException):
        pass

    fs = written(12)
    fs.corrupt(seg(3), REC + HEADER_SIZE + 5)  # offset 4
    real = _files.write_file_atomically
    calls = 0

    def killed_at_second(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Killed
        real(*args, **kwargs)  # type: ignore[arg-type]

    for module in ("headwater.journal._repair", "headwater.journal._gaps"):
        monkeypatch.setattr(f"{module}.write_file_atomically", killed_at_second)
    with pytest.raises(Killed):
        repair_log(DIR, fs, apply=True)
    monkeypatch.undo()
    repair_log(DIR, fs, apply=True)
    assert [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11] == offsets(open_log(fs))


def test_damage_to_the_end_of_a_segment_leaves_a_gap_up_to_the_next() -> None:
    """A destroyed header (no length to skip by) in the last record of a sealed
    segment: the rest of that segment goes, the gap runs to the next segment's
    base, and reads cross it."""
    fs = written(12)
    fs.corrupt(seg(3), 2 * REC + 8, xor=0xFF)  # magic byte of offset 5
    fs.remove(seg(3).replace(".log", ".index"))
    report = repair_log(DIR, fs, apply=True)
    assert [(5, 6)] == [(d.first_offset, d.end_offset) for d in report.damages]
    log = open_log(fs)
    assert [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11] == offsets(log)
    assert [6, 7] == offsets(log, 5)[:2]


def test_damage_at_the_end_of_the_last_segment_never_reuses_offsets() -> None:
    """The last record of the log (synced, before the clean checkpoint) is
    destroyed with nothing valid after it: its offset becomes a gap and the
    next append gets the offset after it, never the dropped one again."""
    fs = written(12)
    fs.corrupt(seg(9), 2 * REC + 8, xor=0xFF)  # offset 11
    fs.remove(seg(9).replace(".log", ".index"))
    with pytest.raises(CorruptionError):
        open_log(fs)
    report = repair_log(DIR, fs, apply=True)
    assert [(11, 12)] == [(d.first_offset, d.end_offset) for d in report.damages]
    log = open_log(fs)
    assert list(range(11)) == offsets(log)
    assert 12 == log.write(rec(12)).base_offset
    assert [10, 12] == offsets(log, 10)


def test_a_missing_segment_becomes_a_gap() -> None:
    """A segment file that is gone: the repair records its offsets as a gap
    instead of deleting every later segment."""
    fs = written(12)
    fs.remove(seg(3))
    with pytest.raises(CorruptionError, match="offset 6"):
        open_log(fs)
    report = repair_log(DIR, fs, apply=True)
    assert ((3, 6),) == report.gaps
    assert [0, 1, 2, 6, 7, 8, 9, 10, 11] == offsets(open_log(fs))


@pytest.mark.parametrize("base", [4, 99])
def test_a_stray_garbage_log_file_is_removed_whole(base: int) -> None:
    """A garbage ``.log`` file inside the log (base 4) or past its end (99)
    fails the open loudly; the repair removes that file only and leaves no
    gap."""
    fs = written(12)
    handle = fs.open(seg(base))
    fs.write(handle, b"not a segment at all" * 10)
    fs.fsync(handle)
    fs.close(handle)
    fs.fsync_dir(DIR)
    with pytest.raises(CorruptionError, match=f"{base:020d}.log"):
        open_log(fs)
    report = repair_log(DIR, fs, apply=True)
    assert [("stray", seg(base))] == [(d.kind, d.file) for d in report.damages]
    assert () == report.gaps
    assert not fs.exists(seg(base))
    assert list(range(12)) == offsets(open_log(fs))


def test_repair_true_on_open_is_the_same_repair() -> None:
    """``Log.open(..., repair=True)`` runs the same repair: nothing after the
    damage is cut."""
    fs = written(12)
    fs.corrupt(seg(6), HEADER_SIZE + 1)
    fs.remove(seg(6).replace(".log", ".index"))
    log = Log.open(DIR, fs, LogConfig(segment_bytes=500), clock=lambda: 1000, repair=True)
    assert [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11] == offsets(log)


def test_an_unsynced_torn_tail_needs_no_repair() -> None:
    """Damage after the last synced position (a torn write after a crash) is
    reported as tail, is not counted as needing repair, and the log still
    opens without repair (truncating it, as ever)."""
    fs = SimulatedFileSystem()
    log = open_log(fs)
    log.write(rec(0))
    log.sync()
    log.write(rec(1))
    log.abandon()
    fs.corrupt(seg(0), REC + 20)
    report = repair_log(DIR, fs, apply=False)
    assert ["tail"] == [d.kind for d in report.damages]
    assert report.clean
    assert 1 == open_log(fs).next_offset


@pytest.mark.parametrize("seed", range(40))
def test_random_damage_drops_exactly_the_records_it_hit(seed: int) -> None:
    """Seeded random bit flips anywhere in the segments of a cleanly closed
    log: the repair keeps every record no flip touched, at its offset and
    with its bytes, drops exactly the ones hit, and the log opens again and
    takes appends after its old end (never a cut, never a reused offset)."""
    rng = random.Random(seed)
    fs = written(12)
    layout: dict[int, tuple[str, int]] = {}  # offset -> (file, position)
    for base in (0, 3, 6, 9):
        for k in range(3):
            layout[base + k] = (seg(base), k * REC)
    hit: set[int] = set()
    for _ in range(rng.randrange(1, 4)):
        offset = rng.randrange(12)
        file, start = layout[offset]
        fs.corrupt(file, start + rng.randrange(REC), xor=1 << rng.randrange(8))
        hit.add(offset)
    with pytest.raises(CorruptionError):
        Log.open(DIR, fs, LogConfig(segment_bytes=500), clock=lambda: 1000, repair=False)
        for base in (0, 3, 6, 9):  # damage in trusted sealed segments shows on read
            log = open_log(fs)
            log.read(base, 1 << 20)
    repair_log(DIR, fs, apply=True)
    log = open_log(fs)
    survivors = {
        h.base_offset: bytes(r[HEADER_SIZE:]) for h, r in iter_records(log.read(0, 1 << 20))
    }
    assert sorted(survivors) == offsets(log)
    assert sorted(set(range(12)) - hit) == sorted(survivors)
    for offset, payload in survivors.items():
        assert bytes([offset % 251]) * 100 == payload
    assert 12 == log.write(rec(12)).base_offset
