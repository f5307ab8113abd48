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

The thread exists only while there is work: it starts on the first batch
and ends after ``idle`` seconds with nothing to do, so an idle partition
holds no thread. :meth:`JournalWriter.stop` drains the queue and ends it.
"""

from __future__ import annotations

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


class _Stop:
    pass


_STOP = _Stop()


def merge_work(works: list[SyncWork]) -> SyncWork | None:
    """One sync covering every ``works`` (the last one's end point)."""
    if not works:
        return None
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


class JournalWriter:
    """The thread that writes and fsyncs one log's staged records.

    ``report`` is called on the event loop thread (through ``call_soon``,
    which must be FIFO and thread-safe: ``TrioToken.run_sync_soon``) with
    each :class:`Outcome`, in the order the batches were submitted.
    """

    def __init__(
        self,
        log: Log,
        call_soon: Callable[..., None],
        report: Callable[[Outcome], None],
        *,
        idle: float = IDLE_SECONDS,
        name: str = "headwater-journal-writer",
    ) -> None:
        self._log = log
        self._call_soon = call_soon
        self._report = report
        self._idle = idle
        self._name = name
        self._queue: queue.SimpleQueue[Batch | _Stop] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failed_generation = -1  # the thread's own: batches of it are skipped
        self.threads_started = 0

    @property
    def running(self) -> bool:
        """Whether a writer thread is alive now."""
        with self._lock:
            return self._thread is not None

    def submit(self, batch: Batch) -> None:
        """Queue ``batch`` (never blocks); starts the thread if none runs."""
        with self._lock:
            self._queue.put(batch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                self.threads_started += 1
                self._thread.start()

    def stop(self) -> threading.Thread | None:
        """Ask the thread to end after every queued batch; returns it (to
        join) or None when none runs. Submit nothing afterwards."""
        with self._lock:
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
            return thread

    def run_inline(self, batch: Batch) -> Outcome:
        """Write and sync ``batch`` on the calling thread, now (only while
        no batch is queued or running: the caller keeps count)."""
        return self._run([batch])

    # ---------------------------------------------------------- the thread

    def _main(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._idle)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batches: list[Batch] = []
            stop = isinstance(first, _Stop)
            if not stop:
                assert isinstance(first, Batch)
                batches.append(first)
                while True:  # everything waiting goes with this fsync
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(more, _Stop):
                        stop = True
                        break
                    batches.append(more)
            self._cycle(batches)
            if stop:
                with self._lock:
                    self._thread = None
                return

    def _cycle(self, batches: list[Batch]) -> None:
        i = 0
        while i < len(batches):
            generation = batches[i].generation
            j = i
            while j < len(batches) and batches[j].generation == generation:
                j += 1
            self._call_soon(self._report, self._run(batches[i:j]))
            i = j

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
                log.run_sync(work)
            seconds = time.perf_counter() - began
        except BaseException as exc:  # reported; the loop decides what it means
            self._failed_generation = run[0].generation
            return Outcome(run, error=exc, failed=failed)
        return Outcome(run, work=work, seconds=seconds)
