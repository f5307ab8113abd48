"""The blocked-loop watchdog: which actor held the Trio loop, and for how long.

Theory of operation
-------------------
Trio runs every task on one thread; a handler that calls ``time.sleep(1)``
or a blocking library freezes every actor for that second. The watchdog
finds out without slowing the loop down (no per-step instrument: that cost
about a quarter of the ``tell`` rate when measured):

1. A thread of its own calls :meth:`LoopWatchdog.poll` every
   ``poll_interval`` seconds (default half the threshold). When no *probe*
   is pending, ``poll`` posts one to the loop with
   ``TrioToken.run_sync_soon`` and notes the time.
2. The loop runs the probe as soon as it gets control back; a free loop does
   so within microseconds. The probe computes how long it waited; at or
   above the threshold it logs ``loop_blocked`` (warning) and counts it.
3. While a probe has waited longer than the threshold, the next ``poll``
   takes one *sample* of the loop thread's stack (``sys._current_frames``):
   the frames of the code holding the loop. The actor whose handler is on
   that stack (its ``_run_actor`` frame is registered by the runtime) names
   the culprit; the stack is logged with it.

The measured duration is how long the probe waited, so it is at most one
poll interval shorter than the block: a block of ``threshold +
poll_interval`` or more is always reported, shorter ones may not be. Each
poll costs a thread wake-up and two GIL hand-offs (about 7 ms of CPU per
second at the default 0.05 s polls, 15 ms at 0.025 s, measured idle), so
the interval trades precision for overhead. A late probe whose sample finds
the loop idle in Trio's I/O wait is not reported: the OS did not run the
process (a loaded machine), no handler held the loop. The thread never
touches Trio state other than through ``run_sync_soon``. Under
``MockClock`` the loop is not blocked in real time; tests make a watchdog
with ``thread=False`` and ``clock=`` the mock clock's ``current_time`` and
call :meth:`poll` by hand (see ``tests/actors/test_watchdog.py``).

The answer to a ``loop_blocked`` warning is to move the blocking call off
the loop: :class:`~headwater.actors.BlockingActor` runs a handler in a
worker thread from a bounded pool.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

import attrs
import trio

from headwater._errors import ConfigError
from headwater._logging import get_logger

__all__ = ["DEFAULT_WATCHDOG_THRESHOLD", "LoopWatchdog", "WatchdogStatistics"]

DEFAULT_WATCHDOG_THRESHOLD = 0.1
"""Seconds a single step may hold the loop before ``loop_blocked`` is logged."""

_log = get_logger("headwater.actors.watchdog")


@attrs.frozen
class WatchdogStatistics:
    """A snapshot of a :class:`LoopWatchdog`: ``blocked`` is how many times
    the loop was held past ``threshold`` seconds (the metric counter),
    ``longest`` the longest hold seen, in seconds."""

    threshold: float
    blocked: int
    longest: float


class LoopWatchdog:
    """Watches one Trio loop for steps longer than ``threshold`` seconds.

    ``open_actor_system(watchdog=...)`` takes a threshold (default 0.1 s),
    ``None`` to switch it off, or an instance of this class. ``clock`` is the
    time source (default ``time.monotonic``); ``poll_interval`` how often the
    thread looks (default ``threshold / 2``); ``thread=False`` leaves the
    polling to the caller (tests under ``MockClock``). See the module
    docstring for how it works.
    """

    def __init__(
        self,
        threshold: float = DEFAULT_WATCHDOG_THRESHOLD,
        *,
        clock: Callable[[], float] | None = None,
        poll_interval: float | None = None,
        thread: bool = True,
    ) -> None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0 < threshold < float("inf")
        ):
            raise ConfigError(
                f"watchdog threshold={threshold!r} is invalid; give seconds > 0, or "
                "watchdog=None to switch the watchdog off"
            )
        self.threshold = float(threshold)
        if poll_interval is None:
            poll_interval = self.threshold / 2
        if (
            isinstance(poll_interval, bool)
            or not isinstance(poll_interval, int | float)
            or not 0 < poll_interval <= self.threshold
        ):
            raise ConfigError(
                f"watchdog poll_interval={poll_interval!r} is invalid; give seconds > 0 "
                f"and at most the threshold ({self.threshold})"
            )
        self.poll_interval = float(poll_interval)
        self._clock = clock if clock is not None else time.monotonic
        self._use_thread = thread
        self._lock = threading.Lock()
        self._probe_sent: float | None = None
        self._sample: tuple[str | None, str] | None = None
        self._sampled = False
        self._idle = False
        self._blocked = 0
        self._longest = 0.0
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop_thread: int | None = None
        self._frames: dict[FrameType, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<LoopWatchdog threshold={self.threshold}s blocked={self._blocked}>"

    def statistics(self) -> WatchdogStatistics:
        """The counters so far (for metrics)."""
        with self._lock:
            return WatchdogStatistics(self.threshold, self._blocked, self._longest)

    # -- lifecycle (the actor system calls these) --------------------------------

    def _start(self, frames: dict[FrameType, str]) -> None:
        """Attach to the running loop; start the polling thread if asked."""
        if self._token is not None:
            raise ConfigError("this LoopWatchdog already watches a system; make one per system")
        self._token = trio.lowlevel.current_trio_token()
        self._loop_thread = threading.get_ident()
        self._frames = frames
        if self._use_thread:
            self._thread = threading.Thread(
                target=self._run, name="headwater-loop-watchdog", daemon=True
            )
            self._thread.start()

    def _close(self) -> None:
        """Stop the polling thread (idempotent; returns within one poll)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except trio.RunFinishedError:
                return

    # -- the detector -------------------------------------------------------------

    def poll(self) -> None:
        """One look at the loop: post a probe if none is pending, or sample
        the loop's stack if the pending one has waited past the threshold.
        Called by the watchdog's thread; safe from any thread."""
        token = self._token
        if token is None:
            return
        now = self._clock()
        post = False
        with self._lock:
            if self._probe_sent is None:
                self._probe_sent = now
                post = True
            elif not self._sampled and now - self._probe_sent >= self.threshold:
                self._sampled = True
                self._sample = self._take_sample()
                self._idle = self._sample is None
        if post:
            token.run_sync_soon(self._probe, now)

    def _take_sample(self) -> tuple[str | None, str] | None:
        """The actor path (if an actor's handler is running) and the stack of
        the loop thread, innermost frame last; ``None`` when the loop thread
        is idle in Trio's I/O wait (the probe is late because the OS did not
        run the process, not because a handler holds the loop)."""
        assert self._loop_thread is not None
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        if (
            frame is not None
            and frame.f_code.co_name == "get_events"
            and ("trio" in frame.f_code.co_filename)
        ):
            return None
        chain: list[FrameType] = []
        path: str | None = None
        while frame is not None:
            found = self._frames.get(frame)
            if found is not None:
                path = found
                break
            if frame.f_code.co_filename != __file__:  # polled on the loop (tests)
                chain.append(frame)
            frame = frame.f_back
        if path is None:
            chain = chain[:20]  # no actor on the stack: the innermost frames
        chain.reverse()
        summary = traceback.StackSummary.extract(
            ((f, f.f_lineno) for f in chain), capture_locals=False
        )
        return path, "".join(summary.format()).rstrip()

    def _probe(self, sent: float) -> None:
        """Runs on the loop: how long did the probe wait?"""
        now = self._clock()
        with self._lock:
            self._probe_sent = None
            sample, self._sample = self._sample, None
            idle, self._idle, self._sampled = self._idle, False, False
            waited = now - sent
            blocked = waited >= self.threshold and not idle
            if blocked:
                self._blocked += 1
                self._longest = max(self._longest, waited)
        if blocked:
            path, stack = sample if sample is not None else (None, "")
            fields: dict[str, Any] = {
                "duration": round(waited, 6),
                "threshold": self.threshold,
                "actor": path,
            }
            if stack:
                fields["stack"] = stack
            _log.warning("loop_blocked", **fields)
