"""Durability policies on the simulated disk under MockClock: group commit,
power loss swept over every operation, failed fsync, interval loss bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from headwater import FsyncFailedError, StorageError
from headwater.journal import (
    HEADER_SIZE,
    LogConfig,
    PowerLoss,
    RealFileSystem,
    SimulatedFileSystem,
    encode_record,
    iter_records,
    open_log,
)
from headwater.testing import capture_logs

DIR = "/d/log"


def rec(i: int) -> bytes:
    return encode_record(i.to_bytes(4, "big") * 8, count=1, first_timestamp=i)


def stored(fs: SimulatedFileSystem, **cfg: object) -> list[tuple[int, bytes]]:
    """(offset, payload) of every record after reopening."""
    from headwater.journal import Log

    log = Log.open(DIR, fs, LogConfig(**cfg))  # type: ignore[arg-type]
    data = log.read(log.earliest_offset, 1 << 30)
    log.abandon()
    return [(h.base_offset, bytes(r[HEADER_SIZE:])) for h, r in iter_records(data)]


async def test_group_commit_shares_fsyncs(autojump_clock: trio.abc.Clock) -> None:
    """16 concurrent writers under `always` need far fewer fsyncs than appends."""
    fs = SimulatedFileSystem()
    async with open_log(DIR, fs=fs) as log:
        before = fs.fsyncs

        async def writer(w: int) -> None:
            for i in range(10):
                await log.append(rec(w * 100 + i))

        async with trio.open_nursery() as nursery:
            for w in range(16):
                nursery.start_soon(writer, w)
        used = fs.fsyncs - before
        assert 160 == log.next_offset
        assert used <= 20, used


async def test_waiters_of_one_fsync_share_one_wake_event(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit wakes every waiter an fsync covers through one event
    (a few events per fsync, not one per append: each costs loop time that
    bounds group commit), and every append still returns after its fsync."""
    fs = SimulatedFileSystem()
    made = 0
    real_event = trio.Event

    def counting_event() -> trio.Event:
        nonlocal made
        made += 1
        return real_event()

    async with open_log(DIR, fs=fs) as log:
        monkeypatch.setattr(trio, "Event", counting_event)
        before = fs.fsyncs

        async def writer(w: int) -> None:
            for i in range(10):
                h = await log.append(rec(w * 100 + i))
                assert h.next_offset <= log.synced_offset

        async with trio.open_nursery() as nursery:
            for w in range(16):
                nursery.start_soon(writer, w)
        monkeypatch.undo()
        fsyncs = fs.fsyncs - before
    assert 0 < made <= 3 * fsyncs < 160, (made, fsyncs)


async def test_always_acks_only_after_fsync(autojump_clock: trio.abc.Clock) -> None:
    """Under `always`, the visible end (what readers see) moves only on fsync."""
    fs = SimulatedFileSystem()
    async with open_log(DIR, fs=fs) as log:
        generation = log.generation
        header = log.write(rec(1))
        assert 0 == log.visible_end
        assert b"" == await log.read(0, 1000)
        await log.wait_durable(header.next_offset, generation)
        assert 1 == log.visible_end
        assert 1 == len(iter_records(await log.read(0, 1000)))


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "writer_thread"])
@pytest.mark.parametrize("torn", [False, True])
async def test_power_loss_at_every_operation_keeps_every_ack(
    autojump_clock: trio.abc.Clock, torn: bool, threaded: bool
) -> None:
    """Sweep a crash over every file operation of a workload (appends, rolls,
    concurrent writers): every acknowledged record survives byte for byte,
    offsets stay contiguous, and reopening never fails. With the writer
    thread (every batch through it) the operations interleave differently
    from run to run; the promise is the same. (No timeouts here, so the
    autojump clock moving while the thread works changes nothing.)"""
    total_ops = None
    k = 0
    while total_ops is None or k <= total_ops:
        fs = SimulatedFileSystem(seed=k)
        fs.makedirs(DIR)
        fs.crash_after(k)
        acked: dict[int, bytes] = {}
        cfg = LogConfig(segment_bytes=400, inline_sync_bytes=0 if threaded else 64 * 1024)
        try:
            async with open_log(DIR, fs=fs, config=cfg, writer_thread=threaded) as log:

                async def writer(w: int, log=log, acked=acked) -> None:  # type: ignore[no-untyped-def]
                    for i in range(6):
                        r = rec(w * 100 + i)
                        h = await log.append(r)
                        acked[h.base_offset] = r[HEADER_SIZE:]

                async with trio.open_nursery() as nursery:
                    for w in range(3):
                        nursery.start_soon(writer, w)
            if total_ops is None:
                total_ops = fs.ops
        except* PowerLoss:
            pass
        except* StorageError:
            pass  # a crash in the middle of close surfaces as a storage error
        fs.crash(torn=torn)
        after = dict(stored(fs, segment_bytes=400))
        assert list(after) == list(range(len(after))), k
        for offset, payload in acked.items():
            assert after.get(offset) == payload, (k, offset)
        k += 1
    assert total_ops is not None
    assert total_ops > 40


