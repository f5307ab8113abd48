"""The Trio face of a log: durability policies and group commit.

Theory of operation
-------------------
:func:`open_log` recovers a :class:`~headwater.journal.Log` and starts one
*flusher* task beside it. Appending is split so that an actor never blocks on
the disk while it owns its state: :meth:`AsyncLog.write` appends at once (page
cache) and returns the stored header; :meth:`AsyncLog.wait_durable` waits until
a sync covers it. :meth:`AsyncLog.append` does both.

* ``always``: each write wakes the flusher, which fsyncs everything written so
  far (in a worker thread on a real disk). Writes that arrive while an fsync
  runs are covered by the next one: group commit. ``wait_durable`` returns
  after the fsync that covers the record.
* ``interval``: the flusher fsyncs ``interval_ms`` after the first write
  since its last sync (so at least every ``interval_ms`` while writes come,
  and an idle log has no timer); ``wait_durable`` returns at once (the ack
  precedes the fsync).
* ``never``: no fsync except at roll and close; ``wait_durable`` returns at once.

A failed fsync is never retried into an ack. Every waiter whose record it
covered fails with :class:`~headwater.FsyncFailedError`, the log cuts itself back
to what the last good sync covered (those offsets were never acknowledged and
are handed out again), and it keeps accepting appends. A full disk fails the
write with :class:`~headwater.DiskFullError` and nothing half-written remains.

Reads far from the tail and compaction's rewrites run in worker threads; the
:class:`Log` reference-counts its segment handles, so retention, compaction
and close on the loop thread never pull a file out from under them.

Readers see ``visible_end``: under ``always`` only synced records, so a consumer
never reads an event a power loss could take back; otherwise everything
written. :meth:`AsyncLog.wait_for_data` lets long-polling readers sleep until
the visible end moves.
"""

from __future__ import annotations

import errno
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, ParamSpec, TypeVar

import trio

from headwater._errors import (
    ClosedError,
    DiskFullError,
    FsyncFailedError,
    HeadwaterError,
    StorageError,
)
from headwater._logging import get_logger
from headwater._stats import SIZE_BUCKETS, Histogram
from headwater.journal._fdcache import FileCache
from headwater.journal._files import FileSystem, RealFileSystem
from headwater.journal._log import Deferred, Log, LogConfig, Staged, SyncWork
from headwater.journal._record import RecordHeader
from headwater.journal._writer import Batch, JournalWriter, Outcome
from headwater.supervision._specs import unwrapping_groups

__all__ = ["AsyncLog", "open_log"]

_log = get_logger("headwater.journal")

_T = TypeVar("_T")
_P = ParamSpec("_P")


