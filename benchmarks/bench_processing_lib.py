"""The processing library alone (no broker, no I/O): events/s of two jobs.

* ``map_filter``: ``stream -> map -> filter (keeps half) -> to``: stateless.
* ``windowed_count``: ``stream (1,000 keys) -> window(tumbling 60 s, grace 5)
  -> count -> final -> to``, event times 1 ms apart (so windows close as it runs).

Each feeds ``EVENTS`` 100-byte events (1,000,000; ``--quick``: 100,000) to the
topology's task as the runner would (``process`` each record, ``take_output``
every 1,000), timing only that loop; ``outputs`` counts sink and changelog
records. ``us_per_event`` is the pipeline's cost per event, less that of the
same loop calling an empty ``async def`` per record. The broker side
(``headwater run`` against a server, against a plain consume) is
``bench_processing``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import trio

from headwater.processing import InRecord, Job, Task, TaskId, tumbling

BATCH = 1000


def records(count: int, topic: str = "in") -> list[InRecord]:
    """``count`` records: 8-byte keys over 1,000 values, 100-byte values."""
    value = bytes(range(100))
    keys = [f"key{i:05d}".encode() for i in range(1000)]
    return [
        InRecord(topic, 0, i, keys[i % 1000], value, {}, 1_764_000_000.0 + i / 1000)
        for i in range(count)
    ]


def map_filter_job() -> Job:
    """The stateless job."""
    job = Job("bench-map-filter")
    (
        job.stream("in")
        .map(lambda v: v[:50])
        .filter(lambda k, _v: k[-1] % 2 == 0, with_key=True)
        .to("out")
    )
    return job


def windowed_job() -> Job:
    """The keyed windowed count."""
    job = Job("bench-windowed")
    job.stream("in").window(tumbling(60, grace=5), name="w").count().final().to("out")
    return job


async def drive(task: Task, recs: list[InRecord]) -> tuple[float, int]:
    """Seconds to process ``recs`` and the number of output records."""
    out = 0
    start = time.perf_counter()
    for i in range(0, len(recs), BATCH):
        for record in recs[i : i + BATCH]:
            await task.process(record)
        out += len(task.take_output())
    return time.perf_counter() - start, out


async def bare(recs: list[InRecord]) -> float:
    """Seconds for the same loop with an empty coroutine per record."""

    async def nothing(_record: InRecord) -> None:
        return None

    start = time.perf_counter()
    for i in range(0, len(recs), BATCH):
        for record in recs[i : i + BATCH]:
            await nothing(record)
    return time.perf_counter() - start


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the figures (see the module docs)."""
    count = 100_000 if quick else 1_000_000
    recs = records(count)
    results: dict[str, Any] = {}

    async def main() -> None:
        results["bare"] = await bare(recs)
        for name, job in (("map_filter", map_filter_job()), ("windowed_count", windowed_job())):
            task = job.topology({"in": 1}).task(TaskId(0, 0))
            results[name] = await drive(task, recs)

    trio.run(main)
    bare_rate = count / results["bare"]
    for name in ("map_filter", "windowed_count"):
        seconds, outputs = results[name]
        rate = count / seconds
        yield {
            "bench": "processing_lib",
            "case": name,
            "metric": "events_per_s",
            "value": round(rate),
            "unit": "ev/s",
            "events": count,
            "outputs": outputs,
        }
        yield {
            "bench": "processing_lib",
            "case": name,
            "metric": "us_per_event",
            "value": round(1e6 / rate - 1e6 / bare_rate, 3),
            "unit": "us",
        }
