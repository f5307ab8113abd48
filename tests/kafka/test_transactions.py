"""Kafka's transactional APIs against an embedded broker, through the real
codec: FindCoordinator (transaction), InitProducerId with a transactional id,
AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn, transactional
Produce, read_committed Fetch and OffsetFetch's UNSTABLE_OFFSET_COMMIT."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from kio.schema.errors import ErrorCode

from headwater._protocol import (
    CommitOffsets,
    DescribeTransaction,
    FetchCommitted,
    JoinGroup,
    PartitionOffset,
)
from headwater.kafka import decode_batches, encode_batch

from .conftest import Client
from .test_handler import ROWS, create, fetch_values, produce_values

pytestmark = pytest.mark.usefixtures("autojump_clock")

TXN_BIT = 0x10  # Kafka's transactional attribute


async def init(client: Client, tid: str, version: int = 1, **extra: Any) -> Any:
    return await client.call(
        22, version, {"transactional_id": tid, "transaction_timeout": 60000, **extra}
    )


async def add(client: Client, tid: str, ident: Any, parts: dict[str, list[int]], version: int = 0):
    r = await client.call(
        24,
        version,
        {
            "v3_and_below_transactional_id": tid,
            "v3_and_below_producer_id": ident.producer_id,
            "v3_and_below_producer_epoch": ident.producer_epoch,
            "v3_and_below_topics": [{"name": t, "partitions": ps} for t, ps in parts.items()],
        },
    )
    return {
        (t.name, p.partition_index): p.partition_error_code
        for t in r.results_by_topic_v3_and_below
        for p in t.results_by_partition
    }


async def end(client: Client, tid: str, ident: Any, commit: bool, version: int = 0) -> ErrorCode:
    """EndTxn; when it succeeds, also let the coordinator finish writing the
    markers, should it answer once the decision is durable."""
    r = await client.call(
        26,
        version,
        {
            "transactional_id": tid,
            "producer_id": ident.producer_id,
            "producer_epoch": ident.producer_epoch,
            "committed": commit,
        },
    )
    if r.error_code == ErrorCode.none:
        await trio.testing.wait_all_tasks_blocked()
    return r.error_code  # type: ignore[no-any-return]


def txn_batch(ident: Any, sequence: int, rows: list[Any] = ROWS) -> bytes:
    return encode_batch(
        0,
        rows,
        producer_id=ident.producer_id,
        producer_epoch=ident.producer_epoch,
        base_sequence=sequence,
        attributes=TXN_BIT,
    )


async def produce(client: Client, tid: str, topic: str, batch: bytes) -> Any:
    values = produce_values(topic, 0, batch)
    values["transactional_id"] = tid
    r = await client.call(0, 8, values)
    return r.responses[0].partition_responses[0]


async def read(client: Client, topic: str, committed: bool = True) -> tuple[list[bytes], int]:
    values = fetch_values(topic, 0, 0)
    values["isolation_level"] = 1 if committed else 0
    r = await client.call(1, 11, values)
    part = r.responses[0].partitions[0]
    assert () == part.aborted_transactions  # the broker drops aborted batches itself
    out = [
        rec.value or b"" for b in decode_batches(part.records) if not b.control for rec in b.records
    ]
    return out, part.last_stable_offset


async def test_find_coordinator_names_this_broker_for_transactions(client: Client) -> None:
    """Key type 1 (transaction) is this broker, like groups; an unknown key
    type is INVALID_REQUEST."""
    for version in (1, 2):
        r = await client.call(10, version, {"key": "tx-1", "key_type": 1})
        assert (ErrorCode.none, 0, "127.0.0.1", 9092) == (r.error_code, r.node_id, r.host, r.port)
    r = await client.call(10, 2, {"key": "tx-1", "key_type": 7})
    assert ErrorCode.invalid_request == r.error_code


async def test_init_producer_id_bumps_the_epoch_on_every_version(client: Client) -> None:
    """Each InitProducerId of one transactional id keeps its producer id and
    bumps the epoch (v0..v4); a timeout outside 0.1..900 s is
    INVALID_TRANSACTION_TIMEOUT; an idempotent producer still gets epoch 0."""
    epochs = []
    pids = set()
    for version in range(5):
        r = await init(client, "tx-init", version)
        assert ErrorCode.none == r.error_code
        epochs.append(r.producer_epoch)
        pids.add(r.producer_id)
    assert [0, 1, 2, 3, 4] == epochs
    assert 1 == len(pids)
    r = await client.call(22, 1, {"transactional_id": "tx-init", "transaction_timeout": 901_000})
    assert ErrorCode.invalid_transaction_timeout == r.error_code
    r = await client.call(22, 4, {"transactional_id": None, "transaction_timeout": 60000})
    assert (ErrorCode.none, 0) == (r.error_code, r.producer_epoch)
    assert r.producer_id not in pids


async def test_commit_makes_events_of_two_topics_visible_together(client: Client) -> None:
    """A transaction over two topics: invisible to read_committed (LSO held at
    its first offset) until EndTxn commits, visible to read_uncommitted at
    once; after the commit both topics show every event."""
    await create(client, "a")
    await create(client, "b")
    for version in range(4):
        tid = f"tx-commit-{version}"
        ident = await init(client, tid)
        assert {("a", 0): ErrorCode.none, ("b", 0): ErrorCode.none} == await add(
            client, tid, ident, {"a": [0], "b": [0]}, version
        )
        assert ErrorCode.none == (await produce(client, tid, "a", txn_batch(ident, 0))).error_code
        assert ErrorCode.none == (await produce(client, tid, "b", txn_batch(ident, 0))).error_code
        before, lso = await read(client, "a")
        uncommitted, _ = await read(client, "a", committed=False)
        assert ErrorCode.none == await end(client, tid, ident, True, version)
        after_a, _ = await read(client, "a")
        after_b, _ = await read(client, "b")
        n = 3 * (version + 1)
        assert (3 * version, n) == (len(before), len(uncommitted))
        assert (n, n) == (len(after_a), len(after_b))
        assert 4 * version == lso  # three events and a marker per earlier round


async def test_abort_hides_the_events_from_read_committed(client: Client) -> None:
    """An aborted transaction's events never reach a read_committed reader
    (and are not listed as aborted transactions: the broker drops them);
    read_uncommitted sees them. EndTxn with nothing open is INVALID_TXN_STATE."""
    await create(client, "ab")
    ident = await init(client, "tx-abort")
    await add(client, "tx-abort", ident, {"ab": [0]})
    await produce(client, "tx-abort", "ab", txn_batch(ident, 0))
    assert ErrorCode.none == await end(client, "tx-abort", ident, False, 3)
    assert ([], 4) == await read(client, "ab")
    assert [b"v1", b"", b""] == (await read(client, "ab", committed=False))[0]
    assert ErrorCode.invalid_txn_state == await end(client, "tx-abort", ident, True)


async def test_a_zombie_hears_the_fence_its_version_knows(client: Client) -> None:
    """A second InitProducerId fences the first instance: its AddPartitionsToTxn
    and EndTxn get INVALID_PRODUCER_EPOCH before v2 and PRODUCER_FENCED from
    v2 (KIP-588), its produce INVALID_PRODUCER_EPOCH; its open transaction was
    aborted; InitProducerId v3+ naming the zombie's identity is fenced too."""
    await create(client, "z")
    old = await init(client, "tx-z")
    await add(client, "tx-z", old, {"z": [0]})
    await produce(client, "tx-z", "z", txn_batch(old, 0))
    new = await init(client, "tx-z")
    # Its open transaction was aborted under a bumped epoch, then bumped again.
    assert (old.producer_id, old.producer_epoch + 2) == (new.producer_id, new.producer_epoch)
    assert [] == (await read(client, "z"))[0]  # the zombie's transaction was aborted
    for version, code in [
        (0, ErrorCode.invalid_producer_epoch),
        (1, ErrorCode.invalid_producer_epoch),
        (2, ErrorCode.producer_fenced),
        (3, ErrorCode.producer_fenced),
    ]:
        assert {("z", 0): code} == await add(client, "tx-z", old, {"z": [0]}, version)
        assert code == await end(client, "tx-z", old, True, version)
    assert (
        ErrorCode.invalid_producer_epoch
        == (await produce(client, "tx-z", "z", txn_batch(old, 1))).error_code
    )
    for version, code in [(3, ErrorCode.invalid_producer_epoch), (4, ErrorCode.producer_fenced)]:
        r = await init(
            client,
            "tx-z",
            version,
            producer_id=old.producer_id,
            producer_epoch=old.producer_epoch,
        )
        assert code == r.error_code
    # The current instance may bump its own epoch (KIP-360).
    r = await init(
        client, "tx-z", 4, producer_id=new.producer_id, producer_epoch=new.producer_epoch
    )
    assert (ErrorCode.none, new.producer_epoch + 1) == (r.error_code, r.producer_epoch)


