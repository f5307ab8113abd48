"""Transactional produce throughput and commit latency, embedded broker on
disk (durability ``always``): the same events sent by a plain idempotent
producer and by a transactional one in transactions of 100 and 1,000
events. Figures: events/s per case, the ratio to the plain run, and the
commit latency (leaving ``transaction()``: flush of the last batches, then
phase one of the commit, the decision made durable; the markers follow)
p50/p99. The cases run alternated and each figure is the median round.
First, the commit path's sequential fsyncs measured on virtual time (every
fsync 1 ms, nothing else): free of the shared machine's load."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import trio
import trio.testing

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


async def _critical_path(work_ms: float) -> tuple[float, float]:
    """Virtual ms per transaction and per commit when every fsync takes
    1 ms and nothing else takes time (MockClock, simulated files): the
    sequential fsyncs of the commit path, free of the machine's load."""
    from headwater.journal import SimulatedFileSystem
    from headwater.journal._async import AsyncLog

    real_run = AsyncLog._run

    async def slow_fsync(self: AsyncLog, work: Any) -> None:
        await trio.sleep(0.001)
        await real_run(self, work)

    AsyncLog._run = slow_fsync  # type: ignore[method-assign]
    try:
        async with (
            open_broker("/data", fs=SimulatedFileSystem()) as broker,
            broker.connect() as client,
        ):
            await client.create_topic("out", partitions=4)
            async with client.producer(transactional_id="w", linger=0.002) as producer:
                await producer.partitions_of("out")
                began = trio.current_time()
                commit = 0.0
                for _ in range(10):
                    async with producer.transaction():
                        for i in range(100):
                            producer.send_nowait("out", i)
                        await trio.sleep(work_ms / 1000)
                        left = trio.current_time()
                    commit += trio.current_time() - left
                return (trio.current_time() - began) * 100, commit * 100
    finally:
        AsyncLog._run = real_run  # type: ignore[method-assign]


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the figures (see the module docs). The cases run alternated,
    ``rounds`` times each, and each figure is the median round (so a load
    spike on a shared machine moves one round, not the ratio); latencies
    are pooled over the rounds."""
    for work_ms in (0.0, 5.0):
        per_txn, commit = trio.run(
            _critical_path, work_ms, clock=trio.testing.MockClock(autojump_threshold=0)
        )
        case = f"1 ms fsyncs (virtual), {work_ms:g} ms of work per transaction"
        yield {
            "bench": "txn",
            "case": case,
            "metric": "transaction_ms",
            "value": round(per_txn, 3),
            "unit": "ms",
        }
        yield {
            "bench": "txn",
            "case": case,
            "metric": "commit_ms",
            "value": round(commit, 3),
            "unit": "ms",
        }
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
