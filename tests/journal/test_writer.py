"""The journal writer thread (``open_log(writer_thread=True)``) on the
simulated disk: ordering across concurrent writers, acknowledgement only
after the fsync that covers a record, faults raised in the thread reaching
the caller as typed errors, close draining the queue, and no thread left.

These tests run a real thread, so they use Trio's real clock with a
``fail_after`` bound instead of the autojump clock (which would jump time
while the thread works); every wait is on an event, never a sleep.
``inline_sync_bytes=0`` makes every batch go through the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import trio

from headwater import DiskFullError, FsyncFailedError
from headwater.journal import (
    HEADER_SIZE,
    Log,
    LogConfig,
    PowerLoss,
    SimulatedFileSystem,
    _writer,
    encode_record,
    iter_records,
    open_log,
)
from headwater.journal._log import SyncWork
from headwater.journal._writer import Batch, JournalWriter, Outcome

DIR = "/d/log"
THREADED = LogConfig(inline_sync_bytes=0)


def rec(i: int, size: int = 32) -> bytes:
    return encode_record(i.to_bytes(4, "big") * (size // 4), count=1, first_timestamp=i)


def stored(fs: SimulatedFileSystem, **cfg: object) -> list[tuple[int, bytes]]:
    """(offset, payload) of every record after reopening."""
    log = Log.open(DIR, fs, LogConfig(**cfg))  # type: ignore[arg-type]
    data = log.read(log.earliest_offset, 1 << 30)
    log.abandon()
    return [(h.base_offset, bytes(r[HEADER_SIZE:])) for h, r in iter_records(data)]


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("headwater-journal-writer")]


@pytest.fixture(autouse=True)
def _no_thread_left(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Writer threads end as soon as they are idle here (5 s in a broker),
    and none outlives a test."""
    monkeypatch.setattr(_writer, "IDLE_SECONDS", 0.0)
    for thread in writer_threads():
        thread.join(10)  # an earlier test's, ending
    yield
    for thread in writer_threads():
        thread.join(10)
    assert [] == writer_threads()


class Gate:
    """An fsync hook that parks the writer thread inside fsync until opened."""

    def __init__(self, fs: SimulatedFileSystem, *, power_loss: bool = False) -> None:
        self.fs = fs
        self.entered = threading.Event()
        self.release = threading.Event()
        self.power_loss = power_loss

    def __call__(self, path: str) -> None:
        if not path.endswith(".log") or self.entered.is_set():
            return
        self.entered.set()
        assert self.release.wait(10)
        if self.power_loss:
            self.fs.crash_after(0)  # the machine is off from here on
            raise PowerLoss("power lost during the fsync")

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.wait, 10)


