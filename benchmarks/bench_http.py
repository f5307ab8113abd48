"""The cost of watching: produce throughput with the HTTP front end on and
scraped every second, against the same broker without it, in one run.

Each round opens a fresh embedded broker (durability ``always``, a topic of
8 partitions, one consumer group with a commit, so the scrape has lag to
compute), and produces 100 B events through the public producer
(``send_many`` in chunks of 1,000) for a fixed time. In the "on" rounds the
broker also serves HTTP on a loopback port and a scraper in the same process
GETs ``/metrics`` every second over TCP, as Prometheus would. Rounds
alternate off/on; the figure is the median of the pairs' ratios
(``ratio_http_on_vs_off``, target >= 0.95), beside the median rates, their
ratio (``ratio_of_median_rates``: on a busy machine the two differ) and the
scrape's size and latency (its latency includes waiting for the loop, which
the producer keeps busy).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import trio

PARTITIONS = 8
CHUNK = 1000
PAYLOAD = os.urandom(100)


def _quiet() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


async def _scrape(port: int) -> tuple[float, int]:
    began = time.perf_counter()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        size = 0
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            size += len(data)
    return time.perf_counter() - began, size


async def _round(http: bool, seconds: float, scrapes: list[tuple[float, int]]) -> float:
    from headwater import open_broker

    with tempfile.TemporaryDirectory() as data:
        options: dict[str, Any] = {"http_port": 0} if http else {}
        async with open_broker(data, **options) as broker, broker.connect() as client:
            await client.create_topic("bench", partitions=PARTITIONS)
            async with client.producer(serializer="bytes") as producer:
                await producer.send_many("bench", [PAYLOAD] * 100)
            async with client.consumer("bench", group="watchers", deserializer="bytes") as consumer:
                async for _ in consumer:
                    await consumer.commit()
                    break
            sent = 0
            async with trio.open_nursery() as nursery:
                if http:
                    assert broker.http_port is not None
                    port = broker.http_port

                    async def scraper() -> None:
                        while True:
                            await trio.sleep(1.0)
                            scrapes.append(await _scrape(port))

                    nursery.start_soon(scraper)
                async with client.producer(serializer="bytes") as producer:
                    began = time.perf_counter()
                    deadline = began + seconds
                    while time.perf_counter() < deadline:
                        await producer.send_many("bench", [PAYLOAD] * CHUNK)
                        sent += CHUNK
                    elapsed = time.perf_counter() - began
                nursery.cancel_scope.cancel()
    return sent / elapsed


async def _scrape_cost(samples: int) -> float:
    """Median seconds of the broker's loop one scrape takes (gather + render),
    on a broker shaped like the rounds' one, without the producer."""
    from headwater import open_broker
    from headwater.web import gather, render_metrics

    with tempfile.TemporaryDirectory() as data:
        async with open_broker(data) as broker, broker.connect() as client:
            await client.create_topic("bench", partitions=PARTITIONS)
            async with client.producer(serializer="bytes") as producer:
                await producer.send_many("bench", [PAYLOAD] * 1000)
            async with client.consumer("bench", group="watchers", deserializer="bytes") as c:
                async for _ in c:
                    await c.commit()
                    break
            times = []
            for _ in range(samples):
                began = time.perf_counter()
                render_metrics(await gather(broker))
                times.append(time.perf_counter() - began)
    return statistics.median(times)


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield produce rates with HTTP off and on (scraped every second), their
    ratio, and the scrape's latency and size."""
    _quiet()
    rounds, seconds = (8, 2.0) if quick else (12, 6.0)
    rates: dict[bool, list[float]] = {False: [], True: []}
    scrapes: list[tuple[float, int]] = []
    for i in range(rounds):
        # Alternate which mode goes first, so that neither always follows the
        # other's disk writeback.
        for http in (False, True) if i % 2 == 0 else (True, False):
            rates[http].append(trio.run(_round, http, seconds, scrapes))
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    # Pairs ran back to back, so each pair's ratio sees the same machine load.
    ratio = statistics.median(b / a for a, b in zip(rates[False], rates[True], strict=True))
    case = "produce/100B/always"
    yield {
        "bench": "http",
        "case": case,
        "metric": "rate_http_off",
        "value": round(off),
        "unit": "events/s",
    }
    yield {
        "bench": "http",
        "case": case,
        "metric": "rate_http_on",
        "value": round(on),
        "unit": "events/s",
    }
    yield {
        "bench": "http",
        "case": case,
        "metric": "ratio_http_on_vs_off",
        "value": round(ratio, 3),
        "unit": "x",
    }
    yield {
        "bench": "http",
        "case": case,
        "metric": "ratio_of_median_rates",
        "value": round(on / off, 3),
        "unit": "x",
    }
    cost = trio.run(_scrape_cost, 20 if quick else 100)
    yield {
        "bench": "http",
        "case": "scrape/metrics",
        "metric": "loop_time",
        "value": round(cost * 1000, 2),
        "unit": "ms",
    }
    # One scrape a second takes this share of the loop from everything else:
    # the throughput ratio cannot fall below this bound for its sake.
    yield {
        "bench": "http",
        "case": case,
        "metric": "ratio_bound_from_scrape_cost",
        "value": round(1 - cost, 4),
        "unit": "x",
    }
    if scrapes:
        latencies = sorted(s for s, _ in scrapes)
        yield {
            "bench": "http",
            "case": "scrape/metrics",
            "metric": "p50",
            "value": round(statistics.median(latencies) * 1000, 2),
            "unit": "ms",
        }
        yield {
            "bench": "http",
            "case": "scrape/metrics",
            "metric": "max",
            "value": round(latencies[-1] * 1000, 2),
            "unit": "ms",
        }
        yield {
            "bench": "http",
            "case": "scrape/metrics",
            "metric": "size",
            "value": scrapes[-1][1],
            "unit": "bytes",
        }
        yield {
            "bench": "http",
            "case": "scrape/metrics",
            "metric": "count",
            "value": len(scrapes),
            "unit": "scrapes",
        }
