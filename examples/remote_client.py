"""A Headwater server in one process, a client in another.

Starts ``headwater serve`` (as ``python -m headwater serve``) on a free
loopback port with a throw-away data directory, then, from this process,
connects with ``headwater.connect(url)`` (the same client API as an embedded
broker), creates a topic, produces 1,000 events with fsync, reads them back in
a consumer group, prints the server's supervision tree, and stops the server
with SIGTERM (a graceful shutdown). Exits 0 in about a second::

    python examples/remote_client.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

import headwater


def start_server(data_dir: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``headwater serve`` on a free port; returns (process, port, log file)."""
    log = Path(data_dir + ".log")
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headwater",
                "serve",
                "--data-dir",
                data_dir,
                "--port",
                "0",
                "--log-format",
                "json",
            ],
            stderr=out,
            env=env,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"server_listening"' in line:
                return proc, json.loads(line)["port"], log
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()}")


def draw(node: dict[str, object], depth: int = 0) -> None:
    print(f"{'  ' * depth}{node['path']}  [{node['state']}]")
    children = node.get("children", [])
    assert isinstance(children, list)
    for child in children:
        draw(child, depth + 1)


async def client(url: str) -> None:
    async with headwater.connect(url) as client:
        await client.create_topic("orders", partitions=3)
        async with client.producer() as producer:
            stored = await producer.send_many(
                "orders", [({"order": i}, f"customer-{i % 10}") for i in range(1000)]
            )
        print(f"produced {len(stored)} events (acknowledged after fsync)")
        seen = 0
        async with client.consumer("orders", group="billing") as consumer:
            while seen < len(stored):
                seen += len(await consumer.getmany(1000, timeout=1.0))
            await consumer.commit()
        print(f"consumed {seen} events in group 'billing'")
        description = await client.describe_group("billing")
        print("lag per partition:", {p.partition: p.lag for p in description.partitions})
        draw(await client.tree())


def main() -> None:
    headwater.configure_logging("console", level="warning")  # the client's own log lines
    with tempfile.TemporaryDirectory(prefix="headwater-example-") as tmp:
        proc, port, log = start_server(os.path.join(tmp, "data"))
        try:
            trio.run(client, f"headwater://127.0.0.1:{port}")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        print(f"server stopped gracefully (exit code {code})")
        if code != 0:
            print(log.read_text())
            raise SystemExit(1)


if __name__ == "__main__":
    main()