async def test_failed_fsync_fails_waiters_and_log_carries_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    """EIO on fsync: the waiting append fails (never acked), the log cuts back to
    the last synced offset and takes new appends."""
    fs = SimulatedFileSystem()
    with capture_logs() as logs:
        async with open_log(DIR, fs=fs) as log:
            await log.append(rec(0))
            fs.fail_next_fsyncs(1)
            with pytest.raises(FsyncFailedError, match="not acknowledged"):
                await log.append(rec(1))
            assert 1 == log.next_offset
            h = await log.append(rec(2))
            assert 1 == h.base_offset
    assert any(e["event"] == "journal_fsync_failed" for e in logs)
    fs.crash()
    assert [0, 1] == [o for o, _ in stored(fs)]


async def test_interval_loss_is_bounded_by_the_interval(autojump_clock: trio.abc.Clock) -> None:
    """Under `interval`, appends ack at once; a power loss loses at most what was
    written since the last timer fsync."""
    fs = SimulatedFileSystem()
    cfg = LogConfig(durability="interval", interval_ms=100)
    acked_at: list[tuple[float, int]] = []
    crash_time = 0.0
    with pytest.raises(PowerLoss):
        async with open_log(DIR, fs=fs, config=cfg) as log:
            for i in range(55):
                await trio.sleep(0.01)
                h = await log.append(rec(i))
                acked_at.append((trio.current_time(), h.base_offset))
            crash_time = trio.current_time()
            fs.crash_after(0)  # the power goes: nothing more reaches the disk
    fs.crash()
    survivors = {o for o, _ in stored(fs)}
    lost = [(t, o) for t, o in acked_at if o not in survivors]
    assert lost, "something written after the last fsync should be lost"
    assert all(crash_time - t <= 0.1 + 1e-9 for t, _ in lost)
    assert list(range(len(survivors))) == sorted(survivors)


async def test_long_poll_wakes_on_new_data(autojump_clock: trio.abc.Clock) -> None:
    """wait_for_data sleeps until the visible end passes the offset."""
    fs = SimulatedFileSystem()
    async with open_log(DIR, fs=fs) as log:
        woke: list[float] = []

        async def reader() -> None:
            await log.wait_for_data(0)
            woke.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(5)
            await log.append(rec(0))
        assert [5.0] == woke


def test_new_directories_are_made_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RealFileSystem.makedirs fsyncs the parent of each directory it
    creates (a topic's new partition directory must not vanish after a
    power loss with the events fsynced in it), and nothing when they exist."""
    synced: list[str] = []
    monkeypatch.setattr(RealFileSystem, "fsync_dir", lambda self, path: synced.append(path))
    fs = RealFileSystem()
    root = str(tmp_path)
    fs.makedirs(f"{root}/a/b/c")
    assert [root, f"{root}/a", f"{root}/a/b"] == synced
    fs.makedirs(f"{root}/a/b/c")
    assert 3 == len(synced)


def test_a_power_loss_takes_the_files_of_a_removed_directory_along() -> None:
    """The simulated disk: a directory removed (rmtree) and its parent
    fsynced is gone after a power loss with everything in it, even files
    whose own entries were durable."""
    fs = SimulatedFileSystem()
    fs.makedirs("/d/t/0")
    handle = fs.open("/d/t/0/log")
    fs.write(handle, b"x")
    fs.fsync(handle)
    fs.fsync_dir("/d/t/0")
    fs.rmtree("/d/t")
    fs.fsync_dir("/d")
    fs.crash()
    assert not fs.exists("/d/t/0/log")
    assert not fs.exists("/d/t")
    assert fs.exists("/d")


def test_a_process_kill_keeps_what_was_written() -> None:
    """crash(process_only=True) is kill -9, not a power loss: written bytes
    and directory entries stay, unsynced or not; handles and locks go."""
    fs = SimulatedFileSystem()
    fs.makedirs("/d")
    handle = fs.open("/d/f")
    fs.write(handle, b"unsynced")
    fs.lock("/d/.lock")
    fs.crash(process_only=True)
    assert b"unsynced" == fs.file_bytes("/d/f")
    with pytest.raises(OSError):
        fs.write(handle, b"x")
    fs.close(fs.lock("/d/.lock"))  # the dead process's lock is gone (no LockHeld)
    fs.crash()  # a power loss: the file's entry was never fsynced
    assert not fs.exists("/d/f")
