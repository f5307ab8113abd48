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
from typing import Literal

import attrs

from headwater.journal._log import Log, Staged, SyncWork, _Segment

__all__ = ["Batch", "JournalWriter", "Outcome"]

IDLE_SECONDS = 5.0
"""A writer thread with nothing to do for this long ends (a new batch starts another)."""


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
        while True:
            try:
                first = self.queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
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
                    writer._cycle(batches)
                    batches = []
                    writer._tell(item.callback)
                writer._cycle(batches)


class _Done:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback


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
        self._checkpoint(outcome)
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
            self._tell(self._report, outcome)
            self._checkpoint(outcome)  # off the acknowledgement's path
            i = j

    def _tell(self, fn: Callable[..., None], *args: object) -> None:
        """Deliver to the loop; a loop that already ended (its run was torn
        down without closing the log) is no reason to kill the lane."""
        try:
            self._call_soon(fn, *args)
        except RuntimeError:  # trio.RunFinishedError
            pass

    def _checkpoint(self, outcome: Outcome) -> None:
        if outcome.work is None or outcome.error is not None:
            return
        try:
            self._log.put_sync_checkpoint(outcome.work)
        except BaseException:  # advisory: a stale checkpoint only widens the tail
            return

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
                    if seg_handle < 0:
                        seg_handle = log.open_staged_segment(staged.segment)
                        if seg_handle < 0:
                            continue  # deleted before it was ever written
                    if seg_handle != handle and buffers:
                        log.fs.writev(handle, buffers)
                        buffers = []
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
