"""A cap on the segment files many logs keep open, with an LRU.

Theory of operation
-------------------
A broker with tens of thousands of partitions cannot keep every segment of
every partition open: the process would run out of file descriptors
(``RLIMIT_NOFILE``). Segments are therefore opened lazily (on the first
write or read after recovery) and every :class:`~headwater.journal.Log`
sharing one :class:`FileCache` registers the handles it opens here. When
more than ``max_open`` are open, :meth:`FileCache.trim` closes the least
recently used ones that are *idle*: no reader has the segment pinned, it
has no unsynced appends (its fsync still needs the handle), and compaction
is not rewriting it. The next use reopens the file.

Threads. One lock, :attr:`FileCache.lock`, guards the LRU *and* the pins
and segment lists of every log sharing the cache (a log uses it as its own
``_lock``), so deciding "idle" and closing never race a reader pinning the
segment. A reader pins and opens in one step under that lock, so retention
(which unlinks files after taking segments out under the lock) never makes
it open a deleted path. Only the owner thread (the event loop's: appends,
retention, truncation and close of these logs happen there) calls
:meth:`trim`; readers in worker threads may open files past the cap for the
length of their read and the owner's next trim brings the count back.

The cap is therefore a bound on *idle* files: segments with unsynced appends
(under ``interval``, until the next flush; under ``never``, until the
segment rolls) and segments being read stay open above it.

Thrashing. An LRU misses on every use when the files in use cycle through
more than the cap (events spread round robin over more partitions than
``max_open``: the least recently used file is always the next one wanted),
so every append or read reopens a file and closes another. The cache counts
uses (of another file than the last one used) and misses over windows of
:data:`_WINDOW` uses; when more than half missed while the cap closed files
(evictions above a quarter of the uses: first opens alone are not
thrashing) it turns *scan resistant*:
a file it opens then is *transient*, and :meth:`trim` closes idle transient
files (oldest first) before any other, so the files open before stay open
and their uses hit (in a cycle, the file used last is wanted last). One
open in :data:`_LRU_EVERY` still joins the LRU as usual, so a new working
set that fits the cap displaces the old one; once fewer than a quarter of
the uses of a window miss, the cache is an LRU again. Each switch is logged
once by the owner's next :meth:`trim` (``segment_files_thrashing``, a
warning; ``segment_files_thrashing_ended``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from headwater._errors import ConfigError
from headwater._logging import get_logger

if TYPE_CHECKING:
    from headwater.journal._log import Log, _Segment

__all__ = [
    "DEFAULT_MAX_OPEN_FILES",
    "FD_RESERVE",
    "QUIET_FIT_OPEN_FILES",
    "FileCache",
    "fit_open_files",
]

DEFAULT_MAX_OPEN_FILES = 16384
"""The default cap on segment files a broker keeps open (see :class:`FileCache`).

