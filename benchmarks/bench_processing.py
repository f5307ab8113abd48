"""Stream processing throughput through the runner (``headwater run``'s
engine), embedded broker on disk (durability ``always``).

One topic ``in`` (4 partitions) holds N 100-byte events (keyed by one of 1,000
customers). In the same run, on the same events:

* ``plain consume``: a group consumer reading all N events (the baseline);
* ``map-filter``: a stateless job (``map`` then ``filter`` keeping ~90%,
  written to a topic);
* ``windowed count``: a keyed count per customer in 10-second tumbling
  event-time windows with 30 s grace (re-keyed through a repartition topic, a changelog per
  window store, one result per closed window),

each job for ``exactly_once`` (one transaction per batch of up to 1,000
events) and ``at_least_once``. Figures: events/s (input events over the time
from the runner's start until every input partition, repartition topics
included, is committed to its end; ``startup`` is the part until the copy
had joined, made its topics and restored its tasks) and the ratio to the
plain consume.
N = 1,000,000 (``--quick``: 20,000). The baseline is run before and after the
jobs and averaged (the machine is shared).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from typing import Any

import trio

from headwater.broker import open_broker
from headwater.client import Client
from headwater.processing import Job, tumbling
from headwater.processing._runner import RunConfig, open_job_runner

PARTITIONS = 4
CUSTOMERS = 1000


def _value(i: int) -> bytes:
    """A 100-byte event: an event time (seconds) and padding."""
    head = f"{1_700_000_000 + i // 500}|{i % CUSTOMERS:04d}|".encode()
    return head + b"x" * (100 - len(head))


def _map_filter(name: str, processing: str) -> Job:
    job = Job(name, processing=processing)  # type: ignore[arg-type]
    (
        job.stream("in")
        .map(lambda v: v[:40].upper())
        .filter(lambda v: not v.endswith(b"9|XXXXXXXXXXXXXXXXXXXXXXXXX"))
        .to(f"{name}-out")
    )
    return job


def _windowed_count(name: str, processing: str) -> Job:
    job = Job(name, processing=processing)  # type: ignore[arg-type]
    (
        job.stream("in", timestamp=lambda v: float(v[:10]))
        .group_by(lambda v: v[11:15])
        .window(tumbling(10.0, grace=30.0))
        .count()
        .final()
        .to(f"{name}-out")
    )
    return job


async def _produce(client: Client, events: int) -> None:
    await client.create_topic("in", partitions=PARTITIONS)
    async with client.producer(serializer="bytes") as producer:
        await producer.partitions_of("in")
        for i in range(events):
            producer.send_nowait("in", _value(i), key=f"c{i % CUSTOMERS}")
            if i % 10_000 == 9_999:
                await producer.flush()


async def _plain_consume(client: Client, events: int, group: str) -> float:
    start = time.perf_counter()
    got = 0
    async with client.consumer("in", group=group, deserializer="bytes") as consumer:
        while got < events:
            got += len(await consumer.getmany(max_events=5000, timeout=1.0))
        await consumer.commit()
    return time.perf_counter() - start


async def _caught_up(client: Client, group: str) -> bool:
    description = await client.describe_group(group)
    inputs = [p for p in description.partitions if not p.topic.endswith("-out")]
    return bool(inputs) and all(
        p.committed is not None and p.committed >= p.end_offset for p in inputs
    )


async def _job(client: Client, job: Job) -> tuple[float, float]:
    """Seconds until every input is committed, and until the copy was ready
    (joined, topics made, tasks restored: its share of the total)."""
    config = RunConfig(session_timeout=10.0, poll_timeout=0.05)
    start = time.perf_counter()
    async with open_job_runner(job, client, config) as runner:
        await runner.ready.wait()
        ready = time.perf_counter() - start
        while True:
            try:
                if await _caught_up(client, job.name):
                    break
            except Exception:  # the group is not there yet
                pass
            await trio.sleep(0.05)
    return time.perf_counter() - start, ready


async def _all(events: int) -> list[tuple[str, str, float, float]]:
    out: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory() as data:
        async with open_broker(data) as broker, broker.connect() as client:
            await _produce(client, events)
            base = [await _plain_consume(client, events, "plain-1")]
            for kind, make in (("map-filter", _map_filter), ("windowed count", _windowed_count)):
                for processing in ("exactly_once", "at_least_once"):
                    name = f"{kind.replace(' ', '-')}-{processing.replace('_', '-')}"
                    seconds, ready = await _job(client, make(name, processing))
                    out.append((kind, processing, seconds, ready))
            base.append(await _plain_consume(client, events, "plain-2"))
    out.insert(0, ("plain consume", "-", sum(base) / len(base), 0.0))
    return out


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the figures (see the module docs)."""
    events = 20_000 if quick else 1_000_000
    results = trio.run(_all, events)
    base = results[0][2]
    for kind, processing, seconds, ready in results:
        case = kind if processing == "-" else f"{kind} {processing}"
        yield {
            "bench": "processing",
            "case": f"{case} ({events:,} x 100 B)",
            "metric": "throughput",
            "value": round(events / seconds),
            "unit": "events/s",
        }
        if processing != "-":
            yield {
                "bench": "processing",
                "case": f"{case} ({events:,} x 100 B)",
                "metric": "ratio_to_plain_consume",
                "value": round(base / seconds, 3),
                "unit": "x",
            }
            yield {
                "bench": "processing",
                "case": f"{case} ({events:,} x 100 B)",
                "metric": "startup",
                "value": round(ready, 3),
                "unit": "s",
            }
