"""Server memory: peak RSS while a producer writes (1 GiB; 256 MiB with
``--quick``) and a consumer reads it back, and while a consumer stalls.

The server is a real ``headwater serve`` process (durability ``always``); its
peak resident set (``VmHWM`` in ``/proc/PID/status``) is read after each
phase (flat as the data grows: compare ``--quick``, 256 MiB, with the full
1 GiB). A stalled consumer is a raw connection that pipelines fetches of
1 MiB and never reads its socket: the server's per-connection byte budget
(``max_bytes_in_flight``, 16 MiB) must bound what it holds, whatever the
volume. Figures: ``peak_rss_mb`` / ``rss_mb`` per phase.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

import headwater
from bench_tcp import HERE, _quiet
from headwater.testing import server_process
from headwater.transport import ClientConnection


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _produce_consume(url: str, total_bytes: int) -> tuple[float, float]:
    value = os.urandom(1024)
    count = total_bytes // 1024
    async with headwater.connect(url) as client:
        await client.create_topic("mem", partitions=2)
        start = time.perf_counter()
        async with client.producer(serializer="bytes") as producer:
            sent = 0
            while sent < count:
                n = min(50_000, count - sent)
                await producer.send_many("mem", [(value, None)] * n)
                sent += n
        produce = time.perf_counter() - start
        got = 0
        start = time.perf_counter()
        async with client.consumer("mem", deserializer="bytes") as consumer:
            while got < count:
                got += len(await consumer.getmany(10_000, timeout=1))
        return produce, time.perf_counter() - start


def _stall(port: int, fetches: int) -> socket.socket:
    """A connection that asks for ``fetches`` x 1 MiB and never reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = ClientConnection(max_in_flight=1024)
    sock.sendall(conn.data_to_send())
    data = b""
    while conn.state != "READY":
        data = sock.recv(65536)
        conn.receive_data(data)
        conn.next_event()
    for i in range(fetches):
        conn.send_request(
            "fetch", {"topic": "mem", "partition": i % 2, "offset": 0, "max_bytes": 1 << 20}
        )
    sock.sendall(conn.data_to_send())
    return sock


def _fig(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"bench": "memory", "case": case, "metric": metric, "value": value, "unit": unit}


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the server's peak RSS per phase."""
    _quiet()
    total = (256 if quick else 1024) * 1024 * 1024
    base_dir = tempfile.mkdtemp(prefix="hw-bench-mem-", dir=HERE.parent)
    try:
        base = os.path.join(base_dir, "server")
        with server_process(base) as proc:
            url, pid = proc.url, proc.pid
            idle = _rss_mb(pid, "VmRSS")
            yield _fig("idle", "rss_mb", idle, "MB")
            produce, consume = trio.run(_produce_consume, url, total)
            peak = _rss_mb(pid, "VmHWM")
            yield _fig(f"produce+consume/{total >> 20}MiB", "peak_rss_mb", peak, "MB")
            yield _fig(f"produce/{total >> 20}MiB", "mb_per_s", total / 1e6 / produce, "MB/s")
            yield _fig(f"consume/{total >> 20}MiB", "mb_per_s", total / 1e6 / consume, "MB/s")
            port = proc.port
            stalled = [_stall(port, 120) for _ in range(4)]
            time.sleep(3)
            held = _rss_mb(pid, "VmRSS")
            yield _fig("stalled-consumers/4x120MiB-asked", "rss_mb", held, "MB")
            yield _fig("stalled-consumers/4x120MiB-asked", "rss_over_idle_mb", held - idle, "MB")
            for sock in stalled:
                sock.close()
            proc.stop()
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