async def test_concurrent_writers_keep_their_order_and_every_ack() -> None:
    """16 writers x 20 records through the thread, with segment rolls: each
    writer's records are stored in its own order at the offsets it was
    given, offsets are contiguous, and fsyncs are shared."""
    fs = SimulatedFileSystem()
    acked: dict[int, bytes] = {}
    with trio.fail_after(20):
        async with open_log(
            DIR,
            fs=fs,
            config=LogConfig(inline_sync_bytes=0, segment_bytes=2000),
            writer_thread=True,
        ) as log:
            before = fs.fsyncs

            async def writer(w: int) -> None:
                for i in range(20):
                    r = rec(w * 1000 + i)
                    h = await log.append(r)
                    acked[h.base_offset] = r[HEADER_SIZE:]

            async with trio.open_nursery() as nursery:
                for w in range(16):
                    nursery.start_soon(writer, w)
            used = fs.fsyncs - before
            assert 320 == log.next_offset == log.synced_offset
    assert used < 320, used  # log fsyncs + directory fsyncs at rolls: shared
    fs.crash()  # only what was fsynced counts
    after = stored(fs, segment_bytes=2000)
    assert list(range(320)) == [o for o, _ in after]
    assert acked == dict(after)
    ids = [int.from_bytes(p[:4], "big") for _, p in after]
    for w in range(16):
        assert [w * 1000 + i for i in range(20)] == [i for i in ids if i // 1000 == w]


async def test_a_wait_begun_after_its_fsync_started_ends_with_that_fsync() -> None:
    """A waiter that asks only once its record's fsync is running (the
    broker's connection task waits after the partition actor wrote) wakes
    when that fsync completes, not with a later one."""
    fs = SimulatedFileSystem()
    with trio.fail_after(20):
        async with open_log(
            DIR, fs=fs, config=LogConfig(inline_sync_bytes=0), writer_thread=True
        ) as log:
            await log.append(rec(0))
            gate = Gate(fs)
            fs.fsync_hook = gate
            generation = log.generation
            header = log.write(rec(1))
            await gate.wait_entered()  # its fsync runs; nothing waits yet
            done = trio.Event()

            async def wait() -> None:
                await log.wait_durable(header.next_offset, generation)
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set()
                syncs = log.syncs
                gate.release.set()
                await done.wait()
                assert syncs + 1 == log.syncs  # no other fsync was needed
                assert 2 == log.synced_offset


async def test_ack_waits_for_the_fsync_and_a_crash_loses_only_unacknowledged() -> None:
    """While the thread sits in the fsync covering a record, its append has
    not returned and readers do not see it; a power loss at that moment
    keeps every acknowledged record and nothing else."""
    fs = SimulatedFileSystem()
    gate = Gate(fs, power_loss=True)
    returned: list[int] = []
    with trio.fail_after(20), pytest.raises(PowerLoss):
        async with open_log(DIR, fs=fs, config=THREADED, writer_thread=True) as log:
            for i in range(3):
                h = await log.append(rec(i))
                returned.append(h.base_offset)
            fs.fsync_hook = gate

            async def late(i: int) -> None:
                returned.append((await log.append(rec(i))).base_offset)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(late, 3)
                await gate.wait_entered()
                nursery.start_soon(late, 4)  # staged behind the fsync in flight
                await trio.testing.wait_all_tasks_blocked()
                assert [0, 1, 2] == returned
                assert 3 == log.visible_end == log.synced_offset
                assert 3 == len(iter_records(await log.read(0, 1 << 20)))
                gate.release.set()
    assert [0, 1, 2] == returned
    fs.crash()
    assert [(i, rec(i)[HEADER_SIZE:]) for i in range(3)] == stored(fs)


async def test_disk_full_in_the_thread_is_a_typed_error_and_the_log_stays_readable() -> None:
    """ENOSPC raised by the writer thread fails the append (and those queued
    behind it) with DiskFullError; what was acknowledged stays readable,
    and once space returns the log takes appends at the next offset."""
    fs = SimulatedFileSystem()
    with trio.fail_after(20):
        async with open_log(DIR, fs=fs, config=THREADED, writer_thread=True) as log:
            for i in range(3):
                await log.append(rec(i))
            fs.set_disk_full(True)
            failures: list[BaseException] = []

            async def doomed(i: int) -> None:
                try:
                    await log.append(rec(i))
                except DiskFullError as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                for i in range(3, 8):
                    nursery.start_soon(doomed, i)
            assert 5 == len(failures)
            assert "disk full" in str(failures[0])
            assert "not acknowledged" in str(failures[0])
            assert 3 == log.next_offset == log.synced_offset
            assert [0, 1, 2] == [h.base_offset for h, _ in iter_records(await log.read(0, 1 << 20))]
            fs.set_disk_full(False)
            h = await log.append(rec(9))
            assert 3 == h.base_offset
    fs.crash()
    assert [0, 1, 2, 3] == [o for o, _ in stored(fs)]
    assert rec(9)[HEADER_SIZE:] == stored(fs)[3][1]


async def test_failed_fsync_in_the_thread_fails_the_append_and_the_log_carries_on() -> None:
    """EIO from the thread's fsync: FsyncFailedError, never an ack; the log
    cuts back to the last synced offset and goes on."""
    fs = SimulatedFileSystem()
    with trio.fail_after(20):
        async with open_log(DIR, fs=fs, config=THREADED, writer_thread=True) as log:
            await log.append(rec(0))
            fs.fail_next_fsyncs(1)
            with pytest.raises(FsyncFailedError, match="not acknowledged"):
                await log.append(rec(1))
            assert 1 == log.next_offset
            assert 1 == (await log.append(rec(2))).base_offset
    fs.crash()
    assert [0, 1] == [o for o, _ in stored(fs)]


async def test_close_drains_the_queue_and_ends_the_thread() -> None:
    """Records written without waiting are all on disk, synced, after the
    block ends; no writer thread and no open file remain."""
    fs = SimulatedFileSystem()
    with trio.fail_after(20):
        async with open_log(DIR, fs=fs, config=THREADED, writer_thread=True) as log:
            for i in range(50):
                log.write(rec(i))
            assert log._writer is not None
    assert [] == fs.open_paths()
    fs.crash()
    assert list(range(50)) == [o for o, _ in stored(fs)]


async def test_large_records_go_through_the_thread_byte_for_byte() -> None:
    """Records past the combined-CRC threshold (payload not copied) are
    stored byte for byte and pass the checksum on reopen."""
    fs = SimulatedFileSystem()
    big = [encode_record(bytes([i]) * 100_000, count=7) for i in range(4)]
    with trio.fail_after(20):
        async with open_log(DIR, fs=fs, config=LogConfig(), writer_thread=True) as log:
            for r in big:
                await log.append(r)
    after = stored(fs)
    assert [0, 7, 14, 21] == [o for o, _ in after]
    assert [r[HEADER_SIZE:] for r in big] == [p for _, p in after]


async def test_unexpected_errors_from_the_thread_end_the_log() -> None:
    """An exception that is not an OSError (here a power loss) ends the
    log's block with that exception, as on the inline path."""
    fs = SimulatedFileSystem()
    with trio.fail_after(20), pytest.raises(PowerLoss):
        async with open_log(DIR, fs=fs, config=THREADED, writer_thread=True) as log:
            await log.append(rec(0))
            fs.crash_after(0)
            await log.append(rec(1))


def test_a_rolled_segment_file_is_created_by_the_writer_not_at_staging() -> None:
    """Log.stage never creates a new segment's file: the writer does, after
    writing the records before it, so a directory fsync cannot make the new
    file durable ahead of them (a hole at recovery)."""
    fs = SimulatedFileSystem()
    log = Log.open(DIR, fs, LogConfig(segment_bytes=200))
    staged = [log.stage(rec(i, 64))[1] for i in range(4)]
    rolled = [s.segment for s in staged if s.segment.base != 0]
    assert rolled
    assert all(seg.handle == -1 for seg in rolled)
    assert not any(fs.exists(seg.path) for seg in rolled)
    outcomes: list[Outcome] = []
    writer = JournalWriter(log, lambda fn, arg: fn(arg), outcomes.append)
    outcome = writer.run_inline(Batch(staged, log.prepare_sync(), 0))
    assert outcome.error is None
    assert all(fs.exists(seg.path) and seg.handle >= 0 for seg in rolled)
    assert outcome.work is not None
    log.complete_sync(outcome.work)
    for s in staged:
        log.unstage(s)
    log.close()
    assert [0, 1, 2, 3] == [o for o, _ in stored(fs, segment_bytes=200)]


class Killed(BaseException):
    """The writer's process dies here (its written bytes stay in the page cache)."""


class KilledAtCreate(SimulatedFileSystem):
    """A disk whose process is killed just after creating ``target``."""

    target = ""

    def open(self, path: str) -> int:
        created = not self.exists(path)
        handle = super().open(path)
        if created and path == self.target:
            raise Killed(path)
        return handle


def test_a_kill_as_a_rolled_segment_is_created_leaves_no_hole() -> None:
    """The writer writes a batch's records before the segment it rolls to
    gets its file, so a kill just after the file is created (the page cache
    keeps what was written) reopens to every record before it, not to a
    segment that starts past the end of the one before (a CorruptionError
    at every restart; seen once in the SIGKILL crash test)."""
    fs = KilledAtCreate()
    log = Log.open(DIR, fs, LogConfig(segment_bytes=300))
    staged = [log.stage(rec(i, 64))[1] for i in range(5)]  # two per segment
    rolled = staged[2].segment
    assert 2 == rolled.base
    assert 0 == staged[1].segment.base
    fs.target = rolled.path
    writer = JournalWriter(log, lambda fn, arg: fn(arg), lambda outcome: None)
    outcome = writer.run_inline(Batch(staged, log.prepare_sync(), 0))
    assert isinstance(outcome.error, Killed)
    log.abandon()
    assert [0, 1] == [o for o, _ in stored(fs, segment_bytes=300)]


def test_an_idle_writer_thread_ends_and_a_new_batch_starts_another() -> None:
    """The thread lives only while there is work (IDLE_SECONDS=0 here)."""
    fs = SimulatedFileSystem()
    log = Log.open(DIR, fs, LogConfig())
    outcomes: list[Outcome] = []
    done = threading.Event()

    def report(outcome: Outcome) -> None:
        outcomes.append(outcome)
        done.set()

    writer = JournalWriter(log, lambda fn, arg: fn(arg), report)
    started = writer.threads_started
    for round_ in range(2):
        done.clear()
        _header, staged = log.stage(rec(round_))
        writer.submit(Batch([staged], log.prepare_sync(), 0))
        assert done.wait(10)
        for _ in range(1000):
            if not writer.running:
                break
            threading.Event().wait(0.01)
        assert not writer.running
        assert outcomes[-1].work is not None
        log.complete_sync(outcomes[-1].work)
        log.unstage(staged)
    assert started + 2 == writer.threads_started
    log.close()
    assert [0, 1] == [o for o, _ in stored(fs)]


def test_a_staged_segment_retired_before_its_first_write_leaves_no_file() -> None:
    """A rolled-to segment that left the log before the writer created its
    file (cut back after a failed fsync) is skipped instead of being
    created as a stray segment file. delete_before (a state journal's
    snapshot) never takes one: it keeps every segment not synced yet."""
    fs = SimulatedFileSystem()
    log = Log.open(DIR, fs, LogConfig(segment_bytes=100))
    staged = [log.stage(rec(i, 64))[1] for i in range(3)]  # one record per segment
    middle = staged[1].segment
    assert -1 == middle.handle
    assert [] == log.delete_before(middle.next_offset)  # none synced yet
    (retired,) = log._drop_segments(1, 2)  # as discard_unsynced does
    assert retired is middle
    del log._dirty[middle.base]
    writer = JournalWriter(log, lambda fn, arg: fn(arg), lambda outcome: None)
    outcome = writer.run_inline(Batch(staged, log.prepare_sync(), 0))
    assert outcome.error is None
    assert not fs.exists(middle.path)
    assert fs.exists(staged[2].segment.path)
    assert outcome.work is not None
    log.complete_sync(outcome.work)
    for s in staged:
        log.unstage(s)
    assert [0] == log.delete_before(middle.next_offset)  # synced now
    log.close()


async def test_batches_queued_behind_a_failed_fsync_are_skipped_and_fail_typed() -> None:
    """The thread sits in a failing fsync while two more batches queue
    behind it: it never writes them (their offsets followed the failed
    record's), every one of those appends fails with FsyncFailedError, the
    log cuts back to what was acknowledged, and later appends continue at
    the next offset, stored exactly once."""
    fs = SimulatedFileSystem()
    gate = Gate(fs)
    outcomes: dict[int, object] = {}
    with trio.fail_after(20):
        async with open_log(DIR, fs=fs, config=THREADED, writer_thread=True) as log:
            for i in range(2):
                await log.append(rec(i))
            fs.fsync_hook = gate

            async def one(i: int) -> None:
                try:
                    outcomes[i] = (await log.append(rec(i))).base_offset
                except FsyncFailedError as exc:
                    outcomes[i] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, 2)
                await gate.wait_entered()
                fs.fail_next_fsyncs(1)  # this fsync, once released, fails
                nursery.start_soon(one, 3)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(one, 4)
                await trio.testing.wait_all_tasks_blocked()
                assert 5 == log.next_offset  # all three staged, none acknowledged
                assert 2 == log.synced_offset
                gate.release.set()
            assert [2, 3, 4] == sorted(outcomes)
            assert all(isinstance(outcomes[i], FsyncFailedError) for i in (2, 3, 4))
            assert 2 == log.next_offset == log.synced_offset
            fs.fsync_hook = None
            assert 2 == (await log.append(rec(5))).base_offset
    fs.crash()
    assert [(0, rec(0)), (1, rec(1)), (2, rec(5))] == [
        (o, encode_record(p, count=1, first_timestamp=int.from_bytes(p[:4], "big")))
        for o, p in stored(fs)
    ]


