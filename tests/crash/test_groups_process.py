"""The README's group program against a real `headwater serve`: two consumers
in one group, each committing after every event, while the second joins
(issue 11 point 8: the first commit after the join used to raise
StaleGenerationError). Real clock and sockets, bounded by `fail_after`."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import headwater
from headwater.client import Event

from .server_proc import server

pytestmark = pytest.mark.crash

EVENTS = 600


async def test_two_readme_consumers_in_a_group_commit_without_errors(tmp_path: Path) -> None:
    """Both consumers read and commit in `async for`; none of their commits
    raises, no event is read by both (the first commits each event before the
    partition moves), and the group's committed offsets reach the end."""
    with server(tmp_path / "data") as proc:
        async with headwater.connect(proc.url) as admin:
            await admin.create_topic("orders", partitions=3)
            async with admin.producer() as producer:
                await producer.send_many(
                    "orders", [{"value": {"id": i}, "key": f"order-{i}"} for i in range(EVENTS)]
                )
        seen: dict[str, list[Event]] = {"a": [], "b": []}
        all_read = trio.Event()
        b_may_join = trio.Event()

        async def member(name: str) -> None:
            async with (
                headwater.connect(proc.url) as client,
                client.consumer("orders", group="billing", start="earliest") as consumer,
            ):
                async for event in consumer:  # the README's loop
                    seen[name].append(event)
                    await consumer.commit()
                    if len(seen["a"]) >= 50:
                        b_may_join.set()
                    if len({(e.partition, e.offset) for e in seen["a"] + seen["b"]}) >= EVENTS:
                        all_read.set()
                    await trio.sleep(0.001)  # some work per event

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(member, "a")
                await b_may_join.wait()
                nursery.start_soon(member, "b")
                await all_read.wait()
                nursery.cancel_scope.cancel()  # both wait for events that will not come
        assert seen["b"], "the second member never got a partition"
        a_reads = {(e.partition, e.offset) for e in seen["a"]}
        b_reads = {(e.partition, e.offset) for e in seen["b"]}
        assert set() == a_reads & b_reads
        assert EVENTS == len(a_reads | b_reads)
        async with headwater.connect(proc.url) as admin:
            description = await admin.describe_group("billing")
        assert [(x.partition, x.end_offset) for x in description.partitions] == [
            (x.partition, x.committed) for x in description.partitions
        ]
