"""The segmented log: synchronous core, recovery, and indexes.

Theory of operation
-------------------
A log is a directory of segments, each named by the offset of its first event::

    00000000000000000000.log         records, back to back
    00000000000000000000.index       sparse offset -> byte position (written at roll/close)
    00000000000000000000.timeindex   sparse max-timestamp -> offset (written at roll/close)
    checkpoint                       the last synced offset and position, a clean flag

:class:`Log` is synchronous and does every file call through a
:class:`~headwater.journal.FileSystem`; the Trio face (:mod:`._async`) decides
when to sync and runs slow calls in a thread. Appends validate a record
(header, checksum, size; never the events), give it the next offsets, patch
it, and write it at the end of the active segment. Syncing is split in three
(``prepare_sync`` / ``run_sync`` / ``complete_sync``) so the fsync can run in a
worker thread while the event loop keeps appending: appends that arrive during
one fsync share the next (group commit).

Recovery (``Log.open``): rolled segments whose index files are intact are
trusted (they were fsynced at roll). Every other segment is scanned record by
record, checking checksums and that offsets are contiguous. The first bad
record ends the scan. If it lies at or after the position the checkpoint says
was synced, it is *tail* damage (a torn or unsynced write): the segment is
truncated there and ``journal_tail_truncated`` is logged with the bytes
dropped and why. If it lies before (*interior* damage), opening fails with
:class:`~headwater.CorruptionError` naming the file and position, unless
``repair=True``, which first runs :func:`~headwater.journal.repair_log`: it
drops only the damaged records and records the offsets they held as a gap
(the ``gaps`` file) that recovery accepts and readers skip, keeping every
valid record after the damage (DECISIONS #16). The checkpoint is rewritten
(not fsynced) after a sync (by a writer thread: at most every 0.1 s while
busy, and once idle) and fsynced at close: after a power loss it may lag by
up to a few seconds, which widens the tail; a missing checkpoint makes the
whole last segment tail.

File handles have one owner
---------------------------
Catch-up reads run :meth:`Log.read` in worker threads while the owner (the
event loop thread: appends, rolls, retention, truncation, installing a
compacted segment, close) removes and replaces segments. A segment's handle is
therefore *reference counted*: a reader pins the segment it reads (under the
log's short ``_lock``, which also guards every change to ``segments``) and
unpins it when done. Taking a segment out of the log retires it; its handle is
closed at once if no reader holds it, else by the last reader to unpin. So a
read never sees a closed or reused descriptor: it reads the file it pinned
(POSIX keeps an unlinked or renamed-over file readable through an open
handle), or, if its offset went to retention before it pinned, gets
:class:`~headwater.OffsetOutOfRangeError`. The owner never waits for readers.

Compaction is split the same way: :meth:`Log.rewrite_segment` writes,
fsyncs, renames and indexes the new file (blocking, safe in a worker thread:
it marks the segment busy so retention leaves it alone), and
:meth:`Log.install_segment` swaps it in on the owner's thread.
"""

from __future__ import annotations

import bisect
import errno
import os
import struct
import threading
from collections.abc import Callable
from functools import partial
from typing import Final, Literal, NamedTuple

import attrs
import crc32c

from headwater._errors import (
    ClosedError,
    ConfigError,
    CorruptionError,
    DiskFullError,
    InvalidArgument,
    OffsetOutOfRangeError,
    StorageError,
)
from headwater._logging import get_logger
from headwater.journal._fdcache import FileCache
from headwater.journal._files import FileSystem, write_file_atomically
from headwater.journal._gaps import covered, read_gaps
from headwater.journal._record import (
    ATTR_COMPACTED,
    HEADER_SIZE,
    Corrupt,
    RecordHeader,
    Short,
    decode_header,
    new_header,
    patch_record,
    stamp_record,
    stored_header,
)
from headwater.journal._repair import _resync

__all__ = ["Durability", "Log", "LogConfig", "Staged", "SyncWork"]


class Deferred(Exception):
    """Recovery would exceed its inline budget: run it in a worker thread."""


_SEGMENT_COST: Final = 4096  # budget bytes one segment's listing and index files count for

Durability = Literal["always", "interval", "never"]

_log = get_logger("headwater.journal")

_INDEX_ENTRY: Final = struct.Struct(">qQ")
_CHECKPOINT: Final = struct.Struct(">qqqBI")
_CHECKPOINT_NAME: Final = "checkpoint"
# Index files first: a kill midway never leaves them without their .log
# (a segment created later at that base could trust them).
_EXTS: Final = ("index", "timeindex", "log")
# Index file trailer: segment size, next offset, max timestamp, max append time, CRC-32C.
_TRAILER: Final = struct.Struct(">qqqqI")


def _positive(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} is invalid; give a positive int")


@attrs.frozen
class LogConfig:
    """Settings of one log. Sizes in bytes, times in milliseconds.

    ``inline_sync_bytes``: a sync of at most this many new bytes of one
    segment runs on the event loop thread (a small fsync costs less than the
    hand-off to a worker thread and back); larger ones run in a worker thread
    so the loop keeps serving meanwhile. With the journal writer thread
    (``always`` on a real disk) the same bound picks which batches the loop
    writes and fsyncs itself, while the thread is idle and recent fsyncs
    were fast; 0 sends every batch to the thread.
    """

    durability: Durability = "always"
    interval_ms: int = 200
    segment_bytes: int = 64 * 1024 * 1024
    segment_ms: int | None = 7 * 24 * 3600 * 1000
    index_interval: int = 4096
    retention_ms: int | None = None
    retention_bytes: int | None = None
    max_record_bytes: int = 16 * 1024 * 1024
    inline_sync_bytes: int = 64 * 1024

    def __attrs_post_init__(self) -> None:
        if self.durability not in ("always", "interval", "never"):
            raise ConfigError(
                f"durability={self.durability!r} is unknown; use always, interval or never"
            )
        _positive("interval_ms", self.interval_ms)
        _positive("segment_bytes", self.segment_bytes)
        _positive("segment_ms", self.segment_ms, allow_none=True)
        _positive("index_interval", self.index_interval)
        _positive("retention_ms", self.retention_ms, allow_none=True)
        _positive("retention_bytes", self.retention_bytes, allow_none=True)
        _positive("max_record_bytes", self.max_record_bytes)
        if type(self.inline_sync_bytes) is not int or self.inline_sync_bytes < 0:
            raise ConfigError(
                f"inline_sync_bytes={self.inline_sync_bytes!r}; give an int >= 0 (0: always "
                "fsync in a worker thread)"
            )


def _segment_base(seg: _Segment) -> int:
    return seg.base


_Pread = Callable[[int, int, int], bytes | bytearray]
"""``pread(handle, size, position)``, as :meth:`FileSystem.pread`."""


class _NotCached(Exception):
    """A :meth:`Log.read_cached` would have to wait for the disk."""


def _entry_offset(entry: tuple[int, int]) -> int:
    return entry[0]


def _name(base: int, ext: str) -> str:
    return f"{base:020d}.{ext}"