class FsyncWitness:
    """An fsync hook noting, for each log fsync, the Trio task running it
    (None in the writer thread) and how many appends had returned."""

    def __init__(self, returned: list[int]) -> None:
        self.returned = returned
        self.calls: list[tuple[object, int]] = []

    def __call__(self, path: str) -> None:
        if not path.endswith(".log"):
            return
        try:
            task: object = trio.lowlevel.current_task()
        except RuntimeError:  # the writer thread
            task = None
        self.calls.append((task, len(self.returned)))


async def test_a_lone_writers_small_record_is_synced_by_its_own_waiter() -> None:
    """``wait_durable(sync_here=True)``: with the writer thread idle and
    fsyncs fast, the task waiting for a small record fsyncs it itself (no
    hop through the flusher task and back: two task switches fewer per
    acknowledgement), and returns only after."""
    fs = SimulatedFileSystem()
    returned: list[int] = []
    witness = FsyncWitness(returned)
    with trio.fail_after(20):
        async with open_log(DIR, fs=fs, config=LogConfig(), writer_thread=True) as log:
            await log.append(rec(0))  # the first sync may open or settle files
            fs.fsync_hook = witness
            me = trio.lowlevel.current_task()
            for i in range(1, 4):
                generation = log.generation
                h = log.write(rec(i))
                await log.wait_durable(h.next_offset, generation, sync_here=True)
                returned.append(h.base_offset)
                assert log.synced_offset == h.next_offset
    assert [(me, 0), (me, 1), (me, 2)] == witness.calls
    fs.crash()
    assert [0, 1, 2, 3] == [o for o, _ in stored(fs)]


