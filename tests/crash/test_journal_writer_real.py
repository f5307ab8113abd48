"""The journal writer thread on real files: concurrent writers across
segment rolls with small and large records, the gather write, and the
in-place checkpoint write. (The SIGKILL test in test_journal_sigkill.py runs
the writer thread too: it is the default for ``always`` on a real disk.)"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio

from headwater.journal import (
    HEADER_SIZE,
    Log,
    LogConfig,
    RealFileSystem,
    encode_record,
    iter_records,
    open_log,
)

pytestmark = pytest.mark.crash


def payload(w: int, i: int) -> bytes:
    size = 200_000 if i % 7 == 3 else 50 + (w * 31 + i * 17) % 400  # some past 8 KiB
    return (w * 1000 + i).to_bytes(4, "big") + random.Random(w * 1000 + i).randbytes(size)


async def test_concurrent_writers_on_real_files_through_the_writer_thread(tmp_path: Path) -> None:
    """8 writers x 30 records (some 200 KB), segments of 256 KiB: every
    acknowledged record is stored at its offset byte for byte, each
    writer's records in its order, offsets contiguous, after a clean close
    and reopen."""
    path = str(tmp_path / "log")
    config = LogConfig(segment_bytes=256 * 1024, inline_sync_bytes=0)
    acked: dict[int, bytes] = {}
    with trio.fail_after(60):
        async with open_log(path, config=config) as log:
            assert log._writer is not None  # the default on a real disk

            async def writer(w: int) -> None:
                for i in range(30):
                    h = await log.append(encode_record(payload(w, i), count=1 + i % 3))
                    acked[h.base_offset] = payload(w, i)

            async with trio.open_nursery() as nursery:
                for w in range(8):
                    nursery.start_soon(writer, w)
            assert log.next_offset == log.synced_offset
            assert len(log.log.segments) > 5
    log2 = Log.open(path, RealFileSystem(), config)
    try:
        stored = [
            (h.base_offset, bytes(r[HEADER_SIZE:])) for h, r in iter_records(log2.read(0, 1 << 30))
        ]
    finally:
        log2.close()
    assert acked == dict(stored)
    offsets = [o for o, _ in stored]
    counts = [1 + (int.from_bytes(p[:4], "big") % 1000) % 3 for _, p in stored]
    assert offsets == [sum(counts[:k]) for k in range(len(counts))]
    ids = [int.from_bytes(p[:4], "big") for _, p in stored]
    for w in range(8):
        assert [w * 1000 + i for i in range(30)] == [x for x in ids if x // 1000 == w]


def test_writev_writes_every_buffer_in_order_past_the_iov_limit(tmp_path: Path) -> None:
    """1,500 buffers (bytes, bytearrays, memoryviews, some empty) in one
    call: the file holds exactly their concatenation."""
    fs = RealFileSystem()
    rng = random.Random(3)
    buffers: list[bytes | bytearray | memoryview] = []
    for i in range(1500):
        data = rng.randbytes(rng.randrange(0, 300))
        buffers.append(data if i % 3 == 0 else bytearray(data) if i % 3 == 1 else memoryview(data))
    handle = fs.open(str(tmp_path / "f"))
    try:
        fs.writev(handle, buffers)
        assert b"".join(bytes(b) for b in buffers) == fs.pread(handle, 1 << 20, 0)
    finally:
        fs.close(handle)


@pytest.mark.parametrize("n", [3, 1500])
def test_writev_resumes_after_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """A writev the kernel cuts short (at most 7 bytes a call here) is
    resumed where it stopped, under and past the IOV limit."""
    real = os.writev

    def short(fd: int, buffers: list[bytes | memoryview]) -> int:
        return real(fd, [bytes(b"".join(bytes(b) for b in buffers)[:7])])

    monkeypatch.setattr(os, "writev", short)
    fs = RealFileSystem()
    rng = random.Random(n)
    buffers = [rng.randbytes(rng.randrange(0, 20)) for _ in range(n)]
    handle = fs.open(str(tmp_path / "f"))
    try:
        fs.writev(handle, buffers)
        assert b"".join(buffers) == fs.pread(handle, 1 << 20, 0)
    finally:
        fs.close(handle)


def test_overwrite_replaces_the_start_in_place(tmp_path: Path) -> None:
    """The checkpoint's write: in place at offset 0 on a handle opened for
    appending, the rest of the file kept."""
    fs = RealFileSystem()
    handle = fs.open(str(tmp_path / "checkpoint"))
    try:
        fs.write(handle, b"0123456789")
        fs.overwrite(handle, b"abc")
        fs.overwrite(handle, b"xy")
        assert b"xyc3456789" == fs.pread(handle, 100, 0)
        assert 10 == os.fstat(handle).st_size
    finally:
        fs.close(handle)
