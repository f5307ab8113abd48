"""Run the shared peer benchmark (``peers.py``) keeping every latency sample.

``python _peer_samples.py BENCH_DIR [peers.py arguments...]`` runs
``peers.py``'s own ``main`` unchanged, except that each latency run's JSON
line also carries ``samples_ns``: the receive - send times (ns) its
percentiles were computed from. :mod:`headwater.bench._peers` pools them
over the rounds, so a p99 stands on every round's samples (a p99 of one
2,000-event round rests on its 20 slowest events and swung 4x between runs).

This file is run by path, under the peers' virtualenv as well as under
Headwater's: it imports nothing from Headwater, and nothing but the shared
benchmark's own modules (found in ``BENCH_DIR``).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

SAMPLES_KEY = "samples_ns"
"""The JSON field of a latency run's line that holds its samples (ns)."""


def keep_samples(peers: Any) -> None:
    """Make ``peers.percentiles_us`` add the samples it was given to its
    answer (``run_latency`` looks it up in its module at each call, and its
    answer becomes the run's JSON line)."""
    original: Callable[[list[int]], dict[str, Any]] = peers.percentiles_us

    def percentiles_with_samples(samples_ns: list[int]) -> dict[str, Any]:
        out = dict(original(samples_ns))
        out[SAMPLES_KEY] = [int(s) for s in samples_ns]
        return out

    peers.percentiles_us = percentiles_with_samples


def _term(signum: int, _frame: FrameType | None) -> None:
    # As peers.py's own entry point: let context managers stop the servers.
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    """Import ``peers`` from ``argv[0]`` and run its ``main(argv[1:])``."""
    if not argv:
        raise SystemExit("usage: _peer_samples.py BENCH_DIR [peers.py arguments...]")
    bench_dir = os.path.abspath(argv[0])
    # On sys.path for this process and, through multiprocessing's spawn
    # (which copies sys.path), for the latency producer and consumer.
    sys.path.insert(0, bench_dir)
    peers = importlib.import_module("peers")
    keep_samples(peers)
    signal.signal(signal.SIGTERM, _term)
    return int(peers.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
