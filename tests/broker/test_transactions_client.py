"""Transactions through the client, embedded and over the TCP protocol:
commit visible, abort and open invisible to read_committed, fencing,
timeouts, bad input."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing

from headwater import (
    ConfigError,
    InvalidTransactionStateError,
    ProducerFencedError,
    TransactionTimedOutError,
)
from headwater.broker import open_broker
from headwater.client import Client
from headwater.journal import SimulatedFileSystem
from headwater.journal._async import AsyncLog

from .conftest import Connect

DATA = "/data"


class Boom(Exception):
    pass


async def read_all(client: Client, isolation: str = "read_committed") -> list[Any]:
    """Every event of topics a and b a consumer at ``isolation`` sees."""
    seen: list[Any] = []
    async with client.consumer(["a", "b"], isolation=isolation, max_wait=0.05) as consumer:
        while True:
            batch = await consumer.getmany(timeout=0.5)
            if not batch:
                break
            seen.extend(batch)
    return sorted((e.topic, e.value) for e in seen)


async def test_commit_abort_and_open(autojump_clock: trio.abc.Clock, connect: Connect) -> None:
    """A committed transaction over two topics is seen whole; an aborted one
    is never seen by read_committed; an open one is seen only by
    read_uncommitted; the consumer's position passes the markers."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("a")
        await client.create_topic("b")
        async with client.producer(transactional_id="w") as producer:
            async with producer.transaction():
                await producer.send("a", "a1")
                await producer.send("b", "b1")
            with pytest.raises(Boom):
                async with producer.transaction():
                    await producer.send("a", "a-aborted")
                    raise Boom
            assert [("a", "a1"), ("b", "b1")] == await read_all(client)
            async with producer.transaction():
                await producer.send("a", "a2")
                assert [("a", "a1"), ("b", "b1")] == await read_all(client)
                assert [("a", "a-aborted"), ("a", "a1"), ("a", "a2"), ("b", "b1")] == sorted(
                    await read_all(client, "read_uncommitted")
                )
        assert [("a", "a1"), ("a", "a2"), ("b", "b1")] == await read_all(client)
        desc = await client.describe_topic("a")
        # a1, commit, aborted, abort, a2, commit
        assert (6, 6) == (desc.partitions[0].next_offset, desc.partitions[0].last_stable_offset)
        async with client.consumer(["a"], max_wait=0.05) as consumer:
            events = await consumer.getmany(timeout=0.5)
            assert ["a1", "a2"] == [e.value for e in events]
            await consumer.getmany(timeout=0.5)
            assert 6 == consumer.position("a", 0)


