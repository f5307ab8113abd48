"""A produce appended in the caller's task while its partition is idle
(``PartitionActor.append_now``, issue 17: two task switches fewer per
acknowledgement), and through the mailbox otherwise: in order, never
overtaking an ask of the broker's own, acknowledged only after the fsync,
and a bug in it crashes the partition as a handler's would."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from headwater import ActorFailed
from headwater._protocol import CreateTopic, DeleteTopic, Fetch, InitProducer, Produce
from headwater.broker import open_broker
from headwater.broker._actors import PartitionActor
from headwater.journal import HEADER_SIZE, SimulatedFileSystem, encode_record, iter_records
from headwater.supervision._specs import ActorSnapshot

DATA = "/data"
PARTITION = "/broker/topics/t/0"


def batch(tag: bytes, pid: int = -1, seq: int = -1) -> bytes:
    return encode_record(
        tag,
        count=1,
        producer_id=pid,
        producer_epoch=0 if pid >= 0 else -1,
        base_sequence=seq,
    )


def node(tree: ActorSnapshot, path: str) -> ActorSnapshot:
    if tree.path == path:
        return tree
    for child in tree.children:
        if path.startswith(child.path):
            return node(child, path)
    raise AssertionError(f"{path} not in the tree")


def payloads(records: bytes) -> list[tuple[int, bytes]]:
    return [(h.base_offset, bytes(r[HEADER_SIZE:])) for h, r in iter_records(records)]


class Gate:
    """A message that keeps the partition actor busy until opened."""

    def __init__(self) -> None:
        self.open = trio.Event()


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> None:
    handle = PartitionActor._handle

    async def _handle(self: PartitionActor, message: Any) -> Any:
        if isinstance(message, Gate):
            await message.open.wait()
            return None
        return await handle(self, message)

    monkeypatch.setattr(PartitionActor, "_handle", _handle)


@pytest.fixture
def through_mailbox(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The messages partition actors take out of their mailboxes."""
    taken: list[Any] = []
    handle = PartitionActor._handle

    async def _handle(self: PartitionActor, message: Any) -> Any:
        taken.append(message)
        return await handle(self, message)

    monkeypatch.setattr(PartitionActor, "_handle", _handle)
    return taken


async def test_an_idle_partition_appends_in_the_callers_task(
    autojump_clock: trio.abc.Clock, through_mailbox: list[Any]
) -> None:
    """Produces to an idle partition go through no mailbox (the actor
    handles no message for them) and are stored in order."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t"))
        await broker.handle(Produce("t", 0, batch(b"first")))  # opens the cell
        before, handled = len(through_mailbox), node(broker.tree(), PARTITION).handled
        for i in range(5):
            r = await broker.handle(Produce("t", 0, batch(b"%d" % i)))
            assert i + 1 == r.base_offset
        assert before == len(through_mailbox)
        assert handled + 5 == node(broker.tree(), PARTITION).handled  # still counted as work
        got = await broker.handle(Fetch("t", 0, 0, max_wait=0))
        assert [(0, b"first")] + [(i + 1, b"%d" % i) for i in range(5)] == payloads(got.records)


async def test_a_busy_partition_takes_appends_in_order_through_its_mailbox(
    autojump_clock: trio.abc.Clock, gated: None
) -> None:
    """While the actor handles a message, produces queue in its mailbox;
    one started after them never overtakes them, not even while the actor
    has taken the last one out of its mailbox but not yet handled it (the
    broker counts its asks in flight). Idempotent sequences stay in order:
    nothing is refused as out of order."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t"))
        pid = (await broker.handle(InitProducer())).producer_id
        await broker.handle(Produce("t", 0, batch(b"s0", pid, 0)))
        ref = broker.system.lookup(PARTITION)
        offsets: dict[int, int] = {}

        async def produce(seq: int) -> None:
            r = await broker.handle(Produce("t", 0, batch(b"s%d" % seq, pid, seq)))
            offsets[seq] = r.base_offset

        seq = 1
        for _ in range(12):  # the task order of each loop pass varies
            gate = Gate()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ref.tell, gate)
                await trio.testing.wait_all_tasks_blocked()
                for _ in range(2):
                    nursery.start_soon(produce, seq)
                    seq += 1
                    await trio.testing.wait_all_tasks_blocked()
                assert seq - 2 not in offsets  # queued behind the gate
                gate.open.set()
                await trio.lowlevel.checkpoint()
                nursery.start_soon(produce, seq)  # started as the queue drains
                seq += 1
        assert {s: s for s in range(1, seq)} == offsets
        got = await broker.handle(Fetch("t", 0, 0, max_wait=0))
        assert [(i, b"s%d" % i) for i in range(seq)] == payloads(got.records)


