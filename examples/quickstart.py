"""Quickstart: an embedded broker, keyed events, a consumer group, a restart.

Run it with ``python examples/quickstart.py [DATA_DIR]`` (default: a fresh
temporary directory). It

1. opens a broker on the data directory (no server, no ports),
2. creates the topic ``orders`` with 3 partitions,
3. produces 3,000 events keyed by user (the same user always lands in the same
   partition, so each user's events stay in order),
4. consumes two thirds of each partition (2,000 events) in the group
   ``billing`` with two consumers sharing the partitions, and commits exactly
   there,
5. closes the broker, opens it again on the same data, where the group's lag
   is the other 1,000, and
6. resumes the group from its committed offsets to read those 1,000.

It prints the same numbers on every run: consumed = committed = 2,000, lag
after the restart = 3,000 - 2,000 = 1,000.

Every event acknowledged by the producer was fsynced before the
acknowledgement (durability ``always``).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
from typing import Any

import trio

try:
    import headwater
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    import headwater

from headwater.broker import open_broker

TOTAL = 3_000


def first_part(ends: dict[int, int]) -> dict[int, int]:
    """Where the first session stops in each partition: two thirds of it."""
    return {p: end * 2 // 3 for p, end in ends.items()}


async def consume_in_group(
    client: Any, name: str, limits: dict[int, int], seen: dict[tuple[int, int], Any]
) -> None:
    """One group member: read its partitions up to their limits (the two
    members share the partitions, and rebalance while they start), then
    commit exactly the limits of the partitions it owns at the end."""
    async with client.consumer(
        ["orders"], group="billing", start="earliest", session_timeout=3.0, client_id=name
    ) as consumer:
        while len(seen) < sum(limits.values()):
            for event in await consumer.getmany(max_events=100, timeout=0.2):
                if event.offset < limits[event.partition]:
                    seen[(event.partition, event.offset)] = event
        await commit_limits(consumer, limits)


async def commit_limits(consumer: Any, limits: dict[int, int]) -> None:
    """Commit the limit of every partition this member owns (a seek before a
    commit sets the position to commit). If the group rebalanced meanwhile
    (the other member joined or left), take the new assignment and commit
    what this member owns now."""
    for _attempt in range(5):
        for topic, partition in consumer.assignment():
            consumer.seek(topic, partition, limits[partition])
        try:
            await consumer.commit()
            return
        except headwater.StaleGenerationError:
            await consumer.poll_group()


async def main(data_dir: str) -> int:
    print(f"data directory: {data_dir}")
    async with open_broker(data_dir) as broker, broker.connect() as client:
        await client.create_topic("orders", partitions=3)
        async with client.producer() as producer:
            stored = await producer.send_many(
                "orders",
                [({"order": i, "amount": i % 97}, f"user-{i % 50}") for i in range(TOTAL)],
            )
        ends = {p: sum(1 for e in stored if e.partition == p) for p in range(3)}
        print(f"produced {len(stored)} events, fsynced; per partition {list(ends.values())}")
        user7 = {e.partition for e in stored if e.key == "user-7"}
        print(f"every event of user-7 is in partition {user7.pop()}")

        limits = first_part(ends)
        seen: dict[tuple[int, int], Any] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume_in_group, client, "consumer-a", limits, seen)
            nursery.start_soon(consume_in_group, client, "consumer-b", limits, seen)
        committed = {
            p.partition: p.committed for p in (await client.describe_group("billing")).partitions
        }
        print(
            f"group 'billing' (two consumers) consumed {len(seen)} of {TOTAL} events and "
            f"committed offsets {[committed[p] for p in range(3)]} (sum {sum(committed.values())})"
        )
        print(broker.tree().render(stats=False))  # stats vary with timing

    print("\nbroker closed; opening it again on the same data...\n")
    async with open_broker(data_dir) as broker, broker.connect() as client:
        description = await client.describe_group("billing")
        lag = {p.partition: p.lag for p in description.partitions}
        print(
            f"group 'billing' resumes with lag {[lag[p] for p in range(3)]} "
            f"(sum {sum(lag.values())} = {TOTAL} - {sum(committed.values())})"
        )
        resumed = 0
        async with client.consumer(["orders"], group="billing", session_timeout=3.0) as consumer:
            with trio.move_on_after(20):
                while len(seen) < TOTAL:
                    for event in await consumer.getmany(max_events=500, timeout=0.5):
                        resumed += (event.partition, event.offset) not in seen
                        seen[(event.partition, event.offset)] = event
            await consumer.commit()
        orders = sorted(e.value["order"] for e in seen.values())
        ok = orders == list(range(TOTAL))
        print(
            f"after the restart it read the other {resumed}: {len(seen)} distinct events, "
            f"{'all of them, none lost' if ok else 'SOME ARE MISSING'}"
        )
        return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(trio.run(main, sys.argv[1]))
    with tempfile.TemporaryDirectory(prefix="headwater-quickstart-") as tmp:
        sys.exit(trio.run(main, tmp))