async def test_appenders_of_one_loop_pass_share_one_fsync() -> None:
    """Without ``sync_here`` (``append``), 16 appends started together are
    covered by one fsync on the loop (group commit), before any returns."""
    fs = SimulatedFileSystem()
    returned: list[int] = []
    witness = FsyncWitness(returned)
    with trio.fail_after(20):
        async with open_log(DIR, fs=fs, config=LogConfig(), writer_thread=True) as log:
            await log.append(rec(0))
            await trio.testing.wait_all_tasks_blocked()  # the flusher settled
            fs.fsync_hook = witness

            async def one(i: int) -> None:
                returned.append((await log.append(rec(i))).base_offset)

            async with trio.open_nursery() as nursery:
                for i in range(1, 17):
                    nursery.start_soon(one, i)
    assert 1 == len(witness.calls), witness.calls
    assert witness.calls[0][0] is not None  # on the loop
    assert 0 == witness.calls[0][1]  # before any of them returned
    assert list(range(1, 17)) == sorted(returned)


async def test_a_failed_fsync_in_the_waiters_task_fails_its_append_typed() -> None:
    """EIO from the fsync a waiter runs itself: FsyncFailedError (never an
    ack), the log cuts back and takes the next append at the same offset."""
    fs = SimulatedFileSystem()
    with trio.fail_after(20):
        async with open_log(DIR, fs=fs, config=LogConfig(), writer_thread=True) as log:
            await log.append(rec(0))
            fs.fail_next_fsyncs(1)
            generation = log.generation
            h = log.write(rec(1))
            with pytest.raises(FsyncFailedError, match="not acknowledged"):
                await log.wait_durable(h.next_offset, generation, sync_here=True)
            assert 1 == log.next_offset == log.synced_offset
            assert 1 == (await log.append(rec(2))).base_offset
    fs.crash()
    assert [(0, rec(0)[HEADER_SIZE:]), (1, rec(2)[HEADER_SIZE:])] == stored(fs)


