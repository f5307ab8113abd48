"""Consumer groups end to end, embedded and over the TCP protocol (MockClock,
simulated disk): members join and leave while others read and commit."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from headwater import UnknownTopicError
from headwater.broker import open_broker
from headwater.client import Client
from headwater.journal import SimulatedFileSystem

from .conftest import Connect

TOPIC = "orders"
PARTITIONS = 4


class Ledger:
    """Who owns each partition, as the members' callbacks say, and every
    violation of "one reader per partition at a time"."""

    def __init__(self) -> None:
        self.owner: dict[tuple[str, int], str | None] = {}
        self.violations: list[str] = []
        self.read: dict[tuple[int, int], int] = {}
        self.members: set[str] = set()
        self.target = 0
        self.all_read = trio.Event()

    def expect(self, n: int) -> None:
        """Set ``all_read`` once ``n`` distinct events were read."""
        self.target = n
        if len(self.read) >= n:
            self.all_read.set()

    def assigned(self, name: str, tps: list[tuple[str, int]]) -> None:
        for tp in tps:
            if self.owner.get(tp) is not None:
                self.violations.append(f"{name} got {tp} while {self.owner[tp]} owns it")
            self.owner[tp] = name
            self.members.add(name)

    def revoked(self, name: str, tps: list[tuple[str, int]]) -> None:
        for tp in tps:
            if self.owner.get(tp) != name:
                self.violations.append(f"{name} gave up {tp} owned by {self.owner.get(tp)}")
            self.owner[tp] = None

    def saw(self, name: str, events: list[Any]) -> None:
        for e in events:
            if self.owner.get((e.topic, e.partition)) != name:
                self.violations.append(f"{name} read {e.partition}@{e.offset} without owning it")
            key = (e.partition, e.offset)
            self.read[key] = self.read.get(key, 0) + 1
        if self.target and len(self.read) >= self.target:
            self.all_read.set()


async def _member(
    client: Client, ledger: Ledger, name: str, polls: int | None, done: trio.Event
) -> None:
    """Read and commit in a loop; ``polls=None`` reads until ``done``."""
    async with client.consumer(
        TOPIC,
        group="g",
        client_id=name,
        max_wait=0.1,
        on_assigned=lambda tps: ledger.assigned(name, tps),
        on_revoked=lambda tps: ledger.revoked(name, tps),
    ) as consumer:
        n = 0
        while (polls is None and not done.is_set()) or (polls is not None and n < polls):
            events = await consumer.getmany(20, timeout=0.2)
            ledger.saw(name, events)
            await consumer.commit()  # never raises in the normal flow
            n += 1


async def test_members_join_and_leave_while_others_read_and_commit(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """Two long-lived members read and commit in a loop while three more join
    and leave: no commit fails (no StaleGenerationError), no partition is
    read by two members at once, committed offsets only go forward, and
    every event is read."""
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        connect(broker) as client,
    ):
        await client.create_topic(TOPIC, partitions=PARTITIONS)
        ledger = Ledger()
        committed: dict[int, int] = {}
        done = trio.Event()
        total = 0

        async def produce() -> None:
            nonlocal total
            async with client.producer() as producer:
                for round_ in range(20):
                    await producer.send_many(TOPIC, [{"value": round_ * 25 + i} for i in range(25)])
                    total += 25
                    await trio.sleep(0.3)

        async def watch_commits() -> None:
            while not done.is_set():
                for x in (await client.describe_group("g")).partitions:
                    if x.committed is not None:
                        before = committed.get(x.partition, 0)
                        assert x.committed >= before, f"commit of {x.partition} went back"
                        committed[x.partition] = x.committed
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_member, client, ledger, "a", None, done)
            nursery.start_soon(_member, client, ledger, "b", None, done)
            await trio.sleep(0.5)
            nursery.start_soon(watch_commits)
            async with trio.open_nursery() as churn:
                churn.start_soon(produce)
                for i, polls in enumerate((5, 9, 3, 7)):
                    await trio.sleep(0.7)
                    churn.start_soon(_member, client, ledger, f"c{i}", polls, trio.Event())
            ledger.expect(total)
            with trio.fail_after(30):
                await ledger.all_read.wait()
            done.set()
        assert [] == ledger.violations
        assert {"a", "b", "c0", "c1", "c2", "c3"} == ledger.members  # every one got partitions
        assert total == 500
        assert set(ledger.read) == {
            (p, o)
            for p in range(PARTITIONS)
            for o in range(max((o + 1 for q, o in ledger.read if q == p), default=0))
        }
        description = await client.describe_group("g")
        assert "empty" == description.state
        ends = {x.partition: x.end_offset for x in description.partitions}
        assert total == sum(ends.values())
        assert ends == {x.partition: x.committed for x in description.partitions}


@pytest.mark.parametrize("group", ["g", None])
async def test_a_missing_topic_leaves_the_consumer_as_a_typed_error(
    autojump_clock: trio.abc.Clock, connect: Connect, group: str | None
) -> None:
    """``except UnknownTopicError`` catches it, embedded and remote; the
    client stays usable."""
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        connect(broker) as client,
    ):
        with pytest.raises(UnknownTopicError, match="no-such-topic"):
            async with client.consumer("no-such-topic", group=group):
                pass  # pragma: no cover
        await client.create_topic("t")
        async with client.consumer("t", group=group) as consumer:
            assert [] == await consumer.getmany(timeout=0.1)


async def test_a_protocol_v1_client_still_works_in_a_group(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that speaks only version 1 (no pushes, no releases) joins a
    group beside a v2 client: it connects at version 1, reads and commits;
    its partitions move at once as in v1, and the v2 member's commits all go
    through."""
    from contextlib import AsyncExitStack
    from functools import partial

    from headwater.broker import open_server
    from headwater.client import _tcp
    from headwater.testing import connect_in_memory
    from headwater.transport import ClientConnection

    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        open_server(broker, listen=False) as server,
        AsyncExitStack() as stack,
    ):
        with monkeypatch.context() as patch:
            patch.setattr(_tcp, "ClientConnection", partial(ClientConnection, versions=[1]))
            old = await stack.enter_async_context(connect_in_memory(server))
        new = await stack.enter_async_context(connect_in_memory(server))
        await new.create_topic(TOPIC, partitions=PARTITIONS)
        async with new.producer() as producer:
            await producer.send_many(TOPIC, [{"value": i, "key": f"k{i}"} for i in range(200)])
        async with new.consumer(TOPIC, group="g") as v2:
            first = await v2.getmany(10, timeout=1)
            async with old.consumer(TOPIC, group="g", session_timeout=3.0) as v1:
                await v2.getmany(10, timeout=0)  # v2 releases what the v1 member gets
                await v2.commit()
                got_v1: list[Any] = []
                with trio.fail_after(10):
                    while not got_v1:
                        got_v1 += await v1.getmany(50, timeout=0.5)
                await v1.commit()
                assert v1.assignment()
                assert not set(v1.assignment()) & set(v2.assignment())
            rest = await v2.getmany(50, timeout=1)
            await v2.commit()
        assert first
        assert rest
        description = await new.describe_group("g")
        assert all(x.committed is not None for x in description.partitions)
        versions = [c._channel._session.conn.version for c in (old, new)]  # type: ignore[attr-defined]
        assert [1, 2] == versions


