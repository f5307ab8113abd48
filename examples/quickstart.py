"""Quickstart: an embedded broker, keyed events, a consumer group, a restart.

Run it with ``python examples/quickstart.py [DATA_DIR]`` (default: a fresh
temporary directory). It

1. opens a broker on the data directory (no server, no ports),
2. creates the topic ``orders`` with 3 partitions,
3. produces 3,000 events keyed by user (the same user always lands in the same
   partition, so each user's events stay in order),
4. consumes them in the group ``billing`` with two consumers sharing the
   partitions, committing after 2,000 events,
5. closes the broker, opens it again on the same data, and
6. resumes the group from its committed offsets to read the rest.

Every event acknowledged by the producer was fsynced before the
acknowledgement (durability ``always``).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time
from typing import Any

import trio

try:
    import headwater
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    import headwater

from headwater.broker import open_broker

TOTAL = 3_000
FIRST_PART = 2_000


async def consume_in_group(client: Any, name: str, seen: dict[tuple[int, int], Any]) -> None:
    """One group member: read until the group has seen FIRST_PART events, then commit."""
    async with client.consumer(
        ["orders"], group="billing", start="earliest", session_timeout=3.0, client_id=name
    ) as consumer:
        while len(seen) < FIRST_PART:
            for event in await consumer.getmany(max_events=100, timeout=0.2):
                seen[(event.partition, event.offset)] = (name, event)
        await commit_owned(consumer)


async def commit_owned(consumer: Any) -> None:
    """Commit; if the group rebalanced meanwhile (the other member joined or
    left), catch up with the new generation and commit what we still own."""
    for _attempt in range(5):
        try:
            await consumer.commit()
            return
        except headwater.StaleGenerationError:
            await consumer.poll_group()


async def main(data_dir: str) -> int:
    print(f"data directory: {data_dir}")
    async with open_broker(data_dir) as broker, broker.connect() as client:
        await client.create_topic("orders", partitions=3)
        started = time.perf_counter()
        async with client.producer() as producer:
            stored = await producer.send_many(
                "orders",
                [({"order": i, "amount": i % 97}, f"user-{i % 50}") for i in range(TOTAL)],
            )
        took = time.perf_counter() - started
        per_partition = [sum(1 for e in stored if e.partition == p) for p in range(3)]
        print(f"produced {len(stored)} events in {took:.2f}s; per partition {per_partition}")
        user7 = {e.partition for e in stored if e.key == "user-7"}
        print(f"every event of user-7 is in partition {user7.pop()}")

        seen: dict[tuple[int, int], Any] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume_in_group, client, "consumer-a", seen)
            nursery.start_soon(consume_in_group, client, "consumer-b", seen)
        by_member: dict[str, int] = {}
        for name, _event in seen.values():
            by_member[name] = by_member.get(name, 0) + 1
        print(f"group 'billing' consumed {len(seen)} events and committed: {by_member}")
        print(broker.tree().render())

    print("\nbroker closed; opening it again on the same data...\n")
    async with open_broker(data_dir) as broker, broker.connect() as client:
        description = await client.describe_group("billing")
        lag = sum(p.lag for p in description.partitions)
        print(f"group 'billing' resumes with lag {lag}")
        async with client.consumer(["orders"], group="billing", session_timeout=3.0) as consumer:
            with trio.move_on_after(20):
                while len(seen) < TOTAL:
                    for event in await consumer.getmany(max_events=500, timeout=0.5):
                        seen[(event.partition, event.offset)] = ("resumed", event)
            await consumer.commit()
        orders = sorted(e.value["order"] for _, e in seen.values())
        ok = orders == list(range(TOTAL))
        print(
            f"after the restart the group has read {len(seen)} distinct events: "
            f"{'all of them, none lost' if ok else 'SOME ARE MISSING'}"
        )
        return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(trio.run(main, sys.argv[1]))
    with tempfile.TemporaryDirectory(prefix="headwater-quickstart-") as tmp:
        sys.exit(trio.run(main, tmp))
