"""The journal writer thread: one log's writes and fsyncs, off the event loop.

Theory of operation
-------------------
Under ``always`` on a real disk, :class:`~headwater.journal.AsyncLog` hands
its I/O to one :class:`JournalWriter` thread instead of writing on the event
loop and running each fsync through ``trio.to_thread`` (about 0.3 ms of
hand-offs per fsync on a loaded 2-core machine, more than the fsync itself).

The event loop *stages* records (:meth:`Log.stage`: offsets, index and
checksum are settled at once, nothing is written) and hands them over in
batches: every record staged while the loop ran its other tasks goes in one
:class:`Batch`, with the :class:`SyncWork` that makes them durable. One
hand-off per batch, one back:

* the thread takes every batch waiting in its queue, writes their records
  in order (one ``writev`` per run of records for the same file), fsyncs once
  for all of them, and reports one :class:`Outcome` per run of batches of the
  same generation through the Trio token (``run_sync_soon``, in order);
* meanwhile the loop keeps accepting and staging the next batch (commit
  pipelining): records that arrive during an fsync go out with the next one.
  Nothing is acknowledged before the outcome that covers it: waiters watch
  ``synced_offset``, which moves only in :meth:`Log.complete_sync` on the
  loop thread once the outcome reports the fsync done (DECISIONS #27).

A failed write (``ENOSPC``) or fsync fails its whole run. The thread then
skips (never writes) every batch of that generation still queued: their
offsets follow the failed record's. The loop, on the failure's outcome,
fails the waiters, cuts the log back to the last synced point and bumps the
generation; batches staged after that are written again. Any other
exception (a simulated power loss) is reported as a crash the log re-raises.

The checkpoint (the last synced point, advisory: a lagging one only widens
the tail recovery scans) is not rewritten after every fsync, where its file
calls would hold up the next hand-off, and on ext4 add metadata to the next
fsync's journal commit. The thread writes a log's latest one at most every
:data:`CHECKPOINT_SECONDS` while busy, once its lane has been idle for
:data:`CHECKPOINT_IDLE_SECONDS`, and before a :meth:`JournalWriter.when_done`
callback (so a close's clean checkpoint is never overwritten by a late one);
an inline sync leaves its checkpoint to the lane too.

The threads are a small pool shared by the process (:data:`LANES`), each
started on demand and ended after :data:`IDLE_SECONDS` with nothing to do:
an idle broker holds no writer thread, and ten thousand partitions share
four. A log always uses the same lane, so its batches keep their order;
the logs of one lane take turns, each with one fsync per turn.
:meth:`JournalWriter.when_done` tells a closing log when its last batch is
reported.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Final, Literal

import attrs

from headwater.journal._log import Log, Staged, SyncWork, _Segment

__all__ = ["Batch", "JournalWriter", "Outcome"]

IDLE_SECONDS = 5.0
"""A writer thread with nothing to do for this long ends (a new batch starts another)."""

CHECKPOINT_IDLE_SECONDS = 0.02
"""A lane that has had nothing to do for this long writes the checkpoints it put off."""

CHECKPOINT_SECONDS = 0.1
"""A busy log's checkpoint is rewritten at most this long after its last rewrite."""


@attrs.define(eq=False)
class Batch:
    """Records staged on the loop, and the sync that makes them durable."""

    staged: list[Staged]
    work: SyncWork | None
    generation: int


@attrs.define(eq=False)
class Outcome:
    """What happened to a run of batches of one generation."""

    batches: list[Batch]
    work: SyncWork | None = None
    error: BaseException | None = None
    failed: Literal["write", "fsync", ""] = ""
    skipped: bool = False
    seconds: float = 0.0  # how long the fsync took


def merge_work(works: list[SyncWork]) -> SyncWork | None:
    """One sync covering every ``works`` (the last one's end point)."""
    if not works:
        return None
    if len(works) == 1:
        (work,) = works
        only = work.segments
        if len(only) == 1 and only[0].handle >= 0 and work.handles == (only[0].handle,):
            return work  # the usual case: one segment, its handle as prepared
    segments: dict[int, _Segment] = {}
    for w in works:
        for seg in w.segments:
            segments.setdefault(id(seg), seg)
    last = works[-1]
    return SyncWork(
        segments=tuple(segments.values()),
        # Read now, in the thread: it opened the files of new segments.
        handles=tuple(seg.handle for seg in segments.values() if seg.handle >= 0),
        directory=any(w.directory for w in works),
        dir_gen=max(w.dir_gen for w in works),
        target_offset=last.target_offset,
        segment_base=last.segment_base,
        position=last.position,
    )