Above the partitions a broker writes to, an LRU cap thrashes: events spread
round-robin over 10,000 partitions under a cap of 4,096 (this default until
2026-12-02) reopened a segment file on every append (every use missed: the
least recently used file is always the next one wanted), 64 instead of 44 us
of server CPU per event. The default fits up to 16,384 partitions' active
segments; where ``RLIMIT_NOFILE`` cannot be raised that far it shrinks to fit
(see :func:`fit_open_files`)."""

QUIET_FIT_OPEN_FILES = 4096
"""A default cap shrunk to fit ``RLIMIT_NOFILE`` but still at least this
large is logged at info (``fd_limit_fitted``), a smaller one at warning
(``fd_limit_low``)."""


_WINDOW = 4096
"""Uses (hits and misses) per window of the thrash detector (see the module docstring)."""

_LRU_EVERY = 10
"""While scan resistant, one open in this many is not transient (joins the LRU)."""

_TRIM_SKIPS = 64
"""Segments in use one :meth:`FileCache.trim` steps over at most (it moves
them to the recent end, so the next call goes on from where this one stopped)."""


class FileCache:
    """Open segment files shared by many logs, at most ``max_open`` idle ones.

    ``max_open=None`` means no cap (a log opened on its own gets such a
    cache). :meth:`trim` belongs to the thread that owns the logs.
    """

    def __init__(self, max_open: int | None = None) -> None:
        if max_open is not None and (
            isinstance(max_open, bool) or not isinstance(max_open, int) or max_open < 1
        ):
            raise ConfigError(f"max_open_files={max_open!r}; give an int >= 1")
        self.max_open = max_open
        self.lock = threading.Lock()
        self._open: OrderedDict[_Segment, Log] = OrderedDict()
        # Files opened while scan resistant, oldest first (a subset of _open).
        self._transient: OrderedDict[_Segment, None] = OrderedDict()
        self.opened = 0  # files opened through the cache, for statistics
        self.evicted = 0  # handles closed by trim()
        # The thrash detector (see the module docstring), under the lock.
        self.scan_resistant = False
        self._uses = 0
        self._misses = 0
        self._evicted_before = 0  # evicted when the window began
        self._report: tuple[str, float] | None = None  # for _log_report

    @property
    def open_count(self) -> int:
        """Segment files open now."""
        return len(self._open)

    def register_locked(self, seg: _Segment, log: Log) -> None:
        """Count ``seg``'s (just opened) handle as the most recently used (lock held)."""
        self._open[seg] = log
        self._open.move_to_end(seg)
        self.opened += 1
        if self.scan_resistant and self.opened % _LRU_EVERY:
            self._transient[seg] = None
        self._misses += 1
        self._used()

    def touch_locked(self, seg: _Segment) -> None:
        """Mark ``seg`` as just used (lock held)."""
        if seg in self._open and next(reversed(self._open)) is not seg:
            # (Uses in a row of one file, as a batch's write then its sync,
            # count once: the detector compares files wanted, not calls.)
            self._open.move_to_end(seg)
            self._used()

    def _used(self) -> None:
        self._uses += 1
        if self._uses >= _WINDOW:
            ratio = self._misses / self._uses
            # Misses without evictions are first opens (a broker starting,
            # new partitions), not thrashing.
            evicting = self.evicted - self._evicted_before > self._uses // 4
            if ratio > 0.5 and evicting:
                if not self.scan_resistant:
                    self._report = ("segment_files_thrashing", ratio)
                self.scan_resistant = True
            elif ratio < 0.25 and self.scan_resistant:
                self.scan_resistant = False
                self._transient.clear()  # an LRU again: no file goes first
                self._report = ("segment_files_thrashing_ended", ratio)
            self._uses = self._misses = 0
            self._evicted_before = self.evicted

    def _log_report(self) -> None:
        """Log a change of the thrash detector (owner thread, outside the
        lock: a log line may block on its stream)."""
        report, self._report = self._report, None
        if report is None:
            return
        event, ratio = report
        log = get_logger("headwater.journal")
        if event == "segment_files_thrashing":
            log.warning(
                event,
                max_open_files=self.max_open,
                missed_pct=round(100 * ratio),
                hint="more segment files are in use than --max-open-files keeps open; "
                "raise it (and `ulimit -n`) above the partitions written to",
            )
        else:
            log.info(event, max_open_files=self.max_open, missed_pct=round(100 * ratio))

    def forget_locked(self, seg: _Segment) -> None:
        """``seg``'s handle is being closed by its log (lock held)."""
        self._open.pop(seg, None)
        self._transient.pop(seg, None)

    def statistics(self) -> dict[str, Any]:
        """Files ``open`` now, the cap (``max_open``), files ``opened`` and
        ``evicted`` (closed by :meth:`trim`) since start, and whether the
        cache is ``scan_resistant`` now (thrashing: the cap is below the
        files in use; see the module docstring)."""
        return {
            "open": self.open_count,
            "max_open": self.max_open,
            "opened": self.opened,
            "evicted": self.evicted,
            "scan_resistant": self.scan_resistant,
        }

    def has_room(self) -> bool:
        """Whether one more file fits under the cap."""
        return self.max_open is None or len(self._open) < self.max_open

    def trim(self) -> int:
        """Close idle segment files until at most ``max_open`` are open (or
        none idle is left): transient ones first, then the least recently
        used (see the module docstring); returns how many were closed.
        Owner thread only."""
        if self._report is not None:
            self._log_report()
        cap = self.max_open
        if cap is None or len(self._open) <= cap:
            return 0
        victims: list[tuple[_Segment, Log, int]] = []
        chosen: set[_Segment] = set()
        busy: list[_Segment] = []
        with self.lock:
            excess = len(self._open) - cap
            # Transient files first (opened while thrashing), the oldest
            # first: the earliest opened are the likeliest synced by now.
            # Busy ones stay where they are.
            skipped = 0
            for seg in self._transient:
                if excess <= 0 or skipped >= _TRIM_SKIPS:
                    break
                log = self._open[seg]
                if _in_use(seg, log):
                    skipped += 1
                    continue
                victims.append((seg, log, seg.handle))
                chosen.add(seg)
                excess -= 1
            # From the least recently used on. A segment in use (pinned,
            # being compacted, unsynced) is moved to the recent end: it is in
            # use, and the next trim must not walk past it again. Without
            # that, under ``never`` (every written segment unsynced until it
            # rolls) each trim walked thousands of the same busy segments:
            # 70% of the CPU of a produce spread over 10,000 partitions.
            # At most _TRIM_SKIPS busy ones per call: the next trim goes on.
            for seg, log in self._open.items():
                if excess <= 0 or len(busy) >= _TRIM_SKIPS:
                    break
                if seg in chosen:
                    continue
                if _in_use(seg, log):
                    busy.append(seg)
                    continue
                victims.append((seg, log, seg.handle))
                excess -= 1
            for seg in busy:
                self._open.move_to_end(seg)
            for seg, _log, _handle in victims:
                seg.handle = -1
                del self._open[seg]
                self._transient.pop(seg, None)
            self.evicted += len(victims)
        for _seg, log, handle in victims:
            try:
                log.fs.close(handle)
            except OSError:
                pass
        return len(victims)


