"""Plain counters and fixed-bucket histograms (no Trio, no metrics library).

The broker and the journal count what they do with these; the HTTP front end
(:mod:`headwater.web`) reads them at scrape time and renders them for
Prometheus. Observing is a bisect and two additions, cheap enough for the
per-request path (the per-event path is never touched: counts come from
batch headers).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["LATENCY_BUCKETS", "SIZE_BUCKETS", "Histogram"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds, in seconds, of request and fsync latency histograms."""

SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Upper bounds of count histograms (appends per group-commit fsync)."""


class Histogram:
    """Counts of observations per bucket, their sum and their number.

    ``counts[i]`` counts observations ``<= bounds[i]`` and above the bucket
    before (not cumulative); ``counts[-1]`` those above every bound.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, ending with ``inf``."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
