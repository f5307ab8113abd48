"""Transactional produce throughput and commit latency, embedded broker on
disk (durability ``always``): the same events sent by a plain idempotent
producer and by a transactional one in transactions of 100 and 1,000
events. Figures: events/s per case, the ratio to the plain run, and the
commit latency (leaving ``transaction()``: flush of the last batches, then
phase one of the commit, the decision made durable; the markers follow)
p50/p99. The cases run alternated and each figure is the median round."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import trio

from headwater.broker import open_broker


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _case(events: int, per_txn: int | None) -> tuple[float, list[float]]:
    """Seconds to send ``events`` (in transactions of ``per_txn``, or none),
    and each commit's latency."""
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as data:
        async with open_broker(data) as broker, broker.connect() as client:
            await client.create_topic("out", partitions=4)
            options: dict[str, Any] = {"serializer": "bytes", "linger": 0.002}
            if per_txn is not None:
                options["transactional_id"] = "bench"
            async with client.producer(**options) as producer:
                await producer.partitions_of("out")
                value = b"x" * 100
                start = time.perf_counter()
                if per_txn is None:
                    for _ in range(events):
                        producer.send_nowait("out", value)
                    await producer.flush()
                else:
                    for _ in range(events // per_txn):
                        txn = producer.transaction()
                        await txn.__aenter__()
                        for _ in range(per_txn):
                            producer.send_nowait("out", value)
                        t0 = time.perf_counter()
                        await txn.__aexit__(None, None, None)
                        latencies.append(time.perf_counter() - t0)
                elapsed = time.perf_counter() - start
    return elapsed, latencies


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the figures (see the module docs). The cases run alternated,
    ``rounds`` times each, and each figure is the median round (so a load
    spike on a shared machine moves one round, not the ratio); latencies
    are pooled over the rounds."""
    events = 20_000 if quick else 200_000
    rounds = 3 if quick else 5
    cases: tuple[int | None, ...] = (None, 100, 1000)
    seconds: dict[int | None, list[float]] = {c: [] for c in cases}
    pooled: dict[int | None, list[float]] = {c: [] for c in cases}
    for _ in range(rounds):
        for per_txn in cases:
            elapsed, latencies = trio.run(_case, events, per_txn)
            seconds[per_txn].append(elapsed)
            pooled[per_txn].extend(latencies)
    base = statistics.median(seconds[None])
    yield {
        "bench": "txn",
        "case": "no transactions",
        "metric": "throughput",
        "value": round(events / base),
        "unit": "events/s",
    }
    for per_txn in (100, 1000):
        elapsed = statistics.median(seconds[per_txn])
        latencies = pooled[per_txn]
        case = f"{per_txn} events per transaction"
        yield {
            "bench": "txn",
            "case": case,
            "metric": "throughput",
            "value": round(events / elapsed),
            "unit": "events/s",
        }
        yield {
            "bench": "txn",
            "case": case,
            "metric": "ratio_to_no_transactions",
            "value": round(base / elapsed, 3),
            "unit": "x",
        }
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            yield {
                "bench": "txn",
                "case": case,
                "metric": f"commit_latency_{name}",
                "value": round(_quantile(latencies, q) * 1000, 3),
                "unit": "ms",
            }
        yield {
            "bench": "txn",
            "case": case,
            "metric": "commit_latency_mean",
            "value": round(statistics.fmean(latencies) * 1000, 3),
            "unit": "ms",
        }