class CheckpointWrites:
    """Records each ``Log.put_sync_checkpoint`` call: its thread and offset."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, wait_for: int = -1) -> None:
        self.calls: list[tuple[threading.Thread, int]] = []
        self.written = threading.Event()  # set once the checkpoint names wait_for
        original = Log.put_sync_checkpoint

        def put(log: Log, work: SyncWork) -> None:
            original(log, work)
            self.calls.append((threading.current_thread(), work.target_offset))
            if work.target_offset == wait_for:
                self.written.set()

        monkeypatch.setattr(Log, "put_sync_checkpoint", put)


async def test_a_busy_log_does_not_rewrite_its_checkpoint_after_every_fsync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checkpoint is advisory: the thread writes it after the first
    fsync, then not again until the close's drain (lane never idle long
    enough here, and CHECKPOINT_SECONDS not reached), and the close's clean
    checkpoint is the one left on disk."""
    monkeypatch.setattr(_writer, "CHECKPOINT_SECONDS", 3600.0)
    monkeypatch.setattr(_writer, "CHECKPOINT_IDLE_SECONDS", 3600.0)
    writes = CheckpointWrites(monkeypatch)
    fs = SimulatedFileSystem()
    with trio.fail_after(20):
        async with open_log(DIR, fs=fs, config=THREADED, writer_thread=True) as log:
            for i in range(30):
                await log.append(rec(i))
            syncs = log.syncs
    assert syncs >= 30
    assert [1, 30] == [offset for _, offset in writes.calls]
    assert all(t.name.startswith("headwater-journal-writer") for t, _ in writes.calls)
    reopened = Log.open(DIR, fs, LogConfig())
    assert reopened.untouched  # the clean checkpoint, not a late unclean one
    reopened.abandon()