async def test_rebalance_notices_are_pushed_at_once(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """Heartbeats every 20 s, yet a member waiting in a poll releases at once
    when a second member joins, and the second member gets its partitions at
    once: the notices are pushed (embedded, and over TCP as protocol v2)."""
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        connect(broker) as client,
    ):
        await client.create_topic(TOPIC, partitions=PARTITIONS)
        config = {"group": "g", "session_timeout": 60.0}
        async with client.consumer(TOPIC, **config) as a, trio.open_nursery() as nursery:
            nursery.start_soon(a.getmany, 10, 30.0)  # a waits inside a poll
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            async with client.consumer(TOPIC, **config) as b:
                await b.getmany(10, timeout=0)
                await trio.testing.wait_all_tasks_blocked()
                assert b.assignment()
                assert trio.current_time() - start < 1.0  # the first heartbeat is at 20 s
                assert 2 == len(a.assignment()) == len(b.assignment())
            nursery.cancel_scope.cancel()


async def test_a_topic_deleted_under_a_reader_leaves_as_a_typed_error(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """A failure in the consumer's own tasks (its fetcher meets a deleted
    topic) ends the block with that typed error, not an exception group."""
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        connect(broker) as client,
    ):
        await client.create_topic("t")
        with pytest.raises(UnknownTopicError):
            async with client.consumer("t") as consumer:
                await client.delete_topic("t")
                with trio.fail_after(10):
                    await consumer.getmany(timeout=5)
                    await consumer.getmany(timeout=5)


async def test_static_members_refuse_a_twin_and_a_restart_takes_over_in_place(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """DECISIONS #22, embedded and remote: a member with the instance id of a
    live member is refused with MemberInstanceInUseError; once the holder's
    session ended (it died: no heartbeats), a consumer with that instance id
    takes over its partitions at the same generation, and the other copy
    sees no rebalance."""
    from headwater import MemberInstanceInUseError
    from headwater import _protocol as p

    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        connect(broker) as client,
    ):
        await client.create_topic(TOPIC, partitions=PARTITIONS)
        config: dict[str, Any] = {"group": "job", "session_timeout": 2.0}
        async with client.consumer(TOPIC, group_instance_id="1", **config) as one:
            # A copy that joins as instance 0 and then dies (never heartbeats).
            dead = await client._ask(  # type: ignore[attr-defined]
                p.JoinGroup("job", (TOPIC,), None, 2.0, "dead", 30.0, instance_id="0")
            )
            await one.getmany(10, timeout=0.5)  # one releases what the dead copy gets
            await trio.testing.wait_all_tasks_blocked()
            generation = one.membership.generation  # type: ignore[union-attr]
            held = sorted(
                (x.topic, x.partition)
                for x in (await client.describe_group("job")).members[0].assignment
            )
            with pytest.raises(MemberInstanceInUseError, match="instance '0'"):
                async with client.consumer(TOPIC, group_instance_id="0", **config):
                    pass  # pragma: no cover
            await trio.sleep(2.5)  # the dead copy's session ends
            async with client.consumer(TOPIC, group_instance_id="0", **config) as zero:
                assert generation == zero.membership.generation  # type: ignore[union-attr]
                assert 2 == len(zero.assignment()) == len(one.assignment())
                await one.getmany(10, timeout=0.1)
                assert generation == one.membership.generation  # type: ignore[union-attr]
                description = await client.describe_group("job")
                assert dead.member_id not in {m.member_id for m in description.members}
                assert {"0", "1"} == {m.instance_id for m in description.members}
        assert held
