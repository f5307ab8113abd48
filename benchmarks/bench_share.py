"""Share subscription throughput vs a plain consumer group, same topic, same run.

An embedded broker on the real disk (durability ``always``: every delivery
and every ack is fsynced in the subscription's state journal, group commit
per request). A 4-partition topic holds N events; then:

* ``consumer_group``: 4 consumers of one group read all N (no per-event work);
* ``share/ack_batched``: 4 consumers of one share subscription, each event
  acked individually but the acks of one fetched batch sent in one request
  (``ack_many``);
* ``share/ack_each``: the same, one ``ack`` request per event.

Each figure is events/s end to end (first fetch to last ack); the ratios are
against ``consumer_group`` in the same run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from typing import Any

import trio

from headwater.broker import open_broker


async def _fill(client: Any, topic: str, n: int) -> None:
    await client.create_topic(topic, partitions=4)
    async with client.producer(serializer="bytes") as producer:
        payload = b"x" * 100
        step = 5000
        for base in range(0, n, step):
            await producer.send_many(
                topic, [(payload, str(i).encode()) for i in range(base, min(n, base + step))]
            )


async def _group(client: Any, topic: str, n: int) -> float:
    seen = 0
    done = trio.Event()
    t0 = time.perf_counter()

    async def member() -> None:
        nonlocal seen
        async with client.consumer(topic, group="bench-group", deserializer="bytes") as consumer:
            while not done.is_set():
                with trio.move_on_after(0.5):
                    events = await consumer.getmany(1000, timeout=0.5)
                    seen += len(events)
                    if seen >= n:
                        done.set()

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(member)
        await done.wait()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return n / elapsed


async def _share(client: Any, topic: str, name: str, n: int, *, batched: bool) -> float:
    acked = 0
    done = trio.Event()
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal acked
        async with client.subscribe(
            topic, name, max_unacked=500, deserializer="bytes", window=4000
        ) as sub:
            while not done.is_set():
                events = await sub.getmany(500, timeout=0.5)
                if batched:
                    await sub.ack_many(events)
                else:
                    for event in events:
                        await sub.ack(event)
                acked += len(events)
                if acked >= n:
                    done.set()

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(worker)
        await done.wait()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return n / elapsed


async def _measure(n: int, n_each: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with open_broker(f"{tmp}/data") as broker, broker.connect() as client:
            await _fill(client, "work", n)
            group = await _group(client, "work", n)
            batched = await _share(client, "work", "batched", n, batched=True)
            each = await _share(client, "work", "each", n_each, batched=False)
    return {"group": group, "batched": batched, "each": each}


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Figures: events/s of each case and the share/group ratios."""
    n = 20_000 if quick else 100_000
    n_each = 4_000 if quick else 20_000
    r = trio.run(_measure, n, n_each)
    case = f"4 consumers, 4 partitions, {n:,} events of 100 B, always"
    yield {
        "bench": "share",
        "case": "consumer_group/" + case,
        "metric": "events_per_s",
        "value": round(r["group"]),
        "unit": "events/s",
    }
    yield {
        "bench": "share",
        "case": "share/ack_batched/" + case,
        "metric": "events_per_s",
        "value": round(r["batched"]),
        "unit": "events/s",
    }
    yield {
        "bench": "share",
        "case": f"share/ack_each/4 consumers, 4 partitions, {n_each:,} events, always",
        "metric": "events_per_s",
        "value": round(r["each"]),
        "unit": "events/s",
    }
    yield {
        "bench": "share",
        "case": "share/ack_batched vs consumer_group",
        "metric": "ratio_vs_consumer_group",
        "value": round(r["batched"] / r["group"], 3),
        "unit": "x",
    }
    yield {
        "bench": "share",
        "case": "share/ack_each vs consumer_group",
        "metric": "ratio_vs_consumer_group",
        "value": round(r["each"] / r["group"], 3),
        "unit": "x",
    }