class _Lane:
    """One writer thread of the pool and its queue of ``(writer, item)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: queue.SimpleQueue[tuple[JournalWriter, Batch | _Done]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.started = 0

    def put(self, writer: JournalWriter, item: Batch | _Done) -> None:
        with self.lock:
            self.queue.put((writer, item))
            if self.thread is None:
                self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)
                self.started += 1
                self.thread.start()

    def _main(self) -> None:
        # Logs whose checkpoint lags their last sync (see JournalWriter.checkpoint_pending).
        behind: dict[JournalWriter, None] = {}
        while True:
            try:
                first = self.queue.get(timeout=CHECKPOINT_IDLE_SECONDS if behind else IDLE_SECONDS)
            except queue.Empty:
                if behind:  # idle now: write what was put off, then wait again
                    for writer in behind:
                        writer._write_checkpoint()
                    behind.clear()
                    continue
                with self.lock:
                    if self.queue.empty():
                        self.thread = None
                        return
                continue
            items = [first]
            while True:  # everything waiting goes with this round of fsyncs
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            # Per log, in order: its batches (one fsync for all), then a
            # close's marker. Logs sharing the lane take turns.
            runs: dict[JournalWriter, list[Batch | _Done]] = {}
            for writer, item in items:
                runs.setdefault(writer, []).append(item)
            for writer, run in runs.items():
                batches: list[Batch] = []
                for item in run:
                    if isinstance(item, Batch):
                        batches.append(item)
                        continue
                    if item is _CHECKPOINT:
                        continue  # an inline sync's: written once the lane idles
                    writer._cycle(batches)
                    batches = []
                    writer._write_checkpoint()  # before a close writes its clean one
                    writer._tell(item.callback)
                writer._cycle(batches)
                if writer._unwritten is not None:
                    behind[writer] = None
                else:
                    behind.pop(writer, None)


class _Done:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback


_CHECKPOINT: Final = _Done(lambda: None)
"""The marker :meth:`JournalWriter.run_inline` queues so the lane writes the
checkpoint of an inline sync (it is not told back)."""


LANES = 4
"""Writer threads shared by every log of the process (each log always uses
the same one, so its batches stay in order)."""

_lanes = [_Lane(f"headwater-journal-writer-{i}") for i in range(LANES)]
_next_lane = itertools.count()


def _after_fork_in_child() -> None:
    # The child has none of the parent's threads: fresh lanes, not ones
    # that believe a thread is serving them.
    for i in range(LANES):
        _lanes[i] = _Lane(f"headwater-journal-writer-{i}")


os.register_at_fork(after_in_child=_after_fork_in_child)


class JournalWriter:
    """Writes and fsyncs one log's staged records in a writer thread.

    The threads are a small pool shared by every log (:data:`LANES`; each
    starts on demand and ends after :data:`IDLE_SECONDS` idle), so thousands
    of partitions do not mean thousands of threads; a log keeps one lane, so
    its batches are written in the order submitted.

    ``report`` is called on the event loop thread (through ``call_soon``,
    which must be FIFO and thread-safe: ``TrioToken.run_sync_soon``) with
    each :class:`Outcome`, in the order the batches were submitted.
    """

    def __init__(
        self,
        log: Log,
        call_soon: Callable[..., None],
        report: Callable[[Outcome], None],
    ) -> None:
        self._log = log
        self._call_soon = call_soon
        self._report = report
        self._lane = _lanes[next(_next_lane) % LANES]
        self._failed_generation = -1  # the thread's own: batches of it are skipped
        # The thread's own: the last sync whose checkpoint is not written yet,
        # and when the checkpoint was last written (time.monotonic).
        self._unwritten: SyncWork | None = None
        self._checkpointed_at = float("-inf")
        self._marked = False  # a _CHECKPOINT marker is queued or being handled
        self._unwritten_lock = threading.Lock()  # _unwritten is set on both threads

    @property
    def running(self) -> bool:
        """Whether this log's writer thread is alive now."""
        with self._lane.lock:
            return self._lane.thread is not None

    @property
    def threads_started(self) -> int:
        """How many times this log's writer thread was started (it ends when idle)."""
        return self._lane.started

    def submit(self, batch: Batch) -> None:
        """Queue ``batch`` (never blocks); starts the thread if none runs."""
        self._lane.put(self, batch)

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` through ``call_soon`` once every batch
        submitted so far has its outcome reported (a close waits on it)."""
        self._lane.put(self, _Done(callback))

    def run_inline(self, batch: Batch) -> Outcome:
        """Write and sync ``batch`` on the calling thread, now (only while
        no batch is queued or running: the caller keeps count)."""
        outcome = self._run([batch])
        if outcome.work is not None and outcome.error is None:
            # Its checkpoint is put off to the lane, as the thread's own are
            # (see checkpoint_pending): one queued marker, not file calls here.
            with self._unwritten_lock:
                self._unwritten = outcome.work
            if not self._marked:
                self._marked = True
                self._lane.put(self, _CHECKPOINT)
        return outcome

    # ---------------------------------------------------------- the thread

    def _cycle(self, batches: list[Batch]) -> None:
        """Write and sync ``batches`` (writer thread); report each run of
        one generation."""
        i = 0
        while i < len(batches):
            generation = batches[i].generation
            j = i
            while j < len(batches) and batches[j].generation == generation:
                j += 1
            outcome = self._run(batches[i:j])
            if outcome.work is not None and outcome.error is None:
                # Noted before the report: once the loop has every outcome,
                # checkpoint_pending tells it whether a close must wait.
                with self._unwritten_lock:
                    self._unwritten = outcome.work
            self._tell(self._report, outcome)
            # Off the acknowledgement's path, and not after every fsync.
            if time.monotonic() - self._checkpointed_at >= CHECKPOINT_SECONDS:
                self._write_checkpoint()
            i = j

    @property
    def checkpoint_pending(self) -> bool:
        """Whether a synced point's checkpoint is still to be written.

        The checkpoint is advisory (a lagging one only widens the tail
        recovery scans), so under load the writer thread does not rewrite
        it after every fsync, where it would hold up the next batch's
        hand-off: it writes the latest one at most every
        :data:`CHECKPOINT_SECONDS`, once its lane is idle for
        :data:`CHECKPOINT_IDLE_SECONDS`, and before telling a
        :meth:`when_done` callback. A closing log with every outcome
        reported but this true waits for :meth:`when_done`, so its clean
        checkpoint is never overwritten by a late one."""
        return self._unwritten is not None

    def _write_checkpoint(self) -> None:
        """Write the put-off checkpoint, if any (writer thread). A closed
        log's is dropped: its close wrote a clean one."""
        self._marked = False  # first: a later inline sync queues a new marker
        with self._unwritten_lock:
            work, self._unwritten = self._unwritten, None
        if work is None or self._log.closed:
            return
        self._checkpointed_at = time.monotonic()
        try:
            self._log.put_sync_checkpoint(work)
        except BaseException:  # advisory: a stale checkpoint only widens the tail
            return

    def _tell(self, fn: Callable[..., None], *args: object) -> None:
        """Deliver to the loop; a loop that already ended (its run was torn
        down without closing the log) is no reason to kill the lane."""
        try:
            self._call_soon(fn, *args)
        except RuntimeError:  # trio.RunFinishedError
            pass

    def _run(self, run: list[Batch]) -> Outcome:
        if run[0].generation <= self._failed_generation:
            return Outcome(run, skipped=True)
        log = self._log
        failed: Literal["write", "fsync"] = "write"
        try:
            buffers: list[bytes | memoryview] = []
            handle = -1
            for batch in run:
                for staged in batch.staged:
                    seg_handle = staged.segment.handle
                    if seg_handle != handle or seg_handle < 0:
                        if buffers:
                            # The records before go out first: a rolled
                            # segment's file must not exist before them,
                            # or a kill between the two leaves a hole.
                            log.fs.writev(handle, buffers)
                            buffers = []
                        if seg_handle < 0:
                            seg_handle = log.open_staged_segment(staged.segment)
                            if seg_handle < 0:
                                continue  # deleted before it was ever written
                    handle = seg_handle
                    buffers.append(staged.head)
                    buffers.append(staged.body)
            if buffers:
                log.fs.writev(handle, buffers)
            failed = "fsync"
            work = merge_work([b.work for b in run if b.work is not None])
            began = time.perf_counter()
            if work is not None:
                log.run_sync(work, checkpoint=False)
            seconds = time.perf_counter() - began
        except BaseException as exc:  # reported; the loop decides what it means
            self._failed_generation = run[0].generation
            return Outcome(run, error=exc, failed=failed)
        return Outcome(run, work=work, seconds=seconds)