async def test_a_second_instance_fences_the_first(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """Two instances with one transactional id: the newer one aborts what the
    older left open, and the older one's commit is ProducerFencedError."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("a")
        await client.create_topic("b")
        async with client.producer(transactional_id="w") as zombie:
            with pytest.raises(ProducerFencedError):
                async with zombie.transaction():
                    await zombie.send("a", "zombie")
                    async with (
                        client.producer(transactional_id="w") as fresh,
                        fresh.transaction(),
                    ):
                        await fresh.send("b", "fresh")
        assert [("b", "fresh")] == await read_all(client)


async def test_timeout_aborts(autojump_clock: trio.abc.Clock, connect: Connect) -> None:
    """A transaction left open past transaction_timeout is aborted by the
    broker; leaving the block then raises TransactionTimedOutError and
    nothing of it is seen."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("a")
        await client.create_topic("b")
        async with client.producer(transactional_id="w", transaction_timeout=1.0) as producer:
            with pytest.raises(TransactionTimedOutError):
                async with producer.transaction():
                    await producer.send("a", "slow")
                    await trio.sleep(2.0)
        assert [] == await read_all(client)


async def test_bad_input(autojump_clock: trio.abc.Clock, connect: Connect) -> None:
    """Sending outside a transaction, a second transaction while one is open,
    transaction() without a transactional id and a bad id are typed errors."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("a")
        await client.create_topic("b")
        with pytest.raises(ConfigError):
            client.producer(transactional_id="")
        with pytest.raises(ConfigError):
            client.consumer(["a"], isolation="dirty")
        async with client.producer(transactional_id="w") as producer:
            with pytest.raises(InvalidTransactionStateError):
                await producer.send("a", "outside")
            async with producer.transaction():
                with pytest.raises(InvalidTransactionStateError):
                    async with producer.transaction():
                        pass
                await producer.send("a", "inside")
        async with client.producer() as plain:
            with pytest.raises(InvalidTransactionStateError):
                async with plain.transaction():
                    pass
        assert [("a", "inside")] == await read_all(client)


async def _copy_round(client: Client, abort: bool) -> list[str]:
    """One read-process-write round in group "copier": read what is there,
    write it to a and b, send the offsets, commit (or abort)."""
    got: list[str] = []
    async with (
        client.consumer(["in"], group="copier", max_wait=0.05) as consumer,
        client.producer(transactional_id="copier-0") as producer,
    ):
        events = await consumer.getmany(timeout=1.0)
        with pytest.raises(Boom) if abort else contextlib.nullcontext():
            async with producer.transaction():
                for e in events:
                    await producer.send("a", e.value)
                    await producer.send("b", e.value)
                m = consumer.membership
                assert m is not None
                await producer.send_offsets(
                    "copier",
                    {(e.topic, e.partition): e.offset + 1 for e in events},
                    generation=m.generation,
                    member_id=m.member_id,
                )
                got = [e.value for e in events]
                if abort:
                    raise Boom
    return got


async def test_offsets_commit_with_the_transaction(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """send_offsets: an aborted round leaves the group's offset where it was
    (the next round reads the same input again); a committed round moves it
    with the outputs, so each input's effect is in the read_committed output
    exactly once."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        for topic in ("in", "a", "b"):
            await client.create_topic(topic)
        async with client.producer() as plain:
            await plain.send_many("in", ["x0", "x1", "x2"])
        assert ["x0", "x1", "x2"] == await _copy_round(client, abort=True)
        assert [] == await read_all(client)
        assert ["x0", "x1", "x2"] == await _copy_round(client, abort=False)
        async with client.producer() as plain:
            await plain.send("in", "x3")
        assert ["x3"] == await _copy_round(client, abort=False)
        expected = [("a", f"x{i}") for i in range(4)] + [("b", f"x{i}") for i in range(4)]
        assert expected == await read_all(client)
        desc = await client.describe_group("copier")
        assert [4] == [p.committed for p in desc.partitions]


async def test_group_lag_is_measured_against_the_last_stable_offset(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """An open transaction does not count as lag: a group that read every
    committed event has lag 0 while another producer's transaction is open."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("a")
        await client.create_topic("b")
        async with client.producer(transactional_id="w") as producer:
            async with producer.transaction():
                await producer.send("a", "committed")
            async with client.consumer("a", group="g", max_wait=0.05) as consumer:
                assert ["committed"] == [e.value for e in await consumer.getmany(timeout=1.0)]
                await consumer.getmany(timeout=0.2)  # moves past the marker
                await consumer.commit()
            async with producer.transaction():
                await producer.send("a", "open")
                desc = await client.describe_group("g")
                assert [(2, 2, 0)] == [(p.committed, p.end_offset, p.lag) for p in desc.partitions]


async def test_compaction_ignores_aborted_values_and_stops_at_the_lso(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """DECISIONS #18: an aborted write of a key never makes compaction drop the
    key's committed value; nothing at or past the last stable offset is
    compacted while a transaction is open."""
    fs = SimulatedFileSystem()
    opts: dict[str, Any] = {"fs": fs, "segment_bytes": 600, "retention_check_interval": 5.0}
    async with open_broker(DATA, **opts) as broker, connect(broker) as client:
        await client.create_topic("a", compacted=True)
        await client.create_topic("b")
        async with client.producer(max_batch_events=1) as plain:
            for i in range(3):  # a segment's first event always stays: not v1
                await plain.send("a", i, key=f"filler-{i % 2}")
            kept = await plain.send("a", "v1", key="k")
            for i in range(10):
                await plain.send("a", i, key=f"filler-{i % 2}")
        async with client.producer(transactional_id="w", max_batch_events=1) as producer:
            with pytest.raises(Boom):
                async with producer.transaction():
                    await producer.send("a", "v2-aborted", key="k")
                    raise Boom
            async with client.producer(max_batch_events=1) as plain:
                for i in range(10):
                    await plain.send("a", i, key=f"filler-{i % 2}")
            async with producer.transaction():
                await producer.send("a", "open", key="k")
                async with client.producer(max_batch_events=1) as plain:
                    for i in range(10):
                        await plain.send("a", i, key=f"filler-{i % 2}")
                before = await read_all_of(client, "a", "read_uncommitted")
                await trio.sleep(6)  # a maintenance pass compacts
                after = await read_all_of(client, "a", "read_uncommitted")
                values = {e.offset: e.value for e in after}
                assert "v1" == values[kept.offset]
                open_offset = next(e.offset for e in before if e.value == "open")
                assert [e.offset for e in before if e.offset >= open_offset] == [
                    e.offset for e in after if e.offset >= open_offset
                ]
                assert len(after) < len(before)  # something below the LSO was compacted


async def read_all_of(client: Client, topic: str, isolation: str) -> list[Any]:
    out: list[Any] = []
    async with client.consumer(topic, isolation=isolation, max_wait=0.05) as consumer:
        while batch := await consumer.getmany(timeout=0.5):
            out.extend(batch)
    return out


async def test_partitions_of_the_last_transaction_are_added_ahead(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """The next transaction adds the last one's partitions when it begins:
    a transaction that then writes nothing and outlives its timeout ends
    quietly (the producer carries on under a new epoch), and a topic of the
    last transaction deleted since does not fail sends to the others."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("a")
        await client.create_topic("b")
        await client.create_topic("c")
        async with client.producer(transactional_id="w", transaction_timeout=1.0) as producer:
            async with producer.transaction():
                await producer.send("a", "a1")
                await producer.send("c", "c1")
            async with producer.transaction():
                await trio.sleep(2.0)  # aborted by the broker, nothing sent
            epoch = producer.identity.epoch if producer.identity else -1
            await client.delete_topic("c")
            async with producer.transaction():
                await producer.send("a", "a2")
                await producer.send("b", "b2")
            assert producer.identity is not None
            assert epoch == producer.identity.epoch
        assert [("a", "a1"), ("a", "a2"), ("b", "b2")] == await read_all(client)
        desc = await client.describe_transaction("w")
        assert ("complete_commit", 2) == (desc.state, desc.epoch)


async def test_a_member_keeps_a_partition_until_its_transaction_ends(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """DECISIONS #19: a member sent offsets in an open transaction; a second
    member joins and the first releases at its next poll, yet the partition
    moves only once the transaction commits (the second member then starts
    after the committed offsets, so no input is processed twice). The
    second member's reads of the unstable offset never restart the group."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("in", partitions=2)
        await client.create_topic("a")
        async with client.producer() as plain:
            await plain.send("in", "x0", partition=0)
            await plain.send("in", "x1", partition=1)
        async with (
            client.consumer(["in"], group="copier", max_wait=0.05) as first,
            client.producer(transactional_id="copier-0") as producer,
        ):
            events = await first.getmany(timeout=1.0)
            events += await first.getmany(timeout=1.0)
            assert ["x0", "x1"] == sorted(e.value for e in events)
            async with producer.transaction():
                for e in events:
                    await producer.send("a", e.value)
                m = first.membership
                assert m is not None
                await producer.send_offsets(
                    "copier",
                    {(e.topic, e.partition): e.offset + 1 for e in events},
                    generation=m.generation,
                    member_id=m.member_id,
                )
                async with client.consumer(["in"], group="copier", max_wait=0.05) as second:
                    await trio.sleep(1.0)
                    await first.poll_group()  # on_revoked, then the release
                    await trio.sleep(1.0)
                    await second.poll_group()
                    assert [] == second.assignment()
                    desc = await client.describe_group("copier")
                    assert ("preparing_rebalance", [2, 0]) == (
                        desc.state,
                        [len(mb.assignment) for mb in desc.members],
                    )
            async with client.consumer(["in"], group="copier", max_wait=0.05) as second:
                await first.poll_group()
                got = await second.getmany(timeout=1.0)
                assert [] == got
                assert 1 == len(second.assignment())
        # An unstable-offset answer is an answer, not a crash of the group.
        [node] = [n for n in broker.system.tree().walk() if n.path == "/broker/groups/copier"]
        assert 0 == node.restarts


@pytest.mark.parametrize(("work", "per_txn", "commit"), [(0.0, 4.0, 4.0), (5.0, 6.0, 1.0)])
async def test_a_transactions_critical_path_in_fsyncs(
    autojump_clock: trio.abc.Clock,
    monkeypatch: pytest.MonkeyPatch,
    work: float,
    per_txn: float,
    commit: float,
) -> None:
    """Every fsync takes 1 ms of virtual time, nothing else does: a
    producer that only commits pays 4 sequential fsyncs a transaction (the
    last markers, then the completion and next add together, the batch, the
    decision); with 5 ms of application work in the block, leaving it waits
    for the decision alone (1 ms), the rest overlapped. (It was 5 and 3.)"""
    real_run = AsyncLog._run

    async def slow_fsync(self: AsyncLog, work: Any) -> None:
        await trio.sleep(0.001)
        await real_run(self, work)

    monkeypatch.setattr(AsyncLog, "_run", slow_fsync)
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, broker.connect() as client:
        await client.create_topic("a", partitions=4)
        async with client.producer(transactional_id="w", linger=0.002) as producer:
            await producer.partitions_of("a")
            for _ in range(2):
                async with producer.transaction():
                    producer.send_nowait("a", "warm-up")
            began = trio.current_time()
            commits = []
            for _ in range(10):
                async with producer.transaction():
                    for i in range(100):
                        producer.send_nowait("a", i)
                    await trio.sleep(work / 1000)
                    left = trio.current_time()
                commits.append(round((trio.current_time() - left) * 1000, 6))
            elapsed = (trio.current_time() - began) * 1000 / 10
        assert (per_txn, [commit] * 10) == (round(elapsed, 6), commits)


async def test_unstable_offset_is_a_refusal_not_a_crash_of_the_group(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """Reading a group's committed offset while a transaction holds offsets
    for it answers UnstableOffsetError (retriable), and the group actor
    keeps running: before, it crashed and restarted at every such read,
    and the transaction coordinator, completing the offsets of a commit at
    that moment, crashed with ActorRestarted (seen when a restarted
    processing copy resolved its positions)."""
    from headwater import UnstableOffsetError
    from headwater import _protocol as p

    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("in")
        await client.create_topic("out")
        async with client.producer(transactional_id="t") as producer:
            await producer.partitions_of("out")
            async with producer.transaction():
                producer.send_nowait("out", "x")
                await producer.send_offsets("copier", {("in", 0): 1})
                for _ in range(3):
                    with pytest.raises(UnstableOffsetError, match="open transaction"):
                        await client._ask(  # type: ignore[attr-defined]
                            p.FetchCommitted("copier", (p.TopicPartition("in", 0),))
                        )
        await trio.testing.wait_all_tasks_blocked()  # phase two completes the group
        desc = await client.describe_group("copier")
        assert [1] == [x.committed for x in desc.partitions]
        restarts = {
            n.path: n.restarts
            for n in broker.system.tree().walk()
            if n.path in ("/broker/groups/copier", "/broker/transactions")
        }
        assert {"/broker/groups/copier": 0, "/broker/transactions": 0} == restarts


async def test_a_consumer_starting_while_its_groups_offset_is_pending_waits_for_it(
    autojump_clock: trio.abc.Clock, connect: Connect
) -> None:
    """A consumer of group g that starts while a transaction holds g's offset
    retries the unstable offset (every 0.1 s) until the transaction commits,
    then starts at the committed offset; the group actor never restarts
    (each retry crashed it before, and the group was parked as failed
    within a second)."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, connect(broker) as client:
        await client.create_topic("in")
        async with client.producer() as plain:
            await plain.send_many("in", ["x0", "x1", "x2"])
        got: list[tuple[float, list[Any]]] = []
        async with (
            client.producer(transactional_id="w") as producer,
            trio.open_nursery() as n,
            producer.transaction(),
        ):
            await producer.send_offsets("g", {("in", 0): 2})

            async def consume() -> None:
                async with client.consumer(["in"], group="g", max_wait=0.05) as consumer:
                    events = await consumer.getmany(timeout=5.0)
                    got.append((trio.current_time(), [e.value for e in events]))

            n.start_soon(consume)
            await trio.sleep(2.0)
            committed_at = trio.current_time()
        ((at, values),) = got
        assert ["x2"] == values
        assert at >= committed_at
        node = next(n for n in broker.system.tree().walk() if n.path == "/broker/groups/g")
        assert (0, "running") == (node.restarts, node.state)