def _in_use(seg: _Segment, log: Log) -> bool:
    """Pinned by a reader, being compacted, with unsynced appends, or closed."""
    return bool(seg.pins or seg.busy or log._dirty.get(seg.base) is seg or seg.handle < 0)


FD_RESERVE = 256
"""Descriptors :func:`fit_open_files` leaves for everything but segment files
(state journals, checkpoints being written, the interpreter's own), beside
the connections the caller names."""


def fit_open_files(max_open: int | None, *, connections: int = 0) -> int:
    """The segment-file cap to use under this process's ``RLIMIT_NOFILE``.

    ``max_open`` is the configured cap (``None``: :data:`DEFAULT_MAX_OPEN_FILES`);
    ``connections`` the sockets the caller may hold besides. When the soft
    limit is too low for the cap plus those and :data:`FD_RESERVE`, the soft
    limit is raised toward the hard one (what ``ulimit -n`` would do; logged
    as ``fd_limit_raised``). If the hard limit is too low as well, a cap the
    operator chose raises :class:`~headwater.ConfigError` naming the limit;
    the default cap shrinks to fit, logged as ``fd_limit_fitted`` (info) while
    it stays at least :data:`QUIET_FIT_OPEN_FILES`, else as ``fd_limit_low``
    (warning).
    """
    import resource

    log = get_logger("headwater.journal")
    explicit = max_open is not None
    if max_open is not None:
        FileCache(max_open)  # validates
    want = max_open if max_open is not None else DEFAULT_MAX_OPEN_FILES
    need = want + connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft != infinite and need > soft:
        target = need if hard == infinite else min(hard, need)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                pass
            else:
                log.info("fd_limit_raised", rlimit_nofile=target, was=soft, hard=hard)
                soft = target
    if soft == infinite or need <= soft:
        return want
    advice = (
        f"raise RLIMIT_NOFILE to at least {need} (`ulimit -n {need}` before starting, or "
        f"LimitNOFILE={need} in a systemd unit)"
    )
    if explicit:
        raise ConfigError(
            f"max_open_files={want} needs {need} file descriptors (with {connections} "
            f"connections and {FD_RESERVE} for journals), but RLIMIT_NOFILE allows {soft} "
            f"(hard limit {hard}); {advice}, or lower max_open_files"
        )
    room = soft - connections - FD_RESERVE
    cap = room if room >= 64 else max(8, soft // 2)
    if cap >= QUIET_FIT_OPEN_FILES:
        log.info("fd_limit_fitted", rlimit_nofile=soft, hard_limit=hard, max_open_files=cap)
        return cap
    log.warning(
        "fd_limit_low",
        rlimit_nofile=soft,
        hard_limit=hard,
        max_open_files=cap,
        wanted=want,
        advice=f"segment files beyond {cap} are closed and reopened as partitions are used; "
        + advice,
    )
    return cap
