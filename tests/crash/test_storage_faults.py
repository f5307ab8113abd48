"""Storage faults on real files (issue 7 item 3): torn writes, bit flips in the
tail and the middle, missing and damaged indexes, a full disk (injected, and a
real size-limited tmpfs where ``unshare`` is permitted).

Every check is the same promise: what survives is a contiguous prefix of what
was written, byte for byte; damage after the last synced point is truncated
and reported; damage before it is a loud :class:`CorruptionError` naming the
file, and never silently drops the valid records after it.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from headwater import CorruptionError, DiskFullError
from headwater import _protocol as p
from headwater.broker import open_broker
from headwater.journal import (
    HEADER_SIZE,
    Log,
    LogConfig,
    RealFileSystem,
    SimulatedFileSystem,
    encode_record,
    iter_records,
)
from headwater.testing import capture_logs

pytestmark = pytest.mark.crash

SEED = 7


def rec(i: int) -> bytes:
    """Record i: a seeded payload of 50..250 bytes (not hypothesis: DECISIONS #8)."""
    payload = random.Random(i).randbytes(50 + i * 37 % 200)
    return encode_record(payload, count=1, first_timestamp=i)


def write_log(path: Path, n: int, *, segment_bytes: int = 4096, close: bool = True) -> Log:
    """A real-file log of n records (closed cleanly unless ``close`` is False)."""
    log = Log.open(str(path), RealFileSystem(), LogConfig(segment_bytes=segment_bytes))
    for i in range(n):
        log.write(rec(i))
    log.sync()
    if close:
        log.close()
    return log


def read_all(path: Path, **cfg: object) -> list[tuple[int, bytes]]:
    """(offset, payload) of every record after reopening."""
    log = Log.open(str(path), RealFileSystem(), LogConfig(**cfg))  # type: ignore[arg-type]
    try:
        data = log.read(log.earliest_offset, 1 << 30)
    finally:
        log.close()
    return [(h.base_offset, bytes(r[HEADER_SIZE:])) for h, r in iter_records(data)]


def expected(n: int) -> list[tuple[int, bytes]]:
    return [(i, bytes(rec(i)[HEADER_SIZE:])) for i in range(n)]


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.log"))


def test_torn_tail_truncated_at_random_points(tmp_path: Path) -> None:
    """Unsynced bytes torn at seeded random points: reopening keeps exactly the
    records that are whole, in order, contiguous from 0, and reports the cut."""
    rng = random.Random(SEED)
    ends = [sum(len(rec(j)) for j in range(k + 1)) for k in range(16)]
    for round_no in range(12):
        path = tmp_path / f"torn{round_no}"
        log = write_log(path, 10, segment_bytes=1 << 20, close=False)
        for i in range(10, 16):
            log.write(rec(i))  # written, never synced: the tail a power loss may tear
        log.abandon()
        (last,) = segments(path)
        cut = rng.randrange(ends[9], ends[15] + 1)
        os.truncate(last, cut)
        with capture_logs() as logs:
            stored = read_all(path)
        whole = sum(1 for end in ends if end <= cut)
        assert expected(whole) == stored, round_no
        reported = any(e["event"] == "journal_tail_truncated" for e in logs)
        assert reported == (cut not in ends), round_no


def test_bit_flip_in_unsynced_tail_is_truncated(tmp_path: Path) -> None:
    """A flipped bit after the last synced point is a torn tail: the log keeps
    every record before it and says what it dropped."""
    log = write_log(tmp_path, 8, close=False)
    synced_end = segments(tmp_path)[-1].stat().st_size
    for i in range(8, 12):
        log.write(rec(i))
    log.abandon()
    last = segments(tmp_path)[-1]
    data = bytearray(last.read_bytes())
    flip_at = synced_end + len(rec(8)) + 20  # inside record 9
    data[flip_at] ^= 0x10
    last.write_bytes(bytes(data))
    with capture_logs() as logs:
        stored = read_all(tmp_path)
    assert expected(9) == stored
    truncated = [e for e in logs if e["event"] == "journal_tail_truncated"]
    assert truncated
    assert "checksum" in truncated[0]["reason"]


def test_bit_flip_in_the_middle_is_loud_and_keeps_later_records(tmp_path: Path) -> None:
    """A flipped bit inside synced data (a sealed segment, or the active one
    before its checkpoint) raises CorruptionError naming the file, whether it
    is found at open or at read; nothing is truncated, so after restoring the
    byte every record is still there."""
    write_log(tmp_path, 60)
    segs = segments(tmp_path)
    assert len(segs) >= 3
    for victim in (segs[1], segs[-1]):
        original = victim.read_bytes()
        damaged = bytearray(original)
        damaged[len(rec(0)) + HEADER_SIZE + 5] ^= 0x01  # payload of the 2nd record
        victim.write_bytes(bytes(damaged))
        with pytest.raises(CorruptionError) as info:
            read_all(tmp_path)
        assert victim.name in str(info.value)
        victim.write_bytes(original)  # restore: nothing was dropped
        assert expected(60) == read_all(tmp_path)


def test_interior_damage_found_at_open_without_a_clean_close(tmp_path: Path) -> None:
    """Without a clean close the active segment is scanned at open: damage
    before the checkpoint is interior, so open fails loudly (never truncates)."""
    log = write_log(tmp_path, 12, segment_bytes=1 << 20, close=False)
    log.abandon()
    seg = segments(tmp_path)[-1]
    data = bytearray(seg.read_bytes())
    data[HEADER_SIZE + 3] ^= 0x80  # first record's payload
    seg.write_bytes(bytes(data))
    size = seg.stat().st_size
    with pytest.raises(CorruptionError) as info:
        Log.open(str(tmp_path), RealFileSystem(), LogConfig())
    assert seg.name in str(info.value)
    assert "byte 0" in str(info.value)
    assert size == seg.stat().st_size  # nothing dropped


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_missing_or_damaged_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    """Index files are a cache: missing, garbage or cut short, they are rebuilt
    from the segment and every record reads back at its offset."""
    write_log(tmp_path, 60)
    indexes = sorted(tmp_path.glob("*.index")) + sorted(tmp_path.glob("*.timeindex"))
    assert indexes
    for index in indexes:
        if damage == "missing":
            index.unlink()
        elif damage == "garbage":
            index.write_bytes(random.Random(SEED).randbytes(64))
        else:
            os.truncate(index, max(0, index.stat().st_size - 3))
    assert expected(60) == read_all(tmp_path)
    for offset in (0, 17, 59):
        log = Log.open(str(tmp_path), RealFileSystem(), LogConfig())
        try:
            (header, _record), *_ = iter_records(log.read(offset, 1))
        finally:
            log.close()
        assert offset == header.base_offset


async def test_broker_serves_interior_corruption_loudly_and_others_carry_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A damaged partition fails its reads with CorruptionError naming the
    file; the other partitions keep producing and serving."""
    fs = SimulatedFileSystem()
    async with open_broker("/data", fs=fs) as broker, broker.connect() as client:
        await client.create_topic("t", partitions=2)
        async with client.producer(max_batch_events=1) as producer:
            for i in range(6):
                await producer.send("t", f"v{i}".encode(), partition=0)
    seg = "/data/topics/t/0/00000000000000000000.log"
    fs.corrupt(seg, HEADER_SIZE + 3)
    async with open_broker("/data", fs=fs) as broker:
        with pytest.raises(CorruptionError) as info:
            await broker.handle(p.Fetch("t", 0, 0, 1 << 20, 0))
        assert seg in str(info.value)
        stored = await broker.handle(p.Produce("t", 1, encode_record(b"ok", count=1)))
        assert 0 == stored.base_offset
        fetched = await broker.handle(p.Fetch("t", 1, 0, 1 << 20, 0))
        assert 1 == len(iter_records(fetched.records))


async def test_disk_full_fails_produce_keeps_data_and_resumes(
    autojump_clock: trio.abc.Clock,
) -> None:
    """ENOSPC: produce fails with DiskFullError, what is stored stays readable,
    and once space returns the same broker takes appends again (no restart)."""
    fs = SimulatedFileSystem()
    async with open_broker("/data", fs=fs) as broker:
        await broker.handle(p.CreateTopic("t", 1, None, None, False, None))
        for i in range(3):
            await broker.handle(p.Produce("t", 0, encode_record(f"v{i}".encode(), count=1)))
        fs.set_disk_full(True)
        for _ in range(3):
            with pytest.raises(DiskFullError):
                await broker.handle(p.Produce("t", 0, encode_record(b"full", count=1)))
        fetched = await broker.handle(p.Fetch("t", 0, 0, 1 << 20, 0))
        assert 3 == len(iter_records(fetched.records))
        fs.set_disk_full(False)
        stored = await broker.handle(p.Produce("t", 0, encode_record(b"back", count=1)))
        assert 3 == stored.base_offset
        fetched = await broker.handle(p.Fetch("t", 0, 0, 1 << 20, 0))
        assert [0, 1, 2, 3] == [h.base_offset for h, _ in iter_records(fetched.records)]
    async with open_broker("/data", fs=fs) as broker:
        fetched = await broker.handle(p.Fetch("t", 0, 0, 1 << 20, 0))
        assert 4 == len(iter_records(fetched.records))


REAL_FULL_DISK = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {src!r})
    from headwater import DiskFullError
    from headwater.journal import Log, LogConfig, RealFileSystem, encode_record, iter_records
    path = sys.argv[1] + "/log"
    log = Log.open(path, RealFileSystem(), LogConfig(segment_bytes=1 << 20))
    record = encode_record(b"x" * 2000, count=1)
    n = 0
    try:
        while True:
            log.write(record)
            log.sync()
            n += 1
    except DiskFullError as exc:
        print("full after", n, exc)
    assert n > 10, n
    assert n == log.next_offset
    assert n == len(iter_records(log.read(0, 1 << 30)))
    import os
    os.remove(sys.argv[1] + "/ballast")  # space returns
    log.write(record)
    log.sync()
    log.close()
    log = Log.open(path, RealFileSystem(), LogConfig(segment_bytes=1 << 20))
    assert n + 1 == log.next_offset, (n, log.next_offset)
    log.close()
    print("ok", n)
    """
)


def test_real_full_disk_on_a_size_limited_tmpfs(tmp_path: Path) -> None:
    """A real ENOSPC from a 256 KiB tmpfs in a private mount namespace
    (``unshare -rm``): appends fail with DiskFullError, stored records stay
    readable, and appends succeed again once space is freed."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True, text=True, timeout=10, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"unshare -rm is not permitted here: {probe.stderr.strip()}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    src = str(Path(__file__).resolve().parents[2] / "src")
    script = tmp_path / "fill.py"
    script.write_text(REAL_FULL_DISK.format(src=src))
    shell = (
        f"mount -t tmpfs -o size=256k tmpfs {mnt} && "
        f"head -c 16384 /dev/zero > {mnt}/ballast && "
        f"{sys.executable} {script} {mnt}"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "ok" in done.stdout
    assert "full after" in done.stdout
