"""The embedded broker: produce and consume throughput through the public client API.

For 100-byte and 1 KiB values (pre-made bytes, the same payloads every peer
gets), durability ``always``, one topic with one partition:

* produce: ``producer.send_many`` of N events, time until every event is
  acknowledged (fsynced);
* consume: one consumer reads all N back from the start (``getmany``);
* the journal's raw append rate in the same run: the same number of bytes
  appended as 1,000-event records with ``open_log`` + fsync per record, and
  ``ratio_to_journal`` = produce events/s / journal events/s.

Real disk (a temporary directory beside the repository). Medians of the rounds.
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

from headwater import _protocol as protocol
from headwater.broker import open_broker
from headwater.client import encode_events
from headwater.journal import LogConfig, encode_record, open_log

HERE = pathlib.Path(__file__).resolve().parent


async def _broker_round(path: str, values: list[bytes]) -> tuple[float, float]:
    async with open_broker(path) as broker, broker.connect() as client:
        await client.create_topic("bench", partitions=1)
        async with client.producer(serializer="bytes") as producer:
            start = time.perf_counter()
            await producer.send_many("bench", [(v, None) for v in values])
            produce = time.perf_counter() - start
        got = 0
        async with client.consumer(["bench"], start="earliest", deserializer="bytes") as consumer:
            start = time.perf_counter()
            while got < len(values):
                got += len(await consumer.getmany(max_events=10_000, timeout=1.0))
            consume = time.perf_counter() - start
        return produce, consume


def _records(values: list[bytes]) -> list[bytes]:
    """The values as pre-encoded 1,000-event batches (journal records whose
    payload is the client's event encoding, as a producer would send them)."""
    out = []
    for i in range(0, len(values), 1000):
        chunk = values[i : i + 1000]
        payload = encode_events([(1, None, v, ()) for v in chunk])
        out.append(encode_record(payload, count=len(chunk), first_timestamp=1, max_timestamp=1))
    return out


async def _preencoded_round(path: str, records: list[bytes]) -> float:
    """The same batches through the embedded broker's Produce path (the
    partition actor, validation, idempotence, group commit)."""
    async with open_broker(path) as broker:
        await broker.handle(protocol.CreateTopic("bench", 1))
        start = time.perf_counter()
        for record in records:
            await broker.handle(protocol.Produce("bench", 0, record))
        return time.perf_counter() - start


async def _journal_round(path: str, values: list[bytes]) -> float:
    records = _records(values)
    async with open_log(path, config=LogConfig(durability="always")) as log:
        start = time.perf_counter()
        for r in records:
            await log.append(r)
        return time.perf_counter() - start


def _fig(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"bench": "broker", "case": case, "metric": metric, "value": value, "unit": unit}


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield produce/consume rates and the ratio to the journal's raw rate."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rounds = 3 if quick else 5
    base = tempfile.mkdtemp(prefix="hw-bench-broker-", dir=HERE.parent)
    try:
        n = 0
        for size, label in ((100, "100B"), (1024, "1KiB")):
            count = (
                (50_000 if quick else 200_000) if size == 100 else (20_000 if quick else 100_000)
            )
            values = [os.urandom(size) for _ in range(count)]
            prod: list[float] = []
            cons: list[float] = []
            jour: list[float] = []
            pre: list[float] = []
            for _ in range(rounds):
                n += 1
                p, c = trio.run(_broker_round, os.path.join(base, f"b{n}"), values)
                j = trio.run(_journal_round, os.path.join(base, f"j{n}"), values)
                pre.append(
                    trio.run(_preencoded_round, os.path.join(base, f"p{n}"), _records(values))
                )
                prod.append(p)
                cons.append(c)
                jour.append(j)
            mb = count * size / 1e6
            yield _fig(
                f"produce/{label}/always",
                "events_per_s",
                count / statistics.median(prod),
                "events/s",
            )
            yield _fig(f"produce/{label}/always", "mb_per_s", mb / statistics.median(prod), "MB/s")
            yield _fig(
                f"consume/{label}", "events_per_s", count / statistics.median(cons), "events/s"
            )
            yield _fig(f"consume/{label}", "mb_per_s", mb / statistics.median(cons), "MB/s")
            yield _fig(
                f"journal/{label}/always",
                "events_per_s",
                count / statistics.median(jour),
                "events/s",
            )
            ratios = [j / p for p, j in zip(prod, jour, strict=True)]
            yield _fig(
                f"produce/{label}/always", "ratio_to_journal", statistics.median(ratios), "x"
            )
            yield _fig(
                f"produce/{label}/always/preencoded",
                "events_per_s",
                count / statistics.median(pre),
                "events/s",
            )
            # DECISIONS #6: the embedded goal (>= 0.8) compares pre-encoded
            # 1,000-event batches through the broker with Log.append of the same.
            ratios = [j / b for b, j in zip(pre, jour, strict=True)]
            yield _fig(
                f"produce/{label}/always/preencoded",
                "ratio_to_journal",
                statistics.median(ratios),
                "x",
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
