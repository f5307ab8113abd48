"""``Consumer.commit_nowait``: commits queued without waiting, sent in order
one at a time (those queued meanwhile together), waited for by a later
``commit``, a release and a clean close; a failure raised at the next call.

The broker answers commits through a gate that can hold them, so a test
sees exactly which ``CommitOffsets`` requests went out and when."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from headwater import _protocol as p
from headwater._errors import ClosedError, HeadwaterError, ServerBusyError, UnknownMemberError
from headwater.client import Client, LocalChannel

from .real_broker import RealBroker


class CommitGate:
    """Records every commit request (partition, offset rows); holds them
    while ``hold`` is set; fails the next ones with ``failures``."""

    def __init__(self, broker: RealBroker) -> None:
        self.broker = broker
        self.log: list[Any] = []  # ("commit", rows) and ("release", partitions)
        self.hold: trio.Event | None = None
        self.failures: list[HeadwaterError] = []

    @property
    def commits(self) -> list[tuple[tuple[int, int], ...]]:
        return [rows for kind, rows in self.log if kind == "commit"]

    async def handle(self, request: Any) -> Any:
        if isinstance(request, p.CommitOffsets):
            self.log.append(("commit", tuple((r.partition, r.offset) for r in request.offsets)))
            if self.hold is not None:
                await self.hold.wait()
            if self.failures:
                raise self.failures.pop(0)
        elif isinstance(request, p.ReleasePartitions):
            self.log.append(("release", tuple(tp.partition for tp in request.partitions)))
        return await self.broker.handle(request)


@pytest.fixture
async def gate(broker: RealBroker) -> CommitGate:
    return CommitGate(broker)


@pytest.fixture
async def client(gate: CommitGate) -> AsyncIterator[Client]:
    """A client (through the gate) with topics ``t1`` (1 partition) and
    ``t3`` (3), 30 events each."""
    async with Client(LocalChannel(gate.handle)) as c:
        await c.create_topic("t1")
        await c.create_topic("t3", partitions=3)
        async with c.producer(max_batch_events=7) as producer:
            await producer.send_many("t1", list(range(30)))
            await producer.send_many("t3", [{"value": i, "key": f"k{i % 6}"} for i in range(30)])
        yield c


async def committed(client: Client, group: str = "g") -> dict[int, int | None]:
    return {x.partition: x.committed for x in (await client.describe_group(group)).partitions}


async def test_returns_at_once_and_coalesces_what_was_queued_meanwhile(
    client: Client, gate: CommitGate, autojump_clock: object
) -> None:
    """The first commit goes out at once; two queued while it is held go
    together as one request with the newest position; the end state is it."""
    async with client.consumer("t1", group="g") as consumer:
        gate.hold = trio.Event()
        assert 5 == len(await consumer.getmany(5, timeout=1))
        consumer.commit_nowait()  # returns although the broker holds it
        await trio.testing.wait_all_tasks_blocked()
        assert [((0, 5),)] == gate.commits
        assert 5 == len(await consumer.getmany(5, timeout=1))
        consumer.commit_nowait()
        assert 5 == len(await consumer.getmany(5, timeout=1))
        consumer.commit_nowait()
        await trio.testing.wait_all_tasks_blocked()
        assert [((0, 5),)] == gate.commits  # one at a time
        gate.hold.set()
        gate.hold = None
        await trio.testing.wait_all_tasks_blocked()
        assert [((0, 5),), ((0, 15),)] == gate.commits
        assert {0: 15} == await committed(client)


async def test_a_later_commit_waits_for_queued_ones_and_wins(
    client: Client, gate: CommitGate, autojump_clock: object
) -> None:
    """commit() after commit_nowait() goes after it (never overtaken by an
    older offset) and returns once both are stored."""
    async with client.consumer("t3", group="g") as consumer:
        gate.hold = trio.Event()
        consumer.commit_nowait({("t3", 0): 20, ("t3", 1): 4})
        await trio.testing.wait_all_tasks_blocked()  # on its way, held
        consumer.commit_nowait({("t3", 0): 21})  # queued behind it
        done = trio.Event()

        async def commit_now() -> None:
            await consumer.commit({("t3", 0): 3})
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit_now)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            gate.hold.set()
        assert [((0, 20), (1, 4)), ((0, 3),)] == gate.commits
        assert {0: 3, 1: 4, 2: None} == await committed(client)


async def test_a_failed_queued_commit_raises_at_the_next_call(
    client: Client, gate: CommitGate, autojump_clock: object
) -> None:
    """The failure is raised once, by the next commit call (which commits
    nothing); the call after it commits again."""
    async with client.consumer("t1", group="g") as consumer:
        gate.failures.append(ServerBusyError("busy, try again"))
        consumer.commit_nowait({("t1", 0): 4})
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ServerBusyError, match="busy"):
            consumer.commit_nowait({("t1", 0): 6})
        consumer.commit_nowait({("t1", 0): 7})
        await trio.testing.wait_all_tasks_blocked()
        assert [((0, 4),), ((0, 7),)] == gate.commits
        assert {0: 7} == await committed(client)


async def test_a_clean_close_sends_what_is_queued(
    client: Client, gate: CommitGate, autojump_clock: object
) -> None:
    """Leaving the block waits for queued commits (sent before LeaveGroup)."""
    async with client.consumer("t1", group="g") as consumer:
        gate.hold = trio.Event()
        await consumer.getmany(9, timeout=1)
        consumer.commit_nowait({("t1", 0): 2})
        await trio.testing.wait_all_tasks_blocked()  # on its way, held
        consumer.commit_nowait()
        gate.hold.set()
    assert [((0, 2),), ((0, 9),)] == gate.commits
    assert {0: 9} == await committed(client)
    with pytest.raises(ClosedError, match="closed"):
        consumer.commit_nowait()


async def test_queued_rows_taken_by_a_cancelled_commit_go_with_the_next_one(
    client: Client, gate: CommitGate, autojump_clock: object
) -> None:
    """A commit() cancelled while its request is on the way (a timeout
    around it) gives back the commit_nowait rows it took with it: the clean
    close sends them (they used to be dropped)."""
    async with client.consumer("t3", group="g") as consumer:
        first = gate.hold = trio.Event()
        consumer.commit_nowait({("t3", 0): 4})
        await trio.testing.wait_all_tasks_blocked()  # on its way, held
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer.commit, {("t3", 0): 5})
                await trio.testing.wait_all_tasks_blocked()  # waits for the first
                consumer.commit_nowait({("t3", 1): 6})  # queued
                gate.hold = trio.Event()  # the next request is held too
                first.set()
                await trio.testing.wait_all_tasks_blocked()
                # The commit went next, taking the queued row with it.
                assert [((0, 4),), ((0, 5), (1, 6))] == gate.commits
                gate.hold = None  # that one stays held (it never answers)
        assert scope.cancelled_caught
    assert ((1, 6),) in gate.commits[2:]
    assert 6 == (await committed(client))[1]


async def test_a_clean_close_raises_a_queued_failure(
    client: Client, gate: CommitGate, autojump_clock: object
) -> None:
    """A queued commit that failed and was never reported is raised at close."""
    gate.failures.append(ServerBusyError("busy at the end"))
    with pytest.raises(ServerBusyError, match="busy at the end"):
        async with client.consumer("t1", group="g") as consumer:
            consumer.commit_nowait({("t1", 0): 3})
    assert [((0, 3),)] == gate.commits


async def test_queued_commits_go_before_a_release(
    client: Client, gate: CommitGate, autojump_clock: object
) -> None:
    """In a rebalance, commits queued for the released partitions are sent
    before ReleasePartitions, so the next owner starts after them."""
    async with client.consumer("t3", group="g", session_timeout=60.0) as a:
        got = await a.getmany(100, timeout=1)
        assert got
        gate.hold = trio.Event()
        a.commit_nowait()
        await trio.testing.wait_all_tasks_blocked()
        held = gate.commits[-1]
        async with client.consumer("t3", group="g", session_timeout=60.0) as b:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.getmany, 100, 0)  # the poll that releases
                await trio.testing.wait_all_tasks_blocked()
                assert not [kind for kind, _ in gate.log if kind == "release"]
                gate.hold.set()
            releases = [i for i, (kind, _) in enumerate(gate.log) if kind == "release"]
            assert releases
            assert gate.log.index(("commit", held)) < releases[0]
            moved = gate.log[releases[0]][1]
            got_b = await b.getmany(100, timeout=1)
            positions = {e.partition: e.offset for e in got if e.partition in moved}
            for e in got_b:
                assert e.offset >= positions.get(e.partition, -1) + 1


async def test_commits_queued_by_a_member_that_left_are_dropped(
    client: Client, gate: CommitGate, autojump_clock: object
) -> None:
    """A member that left for not polling sends none of its queued commits
    (their partitions have new owners); the one already on its way fails at
    the broker; the app hears UnknownMemberError at its next commit call."""
    config = {"group": "g", "session_timeout": 3.0, "max_poll_interval": 10.0}
    async with client.consumer("t1", **config) as consumer:
        await consumer.getmany(5, timeout=1)
        gate.hold = trio.Event()
        consumer.commit_nowait()
        await trio.testing.wait_all_tasks_blocked()  # on its way, held
        await consumer.getmany(5, timeout=1)
        consumer.commit_nowait()  # queued
        await trio.sleep(15)  # no poll for longer than max_poll_interval: it leaves
        gate.hold.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [((0, 5),)] == gate.commits
        with pytest.raises(UnknownMemberError):
            consumer.commit_nowait()
    assert {} == await committed(client)  # nothing stored for the group
