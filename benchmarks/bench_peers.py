"""Headwater beside NATS JetStream and Redis Streams on this machine, in one run.

The same workload against Headwater over TCP and embedded (durability
``always`` and ``interval``), NATS JetStream (file store; ``sync_interval:
always`` and default) and Redis Streams (AOF; ``appendfsync always`` and
``everysec``): produce N events of 100 B and 1 KiB from one client, consume
them all back from the start with one consumer, end-to-end latency at a
steady 1,000 events/s; three interleaved rounds, medians with their spread
(latency: the percentiles of all rounds' samples pooled);
plus ``redis-benchmark`` (Redis's C client, fsync always). Every
measurement goes through the shared loop in ``../shared/bench/peers.py``
(Headwater through :class:`headwater.bench.HeadwaterDriver`); see
:mod:`headwater.bench` for how. The embedded-vs-journal ratio is
``bench_broker``'s, run here in the same invocation.

Ratios (medians of per-round ratios; latency: of pooled percentiles): ``ratio_vs_best_peer`` for
``produce/100B/always``, ``produce/1KiB/always``, ``consume/100B``,
``consume/1KiB``; ``ratio_p99_vs_best_peer`` for ``latency/always`` (below
1 is better); ``ratio_vs_redis_c`` for ``produce/100B/always``; the same
with ``/embedded`` for the embedded broker; ``ratio_to_journal``. Writes the
tables to ``docs/benchmarks.md``. Needs ``bash ../shared/bench/setup.sh``
once for the peers (skipped with a message otherwise).
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from headwater.bench import find_bench_dir, machine_facts, run_peers, write_markdown

HERE = pathlib.Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"


def _progress() -> Any:
    start = time.monotonic()

    def report(done: int, total: int, what: str) -> None:
        print(f"[peers {done}/{total} {time.monotonic() - start:5.0f}s] {what}", file=sys.stderr)

    return report


def _journal_rows(quick: bool) -> list[dict[str, Any]]:
    """The embedded-vs-journal figures of ``bench_broker`` (not duplicated here)."""
    import bench_broker

    return [
        dict(row, bench="peers", source="bench_broker", ours="embedded")
        for row in bench_broker.run(quick)
        if row["metric"] == "ratio_to_journal" or row["case"].startswith("journal/")
    ]


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield every figure and ratio, then write ``docs/benchmarks.md``."""
    machine = machine_facts(find_bench_dir())  # before the run: the load of other work
    rows = run_peers(quick, _progress())
    yield from rows
    journal = _journal_rows(quick)
    yield from journal
    if any(r["metric"] != "skipped" for r in rows):
        command = "python benchmarks/run.py peers" + (" --quick" if quick else "")
        write_markdown(DOC, rows + journal, machine, command)
