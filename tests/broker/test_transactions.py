"""Transactions inside the embedded broker: the coordinator actor, markers,
the last stable offset and the aborted index, fencing, timeouts, recovery.

The client API is not built yet, so these tests speak to the actors the way
the service will: transactional batches through Produce, the coordinator
through its messages."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from headwater import (
    InvalidArgument,
    InvalidTransactionStateError,
    ProducerFencedError,
    TransactionTimedOutError,
    UnknownTransactionalIdError,
    UnstableOffsetError,
)
from headwater._protocol import (
    AddPartitionsToTxn,
    CreateTopic,
    DescribeTransaction,
    EndTxn,
    Fetch,
    FetchCommitted,
    InitTransactions,
    ListTransactions,
    PartitionOffset,
    Produce,
    ProducerIdentity,
    SendOffsetsToTxn,
    TopicPartition,
)
from headwater.broker import Broker, open_broker
from headwater.broker._actors import GetLog, GetStableView, StableView, WriteMarker
from headwater.broker._stable import AbortedTxn
from headwater.broker._txn_actor import ask_coordinator
from headwater.journal import SimulatedFileSystem, encode_record, iter_records
from headwater.journal._record import ATTR_COMMIT, ATTR_CONTROL, ATTR_TRANSACTIONAL, HEADER_SIZE
from headwater.journal._state import open_state_journal
from headwater.testing import capture_logs

DATA = "/data"


def txn_batch(ident: ProducerIdentity, seq: int, count: int = 1) -> bytes:
    return encode_record(
        b"e%d" % seq,
        count=count,
        attributes=ATTR_TRANSACTIONAL,
        producer_id=ident.producer_id,
        producer_epoch=ident.epoch,
        base_sequence=seq,
    )


async def ask(broker: Broker, message: Any) -> Any:
    return await ask_coordinator(broker.system.lookup("/broker/transactions"), message)


async def end(broker: Broker, ident: ProducerIdentity, commit: bool) -> None:
    """End ``w``'s transaction, then let phase two run: the answer comes once
    the decision is durable, the markers follow."""
    await ask(broker, EndTxn("w", ident.producer_id, ident.epoch, commit))
    await trio.testing.wait_all_tasks_blocked()


async def view(broker: Broker, topic: str, partition: int = 0) -> StableView:
    ref = broker.system.lookup(f"/broker/topics/{topic}/{partition}")
    result: StableView = await ref.ask(GetStableView())
    return result


async def read(broker: Broker, topic: str, *, committed: bool) -> list[tuple[int, int]]:
    """(offset, attributes) of what a fetch at the given isolation returns."""
    isolation = "read_committed" if committed else "read_uncommitted"
    got = await broker.handle(Fetch(topic, 0, 0, max_wait=0, isolation=isolation))
    return [(h.base_offset, h.attributes) for h, _ in iter_records(got.records)]


async def setup(broker: Broker) -> ProducerIdentity:
    await broker.handle(CreateTopic("a"))
    await broker.handle(CreateTopic("b"))
    ident: ProducerIdentity = await ask(broker, InitTransactions("w", 10.0))
    return ident


async def begin(broker: Broker, ident: ProducerIdentity, seq: int = 0) -> None:
    """Add a/0 and b/0, write two events to a/0 and one to b/0 (sequences
    ``seq`` on a/0 and ``seq // 2`` on b/0)."""
    await ask(
        broker,
        AddPartitionsToTxn(
            "w", ident.producer_id, ident.epoch, (TopicPartition("a", 0), TopicPartition("b", 0))
        ),
    )
    await broker.handle(Produce("a", 0, txn_batch(ident, seq, count=2)))
    await broker.handle(Produce("b", 0, txn_batch(ident, seq // 2)))


async def test_commit_makes_both_partitions_stable(autojump_clock: trio.abc.Clock) -> None:
    """Open: read_committed sees nothing (LSO at the first offset),
    read_uncommitted sees the batches; after commit both partitions hold a
    commit marker at the next offset and read_committed sees the batches."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        ident = await setup(broker)
        assert ProducerIdentity(1, 0) == ident
        await broker.handle(Produce("a", 0, encode_record(b"plain", count=1)))
        await begin(broker, ident)
        assert StableView(1, 3, ()) == await view(broker, "a")
        assert [(0, 0)] == await read(broker, "a", committed=True)
        assert [(0, 0), (1, ATTR_TRANSACTIONAL)] == await read(broker, "a", committed=False)
        assert "ongoing" == (await ask(broker, DescribeTransaction("w"))).state
        await end(broker, ident, True)
        assert StableView(4, 4, ()) == await view(broker, "a")
        assert StableView(2, 2, ()) == await view(broker, "b")
        assert [(0, 0), (1, ATTR_TRANSACTIONAL)] == await read(broker, "a", committed=True)
        got = await broker.handle(Fetch("a", 0, 3, max_wait=0, isolation="read_uncommitted"))
        assert (b"", 4, 4) == (got.records, got.next_offset, got.last_stable_offset)
        log = await broker.system.lookup("/broker/topics/a/0").ask(GetLog())
        [(marker, _)] = iter_records(await log.read(3, 1 << 20))
        assert (3, ATTR_CONTROL | ATTR_COMMIT) == (marker.base_offset, marker.attributes)
        meta = await ask(broker, DescribeTransaction("w"))
        assert ("complete_commit", ()) == (meta.state, meta.pending_partitions)


async def test_abort_is_invisible_to_read_committed(autojump_clock: trio.abc.Clock) -> None:
    """An aborted transaction enters each partition's aborted index; the next
    transaction of the same producer commits and is seen."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        ident = await setup(broker)
        await begin(broker, ident)
        await end(broker, ident, False)
        assert StableView(3, 3, (AbortedTxn(ident.producer_id, 0, 2),)) == await view(broker, "a")
        assert [] == await read(broker, "a", committed=True)
        assert [(0, ATTR_TRANSACTIONAL)] == await read(broker, "a", committed=False)
        await begin(broker, ident, seq=2)
        await end(broker, ident, True)
        assert [(3, ATTR_TRANSACTIONAL)] == await read(broker, "a", committed=True)


async def test_a_new_instance_fences_the_zombie(autojump_clock: trio.abc.Clock) -> None:
    """A second instance with the same id aborts what the first left open
    (markers written before it gets its identity); the first one's sends and
    its commit are then ProducerFencedError."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        zombie = await setup(broker)
        await begin(broker, zombie)
        fresh = await ask(broker, InitTransactions("w", 10.0))
        assert ProducerIdentity(zombie.producer_id, 2) == fresh
        assert (AbortedTxn(zombie.producer_id, 0, 2),) == (await view(broker, "a")).aborted
        with pytest.raises(ProducerFencedError):
            await broker.handle(Produce("a", 0, txn_batch(zombie, 2)))
        with pytest.raises(ProducerFencedError):
            await end(broker, zombie, True)
        await begin(broker, fresh)
        await end(broker, fresh, True)
        assert [(3, ATTR_TRANSACTIONAL)] == await read(broker, "a", committed=True)


async def test_a_zombie_calling_again_and_again_does_not_crash_the_coordinator(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Fenced, timed-out and concurrent refusals are the caller's problem: ten
    fenced EndTxn calls in a row leave the coordinator actor without a
    restart (it used to crash on each, and the sixth within 10 s stopped the
    whole broker), and the current instance still commits."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        zombie = await setup(broker)
        fresh = await ask(broker, InitTransactions("w", 10.0))
        for _ in range(10):
            with pytest.raises(ProducerFencedError):
                await broker.handle(EndTxn("w", zombie.producer_id, zombie.epoch, True))
            with pytest.raises(ProducerFencedError):
                await broker.handle(
                    AddPartitionsToTxn(
                        "w", zombie.producer_id, zombie.epoch, (TopicPartition("a", 0),)
                    )
                )
        node = next(n for n in broker.system.tree().walk() if n.path == "/broker/transactions")
        assert 0 == node.restarts
        await begin(broker, fresh)
        await broker.handle(EndTxn("w", fresh.producer_id, fresh.epoch, True))
        await trio.testing.wait_all_tasks_blocked()  # the markers follow the answer
        assert [(0, ATTR_TRANSACTIONAL)] == await read(broker, "a", committed=True)


async def test_readers_waiting_out_pending_offsets_do_not_crash_the_group(
    autojump_clock: trio.abc.Clock,
) -> None:
    """While a transaction holds a group's offset, every read of it is the
    retriable UnstableOffsetError and the group actor carries on: ten reads
    leave it without a restart (each crashed it before, and the sixth within
    10 s parked the group as failed); after the commit the offset is read."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        ident = await setup(broker)
        await broker.handle(
            SendOffsetsToTxn(
                "w", ident.producer_id, ident.epoch, "g", None, -1, (PartitionOffset("a", 0, 5),)
            )
        )
        for _ in range(10):
            with pytest.raises(UnstableOffsetError):
                await broker.handle(FetchCommitted("g", (TopicPartition("a", 0),)))
        node = next(n for n in broker.system.tree().walk() if n.path == "/broker/groups/g")
        assert (0, "running") == (node.restarts, node.state)
        stale = await broker.handle(FetchCommitted("g", require_stable=False))
        assert () == stale.offsets
        await broker.handle(EndTxn("w", ident.producer_id, ident.epoch, True))
        await trio.testing.wait_all_tasks_blocked()  # phase two completes the group
        got = await broker.handle(FetchCommitted("g", (TopicPartition("a", 0),)))
        assert (PartitionOffset("a", 0, 5),) == got.offsets


async def test_timeout_aborts_on_virtual_time(autojump_clock: trio.abc.Clock) -> None:
    """A transaction open past its timeout is aborted by the broker at
    exactly the deadline; its producer then hears TransactionTimedOutError."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        ident = await setup(broker)
        await begin(broker, ident)
        await trio.sleep(9.9)
        assert "ongoing" == (await ask(broker, DescribeTransaction("w"))).state
        await trio.sleep(0.2)
        meta = await ask(broker, DescribeTransaction("w"))
        assert ("complete_abort", 1) == (meta.state, meta.epoch)
        assert [] == await read(broker, "a", committed=True)
        with pytest.raises(TransactionTimedOutError):
            await end(broker, ident, True)


async def test_prepare_written_before_a_crash_is_finished_on_restart(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The decision is in the journal but no marker was written (killed right
    after phase one): the restarted coordinator writes every marker."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker:
        ident = await setup(broker)
        await begin(broker, ident)
    async with open_state_journal(
        f"{DATA}/meta/__transactions/0", apply=lambda s, e: s, initial=None, fs=fs
    ) as journal:
        await journal.persist({"type": "prepare_commit", "tid": "w"})
    async with open_broker(DATA, fs=fs) as broker:
        await trio.testing.wait_all_tasks_blocked()
        assert "complete_commit" == (await ask(broker, DescribeTransaction("w"))).state
        assert [(0, ATTR_TRANSACTIONAL)] == await read(broker, "a", committed=True)
        assert StableView(2, 2, ()) == await view(broker, "b")


async def test_open_transaction_survives_restart_then_times_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    """After a restart the partitions rebuild the open transaction from their
    headers (LSO held back), and the coordinator aborts it at its timeout."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker:
        ident = await setup(broker)
        await begin(broker, ident)
    async with open_broker(DATA, fs=fs) as broker:
        assert 0 == (await view(broker, "a")).last_stable_offset
        await trio.sleep(10.5)
        assert "complete_abort" == (await ask(broker, DescribeTransaction("w"))).state
        assert StableView(3, 3, (AbortedTxn(ident.producer_id, 0, 2),)) == await view(broker, "a")


async def test_markers_are_idempotent_and_admission_is_required(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A re-sent marker is answered as done without a write; a transactional
    batch for a partition the coordinator did not admit is refused."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        ident = await setup(broker)
        with pytest.raises(InvalidTransactionStateError):
            await broker.handle(Produce("a", 0, txn_batch(ident, 0)))
        await begin(broker, ident)
        await end(broker, ident, True)
        ref = broker.system.lookup("/broker/topics/a/0")
        assert await ref.ask(WriteMarker(ident.producer_id, ident.epoch, True)) is None
        assert 3 == (await view(broker, "a")).high_watermark


async def test_bad_requests(autojump_clock: trio.abc.Clock) -> None:
    """Unknown ids, missing topics, ending with nothing open, and client
    written control records are typed errors."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        ident = await setup(broker)
        with pytest.raises(UnknownTransactionalIdError):
            await ask(broker, DescribeTransaction("nobody"))
        with pytest.raises(InvalidArgument):
            await ask(
                broker,
                AddPartitionsToTxn("w", ident.producer_id, ident.epoch, (TopicPartition("zz", 0),)),
            )
        with pytest.raises(InvalidTransactionStateError):
            await end(broker, ident, True)
        with pytest.raises(InvalidArgument):
            await broker.handle(
                Produce("a", 0, encode_record(b"", count=1, attributes=ATTR_CONTROL))
            )
        assert ["w"] == [
            m.transactional_id for m in (await ask(broker, ListTransactions())).transactions
        ]


async def test_an_admission_ends_with_its_transaction(autojump_clock: trio.abc.Clock) -> None:
    """A partition added to a transaction but never written to: after the
    commit, a transactional batch there without a new add is refused (it
    would open a transaction the coordinator does not know about)."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        ident = await setup(broker)
        await ask(
            broker,
            AddPartitionsToTxn(
                "w",
                ident.producer_id,
                ident.epoch,
                (TopicPartition("a", 0), TopicPartition("b", 0)),
            ),
        )
        await broker.handle(Produce("a", 0, txn_batch(ident, 0)))
        await end(broker, ident, True)
        assert StableView(0, 0, ()) == await view(broker, "b")
        with pytest.raises(InvalidTransactionStateError):
            await broker.handle(Produce("b", 0, txn_batch(ident, 0)))


async def test_commit_is_answered_at_the_decision_and_the_next_add_queues(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Phase one answers: with a/0's marker not yet known durable, the
    commit returns (the transaction is prepare_commit); the same id's next
    add waits for the markers, while another id's transaction commits
    meanwhile (commits of different ids do not queue behind each other)."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        ident = await setup(broker)
        other: ProducerIdentity = await ask(broker, InitTransactions("x", 10.0))
        log = await broker.system.lookup("/broker/topics/a/0").ask(GetLog())
        release = trio.Event()
        real_wait = log.wait_durable

        async def held_wait(end_offset: int, generation: int) -> None:
            await release.wait()
            await real_wait(end_offset, generation)

        await begin(broker, ident)
        log.wait_durable = held_wait  # the coordinator's wait for a/0's marker
        with trio.fail_after(1):
            await ask(broker, EndTxn("w", ident.producer_id, ident.epoch, True))
        assert "prepare_commit" == (await ask(broker, DescribeTransaction("w"))).state
        added = trio.Event()

        async def next_add() -> None:
            tps = (TopicPartition("b", 0),)
            await ask(broker, AddPartitionsToTxn("w", ident.producer_id, ident.epoch, tps))
            added.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(next_add)
            await ask(
                broker,
                AddPartitionsToTxn("x", other.producer_id, other.epoch, (TopicPartition("b", 0),)),
            )
            await broker.handle(Produce("b", 0, txn_batch(other, 0)))
            await ask(broker, EndTxn("x", other.producer_id, other.epoch, True))
            await trio.testing.wait_all_tasks_blocked()
            assert not added.is_set()
            assert "complete_commit" == (await ask(broker, DescribeTransaction("x"))).state
            release.set()
        assert "ongoing" == (await ask(broker, DescribeTransaction("w"))).state
        assert [(0, ATTR_TRANSACTIONAL)] == await read(broker, "a", committed=True)


async def test_a_partition_restart_between_add_and_first_batch_keeps_the_admission(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The partition's admissions live in memory: after it restarts between
    the add and the producer's first batch, the batch is still accepted (the
    partition asks the coordinator again) and the transaction commits."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        ident = await setup(broker)
        tps = (TopicPartition("a", 0), TopicPartition("b", 0))
        await ask(broker, AddPartitionsToTxn("w", ident.producer_id, ident.epoch, tps))
        await broker.kill("/broker/topics/a/0", "test")
        await trio.testing.wait_all_tasks_blocked()
        await broker.handle(Produce("a", 0, txn_batch(ident, 0)))
        await end(broker, ident, True)
        assert [(0, ATTR_TRANSACTIONAL)] == await read(broker, "a", committed=True)
        # A producer the coordinator never added stays refused.
        other = await ask(broker, InitTransactions("x", 10.0))
        with pytest.raises(InvalidTransactionStateError):
            await broker.handle(Produce("a", 0, txn_batch(other, 0)))


async def test_a_failed_group_does_not_crash_the_coordinator(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A committed transaction's offsets are owed to a group whose journal is
    damaged (the group is parked as failed): the coordinator keeps retrying
    that completion on its timer without restarting, writes the markers, and
    serves other transactional ids meanwhile."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker:
        ident = await setup(broker)
        await begin(broker, ident)
        await broker.handle(
            SendOffsetsToTxn(
                "w", ident.producer_id, ident.epoch, "g", None, -1, (PartitionOffset("a", 0, 5),)
            )
        )
    async with open_state_journal(
        f"{DATA}/meta/__transactions/0", apply=lambda s, e: s, initial=None, fs=fs
    ) as journal:
        await journal.persist({"type": "prepare_commit", "tid": "w"})
    group_log = f"{DATA}/meta/groups/g/log/{0:020d}.log"
    fs.corrupt(group_log, HEADER_SIZE + 3)
    fs.remove(group_log.replace(".log", ".index"))
    with capture_logs() as logs:
        async with open_broker(DATA, fs=fs) as broker:
            await trio.sleep(120)
            retries = [e for e in logs if e["event"] == "transaction_markers_retry"]
            assert len(retries) >= 2  # the completion is owed and retried
            assert all(e["transactional_id"] == "w" for e in retries)
            nodes = {n.path: n for n in broker.system.tree().walk()}
            assert "failed" == nodes["/broker/groups/g"].state
            coordinator = nodes["/broker/transactions"]
            assert (0, "running") == (coordinator.restarts, coordinator.state)
            assert [(0, ATTR_TRANSACTIONAL)] == await read(broker, "a", committed=True)
            other: ProducerIdentity = await ask(broker, InitTransactions("v", 10.0))
            assert other.producer_id != ident.producer_id
