"""The latency floor of any three-process Trio design (issue 17).

A relay with no broker logic at all, shaped like the peers bench's latency
workload: a producer process sends one 108-byte message every 1 ms and waits
for its acknowledgement; a server process appends each message to a file and
fsyncs it, pushes it to a consumer process, then acknowledges it; the
consumer records receive - send (``time.monotonic_ns``, one clock for every
process of the machine). Every process is a plain Trio program over
``trio.SocketStream``: what Headwater over TCP pays beyond these percentiles
is its own Python (framing, CBOR, batches, actors, journal), not Trio, the
sockets or the disk.

    python benchmarks/latency_floor.py [--count 3000] [--rounds 3]

Prints one JSON object per figure (``bench`` ``latency_floor``; p50, p99 and
p999 in ms over every round's samples pooled, the first 200 of each round
dropped as warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Any

import trio

HDR = struct.Struct(">q")  # send time, ns
SIZE = 108  # the peers bench's 100 B payload plus a header
WARMUP = 200


async def _exactly(stream: trio.SocketStream, n: int, buf: bytearray) -> bytes:
    while len(buf) < n:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


async def _server(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    consumer: list[trio.SocketStream] = []
    ready = trio.Event()

    async def on_consumer(stream: trio.SocketStream) -> None:
        consumer.append(stream)
        ready.set()
        await trio.sleep_forever()

    async def on_producer(stream: trio.SocketStream) -> None:
        await ready.wait()
        buf = bytearray()
        while True:
            try:
                msg = await _exactly(stream, SIZE, buf)
            except EOFError:
                return
            os.write(fd, msg)
            os.fsync(fd)
            await consumer[0].send_all(msg)
            await stream.send_all(b"k")

    async with trio.open_nursery() as nursery:
        ports = []
        for handler in (on_producer, on_consumer):  # free ports, told to the parent
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            ports.append(listeners[0].socket.getsockname()[1])
        print(*ports, flush=True)


async def _producer(port: int, count: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buf = bytearray()
    for _ in range(count):
        await stream.send_all(HDR.pack(time.monotonic_ns()) + b"x" * (SIZE - HDR.size))
        await _exactly(stream, 1, buf)
        await trio.sleep(0.001)
    await stream.aclose()


async def _consumer(port: int, count: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buf = bytearray()
    samples = []
    for _ in range(count):
        msg = await _exactly(stream, SIZE, buf)
        samples.append(time.monotonic_ns() - HDR.unpack_from(msg)[0])
    print(json.dumps(samples[WARMUP:]))


def one_round(count: int, workdir: str) -> list[int]:
    """Run the three processes once; the consumer's latency samples (ns)."""
    me = [sys.executable, os.path.abspath(__file__)]
    path = os.path.join(workdir, "relay.log")
    server = subprocess.Popen([*me, "--role", "server", path], stdout=subprocess.PIPE)
    consumer: subprocess.Popen[bytes] | None = None
    try:
        assert server.stdout is not None
        ready = server.stdout.readline().split()
        if len(ready) != 2:
            raise RuntimeError("the relay server did not start")
        a, b = (int(x) for x in ready)
        consumer = subprocess.Popen(
            [*me, "--role", "consumer", "--ports", str(a), str(b), "--count", str(count)],
            stdout=subprocess.PIPE,
        )
        time.sleep(0.5)
        subprocess.run(
            [*me, "--role", "producer", "--ports", str(a), str(b), "--count", str(count)],
            check=True,
            timeout=600,
        )
        out, _ = consumer.communicate(timeout=60)
        return list(json.loads(out))
    finally:
        for proc in (consumer, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _fig(metric: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "bench": "latency_floor",
        "case": "trio-relay",
        "metric": metric,
        "value": value,
        "unit": unit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--role", choices=("server", "producer", "consumer"))
    parser.add_argument("--ports", type=int, nargs=2)
    parser.add_argument("path", nargs="?")
    args = parser.parse_args()
    if args.role == "server":
        trio.run(_server, args.path)
        return
    if args.role == "producer":
        trio.run(_producer, args.ports[0], args.count)
        return
    if args.role == "consumer":
        trio.run(_consumer, args.ports[1], args.count)
        return
    samples: list[int] = []
    with tempfile.TemporaryDirectory(prefix="hw-latency-floor-") as workdir:
        for _ in range(args.rounds):
            samples += one_round(args.count + WARMUP, workdir)
    samples.sort()
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)):
        print(json.dumps(_fig(name, samples[int(q * (len(samples) - 1))] / 1e6, "ms")))
    print(json.dumps(_fig("mean_ms", statistics.fmean(samples) / 1e6, "ms")))


if __name__ == "__main__":
    main()
