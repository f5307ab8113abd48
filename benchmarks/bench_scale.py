"""Cost as the partition count grows: 100, 1,000 and 10,000 partitions.

Each size runs against its own real ``headwater serve`` process (durability
``always``, or ``$HEADWATER_SCALE_DURABILITY``; the cap on open segment files
``$HEADWATER_SCALE_MAX_OPEN_FILES`` if set; a fresh data directory),
with the partitions spread over topics of 100 partitions each. Per size:

* ``rss_kib_per_idle_partition``: the server's resident memory with the
  partitions created and idle, minus the same server's before any topic was
  created, divided by the partition count (``created``); the same after a
  kill -9 and recovery, before any client touched them (``recovered``; the
  baseline is the first server's).
* ``open_fds``: the server's open file descriptors with every partition idle
  (``/proc/PID/fd``), after the produce phase and after recovery; and
  ``idle_cpu_percent``, the idle server's CPU use over 2 s.
* ``produce_events_per_s``: 100 B events spread evenly over every partition
  through one TCP producer, in chunks of the same shape at every size: a
  chunk gives each of a topic's 100 partitions ``PER_ROUND`` (10) events and
  waits for all of them (so batches are equally full, one fsync each), the
  chunks walking through every topic in turn. ``ratio_vs_100`` is the figure
  over the 100-partition one of the same run (goal >= 0.8 at 10,000). On a
  shared machine the load drifts between sizes, so each spread chunk is
  interleaved with one on the first topic only (``hot-100``), and
  ``ratio_spread_vs_hot_100`` compares the two on the same server in the
  same minutes: the cost of spreading writes over N partitions instead of
  100, with everything else equal.
* ``server_cpu_us_per_event``: the server's CPU time (all threads) per
  event in the spread and hot-100 chunks, and ``ratio_cpu_hot_100_vs_spread``
  (1 when spreading costs the server nothing more; less noisy than wall time
  on a shared machine). ``refreeze_max_s``: the longest ``gc_refrozen`` pause
  of the loop so far (creation and produce), see ``refreeze_after_changes``.
* ``startup_s`` after a clean stop (SIGTERM) and ``recovery_s`` after
  ``kill -9`` (SIGKILL) of the server: from spawning ``headwater serve`` on
  the same directory until it listens and every topic's description (which
  asks every partition) has answered (goal < 30 s at 10,000).

``--quick`` sends 50,000 spread events per size, at least one pass over
every partition (100,000 at 10,000 partitions), and as many hot ones; the
full run 500,000. On a shared machine the absolute figures move with its
load: read the ratios.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

import headwater
from bench_tcp import HERE, _quiet
from headwater.testing import server_process

SIZES = (100, 1_000, 10_000)
DURABILITY = os.environ.get("HEADWATER_SCALE_DURABILITY", "always")
MAX_OPEN_FILES = os.environ.get("HEADWATER_SCALE_MAX_OPEN_FILES")  # the server's default if unset
_SERVE_ARGS = ("--durability", DURABILITY) + (
    ("--max-open-files", MAX_OPEN_FILES) if MAX_OPEN_FILES else ()
)
PER_TOPIC = 100
PER_ROUND = 10
PAYLOAD = os.urandom(100)


def _fig(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    if DURABILITY != "always":
        case += f"/{DURABILITY}"
    return {"bench": "scale", "case": case, "metric": metric, "value": value, "unit": unit}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settle(proc: Any, seconds: float = 1.0) -> tuple[int, int]:
    """RSS (KiB) and open fds once the server is idle."""
    time.sleep(seconds)
    return proc.rss_kib(), proc.open_fds()


def _idle_cpu(proc: Any, seconds: float = 2.0) -> float:
    """The server's CPU use while idle, in percent of one core."""
    before = _cpu_seconds(proc.pid)
    time.sleep(seconds)
    return 100 * (_cpu_seconds(proc.pid) - before) / seconds