async def test_transactional_produce_needs_the_partition_added(client: Client) -> None:
    """A transactional batch to a partition not added to the transaction is
    INVALID_TXN_STATE and is not stored; an unknown partition in
    AddPartitionsToTxn is named, the others are not attempted; a control
    batch from a client is refused."""
    await create(client, "n")
    ident = await init(client, "tx-n")
    r = await produce(client, "tx-n", "n", txn_batch(ident, 0))
    assert ErrorCode.invalid_txn_state == r.error_code
    assert {
        ("n", 0): ErrorCode.operation_not_attempted,
        ("n", 5): ErrorCode.unknown_topic_or_partition,
        ("ghost", 0): ErrorCode.unknown_topic_or_partition,
    } == await add(client, "tx-n", ident, {"n": [0, 5], "ghost": [0]}, 3)
    control = encode_batch(0, ROWS, attributes=0x20 | TXN_BIT)
    assert ErrorCode.invalid_request == (await produce(client, "tx-n", "n", control)).error_code
    stored, _ = await read(client, "n", committed=False)
    assert [] == stored


async def offset_fetch(client: Client, version: int, require_stable: bool = True) -> Any:
    r = await client.call(
        9,
        version,
        {
            "group_id": "g",
            "topics": [{"name": "in", "partition_indexes": [0]}],
            "require_stable": require_stable,
        },
    )
    p = r.topics[0].partitions[0]
    return p.error_code, p.committed_offset


