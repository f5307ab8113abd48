"""Journal append throughput on the real disk, against the disk's raw limit.

For 1 KiB events in batches of 1, 100 and 1,000, under each durability policy,
it measures MB/s and records/s of ``AsyncLog.append`` (one writer), and beside
it the raw limit of the same disk in the same run: plain ``os.write`` of the
same bytes with an fsync at the same points (after each batch for ``always``).

Two goals are printed as ratios:

* ``ratio_to_raw`` (case ``always/batch=1000``): log vs raw, goal >= 0.8;
* ``ratio_group_commit`` (case ``always/batch=1/writers=16``): 16 concurrent
  writers of single-event records with group commit vs one fsync per append,
  goal >= 5.

Beside each goal, the same workload with ``writer_thread=False`` (the
journal before the writer thread: writes on the event loop, each large
fsync through ``trio.to_thread``): ``inline_vs_raw`` and
``inline_group_commit``, so the lever shows in the same run.

``loop_cpu_us_per_append`` (both goal cases) is the event loop thread's
CPU time per append (``time.thread_time``: the loop's own work, not the
writer thread's), what bounds group commit once fsyncs are shared: with
16 writers one cycle costs about 16 appends' loop CPU plus one fsync.
It is steadier than the wall-clock ratios on a loaded machine.

The files live in a temporary directory beside this repository (same file
system as the data directory would be). Runs are interleaved; medians reported.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import trio

from headwater.journal import LogConfig, encode_record, open_log

HERE = pathlib.Path(__file__).resolve().parent
EVENT = 1024


def _records(batch: int, n_records: int) -> list[bytes]:
    payload = os.urandom(EVENT * batch)
    return [encode_record(payload, count=batch) for _ in range(n_records)]


def _raw(path: str, records: list[bytes], fsync: bool) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = time.perf_counter()
        for r in records:
            os.write(fd, r)
            if fsync:
                os.fsync(fd)
        if not fsync:
            os.fsync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


async def _log(
    path: str,
    records: list[bytes],
    durability: str,
    writers: int = 1,
    writer_thread: bool | None = None,
    cpu: list[float] | None = None,
) -> float:
    config = LogConfig(durability=durability)  # type: ignore[arg-type]
    async with open_log(path, config=config, writer_thread=writer_thread) as log:
        start = time.perf_counter()
        start_cpu = time.thread_time()

        async def writer(chunk: list[bytes]) -> None:
            for r in chunk:
                await log.append(r)

        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, records[w::writers])
        await log.sync()
        elapsed = time.perf_counter() - start
        if cpu is not None:
            cpu.append((time.thread_time() - start_cpu) / len(records) * 1e6)
        return elapsed


def _fig(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"bench": "journal", "case": case, "metric": metric, "value": value, "unit": unit}


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield throughput figures and the two goal ratios."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rounds = 3 if quick else 5
    mb = 16 if quick else 64  # data per measurement (8 was too few 1 MB records to be steady)
    base = tempfile.mkdtemp(prefix="hw-bench-journal-", dir=HERE.parent)
    try:
        counter = 0

        def fresh() -> str:
            nonlocal counter
            counter += 1
            return os.path.join(base, f"run{counter}")

        for batch in (1, 100, 1000):
            n = max(8, (mb * 1_000_000) // (EVENT * batch))
            if batch == 1:
                n = 300 if quick else 1500  # one fsync each: bounded by fsync latency
            records = _records(batch, n)
            nbytes = sum(len(r) for r in records)
            for durability in ("always", "interval", "never"):
                log_t: list[float] = []
                raw_t: list[float] = []
                inline_t: list[float] = []
                cpu_t: list[float] = []
                goal = (durability, batch) == ("always", 1000)
                for _ in range(rounds):
                    raw_t.append(_raw(fresh(), records, fsync=durability == "always"))
                    log_t.append(trio.run(_log, fresh(), records, durability, 1, None, cpu_t))
                    if goal:  # the previous path, for comparison in the same run
                        inline_t.append(trio.run(_log, fresh(), records, durability, 1, False))
                case = f"{durability}/batch={batch}"
                lt, rt = statistics.median(log_t), statistics.median(raw_t)
                yield _fig(case, "append_mb_per_s", nbytes / lt / 1e6, "MB/s")
                yield _fig(case, "append_events_per_s", n * batch / lt, "events/s")
                yield _fig(case, "raw_mb_per_s", nbytes / rt / 1e6, "MB/s")
                ratios = [r / lg for r, lg in zip(raw_t, log_t, strict=True)]
                metric = "ratio_to_raw" if goal else "log_vs_raw"
                yield _fig(case, metric, statistics.median(ratios), "x")
                if goal:
                    ratios = [r / lg for r, lg in zip(raw_t, inline_t, strict=True)]
                    yield _fig(case, "inline_vs_raw", statistics.median(ratios), "x")
                    yield _fig(case, "loop_cpu_us_per_append", statistics.median(cpu_t), "us")

        n = 1600 if quick else 4000  # 100 (250) cycles of 16: 400 (25) swung 3.0-5.0
        records = _records(1, n)
        grouped: list[float] = []
        single: list[float] = []
        inline: list[float] = []
        cpu: list[float] = []
        for _ in range(rounds):
            single.append(_raw(fresh(), records, fsync=True))
            grouped.append(trio.run(_log, fresh(), records, "always", 16, None, cpu))
            inline.append(trio.run(_log, fresh(), records, "always", 16, False))
        case = "always/batch=1/writers=16"
        yield _fig(case, "append_events_per_s", n / statistics.median(grouped), "events/s")
        yield _fig(case, "fsync_per_append_events_per_s", n / statistics.median(single), "events/s")
        ratios = [s / g for s, g in zip(single, grouped, strict=True)]
        yield _fig(case, "ratio_group_commit", statistics.median(ratios), "x")
        ratios = [s / g for s, g in zip(single, inline, strict=True)]
        yield _fig(case, "inline_group_commit", statistics.median(ratios), "x")
        yield _fig(case, "loop_cpu_us_per_append", statistics.median(cpu), "us")
    finally:
        shutil.rmtree(base, ignore_errors=True)