async def _create(url: str, partitions: int) -> None:
    async with headwater.connect(url) as client:
        for t in range(partitions // PER_TOPIC):
            await client.create_topic(f"t{t:03d}", partitions=PER_TOPIC)


async def _describe_all(url: str, partitions: int) -> None:
    async with headwater.connect(url) as client:
        for t in range(partitions // PER_TOPIC):
            await client.describe_topic(f"t{t:03d}")


async def _produce(
    url: str, partitions: int, events: int, pid: int
) -> tuple[float, float, float, float]:
    """Events/s spread over every partition, and over the first 100 only,
    measured interleaved on this server: chunk after chunk, each giving 100
    partitions ``PER_ROUND`` events and waiting for them, the "spread"
    chunks walking through every topic in turn, the "hot" ones always on
    ``t000``. Same batches, same concurrency; only how many partitions the
    writes are spread over differs (so the machine's load drift cancels).
    Also the server's CPU time per event of each kind (microseconds): less
    noisy than wall time on a shared machine."""
    topics = partitions // PER_TOPIC
    chunk = PER_TOPIC * PER_ROUND
    chunks = max(topics, events // chunk)
    spent = {"spread": 0.0, "hot": 0.0}
    cpu = {"spread": 0.0, "hot": 0.0}
    async with (
        headwater.connect(url) as client,
        client.producer(serializer="bytes", linger=0.005) as producer,
    ):
        for t in range(topics):
            await producer.partitions_of(f"t{t:03d}")

        async def one(topic: str, kind: str) -> None:
            began, cpu0 = time.perf_counter(), _cpu_seconds(pid)
            for p in range(PER_TOPIC):
                for _ in range(PER_ROUND):
                    producer.send_nowait(topic, PAYLOAD, partition=p)
            await producer.flush()
            spent[kind] += time.perf_counter() - began
            cpu[kind] += _cpu_seconds(pid) - cpu0

        await one("t000", "hot")  # warm-up: the connection, the producer id
        spent["hot"] = cpu["hot"] = 0.0
        for n in range(chunks):
            await one(f"t{n % topics:03d}", "spread")
            await one("t000", "hot")
    n = chunks * chunk
    return n / spent["spread"], n / spent["hot"], 1e6 * cpu["spread"] / n, 1e6 * cpu["hot"] / n


def _restart(data: Path, log: Path, partitions: int) -> tuple[float, Any]:
    """Spawn a server on ``data``; seconds until every partition answered."""
    began = time.perf_counter()
    manager = server_process(data, *_SERVE_ARGS, log_path=log, start_timeout=300)
    proc = manager.__enter__()
    trio.run(_describe_all, proc.url, partitions)
    return time.perf_counter() - began, (manager, proc)


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield memory, fds, throughput and restart times per partition count."""
    _quiet()
    events = 50_000 if quick else 500_000
    base_dir = tempfile.mkdtemp(prefix="hw-bench-scale-", dir=HERE.parent)
    first_rate: float | None = None
    try:
        for n in SIZES:
            case = f"partitions={n}"
            data = Path(base_dir) / f"data-{n}"
            first = server_process(
                data,
                *_SERVE_ARGS,
                log_path=Path(base_dir) / f"{n}-a.log",
                start_timeout=300,
            )
            with first as proc:
                rss0, _fds0 = _settle(proc, 0.5)
                began = time.perf_counter()
                trio.run(_create, proc.url, n)
                yield _fig(case, "create_s", time.perf_counter() - began, "s")
                rss1, fds1 = _settle(proc)
                per_partition = (rss1 - rss0) / n
                yield _fig(case + "/created", "rss_kib_per_idle_partition", per_partition, "KiB")
                yield _fig(case + "/created", "open_fds", fds1, "fds")
                yield _fig(case + "/created", "idle_cpu_percent", _idle_cpu(proc), "%")
                rate, hot, cpu, cpu_hot = trio.run(_produce, proc.url, n, events, proc.pid)
                yield _fig(case, "produce_events_per_s", rate, "events/s")
                yield _fig(case + "/hot-100", "produce_events_per_s", hot, "events/s")
                yield _fig(case, "ratio_spread_vs_hot_100", rate / hot, "x")
                yield _fig(case, "server_cpu_us_per_event", cpu, "us")
                yield _fig(case + "/hot-100", "server_cpu_us_per_event", cpu_hot, "us")
                yield _fig(case, "ratio_cpu_hot_100_vs_spread", cpu_hot / cpu, "x")
                pauses = [e["seconds"] for e in proc.events() if e.get("event") == "gc_refrozen"]
                yield _fig(case, "refreeze_max_s", max(pauses, default=0.0), "s")
                if first_rate is None:
                    first_rate = rate
                yield _fig(case, "ratio_vs_100", rate / first_rate, "x")
                rss2, fds2 = _settle(proc)
                yield _fig(case + "/after-produce", "rss_kib", rss2, "KiB")
                yield _fig(case + "/after-produce", "open_fds", fds2, "fds")
                proc.stop(signal.SIGTERM, timeout=120)
            seconds, (manager, proc) = _restart(data, Path(base_dir) / f"{n}-b.log", n)
            yield _fig(case, "startup_s", seconds, "s")
            proc.stop(signal.SIGKILL)
            manager.__exit__(None, None, None)
            seconds, (manager, proc) = _restart(data, Path(base_dir) / f"{n}-c.log", n)
            try:
                yield _fig(case, "recovery_s", seconds, "s")
                rss3, fds3 = _settle(proc)
                yield _fig(
                    case + "/recovered", "rss_kib_per_idle_partition", (rss3 - rss0) / n, "KiB"
                )
                yield _fig(case + "/recovered", "open_fds", fds3, "fds")
            finally:
                manager.__exit__(None, None, None)
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