async def txn_offset_commit(
    client: Client, ident: Any, offset: int, version: int, member: str = "", generation: int = -1
) -> ErrorCode:
    r = await client.call(
        28,
        version,
        {
            "transactional_id": "tx-o",
            "group_id": "g",
            "producer_id": ident.producer_id,
            "producer_epoch": ident.producer_epoch,
            "generation_id": generation,
            "member_id": member,
            "group_instance_id": None,
            "topics": [
                {
                    "name": "in",
                    "partitions": [
                        {
                            "partition_index": 0,
                            "committed_offset": offset,
                            "committed_metadata": "",
                        }
                    ],
                }
            ],
        },
    )
    return r.topics[0].partitions[0].error_code  # type: ignore[no-any-return]


async def test_offsets_in_a_transaction_and_unstable_offset_fetch(
    client: Client, broker: Any
) -> None:
    """AddOffsetsToTxn + TxnOffsetCommit (v0..v3) hold the group's offsets
    pending: OffsetFetch v7 with require_stable answers UNSTABLE_OFFSET_COMMIT,
    older versions the last committed offset; the commit makes them the
    group's committed offsets, an abort drops them."""
    await create(client, "in")
    await broker.handle(CommitOffsets("g", None, 0, (PartitionOffset("in", 0, 1),)))
    ident = await init(client, "tx-o")
    for version in range(4):
        await add(client, "tx-o", ident, {"in": [0]})
        r = await client.call(
            25,
            version,
            {
                "transactional_id": "tx-o",
                "producer_id": ident.producer_id,
                "producer_epoch": ident.producer_epoch,
                "group_id": "g",
            },
        )
        assert ErrorCode.none == r.error_code
        offset = 10 + version
        assert ErrorCode.none == await txn_offset_commit(client, ident, offset, version)
        committed = offset - 1 if version else 1
        assert (ErrorCode.unstable_offset_commit, -1) == await offset_fetch(client, 7)
        assert (ErrorCode.none, committed) == await offset_fetch(client, 7, require_stable=False)
        assert (ErrorCode.none, committed) == await offset_fetch(client, 5)
        assert ErrorCode.none == await end(client, "tx-o", ident, True)
        assert (ErrorCode.none, offset) == await offset_fetch(client, 7)
    await add(client, "tx-o", ident, {"in": [0]})
    assert ErrorCode.none == await txn_offset_commit(client, ident, 99, 3)
    assert ErrorCode.none == await end(client, "tx-o", ident, False)
    assert (ErrorCode.none, 13) == await offset_fetch(client, 6)
    desc = await broker.handle(DescribeTransaction("tx-o"))
    assert "complete_abort" == desc.state


async def test_txn_offset_commit_is_fenced_by_membership(client: Client, broker: Any) -> None:
    """In a group with members, TxnOffsetCommit v3 must name the owner and a
    generation it holds (ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID otherwise,
    KIP-447); before v3 (no membership fields) the partition's current owner
    is assumed and the producer epoch alone fences, as in Kafka."""
    await create(client, "in")
    member = await broker.handle(JoinGroup("g", ("in",)))
    ident = await init(client, "tx-o")
    await add(client, "tx-o", ident, {"in": [0]})
    gen = member.generation
    assert ErrorCode.unknown_member_id == await txn_offset_commit(client, ident, 5, 3, "who", gen)
    assert ErrorCode.illegal_generation == await txn_offset_commit(
        client, ident, 5, 3, member.member_id, gen + 1
    )
    assert ErrorCode.none == await txn_offset_commit(client, ident, 5, 3, member.member_id, gen)
    assert ErrorCode.none == await txn_offset_commit(client, ident, 6, 0)
    assert ErrorCode.none == await end(client, "tx-o", ident, True)
    got = await broker.handle(FetchCommitted("g"))
    assert (PartitionOffset("in", 0, 6),) == got.offsets


async def test_a_transaction_timed_out_by_the_broker(client: Client) -> None:
    """A transaction open past its transaction.timeout.ms is aborted by the
    broker under a bumped epoch; the late producer's EndTxn hears
    INVALID_PRODUCER_EPOCH (what Kafka's coordinator answers then) and its
    events stay invisible."""
    await create(client, "slow")
    r = await client.call(22, 1, {"transactional_id": "tx-slow", "transaction_timeout": 1000})
    await add(client, "tx-slow", r, {"slow": [0]})
    await produce(client, "tx-slow", "slow", txn_batch(r, 0))
    await trio.sleep(1.5)
    assert ErrorCode.invalid_producer_epoch == await end(client, "tx-slow", r, True, 3)
    assert ([], 4) == await read(client, "slow")
