"""Headwater alone, embedded and over TCP, in one run (no peers needed).

The engine of ``benchmarks/run.py tcp`` and of ``headwater bench`` when the
shared peer benchmark is not there. One client process (the caller) and a
real ``headwater serve`` process for the TCP figures:

* produce N events of 100 B and of 1 KiB with ``producer.send_many``, timed
  until every event is acknowledged (fsynced with durability ``always``);
* consume them all back from the start with one consumer;
* end-to-end latency at a steady 1,000 events/s: each event carries its send
  time, a consumer long-polls, p50/p99 of (received - sent).

Rounds interleave embedded and TCP; figures are medians; ratios compare TCP
with embedded.
"""

from __future__ import annotations

import gc
import os
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

from headwater.broker import open_broker
from headwater.client import Client
from headwater.client._tcp import connect
from headwater.testing._process import server_process

__all__ = ["embedded", "latency", "run_local", "serve", "throughput"]

Connect = Callable[[], AbstractAsyncContextManager[Client]]
Progress = Callable[[int, int, str], None]


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
    """An embedded broker in ``path`` and a client of it."""
    async with open_broker(path, durability=durability) as broker, broker.connect() as client:
        yield client


async def throughput(connect_to: Connect, values: list[bytes], topic: str) -> tuple[float, float]:
    """(produce seconds, consume seconds) for ``values`` through one client."""
    async with connect_to() as client:
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


async def latency(connect_to: Connect, rate: int, seconds: float, topic: str) -> list[float]:
    """End-to-end latencies (ms) of events sent at ``rate``/s for ``seconds``."""
    total = int(rate * seconds)
    out: list[float] = []
    async with connect_to() as client:
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
                    await trio.sleep_until(
                        trio.current_time() + (start + i / rate - time.perf_counter())
                    )
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


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _fig(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"bench": "tcp", "case": case, "metric": metric, "value": value, "unit": unit}


def run_local(
    quick: bool = True, progress: Progress | None = None, *, workdir: str | None = None
) -> Iterator[dict[str, Any]]:
    """Yield Headwater's TCP and embedded figures (JSON-ready dicts)."""
    rounds = 3 if quick else 5
    sizes = [
        (100, "100B", 30_000 if quick else 200_000),
        (1024, "1KiB", 15_000 if quick else 100_000),
    ]
    total_steps = len(sizes) * rounds * 2 + 2
    step = 0

    def tick(what: str) -> None:
        nonlocal step
        if progress is not None:
            progress(step, total_steps, what)
        step += 1

    base = tempfile.mkdtemp(prefix="hw-bench-local-", dir=workdir)
    try:
        with serve(os.path.join(base, "server")) as url:

            def tcp() -> AbstractAsyncContextManager[Client]:
                return connect(url)

            n = 0
            for size, label, count in sizes:
                values = [os.urandom(size) for _ in range(count)]
                results: dict[str, list[tuple[float, float]]] = {"tcp": [], "embedded": []}
                for _ in range(rounds):
                    n += 1
                    path = os.path.join(base, f"e{n}")
                    tick(f"embedded {label} round {len(results['embedded']) + 1}")
                    results["embedded"].append(
                        trio.run(throughput, lambda p=path: embedded(p), values, "t")
                    )
                    tick(f"tcp {label} round {len(results['tcp']) + 1}")
                    results["tcp"].append(trio.run(throughput, tcp, values, f"t{n}"))
                for mode in ("tcp", "embedded"):
                    prod = statistics.median(r[0] for r in results[mode])
                    cons = statistics.median(r[1] for r in results[mode])
                    yield _fig(
                        f"produce/{label}/always/{mode}", "events_per_s", count / prod, "events/s"
                    )
                    yield _fig(f"consume/{label}/{mode}", "events_per_s", count / cons, "events/s")
                pairs = list(zip(results["tcp"], results["embedded"], strict=True))
                yield _fig(
                    f"produce/{label}/always",
                    "ratio_tcp_to_embedded",
                    statistics.median(e[0] / t[0] for t, e in pairs),
                    "x",
                )
                yield _fig(
                    f"consume/{label}",
                    "ratio_tcp_to_embedded",
                    statistics.median(e[1] / t[1] for t, e in pairs),
                    "x",
                )
            seconds = 3.0 if quick else 10.0
            gc.collect()  # the throughput rounds' garbage is not the latency test's
            tick("tcp latency at 1,000 events/s")
            lat = {"tcp": trio.run(latency, tcp, 1000, seconds, "lat")}
            tick("embedded latency at 1,000 events/s")
            lat["embedded"] = trio.run(
                latency, lambda: embedded(os.path.join(base, "lat")), 1000, seconds, "lat"
            )
            if progress is not None:
                progress(total_steps, total_steps, "done")
            for mode, values_ms in lat.items():
                yield _fig(f"latency/always/{mode}", "p50_ms", _pct(values_ms, 0.50), "ms")
                yield _fig(f"latency/always/{mode}", "p99_ms", _pct(values_ms, 0.99), "ms")
                yield _fig(f"latency/always/{mode}", "events", len(values_ms), "events")
    finally:
        shutil.rmtree(base, ignore_errors=True)
