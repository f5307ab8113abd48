"""Share subscriptions against a real server process killed with SIGKILL.

Rounds of (start, 8 workers acking over TCP, SIGKILL at a random point of
the work).
Across rounds: the subscription's own accounting ends with every event acked
exactly once (acked count == events == ack floor), an event a worker saw
acked (the ack answered) is never delivered again, and an event's delivery
count never goes back. ``HEADWATER_SHARE_KILL_ROUNDS`` sets the rounds
(default 3) and ``HEADWATER_SHARE_KILL_EVENTS`` the events (default 5,000).
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

import headwater
from headwater import HeadwaterError, LockLostError
from headwater._protocol import ShareDescription

from .server_proc import server

pytestmark = pytest.mark.crash

ROUNDS = int(os.environ.get("HEADWATER_SHARE_KILL_ROUNDS", "3"))
EVENTS = int(os.environ.get("HEADWATER_SHARE_KILL_EVENTS", "5000"))


async def worker(url: str, acked: set[int], counts: dict[int, int], seen_twice: list[int]) -> None:
    try:
        async with (
            headwater.connect(url, connect_timeout=5) as client,
            client.subscribe("work", "q", max_unacked=20, ack_timeout=3.0) as sub,
        ):
            while True:
                events = await sub.getmany(20, timeout=0.5)
                for event in events:
                    i = event.value
                    if i in acked:
                        seen_twice.append(i)
                    assert event.delivery_count > counts.get(i, 0), (i, event.delivery_count)
                    counts[i] = event.delivery_count
                try:
                    await sub.ack_many(events)  # each event acked; one request
                except LockLostError:
                    # A lock expired under a slow round (its event comes back
                    # with a higher count): keep working rather than leave the
                    # round a worker short (all eight gone would stall it).
                    continue
                acked.update(e.value for e in events)
    except* HeadwaterError:
        pass  # the server went away: this round is over


def _stall_report(
    d: ShareDescription | None, acked: set[int], counts: dict[int, int], tmp_path: Path
) -> str:
    """What the subscription and the workers saw when the last round stalled."""
    lines = [f"the last round stalled: {len(acked)} of {EVENTS} acked by the workers"]
    if d is None:
        lines.append("  the subscription was never described (describe_group hung)")
    lines.extend(
        f"  partition {part.partition}: acked={part.acked} ack_floor={part.ack_floor} "
        f"end={part.end_offset} backlog={part.backlog} in_flight={part.in_flight} "
        f"waiting={part.waiting} redelivered={part.redelivered} "
        f"dead_lettered={part.dead_lettered}"
        for part in (d.partitions if d is not None else ())
    )
    missing = sorted(set(range(EVENTS)) - acked)[:20]
    seen = [counts.get(i) for i in missing]
    lines.append(f"  not acked (first 20): {missing}, delivery counts seen {seen}")
    lines.append(f"  server logs: {sorted(str(p) for p in tmp_path.glob('round*.log'))}")
    return "\n".join(lines)


async def test_share_subscription_survives_sigkill_rounds(tmp_path: Path) -> None:
    """See the module docstring."""
    rng = random.Random(11)
    data_dir = tmp_path / "data"
    acked: set[int] = set()
    counts: dict[int, int] = {}
    seen_twice: list[int] = []
    for round_no in range(ROUNDS + 1):
        with server(data_dir, log_name=f"round{round_no}.log") as proc:
            if round_no == 0:
                async with headwater.connect(proc.url) as client:
                    await client.create_topic("work", partitions=2)
                    async with client.producer() as producer:
                        await producer.send_many("work", list(range(EVENTS)))
            last = round_no == ROUNDS
            if round_no == 1:
                assert 0 < len(acked) < EVENTS  # the first kill landed mid-work
            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for _ in range(8):
                        nursery.start_soon(worker, proc.url, acked, counts, seen_twice)
                    if last:
                        async with headwater.connect(proc.url) as client:
                            d: Any = None  # what describe_group says last
                            with trio.move_on_after(110) as polling:
                                while True:
                                    await trio.sleep(0.5)
                                    d = await client.describe_group("q")
                                    if sum(p.acked for p in d.partitions) == EVENTS:
                                        break
                            if polling.cancelled_caught:
                                pytest.fail(_stall_report(d, acked, counts, tmp_path))
                        nursery.cancel_scope.cancel()
                    else:
                        # Kill mid-work: once a random share of what is left has
                        # been acked (time alone landed after the end once the
                        # path got faster; 30 s bounds a stall).
                        left = EVENTS - len(acked)
                        target = len(acked) + rng.randint(1, max(1, left // 2))
                        with trio.move_on_after(30):
                            while True:  # the workers fill ``acked`` in this process
                                if len(acked) >= target:
                                    break
                                await trio.sleep(0.005)
                        code = await trio.to_thread.run_sync(proc.stop, signal.SIGKILL)
                        assert -signal.SIGKILL == code
                        nursery.cancel_scope.cancel()
            if last:
                async with headwater.connect(proc.url) as client:
                    d = await client.describe_group("q")
    assert EVENTS == sum(p.acked for p in d.partitions)
    assert EVENTS == sum(p.ack_floor for p in d.partitions)
    assert 0 == sum(p.dead_lettered + p.in_flight for p in d.partitions)
    assert [] == seen_twice  # an answered ack is never followed by a redelivery
    assert set(range(EVENTS)) == set(counts)