async def run_blocking(
    fs: FileSystem, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``fn(*args, **kwargs)``: in a worker thread when ``fs`` may block on
    a real disk, so one slow disk never freezes the loop; inline on a
    simulated one (deterministic tests)."""
    if fs.blocking:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))
    return fn(*args, **kwargs)


INLINE_RECOVERY_BYTES = 256 * 1024
"""A log whose recovery scans at most this much, and needs no fsync, opens on
the loop thread (a worker-thread hop per log dominated starting 10,000)."""

INLINE_SYNC_SECONDS = 0.001
"""A small batch is written and fsynced on the loop thread only while the
disk's recent fsyncs took at most this long (else the writer thread does it)."""

TAIL_READ_EVENTS = 256
"""A read starting this close to the end of the log is done on the loop thread."""

INLINE_READ_BYTES = 4 * 1024 * 1024
"""A read further back is done on the loop thread too when it asks for at most
this much and the page cache holds all of it (copying 4 MiB takes ~1 ms)."""


class AsyncLog:
    """A :class:`Log` driven from Trio (made by :func:`open_log`)."""

    def __init__(self, log: Log, *, writer_thread: bool | None = None) -> None:
        self.log = log
        self.config = log.config
        self._blocking = log.fs.blocking
        self._always = self.config.durability == "always"
        if writer_thread is None:
            writer_thread = self._blocking and self.config.durability == "always"
        # Under `always`, a JournalWriter thread does the writes and fsyncs
        # (started by open_log); records wait in _staged for the flusher.
        self._threaded = writer_thread and self.config.durability == "always"
        self._writer: JournalWriter | None = None
        self._staged: list[Staged] = []
        self._submitted = (-1, -1)  # (target offset, dir generation) last handed over
        self._in_flight = 0  # batches handed over without an outcome yet
        self._staged_bytes = 0
        self._fsync_ewma = 0.0  # recent fsync time (s), for the inline choice
        self._crash: BaseException | None = None
        self._wake = trio.Event()
        # wait_durable callers share one event per sync: those whose record
        # no prepared sync covers yet wait on _next_wake, which each prepared
        # sync takes along as (its target offset, event) into _syncing (in
        # target order); a completed sync sets the events of the syncs it
        # covers, one wake for all their waiters (a failure or close sets
        # all). A waiter woken early (it asked for an offset not written yet)
        # checks again and waits for a later one.
        self._next_wake = trio.Event()
        self._syncing: deque[tuple[int, trio.Event]] = deque()
        self._data = trio.Event()
        # Long-polling readers parked in wait_for_data, and how many times a
        # sync woke some (wait_durable lets them run before its caller acks).
        self._readers = 0
        self._reader_wakes = 0
        self._generation = 0
        self._cuts: list[int] = []  # synced offset at each failed fsync
        self._failures: list[HeadwaterError] = []  # what each cut's waiters raise
        self._failure: BaseException | None = None
        self._closed = False
        self.syncs = 0
        # Observability: fsync latency and appends per fsync (group-commit
        # batch size). An owner may replace both with histograms it shares
        # across logs (the broker does, so they outlive partition restarts).
        self.sync_latency = Histogram()
        self.sync_batch = Histogram(SIZE_BUCKETS)
        self._unsynced_writes = 0
        self._last_sync: tuple[int, int] | None = None  # (segment base, position)

    # ---------------------------------------------------------------- write

    @property
    def next_offset(self) -> int:
        """The offset the next event will get."""
        return self.log.next_offset

    @property
    def earliest_offset(self) -> int:
        """The first offset still stored."""
        return self.log.earliest_offset

    @property
    def synced_offset(self) -> int:
        """Every offset below this is durable."""
        return self.log.synced_offset

    @property
    def visible_end(self) -> int:
        """Readers may read offsets below this (synced ones under ``always``)."""
        if self.config.durability == "always":
            return self.log.synced_offset
        return self.log.next_offset

    @property
    def closed(self) -> bool:
        """True once the log is closed (for example after its actor restarted)."""
        return self._closed

    @property
    def generation(self) -> int:
        """Changes whenever a failed fsync cut the log back. Take it before
        :meth:`write` and pass it to :meth:`wait_durable`, so a wait never
        mistakes a re-issued offset for its own record."""
        return self._generation

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the log at {self.log.path} is closed")

    def write(
        self, record: bytes | bytearray | memoryview, validated: RecordHeader | None = None
    ) -> RecordHeader:
        """Append ``record`` now (not yet durable); returns its stored header.

        Synchronous and fast (page cache). Raises ``InvalidArgument`` for a bad
        record, ``DiskFullError``/``StorageError`` for disk trouble.
        """
        if self._closed:
            self._check_open()  # raises
        log = self.log
        if self._threaded:
            header, staged = log.stage(record, validated)
            self._staged.append(staged)
            self._staged_bytes += header.length
        else:
            header = log.write(record, validated)
        log.files.trim()
        self._unsynced_writes += 1
        self._wake.set()
        if not self._always:
            self._notify_data()
        return header

    async def wait_durable(
        self, end_offset: int, generation: int, *, sync_here: bool = False
    ) -> None:
        """Wait until every offset below ``end_offset`` is durable, as the
        policy defines it (only ``always`` waits for an fsync). ``generation``
        is :attr:`generation` as it was before the write. Raises
        :class:`FsyncFailedError` if an fsync failed since then (or the
        typed error of a failed write: :class:`DiskFullError`,
        :class:`StorageError`).

        ``sync_here``: a small batch the loop thread would sync anyway (the
        writer thread idle, fast fsyncs lately) is synced in this task, now,
        instead of by the flusher task which then wakes this one: two task
        switches fewer. For a caller that writes alone (one produce to its
        partition); writers that come together should leave it False, so
        that one fsync covers them all (group commit).

        Readers long-polling this log that the covering sync woke run
        before this returns (they push the records to their consumers
        before the caller acknowledges them: the consumer's latency does
        not wait behind the producer's answer); see
        :meth:`_readers_first`."""
        if not self._always:
            await trio.lowlevel.checkpoint()
            return
        log = self.log
        yields = 0
        while self._generation != generation or log.synced_offset < end_offset:
            if self._generation != generation:
                if end_offset <= min(self._cuts[generation:]):
                    return  # synced before the failure: durable
                raise self._failures[generation]
            if self._closed or self._crash is not None:
                self._check_open()
                self._check_crash()
            if sync_here and self._staged and self._can_sync_here():
                # Synced here, in the waiter's own task, rather than waking
                # the flusher to do it and then being woken by it: two task
                # switches fewer on the acknowledgement's path.
                wakes = self._reader_wakes
                self._submit()
                if self._reader_wakes != wakes:
                    yields = 2  # readers woken in this very step
                continue
            wakes = self._reader_wakes
            await self._wake_for(end_offset).wait()
            yields = 1 if self._reader_wakes != wakes else 0
        if yields:
            await self._readers_first(yields)

    @staticmethod
    async def _readers_first(yields: int) -> None:
        """Yield ``yields`` times without a cancellation point (the record
        is durable: the wait succeeded). Trio runs every task woken in one
        step in the next pass of its run queue, in no fixed order: a waiter
        woken by the same step as the readers goes behind them with one
        yield; one that woke them itself (``sync_here``) needs two."""
        for _ in range(yields):
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def append(self, record: bytes | bytearray | memoryview) -> RecordHeader:
        """Write ``record`` and wait until it is durable per the policy."""
        generation = self._generation
        header = self.write(record)
        await self.wait_durable(header.base_offset + header.count, generation)
        return header

    # ----------------------------------------------------------------- read

    async def read(
        self, offset: int, max_bytes: int, end: int | None = None, *, woken: bool = False
    ) -> bytes:
        """Whole records from ``offset`` up to ``max_bytes`` (at least one),
        never past ``visible_end`` (or ``end`` if smaller). Raises
        :class:`~headwater.OffsetOutOfRangeError` when retention removed
        ``offset`` (even while this read waited for its worker thread).
        ``woken``: the caller has just been woken (it yielded since it last
        ran), so a read of the tail on the loop thread skips the checkpoint
        it would otherwise take (one task switch fewer for a long poll)."""
        self._check_open()
        limit = self.visible_end if end is None else min(end, self.visible_end)
        # Reads of the last few records (a consumer keeping up) hit the page
        # cache: done inline they cost less than a hop to a worker thread.
        # Larger reads further back (catching up, maybe from disk) are done
        # inline too when all their bytes are in the page cache, else in one.
        if self._blocking and max_bytes > 64 * 1024 and limit - offset > TAIL_READ_EVENTS:
            cached = None
            if max_bytes <= INLINE_READ_BYTES:
                cached = self.log.read_cached(offset, max_bytes, limit)
            if cached is None:
                data = await trio.to_thread.run_sync(self.log.read, offset, max_bytes, limit)
            else:
                await trio.lowlevel.checkpoint()
                data = cached
        else:
            if not woken:
                await trio.lowlevel.checkpoint()
            data = self.log.read(offset, max_bytes, limit)
        self.log.files.trim()  # a read may have reopened a closed segment file
        return data

    async def run_blocking(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)``, which reads this log (thread-safe :meth:`Log.read`)
        or rewrites its files: in a worker thread on a real disk, inline on
        the simulated one. Not cancellable while it runs."""
        self._check_open()
        try:
            if self._blocking:
                return await trio.to_thread.run_sync(fn, *args)
            await trio.lowlevel.checkpoint()
            return fn(*args)
        finally:
            self.log.files.trim()

    async def replace_segment(self, base: int, records: list[bytes]) -> None:
        """Compaction: write, fsync and index the new content of sealed
        segment ``base`` off the event loop, then swap it in. Readers of the
        old file finish undisturbed; retention skips the segment meanwhile."""
        with trio.CancelScope(shield=True):
            # Shielded so a cancel cannot drop the new segment's open handle
            # (the worker thread cannot be abandoned anyway).
            seg = await self.run_blocking(self.log.rewrite_segment, base, records)
            self.log.install_segment(seg)
        await trio.lowlevel.checkpoint()

    async def wait_for_data(self, offset: int) -> None:
        """Return once ``visible_end`` is past ``offset`` (a long poll's wait).
        Bound it with a cancel scope."""
        while self.visible_end <= offset:
            self._check_open()
            data = self._data
            self._readers += 1
            try:
                await data.wait()
            finally:
                if data is self._data:  # not woken (cancelled): no longer waiting
                    self._readers -= 1

    def _notify_data(self) -> None:
        if self._readers:
            self._reader_wakes += 1
            self._readers = 0  # all woken; those that wait again count anew
        self._data.set()
        self._data = trio.Event()

    # ---------------------------------------------------------------- flush

    def _small(self, work: SyncWork) -> bool:
        """A sync of a few new bytes of the active segment only."""
        last = self._last_sync
        return (
            last is not None
            and last[0] == work.segment_base
            and len(work.handles) <= 1
            and not work.directory
            and work.position - last[1] <= self.config.inline_sync_bytes
        )

    async def _run(self, work: SyncWork) -> None:
        if self._blocking and not self._small(work):
            await trio.to_thread.run_sync(self.log.run_sync, work)
        else:
            await trio.lowlevel.checkpoint()
            self.log.run_sync(work)
        self._last_sync = (work.segment_base, work.position)

    async def sync(self) -> None:
        """Fsync everything written so far, now."""
        if self._threaded:
            # Hand over what is staged (and any directory change) and wait
            # until the thread reported on everything handed over so far.
            # Like the inline path, a failed fsync is handled (logged, the
            # log cut back), not raised here.
            self._check_crash()
            self._submit()
            if self._in_flight:
                assert self._writer is not None
                done = trio.Event()
                self._writer.when_done(done.set)
                await done.wait()
            else:
                await trio.lowlevel.checkpoint()
            self._check_crash()
            return
        work = self._prepare()
        if work is None:
            return
        await self._sync_once(work)

    async def _sync_once(self, work: SyncWork) -> None:
        writes, self._unsynced_writes = self._unsynced_writes, 0
        began = time.perf_counter()
        try:
            await self._run(work)
        except OSError as exc:
            self._fail(work, exc)
            return
        self.sync_latency.observe(time.perf_counter() - began)
        if writes:
            self.sync_batch.observe(writes)
        self.log.complete_sync(work)
        self.syncs += 1
        self._wake_synced()
        if self.config.durability == "always":
            self._notify_data()

    def _wake_for(self, end_offset: int) -> trio.Event:
        """The event set once a sync covering ``end_offset`` completes."""
        syncing = self._syncing
        if not syncing or end_offset > syncing[-1][0]:
            return self._next_wake  # the usual case: not handed over yet
        for target, event in syncing:  # the batches in the thread: a few
            if end_offset <= target:
                return event
        return syncing[-1][1]  # not reached: the last one covers end_offset

    def _prepare(self) -> SyncWork | None:
        """:meth:`Log.prepare_sync`, for a sync that will run: its waiters
        so far wait for it."""
        work = self.log.prepare_sync()
        if work is not None:
            self._track(work)
        return work

    def _track(self, work: SyncWork) -> None:
        """``work`` will run: the waiters of records it covers wake when it
        completes (one event for all of them)."""
        self._syncing.append((work.target_offset, self._next_wake))
        self._next_wake = trio.Event()

    def _wake_synced(self) -> None:
        """Wake the waiters the synced offset now covers."""
        synced = self.log.synced_offset
        syncing = self._syncing
        while syncing and syncing[0][0] <= synced:
            syncing.popleft()[1].set()

    def _wake_all(self) -> None:
        for _target, event in self._syncing:
            event.set()
        self._syncing.clear()
        self._next_wake.set()
        self._next_wake = trio.Event()

    def _fail(self, work: SyncWork | None, exc: OSError, *, during: str = "fsync") -> None:
        lost_from = self.log.synced_offset
        lost_to = self.log.next_offset
        self._failure = exc
        self._generation += 1
        self._cuts.append(lost_from)
        error: HeadwaterError
        if during == "write" and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            error = DiskFullError(
                f"disk full while appending to {self.log.path}; free space or lower "
                "retention, then retry (earlier data is intact; the append was not "
                "acknowledged)"
            )
        elif during == "write":
            error = StorageError(
                f"write to {self.log.path} failed ({exc}); the append was not acknowledged "
                "and may be retried"
            )
        else:
            error = FsyncFailedError(
                f"fsync of {self.log.path} failed ({exc}); the append was "
                "not acknowledged and may be retried"
            )
        error.__cause__ = exc
        self._failures.append(error)
        self.log.unstage_all(self._staged)  # placed after the cut: never written
        self._staged.clear()
        try:
            self.log.discard_unsynced()
        except OSError as again:
            _log.error("journal_reopen_failed", path=self.log.path, error=str(again))
        _log.error(
            "journal_fsync_failed" if during == "fsync" else "journal_write_failed",
            path=self.log.path,
            error=str(exc),
            unacknowledged_from=lost_from,
            unacknowledged_to=lost_to,
            policy=self.config.durability,
        )
        self._wake_all()  # the generation moved: every waiter checks again

    # ------------------------------------------------- the writer thread

    def _can_sync_here(self) -> bool:
        """Whether what is staged would be synced on the loop thread now
        (the writer thread idle, a small batch, fast fsyncs lately): then a
        waiter may do it itself (see :meth:`_submit`)."""
        return self._can_sync_here_bytes(self._staged_bytes)

    def _can_sync_here_bytes(self, nbytes: int) -> bool:
        return (
            not self._in_flight
            and nbytes <= self.config.inline_sync_bytes
            and self._fsync_ewma <= INLINE_SYNC_SECONDS
        )

    def _submit(self) -> None:
        """Hand every staged record, and the sync covering them, to the
        writer thread (one hand-off)."""
        assert self._writer is not None
        staged, self._staged = self._staged, []
        nbytes, self._staged_bytes = self._staged_bytes, 0
        work = self.log.prepare_sync()
        if not staged and (work is None or (work.target_offset, work.dir_gen) <= self._submitted):
            return  # everything is already on its way
        if work is not None:
            self._submitted = (work.target_offset, work.dir_gen)
            self._track(work)
        batch = Batch(staged, work, self._generation)
        if (
            self._can_sync_here_bytes(nbytes)
            and (work is None or not work.directory)
            and all(s.segment.handle >= 0 for s in staged)
        ):
            # A small batch while the thread is idle: cheaper done here
            # than handed over and back (the policy of inline_sync_bytes),
            # unless the disk's fsyncs have been slow lately.
            self._in_flight += 1
            self._outcome(self._writer.run_inline(batch))
            return
        self._in_flight += 1
        self._writer.submit(batch)

    def _outcome(self, outcome: Outcome) -> None:
        """The writer thread's report, on the loop thread (in order). Never
        raises (it runs as a Trio callback): an unexpected error becomes the
        crash the flusher raises, as an error of the inline path would."""
        try:
            self._take_outcome(outcome)
        except BaseException as exc:
            self._crash = exc
            self._wake.set()
            self._wake_all()

    def _take_outcome(self, outcome: Outcome) -> None:
        self._in_flight -= len(outcome.batches)
        for batch in outcome.batches:
            self.log.unstage_all(batch.staged)
        if outcome.skipped:
            return
        if outcome.error is not None:
            if not isinstance(outcome.error, OSError):
                self._crash = outcome.error  # e.g. a simulated power loss
                self._wake.set()
                self._wake_all()
                return
            self._submitted = (-1, -1)
            self._fail(outcome.work, outcome.error, during=outcome.failed)
            return
        work = outcome.work
        if work is None:
            return
        self.sync_latency.observe(outcome.seconds)
        self._fsync_ewma += (outcome.seconds - self._fsync_ewma) / 8
        writes = sum(len(b.staged) for b in outcome.batches)
        if writes:
            self.sync_batch.observe(writes)
        self.log.complete_sync(work)
        self.syncs += 1
        self._wake_synced()
        self._notify_data()

    def _check_crash(self) -> None:
        if self._crash is not None:
            raise self._crash

    async def _threaded_flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._check_crash()
            self._submit()
            self._check_crash()

    async def _flusher(self) -> None:
        if self._threaded:
            await self._threaded_flusher()
            return
        interval = self.config.interval_ms / 1000
        while True:
            if self.config.durability == "always":
                await self._wake.wait()
                self._wake = trio.Event()
            elif self.config.durability == "interval":
                # Sleep only once something was written: an idle partition's
                # flusher costs nothing (10,000 timers firing 5 times a
                # second would keep an idle broker busy).
                await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(interval)
            else:
                await trio.sleep(3600.0)
                continue
            work = self._prepare()
            if work is not None:
                await self._sync_once(work)

    async def _drain_writer(self) -> None:
        """Hand over what is staged and wait until the writer thread has
        reported on all of it (shielded by the caller)."""
        writer = self._writer
        if writer is None:
            return
        if self._crash is None:
            self._submit()
        if self._in_flight or writer.checkpoint_pending:
            done = trio.Event()
            writer.when_done(done.set)
            # Reported after every outcome (FIFO): all of them ran by now.
            await done.wait()

    async def _close(self) -> None:
        if self._closed:
            return
        await self._drain_writer()
        self._closed = True
        try:
            if self._blocking and not self.log.untouched:
                await trio.to_thread.run_sync(self.log.close)
            else:
                self.log.close()
        except OSError as exc:
            self.log.abandon()
            raise StorageError(f"closing {self.log.path} failed: {exc}") from exc
        except BaseException:
            # A storage error raised as a HeadwaterError (or a simulated power
            # loss) must not leak the file handles either.
            self.log.abandon()
            raise
        finally:
            self._wake_all()
            self._data.set()

    def statistics(self) -> dict[str, Any]:
        """Offsets, size and sync count, for observability."""
        return {
            "earliest_offset": self.earliest_offset,
            "next_offset": self.next_offset,
            "synced_offset": self.synced_offset,
            "size_bytes": self.log.size_bytes,
            "segments": len(self.log.segments),
            "syncs": self.syncs,
        }


@asynccontextmanager
async def open_log(
    path: str,
    *,
    config: LogConfig | None = None,
    fs: FileSystem | None = None,
    clock: Callable[[], int] | None = None,
    repair: bool = False,
    writer_thread: bool | None = None,
    files: FileCache | None = None,
) -> AsyncIterator[AsyncLog]:
    """Open (create or recover) the log at ``path`` with its flusher task.

    Leaving the block syncs, writes the indexes and a clean checkpoint, and
    closes the files (and ends the writer thread, if any). ``clock`` returns
    milliseconds (append times, segment age); by default wall-clock time.
    ``writer_thread``: under ``always``, write and fsync in a
    :class:`~headwater.journal._writer.JournalWriter` thread (batches of
    records, one hand-off per fsync) rather than on the event loop; by
    default on for a blocking (real) file system, off for the simulated one.
    ``files`` is a :class:`~headwater.journal.FileCache` shared by many logs
    to cap the segment files they keep open; enter every log sharing it from
    the same Trio run (its owner thread).
    """
    fs = fs if fs is not None else RealFileSystem()
    clock = clock if clock is not None else (lambda: int(time.time() * 1000))
    if fs.blocking:
        try:
            if repair:
                raise Deferred(path)
            log = Log.open(
                path,
                fs,
                config,
                clock=clock,
                files=files,
                inline_budget=INLINE_RECOVERY_BYTES,
            )
            await trio.lowlevel.checkpoint()
        except Deferred:
            log = await trio.to_thread.run_sync(
                lambda: Log.open(path, fs, config, clock=clock, repair=repair, files=files)
            )
    else:
        log = Log.open(path, fs, config, clock=clock, repair=repair, files=files)
    log.files.trim()
    alog = AsyncLog(log, writer_thread=writer_thread)
    if alog._threaded:
        alog._writer = JournalWriter(
            log, trio.lowlevel.current_trio_token().run_sync_soon, alog._outcome
        )
    try:
        with unwrapping_groups():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(alog._flusher)
                try:
                    yield alog
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await alog._close()