async def test_a_direct_append_is_acknowledged_only_after_its_fsync(
    autojump_clock: trio.abc.Clock, through_mailbox: list[Any]
) -> None:
    """The produce answered in the caller's task still waits for the fsync:
    a failing fsync fails it (never an ack) and the partition carries on."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker:
        await broker.handle(CreateTopic("t"))
        await broker.handle(Produce("t", 0, batch(b"a")))
        before = len(through_mailbox)
        fs.fail_next_fsyncs(1)
        with pytest.raises(Exception, match="not acknowledged"):
            await broker.handle(Produce("t", 0, batch(b"lost")))
        assert 1 == (await broker.handle(Produce("t", 0, batch(b"b")))).base_offset
        assert before == len(through_mailbox)  # all direct
        got = await broker.handle(Fetch("t", 0, 0, max_wait=0))
        assert [(0, b"a"), (1, b"b")] == payloads(got.records)


async def test_a_bug_in_a_direct_append_restarts_the_partition(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error in the caller's task is what an asker would get
    (ActorFailed), and the partition restarts as after a handler's crash."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t"))
        await broker.handle(Produce("t", 0, batch(b"a")))
        restarts = node(broker.tree(), PARTITION).restarts
        append = PartitionActor._append

        def broken(self: PartitionActor, log: Any, record: bytes) -> Any:
            monkeypatch.setattr(PartitionActor, "_append", append)  # once
            raise RuntimeError("a bug")

        monkeypatch.setattr(PartitionActor, "_append", broken)
        with pytest.raises(ActorFailed, match="a bug"):
            await broker.handle(Produce("t", 0, batch(b"x")))
        await trio.testing.wait_all_tasks_blocked()
        crashed = node(broker.tree(), PARTITION)
        assert ("restarting", "RuntimeError: a bug") == (crashed.state, crashed.last_failure)
        assert 1 == (await broker.handle(Produce("t", 0, batch(b"b")))).base_offset
        assert restarts + 1 == node(broker.tree(), PARTITION).restarts


async def test_a_first_produce_takes_the_published_log_without_an_ask(
    autojump_clock: trio.abc.Clock, through_mailbox: list[Any]
) -> None:
    """An open partition publishes its log and cell: the first produce to it
    goes through no mailbox either (no ``GetStableCell`` ask)."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t", partitions=3))
        for p in range(3):
            r = await broker.handle(Produce("t", p, batch(b"p%d" % p)))
            assert 0 == r.base_offset
        assert [] == through_mailbox
        for p in range(3):
            got = await broker.handle(Fetch("t", p, 0, max_wait=0))
            assert [(0, b"p%d" % p)] == payloads(got.records)


async def test_after_a_restart_a_produce_uses_the_new_incarnations_log(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The old incarnation's published log is closed: the produce after the
    restart takes the new one (never a closed log), and the records stay
    in order."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t"))
        await broker.handle(Produce("t", 0, batch(b"before")))
        old_log, _cell = broker.service.settings.opened[("t", 0)]
        await broker.kill(PARTITION)
        await trio.testing.wait_all_tasks_blocked()
        assert old_log.closed
        r = await broker.handle(Produce("t", 0, batch(b"after")))
        assert 1 == r.base_offset
        new_log, _cell = broker.service.settings.opened[("t", 0)]
        assert new_log is not old_log
        assert not new_log.closed
        got = await broker.handle(Fetch("t", 0, 0, max_wait=0))
        assert [(0, b"before"), (1, b"after")] == payloads(got.records)


async def test_a_deleted_topic_leaves_no_published_log(autojump_clock: trio.abc.Clock) -> None:
    """Deleting a topic drops its partitions' published logs; one made again
    under the same name starts empty."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t", partitions=2))
        await broker.handle(Produce("t", 1, batch(b"old")))
        await broker.handle(DeleteTopic("t"))
        assert not [k for k in broker.service.settings.opened if k[0] == "t"]
        await broker.handle(CreateTopic("t", partitions=2))
        r = await broker.handle(Produce("t", 1, batch(b"new")))
        assert 0 == r.base_offset
        got = await broker.handle(Fetch("t", 1, 0, max_wait=0))
        assert [(0, b"new")] == payloads(got.records)


async def test_a_first_request_to_a_published_partition_still_checkpoints(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Taking the published log is a checkpoint, as the ask was: a poll of
    a new partition (a fetch with max_wait=0 and nothing to read) lets other
    tasks run, and a request cancelled already stores nothing."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("t", partitions=2))
        with trio.testing.assert_checkpoints():
            got = await broker.handle(Fetch("t", 0, 0, max_wait=0))
        assert b"" == got.records
        with trio.CancelScope() as scope:
            scope.cancel()
            await broker.handle(Produce("t", 1, batch(b"never")))
        assert scope.cancelled_caught
        got = await broker.handle(Fetch("t", 1, 0, max_wait=0))
        assert b"" == got.records
