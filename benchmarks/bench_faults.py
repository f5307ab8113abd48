"""Reliability figures for the README: network faults, slow readers, idle crowds.

* ``network/<kind>``: rounds of :func:`headwater.testing._netchaos.run_round`
  (two idempotent producers and a two-member consumer group through a
  fault-injecting proxy in front of an in-process server; one fault of the
  kind per round, then healed). Per kind: rounds, acknowledged events
  checked, events lost (must be 0), duplicate stored copies (must be 0),
  offset gaps (must be 0), acknowledged events the group never delivered
  (must be 0), and the recovery time p50/p99 (ms from the heal, or the
  reset, until a send started after it is acknowledged). ``network/all``
  sums them.
* ``slow_readers``: a server process with ``max_bytes_in_flight`` = 8 MiB;
  8 raw connections each pipeline 128 fetches of 1 MiB and never read.
  Peak server RSS and its growth over the idle baseline.
* ``idle_connections``: 2,000 idle connections (half handshaked) to a
  server process with ``max_connections`` = 2,050; its RSS, and how many of
  150 more connections got ``server_busy``.

``--quick``: 2 rounds per fault kind; otherwise 10, or
``HEADWATER_FAULT_ROUNDS`` (the soak: ``HEADWATER_FAULT_ROUNDS=200 python
benchmarks/run.py faults``).
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

import headwater
from headwater.broker import ServerConfig, open_broker, open_server
from headwater.testing._hostile import (
    config_server_process,
    count_busy,
    idle_crowd,
    raise_fd_limit,
    slow_readers,
)
from headwater.testing._netchaos import FAULT_KINDS, check_stored, percentile, read_back, run_round

BENCH = "faults"


def figure(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    """One JSON-lines figure."""
    return {"bench": BENCH, "case": case, "metric": metric, "value": value, "unit": unit}


async def _network(rounds: int, folder: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    totals = {"rounds": 0, "acked": 0, "lost": 0, "duplicates": 0, "gaps": 0, "undelivered": 0}
    all_recoveries: list[float] = []
    async with (
        open_broker(folder) as broker,
        open_server(broker, ServerConfig(port=0)) as server,
    ):
        url = f"headwater://127.0.0.1:{server.port}"
        for kind in FAULT_KINDS:
            counts = dict.fromkeys(totals, 0)
            recoveries: list[float] = []
            for number in range(rounds):
                topic = f"{kind}-{number}"
                async with headwater.connect(url) as admin:
                    await admin.create_topic(topic, partitions=3)
                result = await run_round(server.port, kind, topic=topic, group=topic)
                stored, ends = await read_back(url, topic)
                check = check_stored(result, stored, ends)
                counts["rounds"] += 1
                counts["acked"] += check.acked
                counts["lost"] += check.lost
                counts["duplicates"] += check.duplicates
                counts["gaps"] += check.gaps
                counts["undelivered"] += check.undelivered
                if result.recovery is not None:
                    recoveries.append(result.recovery * 1000)
            case = f"network/{kind}"
            out += [
                figure(case, "rounds", counts["rounds"], "rounds"),
                figure(case, "acked_events", counts["acked"], "events"),
                figure(case, "lost_events", counts["lost"], "events"),
                figure(case, "duplicate_events", counts["duplicates"], "events"),
                figure(case, "offset_gaps", counts["gaps"], "offsets"),
                figure(case, "undelivered_events", counts["undelivered"], "events"),
                figure(case, "recovery_p50", round(percentile(recoveries, 0.5), 1), "ms"),
                figure(case, "recovery_p99", round(percentile(recoveries, 0.99), 1), "ms"),
            ]
            for key in totals:
                totals[key] += counts[key]
            all_recoveries += recoveries
    case = "network/all"
    out += [
        figure(case, "rounds", totals["rounds"], "rounds"),
        figure(case, "acked_events", totals["acked"], "events"),
        figure(case, "lost_events", totals["lost"], "events"),
        figure(case, "duplicate_events", totals["duplicates"], "events"),
        figure(case, "offset_gaps", totals["gaps"], "offsets"),
        figure(case, "undelivered_events", totals["undelivered"], "events"),
        figure(case, "recovery_p50", round(percentile(all_recoveries, 0.5), 1), "ms"),
        figure(case, "recovery_p99", round(percentile(all_recoveries, 0.99), 1), "ms"),
    ]
    return out


async def _fill(url: str, topic: str, values: list[bytes]) -> None:
    async with headwater.connect(url, request_timeout=10) as client:
        await client.create_topic(topic)
        async with client.producer(serializer="bytes") as producer:
            await producer.send_many(topic, values)


def _slow_readers(folder: Path) -> Iterator[dict[str, Any]]:
    connections, budget = 8, 8 << 20
    rng = random.Random(5)
    with config_server_process(
        folder / "slow", max_bytes_in_flight=budget, send_timeout=2.0
    ) as server:
        trio.run(_fill, server.url, "big", [rng.randbytes(8192) for _ in range(3200)])
        base = server.rss_kib()
        peak = base
        with slow_readers(server.port, "big", connections=connections, fetches=128):
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                peak = max(peak, server.rss_kib())
                time.sleep(0.05)
    case = f"slow_readers/{connections}x128x1MiB/budget_8MiB"
    yield figure(case, "rss_idle", round(base / 1024, 1), "MiB")
    yield figure(case, "rss_peak", round(peak / 1024, 1), "MiB")
    yield figure(case, "rss_growth", round((peak - base) / 1024, 1), "MiB")


def _idle_connections(folder: Path) -> Iterator[dict[str, Any]]:
    idle, limit, extra = 2000, 2050, 150
    if not raise_fd_limit(idle + extra + 500):
        return
    with config_server_process(
        folder / "idle", max_connections=limit, handshake_timeout=60.0, idle_timeout=60.0
    ) as server:
        base = server.rss_kib()
        socks: list[socket.socket] = []
        try:
            socks = idle_crowd(server.port, idle)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ready = sum(1 for e in server.events() if e.get("event") == "connection_ready")
                if ready >= idle // 2:
                    break
                time.sleep(0.1)
            rss = server.rss_kib()
            extras = [
                socket.create_connection(("127.0.0.1", server.port), timeout=10)
                for _ in range(extra)
            ]
            socks.extend(extras)
            busy = count_busy(extras, 5.0)
        finally:
            for sock in socks:
                sock.close()
    case = f"idle_connections/{idle}"
    yield figure(case, "rss_before", round(base / 1024, 1), "MiB")
    yield figure(case, "rss_with_idle", round(rss / 1024, 1), "MiB")
    yield figure(case, "refused_server_busy", busy, f"of {extra}")


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the reliability figures (see the module docstring)."""
    rounds = int(os.environ.get("HEADWATER_FAULT_ROUNDS", "2" if quick else "10"))
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory(prefix="hw-faults-") as tmp:
        folder = Path(tmp)
        yield from trio.run(_network, rounds, str(folder / "network"))
        yield from _slow_readers(folder)
        yield from _idle_connections(folder)
