"""Headwater over TCP beside the embedded broker, in one run.

One client process (this one) and, for the TCP figures, a real
``headwater serve`` process on 127.0.0.1 (durability ``always``):

* produce N events of 100 B and of 1 KiB with ``producer.send_many``, time
  until every event is acknowledged (fsynced);
* consume them all back from the start with one consumer;
* end-to-end latency at a steady 1,000 events/s: each event carries its send
  time; a consumer long-polls; p50 and p99 of (received - sent).

The embedded broker runs the same code in this process. Figures are medians
of the rounds (embedded and TCP interleaved); ``ratio_tcp_to_embedded`` is
TCP events/s over embedded events/s.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any

import trio

import headwater
from headwater.broker import open_broker
from headwater.client import Client
from headwater.testing import server_process

HERE = pathlib.Path(__file__).resolve().parent
Connect = Callable[[], AbstractAsyncContextManager[Client]]


def _quiet() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


@contextmanager
def serve(data_dir: str, durability: str = "always") -> Iterator[str]:
    """A ``headwater serve`` process on a free port; yields its URL."""
    with server_process(data_dir, "--durability", durability) as proc:
        try:
            yield proc.url
        finally:
            try:
                proc.stop(signal.SIGTERM)
            except subprocess.TimeoutExpired:
                proc.proc.kill()


@asynccontextmanager
async def embedded(path: str, durability: str = "always") -> AsyncIterator[Client]:
    async with open_broker(path, durability=durability) as broker, broker.connect() as client:
        yield client


async def throughput(connect: Connect, values: list[bytes], topic: str) -> tuple[float, float]:
    """(produce seconds, consume seconds) for ``values`` through one client."""
    async with connect() as client:
        await client.create_topic(topic, partitions=1)
        async with client.producer(serializer="bytes") as producer:
            start = time.perf_counter()
            await producer.send_many(topic, [(v, None) for v in values])
            produce = time.perf_counter() - start
        got = 0
        async with client.consumer([topic], start="earliest", deserializer="bytes") as consumer:
            start = time.perf_counter()
            while got < len(values):
                got += len(await consumer.getmany(max_events=10_000, timeout=1.0))
            consume = time.perf_counter() - start
    return produce, consume


async def latency(connect: Connect, rate: int, seconds: float, topic: str) -> list[float]:
    """End-to-end latencies (ms) of events sent at ``rate``/s for ``seconds``."""
    total = int(rate * seconds)
    out: list[float] = []
    async with connect() as client:
        await client.create_topic(topic, partitions=1)
        async with (
            client.producer(serializer="bytes", linger=0.0) as producer,
            client.consumer([topic], start="latest", deserializer="bytes") as consumer,
            trio.open_nursery() as nursery,
        ):
            await consumer.getmany(1, timeout=0.01)  # join and position first
            await producer.partitions_of(topic)

            async def send() -> None:
                start = time.perf_counter()
                for i in range(total):
                    await trio.sleep_until(_at(start, i / rate))
                    payload = struct.pack(">d", time.perf_counter()) + b"x" * 92
                    producer.send_nowait(topic, payload)
                await producer.flush()

            nursery.start_soon(send)
            with trio.move_on_after(seconds + 10):
                while len(out) < total:
                    for event in await consumer.getmany(1000, timeout=1.0):
                        now = time.perf_counter()
                        (sent,) = struct.unpack(">d", event.value[:8])
                        out.append((now - sent) * 1000)
    return out


def _at(perf_start: float, offset: float) -> float:
    return trio.current_time() + (perf_start + offset - time.perf_counter())


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _fig(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"bench": "tcp", "case": case, "metric": metric, "value": value, "unit": unit}


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield TCP and embedded produce/consume rates and latency percentiles."""
    _quiet()
    rounds = 3 if quick else 5
    base = tempfile.mkdtemp(prefix="hw-bench-tcp-", dir=HERE.parent)
    try:
        with serve(os.path.join(base, "server")) as url:

            def tcp() -> AbstractAsyncContextManager[Client]:
                return headwater.connect(url)

            n = 0
            for size, label in ((100, "100B"), (1024, "1KiB")):
                count = (30_000 if quick else 200_000) if size == 100 else 15_000
                if not quick and size == 1024:
                    count = 100_000
                values = [os.urandom(size) for _ in range(count)]
                results: dict[str, list[tuple[float, float]]] = {"tcp": [], "embedded": []}
                for _ in range(rounds):
                    n += 1
                    path = os.path.join(base, f"e{n}")
                    results["embedded"].append(
                        trio.run(throughput, lambda p=path: embedded(p), values, "t")
                    )
                    results["tcp"].append(trio.run(throughput, tcp, values, f"t{n}"))
                for mode in ("tcp", "embedded"):
                    prod = statistics.median(r[0] for r in results[mode])
                    cons = statistics.median(r[1] for r in results[mode])
                    yield _fig(
                        f"produce/{label}/always/{mode}", "events_per_s", count / prod, "events/s"
                    )
                    yield _fig(f"consume/{label}/{mode}", "events_per_s", count / cons, "events/s")
                ratios = [
                    e[0] / t[0] for t, e in zip(results["tcp"], results["embedded"], strict=True)
                ]
                yield _fig(
                    f"produce/{label}/always",
                    "ratio_tcp_to_embedded",
                    statistics.median(ratios),
                    "x",
                )
                ratios = [
                    e[1] / t[1] for t, e in zip(results["tcp"], results["embedded"], strict=True)
                ]
                yield _fig(
                    f"consume/{label}", "ratio_tcp_to_embedded", statistics.median(ratios), "x"
                )
            seconds = 3.0 if quick else 10.0
            lat = {
                "tcp": trio.run(latency, tcp, 1000, seconds, "lat"),
                "embedded": trio.run(
                    latency, lambda: embedded(os.path.join(base, "lat")), 1000, seconds, "lat"
                ),
            }
            for mode, values_ms in lat.items():
                yield _fig(f"latency/always/{mode}", "p50_ms", _pct(values_ms, 0.50), "ms")
                yield _fig(f"latency/always/{mode}", "p99_ms", _pct(values_ms, 0.99), "ms")
                yield _fig(f"latency/always/{mode}", "events", len(values_ms), "events")
    finally:
        shutil.rmtree(base, ignore_errors=True)