@attrs.define(eq=False)
class _Segment:
    base: int
    path: str
    handle: int
    size: int = 0
    next_offset: int = 0
    created_ms: int = 0
    max_timestamp: int = -(2**63)
    max_append_time: int = -(2**63)
    index: list[tuple[int, int]] = attrs.field(factory=list)  # (offset, position)
    times: list[tuple[int, int]] = attrs.field(factory=list)  # (max ts so far, offset)
    indexed_at: int = -(2**62)
    # (base offset, byte position) of the newest record: a read at the tail
    # (a consumer caught up, the usual case) starts there instead of
    # scanning headers from the last index entry, one pread per record.
    # Valid while its position is below ``size`` (a cut invalidates it).
    newest: tuple[int, int] = (-1, -1)
    sealed: bool = False
    # Guarded by Log._lock (see "File handles have one owner"):
    pins: int = 0  # readers using the handle now
    retired: bool = False  # out of the log: the last reader closes the handle
    busy: bool = False  # being rewritten by compaction: retention skips it
    # Its file is the writer thread's to create (a lazy roll): nobody else
    # may open (and so create) it early. See Log.stage and _fdcache.
    unborn: bool = False

    def note(self, header: RecordHeader, position: int, interval: int) -> None:
        if position - self.indexed_at >= interval:
            self.index.append((header.base_offset, position))
            self.indexed_at = position
        if header.max_timestamp > self.max_timestamp:
            self.max_timestamp = header.max_timestamp
            self.times.append((header.max_timestamp, header.base_offset))
        self.max_append_time = max(self.max_append_time, header.append_time)
        self.next_offset = header.next_offset
        self.newest = (header.base_offset, position)
        self.size = position + header.length


@attrs.define(eq=False)
class SyncWork:
    """What one sync must make durable (from :meth:`Log.prepare_sync`).
    Never changed once made (not frozen only because a frozen attrs class
    costs twice as much to build, and one is made per fsync)."""

    handles: tuple[int, ...]
    directory: bool
    dir_gen: int
    target_offset: int
    segment_base: int
    position: int
    segments: tuple[_Segment, ...] = ()  # whose handles (a writer thread reads them late)


class Staged(NamedTuple):
    """A record :meth:`Log.stage` placed but did not write: ``head`` then
    ``body`` go to the end of ``segment``'s file, in staging order. (A tuple,
    not an attrs class: one is made per append on the hot path.)"""

    segment: _Segment
    head: bytes
    body: memoryview


_new_staged: Callable[[tuple[_Segment, bytes, memoryview]], Staged] = partial(tuple.__new__, Staged)


