"""Windows by event time: their specs and arithmetic (pure; no Trio, no state).

All times are seconds of event time. The **watermark** of a windowed
operator is the largest event time it has seen (pushed further by the wall
clock while idle when the window has ``wall_clock=True``).

* ``tumbling(size, grace=)``: windows ``[k*size, (k+1)*size)``.
* ``hopping(size, advance, grace=)``: windows ``[k*advance, k*advance+size)``;
  an event is in ``size/advance`` of them.
* ``sliding(size, grace=)``: one window ``[t-size, t]`` per distinct event
  time ``t``, holding every event within it (Kafka's sliding windows).
* ``session(gap, grace=)``: events of a key less than ``gap`` apart form a
  session ``[first, last]``; an event that bridges two sessions merges them.

Rules, the same for every kind:

* A window **closes** (its ``.final()`` result is emitted, its state dropped)
  once the watermark reaches ``end + grace`` (tumbling, hopping) or passes
  ``end + grace`` (sliding) / ``end + gap + grace`` (session), whose ends are
  included in the window.
* An event is **late** when its window has closed (tumbling, hopping: every
  window holding it; sliding: its own window; session: a session of it
  alone); it goes to the window's late topic and counts in no window.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs

from headwater._errors import PipelineError

__all__ = [
    "Hopping",
    "Session",
    "Sliding",
    "Tumbling",
    "Windows",
    "hopping",
    "session",
    "sliding",
    "tumbling",
]


def _positive(what: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipelineError(f"{what}: {name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise PipelineError(f"{what}: {name} must be a finite number of seconds > 0, not {value!r}")
    return float(value)


def _grace(what: str, value: object) -> float:
    if value is None:
        raise PipelineError(
            f"{what}: give an explicit grace= (seconds an event may arrive late and "
            "still count; grace=0 for none)"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipelineError(f"{what}: grace must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise PipelineError(f"{what}: grace must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


def _index(t: float, step: float) -> int:
    """The k with ``k*step <= t < (k+1)*step`` as floats compute them."""
    k = math.floor(t / step)
    if k * step > t:
        k -= 1
    elif (k + 1) * step <= t:
        k += 1
    return k


@attrs.frozen
class Tumbling:
    """Fixed, non-overlapping windows of ``size`` seconds (see :func:`tumbling`)."""

    size: float
    grace: float
    wall_clock: bool = False
    kind: Literal["tumbling"] = "tumbling"

    def windows_for(self, t: float) -> list[tuple[float, float]]:
        """The one window ``[start, end)`` holding event time ``t``."""
        k = _index(t, self.size)
        return [(k * self.size, (k + 1) * self.size)]

    def close_time(self, end: float) -> float:
        """When (in watermark time) a window ending at ``end`` closes."""
        return end + self.grace


@attrs.frozen
class Hopping:
    """Overlapping windows of ``size`` seconds starting every ``advance``
    seconds (see :func:`hopping`)."""

    size: float
    advance: float
    grace: float
    wall_clock: bool = False
    kind: Literal["hopping"] = "hopping"

    def windows_for(self, t: float) -> list[tuple[float, float]]:
        """Every window ``[start, end)`` holding event time ``t``, oldest first."""
        last = _index(t, self.advance)
        count = round(self.size / self.advance)
        return [
            (k * self.advance, (k + count) * self.advance)
            for k in range(last - count + 1, last + 1)
        ]

    def close_time(self, end: float) -> float:
        """When (in watermark time) a window ending at ``end`` closes."""
        return end + self.grace


@attrs.frozen
class Sliding:
    """One window ``[t - size, t]`` per distinct event time (see :func:`sliding`)."""

    size: float
    grace: float
    wall_clock: bool = False
    kind: Literal["sliding"] = "sliding"

    def close_time(self, end: float) -> float:
        """The watermark must pass this for a window ending at ``end`` to close."""
        return end + self.grace


@attrs.frozen
class Session:
    """Sessions of events less than ``gap`` seconds apart (see :func:`session`)."""

    gap: float
    grace: float
    wall_clock: bool = False
    kind: Literal["session"] = "session"

    def close_time(self, end: float) -> float:
        """The watermark must pass this for a session ending at ``end`` to close."""
        return end + self.gap + self.grace


Windows = Tumbling | Hopping | Sliding | Session


def tumbling(size: float, *, grace: float | None = None, wall_clock: bool = False) -> Tumbling:
    """Tumbling windows of ``size`` seconds. ``grace`` (required; 0 for none)
    is how late an event may be and still count. ``wall_clock=True`` also
    closes windows of an idle partition as wall time passes. A bad value
    raises :class:`~headwater.PipelineError`."""
    what = f"tumbling(size={size!r})"
    return Tumbling(_positive(what, "size", size), _grace(what, grace), bool(wall_clock))


def hopping(
    size: float, advance: float, *, grace: float | None = None, wall_clock: bool = False
) -> Hopping:
    """Hopping windows of ``size`` seconds every ``advance`` seconds
    (``advance`` <= ``size``; ``size`` a whole multiple of ``advance``).
    ``grace`` and ``wall_clock`` as for :func:`tumbling`."""
    what = f"hopping(size={size!r}, advance={advance!r})"
    s = _positive(what, "size", size)
    a = _positive(what, "advance", advance)
    if a > s:
        raise PipelineError(f"{what}: advance must be <= size (use tumbling for advance == size)")
    ratio = s / a
    if abs(ratio - round(ratio)) > 1e-9:
        raise PipelineError(f"{what}: size must be a whole multiple of advance")
    return Hopping(s, a, _grace(what, grace), bool(wall_clock))


def sliding(size: float, *, grace: float | None = None, wall_clock: bool = False) -> Sliding:
    """Sliding windows: for each distinct event time ``t`` of a key, the
    window ``[t - size, t]`` of all its events in it. ``grace`` and
    ``wall_clock`` as for :func:`tumbling`."""
    what = f"sliding(size={size!r})"
    return Sliding(_positive(what, "size", size), _grace(what, grace), bool(wall_clock))


def session(gap: float, *, grace: float | None = None, wall_clock: bool = False) -> Session:
    """Session windows: a key's events less than ``gap`` seconds apart
    (``<= gap``) form one session; an event between two sessions merges them
    (the aggregate needs a ``merge``). ``grace`` and ``wall_clock`` as for
    :func:`tumbling`."""
    what = f"session(gap={gap!r})"
    return Session(_positive(what, "gap", gap), _grace(what, grace), bool(wall_clock))