async def test_an_idle_lane_writes_the_checkpoint_it_put_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the first fsync's checkpoint, the next ones wait; once the lane
    has nothing to do it writes the latest synced point."""
    monkeypatch.setattr(_writer, "CHECKPOINT_SECONDS", 3600.0)
    monkeypatch.setattr(_writer, "CHECKPOINT_IDLE_SECONDS", 0.0)
    writes = CheckpointWrites(monkeypatch, wait_for=3)
    fs = SimulatedFileSystem()
    with trio.fail_after(20):
        async with open_log(DIR, fs=fs, config=THREADED, writer_thread=True) as log:
            for i in range(3):
                await log.append(rec(i))
            assert await trio.to_thread.run_sync(writes.written.wait, 10)
    assert 3 == writes.calls[-1][1]


def test_an_inline_sync_leaves_its_checkpoint_to_the_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """run_inline (on the loop thread, on the acknowledgement's path) makes
    no checkpoint file calls: it queues a marker and the lane writes the
    checkpoint on its own thread."""
    monkeypatch.setattr(_writer, "CHECKPOINT_IDLE_SECONDS", 0.0)
    writes = CheckpointWrites(monkeypatch, wait_for=1)
    fs = SimulatedFileSystem()
    log = Log.open(DIR, fs, LogConfig())
    writer = JournalWriter(log, lambda fn, arg: fn(arg), lambda outcome: None)
    _header, staged = log.stage(rec(0))
    outcome = writer.run_inline(Batch([staged], log.prepare_sync(), 0))
    assert outcome.error is None
    assert outcome.work is not None
    assert threading.current_thread() not in [t for t, _ in writes.calls]
    assert writes.written.wait(10)
    assert not writer.checkpoint_pending
    assert all(t is not threading.current_thread() for t, _ in writes.calls)
    log.complete_sync(outcome.work)
    log.unstage(staged)
    log.close()
    assert [0] == [o for o, _ in stored(fs)]