class Log:
    """A segmented, checksummed, append-only log in one directory (synchronous).

    Use :func:`~headwater.journal.open_log` from Trio; this class is the core
    it drives, usable directly in synchronous code and tests.
    """

    def __init__(
        self,
        path: str,
        fs: FileSystem,
        config: LogConfig,
        clock: Callable[[], int],
        files: FileCache | None = None,
    ) -> None:
        self.path = path.rstrip("/")
        self.fs = fs
        #: Where this log's open segment files are counted (and capped).
        self.files = files if files is not None else FileCache()
        self.config = config
        self.clock = clock
        self.segments: list[_Segment] = []
        self._recovering: _Segment | None = None  # opened, not yet in segments
        self.synced_offset = 0
        self._synced_position = 0
        self._synced_base = 0  # the segment _synced_position is in
        self._dirty: dict[int, _Segment] = {}
        self._dir_gen = 0
        self._dir_synced_gen = 0
        self._gaps: list[tuple[int, int]] = []  # offset gaps left by a repair
        self.closed = False
        # Guards ``segments``, the pin counts and the handles; held only for
        # a few lines. Shared by every log of one FileCache (see _fdcache).
        self._lock: threading.Lock = self.files.lock
        # (next offset, directory generation) when recovery left the log
        # untouched on a clean checkpoint: close() then has nothing to write.
        self._clean_at: tuple[int, int] | None = None
        self._recovery_cut = False
        self._inline_budget: int | None = None  # see Log.open(inline_budget=)

    # ------------------------------------------------------------------ open

    @classmethod
    def open(
        cls,
        path: str,
        fs: FileSystem,
        config: LogConfig | None = None,
        *,
        clock: Callable[[], int] | None = None,
        repair: bool = False,
        files: FileCache | None = None,
        inline_budget: int | None = None,
    ) -> Log:
        """Open (creating if needed) and recover the log at ``path``.

        ``files``: the :class:`FileCache` that counts (and caps) the segment
        files this log keeps open, shared with other logs; by default one of
        its own without a cap. Recovery leaves at most the active segment
        open (none when the cache is full); the others open on first use.

        ``inline_budget`` (bytes): give up with :class:`Deferred` (nothing
        changed on disk) as soon as recovery would scan more than that, fsync,
        or change a file; the caller then runs it in a worker thread. The
        Trio face opens the common case (a covered checkpoint, a small tail)
        on the event loop this way, saving a thread hop per log."""
        import time

        log = cls(
            path, fs, config or LogConfig(), clock or (lambda: int(time.time() * 1000)), files
        )
        try:
            log._inline_budget = inline_budget
            if repair:
                log._spend(None)
                from headwater.journal._repair import repair_log

                fs.makedirs(log.path)
                repair_log(log.path, fs, apply=True)
            log._recover()
        except OSError as exc:
            log.abandon()
            raise StorageError(f"cannot open the log at {path}: {exc}") from exc
        except BaseException:
            log.abandon()  # no handle outlives a failed open
            raise
        return log

    def _read_checkpoint(self) -> tuple[int, int, int, bool] | None:
        path = f"{self.path}/{_CHECKPOINT_NAME}"
        if not self.fs.exists(path):
            return None
        handle = self.fs.open(path)
        try:
            data = self.fs.pread(handle, _CHECKPOINT.size, 0)
        finally:
            self.fs.close(handle)
        if len(data) != _CHECKPOINT.size:
            return None
        offset, base, position, clean, crc = _CHECKPOINT.unpack(data)
        if crc32c.crc32c(data[:-4]) != crc:
            return None
        return offset, base, position, bool(clean)

    def _write_checkpoint(self, clean: bool, *, sync: bool = False) -> None:
        active = self.segments[-1]
        offset = self.synced_offset if not clean else active.next_offset
        base, position = self._synced_at if not clean else (active.base, active.size)
        self._put_checkpoint(offset, base, position, clean, sync=sync)

    @property
    def _synced_at(self) -> tuple[int, int]:
        """(segment base, byte position) of the last synced point."""
        return self._synced_base, self._synced_position

    def _put_checkpoint(
        self, offset: int, base: int, position: int, clean: bool, *, sync: bool = False
    ) -> None:
        body = _CHECKPOINT.pack(offset, base, position, int(clean), 0)[:-4]
        data = body + struct.pack(">I", crc32c.crc32c(body))
        # Opened for each write (2 us here) rather than held: an idle log
        # holds no descriptor for its checkpoint (see _fdcache).
        handle = self.fs.open(f"{self.path}/{_CHECKPOINT_NAME}")
        try:
            self.fs.overwrite(handle, data)  # fixed size: in place
            if sync:
                self.fs.fsync(handle)
        finally:
            self.fs.close(handle)

    def _recover(self) -> None:
        fs = self.fs
        fs.makedirs(self.path)
        self._gaps = read_gaps(fs, self.path)
        if self._gaps:
            _log.info("journal_gaps", path=self.path, gaps=[list(g) for g in self._gaps])
        bases = sorted(
            int(name[:-4])
            for name in fs.listdir(self.path)
            if name.endswith(".log") and name[:-4].isdigit()
        )
        checkpoint = self._read_checkpoint()
        if not bases:
            self._spend(None)  # a new log: files to create, a directory to fsync
            self._new_segment(0)
            self._synced_position = 0
            self._flush_dir()
            self._write_checkpoint(clean=False)
            return
        expected: int | None = None
        indexed = False  # the segment before was trusted by its index files
        for i, base in enumerate(bases):
            last = i == len(bases) - 1
            seg = _Segment(base=base, path=f"{self.path}/{_name(base, 'log')}", handle=-1)
            seg.handle = fs.open(seg.path)
            self._recovering = seg
            seg.created_ms = self.clock()
            file_size = fs.size(seg.handle)
            if (
                expected is not None
                and base != expected
                and not (base > expected and covered(self._gaps, expected, base))
            ):
                if (
                    last
                    and file_size == 0
                    and not indexed
                    and self._unclaimed(checkpoint, expected)
                ):
                    self._drop_stray(seg, expected)
                    break
                raise CorruptionError(
                    f"{seg.path} starts at offset {base}, but offset {expected} was expected: "
                    "records are missing (or the file does not belong here). Restore the "
                    "files, or repair the log (`headwater repair` for a partition, "
                    "repair_log() in code): it keeps every valid record and reports the "
                    "missing offsets as a gap"
                )
            clean_last = (
                checkpoint is not None
                and checkpoint[3]
                and checkpoint[1] == base
                and checkpoint[2] == file_size
            )
            self._spend(_SEGMENT_COST)
            trusted = (not last or clean_last) and self._load_indexes(seg, file_size)
            if not trusted:
                tail_from = 0
                if last and checkpoint is not None and checkpoint[1] == base:
                    tail_from = checkpoint[2]
                elif last and checkpoint is not None and checkpoint[1] < base:
                    tail_from = 0
                elif not last:
                    tail_from = file_size  # a rolled segment was fully synced
                self._spend(file_size)
                before_last = bases[-1] if i == len(bases) - 2 else None
                self._scan(seg, file_size, tail_from, checkpoint, before_last)
                seg.sealed = not last
                self.segments.append(seg)
            else:
                seg.sealed = not last
                self.segments.append(seg)
            expected = seg.next_offset
            indexed = trusted
        self._recovering = None
        if self.segments[-1].sealed:
            self.segments[-1].sealed = False
        active = self.segments[-1]
        self.synced_offset = active.next_offset
        self._synced_position = active.size
        self._synced_base = active.base
        if not self._recovery_cut and self._synced_through(checkpoint, active):
            # The checkpoint, written only after an fsync of the segment and
            # its directory, covers every byte: nothing to make durable.
            if checkpoint is not None and checkpoint[3]:
                self._clean_at = (active.next_offset, self._dir_gen)
        else:
            self._spend(None)
            # Whatever recovery kept is on disk now; make it durable before use.
            fs.fsync(active.handle)
            self._flush_dir()
            self._write_checkpoint(clean=False)
        self._release_recovered()

    # A crash during a roll can leave the new segment's file empty after a
    # hole: the records before it never reached the disk (a power loss that
    # kept the file's directory entry; or a kill in the window versions
    # before issue 17's eighth part left between creating the file and
    # writing those records). Nothing past the hole was acknowledged if the
    # segment before was not sealed by a completed sync (its index files
    # are written only then) and the checkpoint names no synced offset past
    # the hole: recovery then removes the empty file and cuts a torn end of
    # the segment before it (where no valid record follows the damage).

    @staticmethod
    def _unclaimed(checkpoint: tuple[int, int, int, bool] | None, offset: int) -> bool:
        """The checkpoint claims nothing synced at or past ``offset``."""
        return checkpoint is None or checkpoint[0] <= offset

    def _stray_after(
        self,
        seg: _Segment,
        position: int,
        later: int | None,
        checkpoint: tuple[int, int, int, bool] | None,
    ) -> bool:
        """Whether damage at ``position`` of ``seg`` (not the last segment)
        is the torn end of a crashed roll: the last segment file, based at
        ``later``, is empty, nothing past the damage was claimed synced,
        and no valid record follows the damage in ``seg``."""
        if later is None or not self._unclaimed(checkpoint, seg.next_offset):
            return False
        handle = self.fs.open(f"{self.path}/{_name(later, 'log')}")
        try:
            if self.fs.size(handle) != 0:
                return False
        finally:
            self.fs.close(handle)
        rest = self.fs.pread(seg.handle, self.fs.size(seg.handle) - position, position)
        return _resync(rest, 1, seg.next_offset, later) is None

    def _drop_stray(self, seg: _Segment, expected: int) -> None:
        """Remove an empty last segment file after a hole (see above)."""
        self._spend(None)  # a file change: not inline
        self._recovering = None
        self.fs.close(seg.handle)
        seg.handle = -1
        self._remove_segments([seg.base])
        self._recovery_cut = True  # the directory is fsynced before use
        _log.warning(
            "journal_stray_segment_removed",
            file=seg.path,
            expected_offset=expected,
            reason="an empty segment file after a roll whose earlier records never reached "
            "the disk (a crash during the roll); nothing was acknowledged past "
            f"offset {expected}",
        )

    def _spend(self, cost: int | None) -> None:
        """Count ``cost`` bytes of recovery work against the inline budget
        (``None``: work that must not run inline: an fsync, a file change)."""
        budget = self._inline_budget
        if budget is None:
            return
        if cost is None or cost > budget:
            raise Deferred(self.path)
        self._inline_budget = budget - cost

    @staticmethod
    def _synced_through(checkpoint: tuple[int, int, int, bool] | None, active: _Segment) -> bool:
        return (
            checkpoint is not None
            and checkpoint[1] == active.base
            and checkpoint[2] == active.size
            and checkpoint[0] == active.next_offset
        )

    def _release_recovered(self) -> None:
        """Close the handles recovery opened: sealed segments open again on
        first read; the active one stays open if the file cache has room."""
        active = self.segments[-1]
        with self._lock:
            keep = self.files.has_room()
            if keep:
                self.files.register_locked(active, self)
            closing = [s for s in self.segments if s.handle >= 0 and (s is not active or not keep)]
            handles = [s.handle for s in closing]
            for seg in closing:
                seg.handle = -1
        for handle in handles:
            self.fs.close(handle)

    def _load_indexes(self, seg: _Segment, file_size: int) -> bool:
        """Load a segment's index files; False if missing or damaged."""
        entries: list[list[tuple[int, int]]] = []
        for ext in ("index", "timeindex"):
            path = f"{self.path}/{_name(seg.base, ext)}"
            if not self.fs.exists(path):
                return False
            handle = self.fs.open(path)
            try:
                size = self.fs.size(handle)
                data = self.fs.pread(handle, size, 0)
            finally:
                self.fs.close(handle)
            if len(data) < _TRAILER.size or (len(data) - _TRAILER.size) % _INDEX_ENTRY.size:
                return False
            body, trailer = data[: -_TRAILER.size], data[-_TRAILER.size :]
            size_rec, next_off, max_ts, max_append, crc = _TRAILER.unpack(trailer)
            if crc32c.crc32c(body + trailer[:-4]) != crc or size_rec != file_size:
                return False
            entries.append(
                [_INDEX_ENTRY.unpack_from(body, i) for i in range(0, len(body), _INDEX_ENTRY.size)]
            )
            seg.next_offset = next_off
            seg.max_timestamp = max_ts
            seg.max_append_time = max_append
        seg.index = [(o, p) for o, p in entries[0]]
        seg.times = [(t, o) for t, o in entries[1]]
        seg.size = file_size
        seg.indexed_at = seg.index[-1][1] if seg.index else -(2**62)
        return True

    def _write_indexes(self, seg: _Segment) -> None:
        self._write_index_files(seg)
        self._dir_gen += 1

    def _write_index_files(self, seg: _Segment) -> None:
        for ext, rows in (("index", seg.index), ("timeindex", seg.times)):
            body = b"".join(_INDEX_ENTRY.pack(a, b) for a, b in rows)
            trailer = _TRAILER.pack(
                seg.size, seg.next_offset, seg.max_timestamp, seg.max_append_time, 0
            )[:-4]
            data = body + trailer + struct.pack(">I", crc32c.crc32c(body + trailer))
            write_file_atomically(self.fs, f"{self.path}/{_name(seg.base, ext)}", [data])

    def _scan(
        self,
        seg: _Segment,
        file_size: int,
        tail_from: int,
        checkpoint: tuple[int, int, int, bool] | None = None,
        before_last: int | None = None,
    ) -> None:
        """Scan a segment, rebuilding its index; tail damage is cut, interior
        damage raises :class:`CorruptionError`. ``before_last``: the base of
        the last segment when ``seg`` is the one before it (its torn end
        may be a crashed roll's; see :meth:`_stray_after`)."""
        seg.next_offset = seg.base
        seg.size = 0
        seg.newest = (-1, -1)
        position = 0
        chunk = 1 << 20
        buf = b""
        buf_start = 0
        while position < file_size:
            rel = position - buf_start
            header = decode_header(buf, rel)
            if isinstance(header, Short):
                need = max(chunk, header.needed + (len(buf) - rel))
                buf = self.fs.pread(seg.handle, need, position)
                buf_start = position
                header = decode_header(buf, 0)
            if isinstance(header, Short):
                reason = f"torn record: {header.needed} byte(s) missing at the end"
            elif isinstance(header, Corrupt):
                reason = header.reason
            elif header.base_offset != seg.next_offset and not (
                header.base_offset > seg.next_offset
                and (
                    header.attributes & ATTR_COMPACTED
                    or covered(self._gaps, seg.next_offset, header.base_offset)
                )
            ):
                reason = f"offset {header.base_offset} where {seg.next_offset} was expected"
            else:
                seg.note(header, position, self.config.index_interval)
                position += header.length
                continue
            interior = position < tail_from and not self._stray_after(
                seg, position, before_last, checkpoint
            )
            self._damage(seg, position, reason, interior=interior)
            return

    def _damage(self, seg: _Segment, position: int, reason: str, *, interior: bool) -> None:
        self._spend(None)  # truncating and fsyncing: not inline
        size = self.fs.size(seg.handle) if seg.handle >= 0 else 0
        if interior:
            raise CorruptionError(
                f"{seg.path}: corrupt data at byte {position} ({reason}), before the last "
                "synced position; nothing was dropped. Restore the file, or repair the log "
                "(`headwater repair` for a partition, repair_log() in code): it drops only "
                "the damaged records and reports their offsets as a gap"
            )
        self.fs.truncate(seg.handle, position)
        self.fs.fsync(seg.handle)
        self._recovery_cut = True
        _log.warning(
            "journal_tail_truncated",
            file=seg.path,
            position=position,
            bytes_dropped=size - position,
            reason=reason,
        )

    def _remove_segments(self, bases: list[int], exts: tuple[str, ...] = _EXTS) -> None:
        """Remove segment files (the directory fsync comes with the next sync)."""
        for base in bases:
            for ext in exts:
                p = f"{self.path}/{_name(base, ext)}"
                if self.fs.exists(p):
                    self.fs.remove(p)
        self._dir_gen += 1

    # ----------------------------------------------------------------- write

    def _new_segment(self, base: int, *, lazy: bool = False) -> _Segment:
        """Add a new active segment. ``lazy``: leave its file to be created
        by the writer thread (handle -1 until then; see :meth:`stage`)."""
        path = f"{self.path}/{_name(base, 'log')}"
        seg = _Segment(base=base, path=path, handle=-1 if lazy else self.fs.open(path))
        seg.unborn = lazy
        seg.next_offset = base
        seg.created_ms = self.clock()
        with self._lock:
            self.segments.append(seg)
            if seg.handle >= 0:
                self.files.register_locked(seg, self)
        self._dir_gen += 1
        return seg

    def _flush_dir(self) -> None:
        gen = self._dir_gen
        self.fs.fsync_dir(self.path)
        self._dir_synced_gen = gen

    @property
    def next_offset(self) -> int:
        """The offset the next appended event will get."""
        return self.segments[-1].next_offset

    @property
    def earliest_offset(self) -> int:
        """The first offset still stored."""
        return self.segments[0].base

    @property
    def size_bytes(self) -> int:
        """Bytes of all segments."""
        return sum(s.size for s in self.segments)

    def validate(self, record: bytes | bytearray | memoryview) -> RecordHeader:
        """Check a record from a client; raise :class:`InvalidArgument` if bad."""
        if len(record) > self.config.max_record_bytes:
            raise InvalidArgument(
                f"batch of {len(record)} bytes exceeds max_record_bytes="
                f"{self.config.max_record_bytes}; send smaller batches"
            )
        header = decode_header(record)
        if not isinstance(header, RecordHeader):
            raise InvalidArgument(f"invalid batch: {header}")
        if header.length != len(record):
            raise InvalidArgument(
                f"invalid batch: header says {header.length} bytes, got {len(record)}"
            )
        return header

    def write(
        self, record: bytes | bytearray | memoryview, validated: RecordHeader | None = None
    ) -> RecordHeader:
        """Validate and append one record; returns its stored header.

        ``validated`` is the header :meth:`validate` returned for this very
        record, to skip checking it twice. Not durable until a sync covers it.
        A full disk raises :class:`DiskFullError` with nothing appended; other
        I/O errors raise :class:`StorageError`.
        """
        active, validated, now = self._place(record, validated)
        patched = patch_record(record, active.next_offset, now)
        position = active.size
        handle = active.handle
        if handle < 0 or self.files.max_open is not None:
            handle = self._fd(active)
        try:
            self.fs.write(handle, patched)
        except OSError as exc:
            self._undo_partial(active, position)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"disk full while appending to {active.path}; free space or lower "
                    "retention, then retry (earlier data is intact)"
                ) from exc
            raise StorageError(f"write to {active.path} failed: {exc}") from exc
        header = validated._replace(base_offset=active.next_offset, append_time=now)
        active.note(header, position, self.config.index_interval)
        self._dirty[active.base] = active
        return header

    def _place(
        self,
        record: bytes | bytearray | memoryview,
        validated: RecordHeader | None,
        *,
        lazy: bool = False,
    ) -> tuple[_Segment, RecordHeader, int]:
        """Check ``record`` and roll if needed: the segment it goes to, its
        header as validated, and the append time."""
        if self.closed:
            raise StorageError(f"the log at {self.path} is closed")
        if validated is None:
            validated = self.validate(record)
        active = self.segments[-1]
        now = self.clock()
        if active.size > 0 and (
            active.size + len(record) > self.config.segment_bytes
            or (
                self.config.segment_ms is not None
                and now - active.created_ms >= self.config.segment_ms
            )
        ):
            active = self._roll(lazy=lazy)
        return active, validated, now

    def stage(
        self, record: bytes | bytearray | memoryview, validated: RecordHeader | None = None
    ) -> tuple[RecordHeader, Staged]:
        """Validate and place one record like :meth:`write`, but leave the
        write itself to the caller (a writer thread): returns the stored
        header and what to write. The log counts the record as appended at
        once (offsets, index, size); the caller must write every staged
        record in order, then call :meth:`unstage` for each, and, when a
        write fails, cut the log back with :meth:`discard_unsynced`.

        The payload of a ``bytes`` record is not copied: the stored record
        is a patched header followed by ``record``'s own bytes (any other
        buffer is copied first, as it could change before the write). The
        segment stays pinned until :meth:`unstage`, so retention, compaction
        or a snapshot never close its handle under the writer. A segment
        rolled to here gets its file from the writer (handle -1 until
        :meth:`open_staged_segment`), so the new file never exists before
        the records of the one before it were written: a directory sync
        cannot make it durable ahead of them."""
        if type(record) is not bytes:
            record = bytes(record)  # a mutable buffer could change before the write
        # The hot path of every append (group commit is bound by the loop's
        # CPU per append): _place and _Segment.note inlined; a client's
        # record checked and stamped in one step (stamp_record: fields
        # unpacked once, one header object), or a validated one's stored
        # header packed from the checked fields.
        active = self.segments[-1]
        now = self.clock()
        # A roll keeps the next offset: the base offset is known already.
        base_offset = active.next_offset
        length = len(record)
        config = self.config
        stamped = None
        if validated is None:
            if length <= config.max_record_bytes:
                stamped = stamp_record(record, base_offset, now)
            if stamped is None:
                validated = self.validate(record)  # raises what is wrong
        size = active.size
        if self.closed or (
            size > 0
            and (
                size + length > config.segment_bytes
                or (config.segment_ms is not None and now - active.created_ms >= config.segment_ms)
            )
        ):
            if stamped is not None:  # (rare) stamped again below, with _place's time
                validated, stamped = stamped[0], None
            active, validated, now = self._place(record, validated, lazy=True)
            size = active.size
            base_offset = active.next_offset
        if stamped is not None:
            header, head = stamped
        else:
            assert validated is not None
            v = validated
            # v's fields with the base offset and append time set (built in C).
            header = new_header((*v[:3], base_offset, *v[4:7], now, *v[8:]))
            head = stored_header(record, header)
        if size - active.indexed_at >= config.index_interval:
            active.index.append((base_offset, size))
            active.indexed_at = size
        max_timestamp = header.max_timestamp
        if max_timestamp > active.max_timestamp:
            active.max_timestamp = max_timestamp
            active.times.append((max_timestamp, base_offset))
        if now > active.max_append_time:
            active.max_append_time = now
        active.next_offset = base_offset + header.count
        active.newest = (base_offset, size)
        active.size = size + header.length
        self._dirty[active.base] = active
        with self._lock:
            active.pins += 1
        return header, _new_staged((active, head, memoryview(record)[HEADER_SIZE:]))

    def open_staged_segment(self, seg: _Segment) -> int:
        """Create the file of a segment :meth:`stage` rolled to (writer
        thread, before its first write); returns its handle, or -1 when the
        segment left the log meanwhile (a state journal's snapshot deleted
        it): its records are not needed, and a file created now would be a
        stray segment. Checked and opened under the lock that retiring
        takes, so the two cannot cross (the one open call held under it)."""
        with self._lock:
            if seg.handle < 0 and not seg.retired:
                # A new file, or one the file cache closed while idle.
                seg.unborn = False
                self._reopen_locked(seg)
            return seg.handle

    def unstage(self, staged: Staged) -> None:
        """Release the pin :meth:`stage` took (owner thread), once the
        record is written or given up."""
        self._unpin(staged.segment)

    def unstage_all(self, staged: list[Staged]) -> None:
        """:meth:`unstage` each of ``staged`` (one lock for all of them)."""
        closing: list[_Segment] = []
        with self._lock:
            for record in staged:
                seg = record.segment
                seg.pins -= 1
                if seg.retired and seg.pins == 0:
                    closing.append(seg)
        for seg in closing:
            self._close_handle(seg)

    def _undo_partial(self, seg: _Segment, position: int) -> None:
        try:
            self.fs.truncate(seg.handle, position)
        except OSError:
            pass  # best effort: recovery truncates a torn tail anyway

    def _roll(self, *, lazy: bool = False) -> _Segment:
        old = self.segments[-1]
        if old.handle < 0 and not old.pins:
            # The file cache closed it while idle; its sync needs the handle.
            # (A pinned one without a handle has staged records whose file
            # the writer thread creates: never open that one early.)
            self._fd(old)
        old.sealed = True
        self._dirty[old.base] = old
        return self._new_segment(old.next_offset, lazy=lazy)

    # ------------------------------------------------------------------ sync

    def prepare_sync(self) -> SyncWork | None:
        """What a sync must do now, or None if everything is synced."""
        directory = self._dir_gen > self._dir_synced_gen
        if not self._dirty and not directory:
            return None
        active = self.segments[-1]
        return SyncWork(
            segments=tuple(self._dirty.values()),
            handles=tuple(s.handle for s in self._dirty.values()),
            directory=directory,
            dir_gen=self._dir_gen,
            target_offset=active.next_offset,
            segment_base=active.base,
            position=active.size,
        )

    def run_sync(self, work: SyncWork, *, checkpoint: bool = True) -> None:
        """Do the blocking part of a sync (may run in a worker thread).
        ``checkpoint=False`` leaves :meth:`put_sync_checkpoint` to the
        caller (a writer thread does it after reporting the fsync)."""
        for handle in work.handles:
            self.fs.fsync(handle)
        if work.directory:
            self.fs.fsync_dir(self.path)
        if checkpoint:
            self.put_sync_checkpoint(work)

    def put_sync_checkpoint(self, work: SyncWork) -> None:
        """Rewrite the checkpoint after ``work`` was synced. Not fsynced:
        after a power loss it may lag (or, written late, name an earlier
        sync), which only widens the tail recovery checks."""
        self._put_checkpoint(work.target_offset, work.segment_base, work.position, False)

    def complete_sync(self, work: SyncWork) -> None:
        """Record that ``work`` is durable (on the event loop thread)."""
        for base, seg in list(self._dirty.items()):
            # A segment that got appends after prepare_sync stays dirty.
            if seg.handle in work.handles and seg.next_offset <= work.target_offset:
                del self._dirty[base]
                if seg.sealed:
                    self._write_indexes(seg)
        if work.directory:
            self._dir_synced_gen = max(self._dir_synced_gen, work.dir_gen)
        if work.target_offset > self.synced_offset:
            self.synced_offset = work.target_offset
            self._synced_position = work.position
            self._synced_base = work.segment_base

    def sync(self) -> None:
        """Make everything appended so far durable (synchronously)."""
        work = self.prepare_sync()
        if work is None:
            return
        try:
            self.run_sync(work)
        except OSError as exc:
            raise StorageError(f"fsync of {self.path} failed: {exc}") from exc
        self.complete_sync(work)

    def discard_unsynced(self) -> int:
        """After a failed fsync: cut every segment back to what was last synced
        (those pages may be lost) and return the new next offset."""
        base, position = self._synced_at
        index = next((i for i, s in enumerate(self.segments) if s.base == base), None)
        if index is None or self.synced_offset < self.segments[index].base:
            self.truncate_to(self.synced_offset, sync=False)
            return self.next_offset
        # The synced point is known exactly: no need to read a header there
        # (after a failed write the bytes at that position may be missing).
        self._drop_after(index)
        seg = self.segments[-1]
        if seg.next_offset > self.synced_offset or seg.size > position:
            self._cut_segment(seg, position, self.synced_offset)
        return self.next_offset

    # ------------------------------------------------------- handle owners

    def _pin(self, offset: int, *, reopen: bool = True) -> _Segment:
        """Pin the segment holding ``offset`` (any thread); :meth:`_unpin` it.
        Without ``reopen``, a segment whose file is closed raises
        ``_NotCached`` (opening it may wait for the disk)."""
        with self._lock:
            if self.closed:
                raise ClosedError(f"the log at {self.path} is closed")
            segments = self.segments
            seg = segments[-1]
            if offset < seg.base:  # not the active segment (a tail read)
                first = segments[0].base
                if offset < first:
                    raise OffsetOutOfRangeError(
                        f"offset {offset} is before the start of the log at {self.path} "
                        f"({first}; retention removed it); seek to earliest"
                    )
                seg = segments[self._segment_for(offset)]
            if seg.handle < 0:
                if not reopen:
                    raise _NotCached
                self._reopen_locked(seg)
            else:
                self.files.touch_locked(seg)
            seg.pins += 1
            return seg

    def _pin_all(self) -> list[_Segment]:
        """Pin every segment (any thread); :meth:`_unpin` each."""
        with self._lock:
            if self.closed:
                raise ClosedError(f"the log at {self.path} is closed")
            for seg in self.segments:
                if seg.handle < 0:
                    self._reopen_locked(seg)
                seg.pins += 1
            return list(self.segments)

    def _reopen_locked(self, seg: _Segment) -> None:
        """Open a segment the file cache closed (lock held). Opened under the
        lock so that retention, which unlinks a segment's files only after
        taking it out of ``segments`` under the lock, never races it. A
        segment whose file the writer thread has yet to create stays closed."""
        if seg.unborn:
            return
        seg.handle = self.fs.open(seg.path)
        self.files.register_locked(seg, self)

    def _fd(self, seg: _Segment) -> int:
        """``seg``'s open handle, reopening it if the file cache closed it
        (owner thread: the cache closes handles only on that thread)."""
        with self._lock:
            if seg.handle < 0:
                if seg.retired:
                    raise ClosedError(f"segment {seg.path} is no longer in the log")
                self._reopen_locked(seg)
            else:
                self.files.touch_locked(seg)
            return seg.handle

    def _unpin(self, seg: _Segment) -> None:
        with self._lock:
            seg.pins -= 1
            last = seg.retired and seg.pins == 0
        if last:
            self._close_handle(seg)

    def _retire_locked(self, segments: list[_Segment]) -> list[_Segment]:
        """Mark segments (already out of ``segments``) retired; returns those
        no reader holds, to close once the lock is released."""
        for seg in segments:
            seg.retired = True
        return [seg for seg in segments if seg.pins == 0]

    def _close_handle(self, seg: _Segment) -> None:
        with self._lock:
            handle, seg.handle = seg.handle, -1
            self.files.forget_locked(seg)
        if handle >= 0:
            try:
                self.fs.close(handle)
            except OSError:
                pass

    def _drop_segments(self, start: int, stop: int | None = None) -> list[_Segment]:
        """Take ``segments[start:stop]`` out of the log (owner thread),
        closing the handles no reader holds."""
        with self._lock:
            gone = self.segments[start:stop]
            del self.segments[start:stop]
            closable = self._retire_locked(gone)
        for seg in closable:
            self._close_handle(seg)
        return gone

    # ------------------------------------------------------------------ read

    def _segment_for(self, offset: int) -> int:
        index = max(0, bisect.bisect_right(self.segments, offset, key=_segment_base) - 1)
        if offset >= self.segments[index].next_offset and index + 1 < len(self.segments):
            # In a gap a repair left at the end of a segment: the offsets
            # there went with the damage, so the next segment holds what follows.
            index += 1
        return index

    def _position_of(
        self, seg: _Segment, offset: int, pread: _Pread
    ) -> tuple[int, RecordHeader | None]:
        """Byte position and header of the record containing ``offset``."""
        i = bisect.bisect_right(seg.index, offset, key=_entry_offset) - 1
        position = seg.index[i][1] if i >= 0 else 0
        newest_base, newest_position = seg.newest
        if newest_base <= offset and position < newest_position < seg.size:
            position = newest_position  # the newest record's: no scan
        while position < seg.size:
            head = pread(seg.handle, HEADER_SIZE, position)
            header = decode_header(head, check_crc=False)
            if not isinstance(header, RecordHeader):
                raise CorruptionError(
                    f"{seg.path}: unreadable record header at byte {position}: {header}"
                )
            if header.next_offset > offset:
                return position, header
            position += header.length
        return position, None

    def read(self, offset: int, max_bytes: int, end: int | None = None) -> bytes:
        """Whole records from the one containing ``offset``, up to ``max_bytes``
        (always at least one record when one exists below ``end``).

        Safe in a worker thread while the owner appends, applies retention,
        compacts or closes (see "File handles have one owner"). Raises
        :class:`OffsetOutOfRangeError` when ``offset`` is not stored (any
        more) and :class:`ClosedError` once the log is closed."""
        return self._read(offset, max_bytes, end, self.fs.pread)

    def read_cached(self, offset: int, max_bytes: int, end: int | None = None) -> bytes | None:
        """:meth:`read`, but only if it need not wait for the disk: ``None``
        when some of the bytes are not in the page cache, a segment file is
        closed, or the file system cannot tell (no ``pread_cached``). So a
        reader on the event loop can read data that is in memory at once
        and leave the rest to a worker thread."""
        pread_cached = getattr(self.fs, "pread_cached", None)
        if pread_cached is None:
            return None

        def pread(handle: int, size: int, position: int) -> bytes | bytearray:
            data: bytes | bytearray | None = pread_cached(handle, size, position)
            if data is None or len(data) < size:
                raise _NotCached
            return data

        try:
            return self._read(offset, max_bytes, end, pread, reopen=False)
        except _NotCached:
            return None

    def _read(
        self, offset: int, max_bytes: int, end: int | None, pread: _Pread, *, reopen: bool = True
    ) -> bytes:
        end = self.next_offset if end is None else min(end, self.next_offset)
        # A first check; _pin checks again under the lock (retention may run
        # between the two when this read is in a worker thread).
        if offset < self.earliest_offset or offset > self.next_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside the log [{self.earliest_offset}, "
                f"{self.next_offset}]; seek to earliest or latest"
            )
        # Runs of whole records as read, joined once at the end: one copy,
        # none when a single read is all of the answer.
        spans: list[tuple[bytes | bytearray, int]] = []
        have = 0
        while offset < end:
            try:
                seg = self._pin(offset, reopen=reopen)
            except (OffsetOutOfRangeError, ClosedError):
                if not spans:
                    raise
                break  # retention or close overtook this read: return what it got
            try:
                if offset >= seg.next_offset:
                    break
                offset, taken, data, more = self._read_segment(
                    seg, offset, end, max_bytes, have, pread
                )
            finally:
                self._unpin(seg)
            if taken:
                spans.append((data, taken))
                have += taken
            if not more:
                break
        if len(spans) == 1:
            data, taken = spans[0]
            if taken == len(data) and type(data) is bytes:
                return data
        return b"".join(memoryview(data)[:taken] for data, taken in spans)

    def _read_segment(
        self, seg: _Segment, offset: int, end: int, max_bytes: int, have: int, pread: _Pread
    ) -> tuple[int, int, bytes | bytearray, bool]:
        """Read records of pinned ``seg`` from ``offset``, after ``have``
        bytes of them were read; returns the next offset, how many bytes of
        whole records to take from the start of the data read, the data, and
        whether to go on to the next segment."""
        position, header = self._position_of(seg, offset, pread)
        if header is None:
            return offset, 0, b"", False
        want = max_bytes - have
        if have and want < header.length:
            return offset, 0, b"", False
        size = min(max(want, header.length), seg.size - position)
        data = pread(seg.handle, size, position)
        pos = 0
        while pos + HEADER_SIZE <= len(data):
            h = decode_header(data, pos)
            if isinstance(h, Short) and pos > 0:
                break  # the rest of this record is past the window
            if not isinstance(h, RecordHeader):
                # Never serve damaged bytes, never stop short in silence
                # (a reader would wait at this offset for ever).
                reason = h.reason if isinstance(h, Corrupt) else "record runs past the file"
                raise CorruptionError(
                    f"{seg.path}: corrupt record at byte {position + pos} ({reason}) "
                    f"while reading offset {offset}; the records after it are kept. "
                    "Restore the file, or repair the log (`headwater repair` for a partition, "
                    "on the stopped broker): it drops only the damaged records"
                )
            if h.base_offset >= end or (have + pos and have + pos + h.length > max_bytes):
                return offset, pos, data, False
            pos += h.length
            offset = h.next_offset
        return offset, pos, data, pos > 0 and have + pos < max_bytes

    def offset_for_time(self, timestamp: int) -> int | None:
        """Base offset of the first record whose max timestamp is >= ``timestamp``
        (the record holding the first event at or after it), or None."""
        pinned = self._pin_all()
        try:
            for seg in pinned:
                found = self._offset_for_time_in(seg, timestamp)
                if found is not None:
                    return found
            return None
        finally:
            for seg in pinned:
                self._unpin(seg)

    def _offset_for_time_in(self, seg: _Segment, timestamp: int) -> int | None:
        if seg.max_timestamp < timestamp or seg.size == 0:
            return None
        start = seg.base
        for max_ts, off in seg.times:
            if max_ts >= timestamp:
                break
            start = off
        position, _ = self._position_of(seg, start, self.fs.pread)
        while position < seg.size:
            header = decode_header(
                self.fs.pread(seg.handle, HEADER_SIZE, position), check_crc=False
            )
            if isinstance(header, Short):
                break  # staged for a writer thread, not written yet
            assert isinstance(header, RecordHeader)
            if header.max_timestamp >= timestamp:
                return header.base_offset
            position += header.length
        return None

    def headers(self, from_offset: int | None = None) -> list[RecordHeader]:
        """Headers of every record (from ``from_offset``), e.g. to rebuild state."""
        out: list[RecordHeader] = []
        pinned = self._pin_all()
        try:
            for seg in pinned:
                if from_offset is not None and seg.next_offset <= from_offset:
                    continue
                position = 0
                while position < seg.size:
                    header = decode_header(
                        self.fs.pread(seg.handle, HEADER_SIZE, position), check_crc=False
                    )
                    if isinstance(header, Short):
                        break  # staged for a writer thread, not written yet
                    assert isinstance(header, RecordHeader)
                    if from_offset is None or header.next_offset > from_offset:
                        out.append(header)
                    position += header.length
        finally:
            for seg in pinned:
                self._unpin(seg)
        return out

    # ------------------------------------------------- retention, truncation

    def apply_retention(self, now_ms: int | None = None) -> list[int]:
        """Delete whole old segments by age and total size; return their bases.
        The active segment is never deleted, nor one being compacted. Readers
        holding a deleted segment finish their read (owner thread only)."""
        now = self.clock() if now_ms is None else now_ms
        cfg = self.config
        removed: list[int] = []
        while len(self.segments) > 1:
            oldest = self.segments[0]
            if oldest.base in self._dirty or oldest.busy:
                break
            too_old = cfg.retention_ms is not None and (
                oldest.max_append_time < now - cfg.retention_ms
            )
            too_big = cfg.retention_bytes is not None and self.size_bytes > cfg.retention_bytes
            if not (too_old or too_big):
                break
            self._drop_segments(0, 1)
            self._remove_segments([oldest.base])
            removed.append(oldest.base)
        if removed:
            self._flush_dir()
            _log.info("journal_retention", path=self.path, removed_segments=removed)
        return removed

    def replace_segment(self, base: int, records: list[bytes]) -> None:
        """Atomically replace a sealed segment's records (compaction):
        :meth:`rewrite_segment` then :meth:`install_segment`, on this thread."""
        self.install_segment(self.rewrite_segment(base, records))

    def rewrite_segment(self, base: int, records: list[bytes]) -> _Segment:
        """Write ``records`` as the new content of sealed segment ``base``;
        returns the new segment for :meth:`install_segment`.

        The new records must keep the segment's first and end offsets. Written
        to a temporary file, fsynced, renamed over the segment, and the
        directory fsynced, so a crash leaves either the old or the new file.
        Blocking: run it in a worker thread. Readers keep reading the old file
        (their pinned handle) until the new one is installed; retention skips
        the segment meanwhile. One rewrite per log at a time.
        """
        with self._lock:
            index = next((i for i, s in enumerate(self.segments) if s.base == base), None)
            if index is None or index == len(self.segments) - 1:
                raise InvalidArgument(f"segment {base} is not a sealed segment of {self.path}")
            old = self.segments[index]
            if base in self._dirty:
                raise InvalidArgument(f"segment {base} is not synced yet; sync first")
            if old.busy:
                raise InvalidArgument(f"segment {base} of {self.path} is being compacted")
            if old.handle < 0:
                # Readers of the old file keep reading it through this handle
                # after the new file is renamed over its path.
                self._reopen_locked(old)
            old.busy = True
        try:
            return self._rewrite(old, records)
        finally:
            with self._lock:
                old.busy = False

    def _rewrite(self, old: _Segment, records: list[bytes]) -> _Segment:
        # Touches only this segment's files and explicit directory fsyncs:
        # the owner's counters (_dir_gen, _dirty) stay the owner's.
        fs = self.fs
        write_file_atomically(fs, old.path, records)
        for ext in ("index", "timeindex"):
            path = f"{self.path}/{_name(old.base, ext)}"
            if fs.exists(path):
                fs.remove(path)
        fs.fsync_dir(self.path)
        seg = _Segment(base=old.base, path=old.path, handle=fs.open(old.path))
        try:
            seg.created_ms = old.created_ms
            size = fs.size(seg.handle)
            self._scan(seg, size, size)
            if seg.next_offset != old.next_offset:
                raise CorruptionError(
                    f"compaction of {old.path} changed its end offset "
                    f"({old.next_offset} -> {seg.next_offset})"
                )
            seg.sealed = True
            seg.max_append_time = old.max_append_time
            self._write_index_files(seg)
            fs.fsync_dir(self.path)
        finally:
            # Closed until first read (see _fdcache): the new file is in
            # place under the old name now.
            self._close_handle(seg)
        return seg

    def install_segment(self, seg: _Segment) -> None:
        """Put a segment from :meth:`rewrite_segment` in place of the old one
        (owner thread). The old handle closes when its last reader is done."""
        with self._lock:
            index = next((i for i, s in enumerate(self.segments) if s.base == seg.base), None)
            stale = self.closed or index is None or index == len(self.segments) - 1
            if not stale:
                assert index is not None
                old = self.segments[index]
                self.segments[index] = seg
                closable = self._retire_locked([old])
        if stale:  # closed meanwhile (retention skips busy segments)
            self._close_handle(seg)
            if self.closed:
                raise ClosedError(f"the log at {self.path} closed during compaction")
            raise InvalidArgument(f"segment {seg.base} left {self.path} during its rewrite")
        for gone in closable:
            self._close_handle(gone)

    def sealed_segments(self) -> list[tuple[int, int]]:
        """``(first offset, end offset)`` of every sealed, synced segment:
        the ones :meth:`rewrite_segment` accepts."""
        return [(s.base, s.next_offset) for s in self.segments[:-1] if s.base not in self._dirty]

    def delete_before(self, offset: int) -> list[int]:
        """Delete whole segments that end at or before ``offset`` (never the
        active one, nor one not synced yet: its records may still be on
        their way to the file, and a segment rolled from it may not have a
        file yet, so deleting it could leave the log without any file)."""
        removed: list[int] = []
        while (
            len(self.segments) > 1
            and self.segments[0].next_offset <= offset
            and self.segments[0].base not in self._dirty
        ):
            (oldest,) = self._drop_segments(0, 1)
            self._dirty.pop(oldest.base, None)
            self._remove_segments([oldest.base])
            removed.append(oldest.base)
        if removed:
            self._flush_dir()
        return removed

    def truncate_to(self, offset: int, *, sync: bool = True) -> None:
        """Remove every record from the one containing ``offset`` on (so the
        next offset becomes that record's base offset)."""
        if offset >= self.next_offset:
            return
        if offset < self.earliest_offset:
            raise OffsetOutOfRangeError(
                f"cannot truncate to {offset}: the log starts at {self.earliest_offset}"
            )
        i = self._segment_for(offset)
        self._drop_after(i)
        seg = self.segments[-1]
        self._fd(seg)
        position, header = self._position_of(seg, offset, self.fs.pread)
        self._cut_segment(seg, position, header.base_offset if header else offset)
        if sync:
            self.sync()

    def _drop_after(self, index: int) -> None:
        """Take the segments after ``segments[index]`` out and remove their
        files, newest first: a kill midway leaves a shorter log, never a hole."""
        for seg in reversed(self._drop_segments(index + 1)):
            self._remove_segments([seg.base])
            self._dirty.pop(seg.base, None)

    def _cut_segment(self, seg: _Segment, position: int, next_offset: int) -> None:
        """Cut the last segment to ``position``, where ``next_offset`` begins."""
        self.fs.truncate(seg.handle, position)
        self._remove_segments([seg.base], ("index", "timeindex"))
        seg.sealed = False
        seg.index = [(o, p) for o, p in seg.index if p < position]
        if seg.newest[1] >= position:
            seg.newest = (-1, -1)
        seg.times = [(t, o) for t, o in seg.times if o < next_offset]
        seg.max_timestamp = seg.times[-1][0] if seg.times else -(2**63)
        seg.indexed_at = seg.index[-1][1] if seg.index else -(2**62)
        seg.size = position
        seg.next_offset = next_offset
        if self.synced_offset >= next_offset:
            self.synced_offset = next_offset
            self._synced_base, self._synced_position = seg.base, position
        self._dirty[seg.base] = seg
        self._dir_gen += 1

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        """Sync, write index files and a clean checkpoint, close every file."""
        if self.closed:
            return
        if self.untouched:
            # Nothing changed since recovery found a clean checkpoint: its
            # index files and checkpoint still describe the files.
            self.abandon()
            return
        self.sync()
        active = self.segments[-1]
        self._write_indexes(active)
        self._flush_dir()
        self._write_checkpoint(clean=True, sync=True)
        self.abandon()

    @property
    def untouched(self) -> bool:
        """Nothing changed since recovery found a clean checkpoint, so
        :meth:`close` has nothing to write (it only closes handles)."""
        return self._clean_at == (self.next_offset, self._dir_gen) and not self._dirty

    def abandon(self) -> None:
        """Close every handle without syncing (after a failure or a crash).
        A segment a reader still holds is closed when that read ends."""
        with self._lock:
            self.closed = True
            closable = self._retire_locked(list(self.segments))
        pending, self._recovering = self._recovering, None
        if pending is not None and pending not in self.segments:
            closable.append(pending)
        for seg in closable:
            self._close_handle(seg)

    def __repr__(self) -> str:
        return (
            f"<Log {os.path.basename(self.path)} [{self.earliest_offset}, "
            f"{self.next_offset}) synced={self.synced_offset}>"
        )
