"""A Headwater server in one process, a client in another.

Starts ``headwater serve`` (as ``python -m headwater serve``, through
``headwater.testing.server_process``) on a free loopback port with a
throw-away data directory, then, from this process,
connects with ``headwater.connect(url)`` (the same client API as an embedded
broker), creates a topic, produces 1,000 events with fsync, reads them back in
a consumer group (committing each batch without waiting, then once more,
waiting, at the end), prints the server's supervision tree, and stops the server
with SIGTERM (a graceful shutdown). Exits 0 in about a second::

    python examples/remote_client.py
"""

from __future__ import annotations

import os
import signal
import tempfile

import trio

import headwater
from headwater.testing import server_process


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
                consumer.commit_nowait()  # queued; the reader does not wait for it
            await consumer.commit()  # sends what is queued and waits: all stored
        print(f"consumed {seen} events in group 'billing'")
        description = await client.describe_group("billing")
        print("lag per partition:", {p.partition: p.lag for p in description.partitions})
        draw(await client.tree())


def main() -> None:
    headwater.configure_logging("console", level="warning")  # the client's own log lines
    with tempfile.TemporaryDirectory(prefix="headwater-example-") as tmp:
        # `headwater serve --port 0 ...` in a child process, killed if anything fails.
        with server_process(os.path.join(tmp, "data")) as server:
            trio.run(client, server.url)
            code = server.stop(signal.SIGTERM)
        print(f"server stopped gracefully (exit code {code})")
        if code != 0:
            print(server.log.read_text())
            raise SystemExit(1)


if __name__ == "__main__":
    main()
