"""The Kafka APIs against an embedded broker: every request goes through the
real codec (frames built with ``kio`` as a client builds them) and every
response is decoded again, so a field a version lacks, or a wrong type, fails."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from kio.schema.errors import ErrorCode

from headwater._protocol import (
    CommitOffsets,
    DescribeTopic,
    Fetch,
    FetchCommitted,
    PartitionOffset,
    Produce,
    TopicPartition,
)
from headwater.client._codec import decode_record_events, encode_events
from headwater.journal import encode_record, iter_records
from headwater.kafka import SUPPORTED, decode_batches, encode_batch

from .conftest import Client

pytestmark = pytest.mark.usefixtures("autojump_clock")


def produce_values(topic: str, partition: int, records: bytes, acks: int = -1) -> dict[str, Any]:
    return {
        "transactional_id": None,
        "acks": acks,
        "timeout": 5000,
        "topic_data": [
            {"name": topic, "partition_data": [{"index": partition, "records": records}]}
        ],
    }


def fetch_values(topic: str, partition: int, offset: int, wait_ms: int = 0) -> dict[str, Any]:
    return {
        "replica_id": -1,
        "max_wait": wait_ms,
        "min_bytes": 1,
        "max_bytes": 1 << 20,
        "isolation_level": 1,
        "topics": [
            {
                "topic": topic,
                "partitions": [
                    {"partition": partition, "fetch_offset": offset, "partition_max_bytes": 1 << 20}
                ],
            }
        ],
        "forgotten_topics_data": [],
        "rack_id": "",
    }


async def create(client: Client, name: str, partitions: int = 1, **configs: str) -> Any:
    return await client.call(
        19,
        4,
        {
            "topics": [
                {
                    "name": name,
                    "num_partitions": partitions,
                    "replication_factor": 1,
                    "assignments": [],
                    "configs": [{"name": k, "value": v} for k, v in configs.items()],
                }
            ],
            "timeout": 5000,
            "validate_only": False,
        },
    )


ROWS = [
    (1_700_000_000_000, b"k1", b"v1", (("h", b"x"), ("null", None))),
    (1_700_000_000_005, None, b"", ()),
    (1_700_000_000_003, b"k3", None, (("h", b"y"),)),
]


async def test_api_versions_lists_supported_and_answers_unknown_versions_in_v0(
    client: Client,
) -> None:
    """ApiVersions v0..v3 list every supported range; v9 gets UNSUPPORTED_VERSION
    in a v0 body with the ranges (KIP-511), so clients retry lower."""
    for version in range(4):
        r = await client.call(18, version, {"client_software_name": "t"})
        assert ErrorCode.none == r.error_code
        assert {k: (lo, hi) for k, (_n, lo, hi) in SUPPORTED.items()} == {
            a.api_key: (a.min_version, a.max_version) for a in r.api_keys
        }


async def test_every_supported_metadata_version(client: Client) -> None:
    """Metadata v0..v8 describe the one broker and each partition it leads;
    an unknown topic gets UNKNOWN_TOPIC_OR_PARTITION."""
    await create(client, "orders", 3)
    for version in range(9):
        r = await client.call(
            3,
            version,
            {"topics": [{"name": "orders"}, {"name": "nope"}], "allow_auto_topic_creation": False},
        )
        assert [(0, "127.0.0.1", 9092)] == [(b.node_id, b.host, b.port) for b in r.brokers]
        by_name = {t.name: t for t in r.topics}
        assert ErrorCode.unknown_topic_or_partition == by_name["nope"].error_code
        assert [0, 1, 2] == [p.partition_index for p in by_name["orders"].partitions]
        assert {0} == {p.leader_id for p in by_name["orders"].partitions}


async def test_produce_fetch_round_trip_every_version(client: Client, broker: Any) -> None:
    """A batch produced at each Produce version is read back at each Fetch
    version with the same keys, values (null stays null), headers (null
    header values too) and timestamps; offsets are contiguous."""
    await create(client, "t")
    expected_offset = 0
    for version in range(3, 9):
        r = await client.call(0, version, produce_values("t", 0, encode_batch(0, ROWS)))
        part = r.responses[0].partition_responses[0]
        assert (ErrorCode.none, expected_offset) == (part.error_code, part.base_offset)
        expected_offset += len(ROWS)
    for version in range(4, 12):
        r = await client.call(1, version, fetch_values("t", 0, 3))
        part = r.responses[0].partitions[0]
        assert ErrorCode.none == part.error_code
        assert (18, 18) == (part.high_watermark, part.last_stable_offset)
        batches = decode_batches(part.records)
        assert [3, 6, 9, 12, 15] == [b.base_offset for b in batches]
        assert [(r.timestamp, r.key, r.value, r.headers) for r in batches[0].records] == [
            (ts, k, v, h) for ts, k, v, h in ROWS
        ]


async def test_kafka_produced_events_read_by_headwater_and_back(
    client: Client, broker: Any
) -> None:
    """Cross-protocol: what a Kafka producer stores a Headwater consumer reads
    as raw bytes (str header names, None header values); a Headwater str key
    reaches Kafka consumers as its UTF-8 bytes."""
    await create(client, "x")
    await client.call(0, 8, produce_values("x", 0, encode_batch(0, ROWS)))
    fetched = await broker.handle(Fetch("x", 0, 0, max_wait=0))
    events = [
        e
        for h, rec in iter_records(fetched.records)
        for e in decode_record_events(h, rec, topic="x", partition=0)
    ]
    assert [(e.timestamp, e.key, e.value, e.headers) for e in events] == list(ROWS)
    payload = encode_events([(1_700_000_001_000, "clé", b"hw", (("a", b"1"),))])
    await broker.handle(
        Produce("x", 0, encode_record(payload, count=1, first_timestamp=1_700_000_001_000))
    )
    r = await client.call(1, 11, fetch_values("x", 0, 3))
    (batch,) = decode_batches(r.responses[0].partitions[0].records)
    assert [(1_700_000_001_000, "clé".encode(), b"hw", (("a", b"1"),))] == [
        (x.timestamp, x.key, x.value, x.headers) for x in batch.records
    ]


async def test_idempotent_producer_retry_is_stored_once(client: Client) -> None:
    """InitProducerId hands out Headwater's producer ids; a retried batch
    (same producer, epoch, sequence) gets the first copy's offset and is
    stored once; a sequence gap is OUT_OF_ORDER_SEQUENCE_NUMBER."""
    await create(client, "idem")
    r = await client.call(22, 1, {"transactional_id": None, "transaction_timeout": 60000})
    assert ErrorCode.none == r.error_code
    pid = r.producer_id
    batch = encode_batch(0, ROWS, producer_id=pid, producer_epoch=0, base_sequence=0)
    first = await client.call(0, 8, produce_values("idem", 0, batch))
    again = await client.call(0, 8, produce_values("idem", 0, batch))
    assert [0, 0] == [x.responses[0].partition_responses[0].base_offset for x in (first, again)]
    gap = encode_batch(0, ROWS, producer_id=pid, producer_epoch=0, base_sequence=10)
    bad = await client.call(0, 8, produce_values("idem", 0, gap))
    assert (
        ErrorCode.out_of_order_sequence_number == bad.responses[0].partition_responses[0].error_code
    )
    r = await client.call(1, 11, fetch_values("idem", 0, 0))
    assert 3 == r.responses[0].partitions[0].high_watermark


async def test_corrupt_batch_and_unknown_topic_are_per_partition_errors(client: Client) -> None:
    """A batch with a wrong CRC is CORRUPT_MESSAGE, an unknown topic
    UNKNOWN_TOPIC_OR_PARTITION; nothing is stored; acks=0 gets no response."""
    await create(client, "c")
    batch = bytearray(encode_batch(0, ROWS))
    batch[-1] ^= 0xFF
    r = await client.call(0, 8, produce_values("c", 0, bytes(batch)))
    assert ErrorCode.corrupt_message == r.responses[0].partition_responses[0].error_code
    r = await client.call(0, 8, produce_values("nope", 0, encode_batch(0, ROWS)))
    assert ErrorCode.unknown_topic_or_partition == r.responses[0].partition_responses[0].error_code
    assert None is await client.call(0, 8, produce_values("c", 0, encode_batch(0, ROWS), acks=0))
    r = await client.call(1, 11, fetch_values("c", 0, 0))
    assert 3 == r.responses[0].partitions[0].high_watermark
    r = await client.call(1, 11, fetch_values("c", 0, 99))
    assert ErrorCode.offset_out_of_range == r.responses[0].partitions[0].error_code


async def test_fetch_long_polls_until_data_arrives(client: Client) -> None:
    """A fetch at the end waits (up to max_wait) and returns as soon as a
    produce lands, with the new batch."""
    await create(client, "lp")
    done_at: list[float] = []

    async def produce_later() -> None:
        await trio.sleep(0.3)
        await client.call(0, 8, produce_values("lp", 0, encode_batch(0, ROWS)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce_later)
        start = trio.current_time()
        r = await client.call(1, 11, fetch_values("lp", 0, 0, wait_ms=5000))
        done_at.append(trio.current_time() - start)
    assert 3 == len(decode_batches(r.responses[0].partitions[0].records)[0].records)
    assert done_at[0] == pytest.approx(0.3, abs=0.05)
    start = trio.current_time()
    r = await client.call(1, 11, fetch_values("lp", 0, 3, wait_ms=500))
    assert b"" == r.responses[0].partitions[0].records
    assert trio.current_time() - start == pytest.approx(0.5, abs=0.05)


async def test_list_offsets_earliest_latest_and_by_time(client: Client) -> None:
    """ListOffsets -2/-1 give earliest/latest; a timestamp gives the first
    event at or after it (with its timestamp), -1 when none is."""
    await create(client, "lo")
    await client.call(0, 8, produce_values("lo", 0, encode_batch(0, ROWS)))
    later = [(1_700_000_000_100 + i, None, b"v", ()) for i in range(2)]
    await client.call(0, 8, produce_values("lo", 0, encode_batch(0, later)))

    async def at(ts: int, version: int = 5) -> tuple[int, int]:
        r = await client.call(
            2,
            version,
            {
                "replica_id": -1,
                "isolation_level": 1,
                "topics": [{"name": "lo", "partitions": [{"partition_index": 0, "timestamp": ts}]}],
            },
        )
        p = r.topics[0].partitions[0]
        return p.offset, p.timestamp

    assert (0, -1) == await at(-2)
    assert (5, -1) == await at(-1, 1)
    assert (3, 1_700_000_000_100) == await at(1_700_000_000_050)
    assert (4, 1_700_000_000_101) == await at(1_700_000_000_101)
    assert (-1, -1) == await at(1_800_000_000_000)


async def test_admin_create_describe_delete(client: Client) -> None:
    """CreateTopics honours partitions and cleanup.policy/retention configs,
    refuses duplicates and replication > 1; DescribeConfigs reports them;
    CreatePartitions grows it; DeleteTopics removes the topic."""
    r = await create(client, "adm", 2, **{"cleanup.policy": "compact", "retention.ms": "1000"})
    assert ErrorCode.none == r.topics[0].error_code
    assert ErrorCode.topic_already_exists == (await create(client, "adm")).topics[0].error_code
    assert ErrorCode.invalid_topic_exception == (await create(client, "a/b")).topics[0].error_code
    r = await client.call(
        19,
        2,
        {
            "topics": [
                {
                    "name": "rf",
                    "num_partitions": 1,
                    "replication_factor": 3,
                    "assignments": [],
                    "configs": [],
                }
            ],
            "timeout": 1,
            "validate_only": False,
        },
    )
    assert ErrorCode.invalid_replication_factor == r.topics[0].error_code
    for version in (1, 2, 3):
        r = await client.call(
            32,
            version,
            {
                "resources": [
                    {"resource_type": 2, "resource_name": "adm", "configuration_keys": None}
                ],
                "include_synonyms": False,
                "include_documentation": False,
            },
        )
        configs = {c.name: c.value for c in r.results[0].configs}
        assert ("compact", "1000") == (configs["cleanup.policy"], configs["retention.ms"])
    r = await client.call(
        37,
        1,
        {
            "topics": [{"name": "adm", "count": 4, "assignments": None}],
            "timeout": 1,
            "validate_only": False,
        },
    )
    assert ErrorCode.none == r.results[0].error_code  # grown from 2 to 4
    for version in (1, 3):
        r = await client.call(20, version, {"topic_names": ["adm", "ghost"], "timeout": 1000})
        assert [
            ErrorCode.none if version == 1 else ErrorCode.unknown_topic_or_partition,
            ErrorCode.unknown_topic_or_partition,
        ] == [x.error_code for x in r.responses]


async def test_committed_offsets_are_shared_with_headwater(client: Client, broker: Any) -> None:
    """A Kafka OffsetCommit is a Headwater commit and the other way round;
    FindCoordinator names this broker; ListGroups/DescribeGroups see the group."""
    await create(client, "g", 2)
    r = await client.call(10, 2, {"key": "grp", "key_type": 0})
    assert (ErrorCode.none, 0, 9092) == (r.error_code, r.node_id, r.port)
    r = await client.call(
        8,
        7,
        {
            "group_id": "grp",
            "generation_id_or_member_epoch": -1,
            "member_id": "",
            "group_instance_id": None,
            "retention_time": -1,
            "topics": [
                {
                    "name": "g",
                    "partitions": [
                        {"partition_index": 1, "committed_offset": 42, "committed_metadata": ""}
                    ],
                }
            ],
        },
    )
    assert ErrorCode.none == r.topics[0].partitions[0].error_code
    got = await broker.handle(FetchCommitted("grp"))
    assert (PartitionOffset("g", 1, 42),) == got.offsets
    await broker.handle(CommitOffsets("grp", None, 0, (PartitionOffset("g", 0, 7),)))
    for version in (1, 5):
        r = await client.call(
            9, version, {"group_id": "grp", "topics": [{"name": "g", "partition_indexes": [0, 1]}]}
        )
        assert [7, 42] == [p.committed_offset for p in r.topics[0].partitions]
    r = await client.call(9, 5, {"group_id": "none", "topics": None})
    assert () == r.topics
    r = await client.call(16, 2, {})
    assert ["grp"] == [g.group_id for g in r.groups]
    r = await client.call(15, 4, {"groups": ["grp"], "include_authorized_operations": False})
    assert ("grp", ErrorCode.none) == (r.groups[0].group_id, r.groups[0].error_code)


async def test_create_partitions_grows_a_topic_shared_with_headwater(
    client: Client, broker: Any
) -> None:
    """CreatePartitions grows a topic (new partitions take produces and are in
    Metadata and Headwater's topic list, also after a reopen); shrinking or
    an unknown topic is refused."""
    await create(client, "grow", 2)

    async def grow(name: str, count: int, version: int = 1) -> ErrorCode:
        r = await client.call(
            37,
            version,
            {
                "topics": [{"name": name, "count": count, "assignments": None}],
                "timeout": 1000,
                "validate_only": False,
            },
        )
        return r.results[0].error_code  # type: ignore[no-any-return]

    assert ErrorCode.none == await grow("grow", 4)
    assert ErrorCode.invalid_partitions == await grow("grow", 3, version=0)
    assert ErrorCode.unknown_topic_or_partition == await grow("ghost", 3)
    r = await client.call(3, 8, {"topics": [{"name": "grow"}], "allow_auto_topic_creation": False})
    assert [0, 1, 2, 3] == [p.partition_index for p in r.topics[0].partitions]
    r = await client.call(0, 8, produce_values("grow", 3, encode_batch(0, ROWS)))
    assert ErrorCode.none == r.responses[0].partition_responses[0].error_code
    info = await broker.handle(DescribeTopic("grow"))
    assert [0, 0, 0, 3] == [part.next_offset for part in info.partitions]


async def test_added_partitions_survive_a_reopen() -> None:
    """A grown topic reopens with every partition serving, the new ones too."""
    from headwater._protocol import AddPartitions, CreateTopic
    from headwater.broker import open_broker
    from headwater.journal import SimulatedFileSystem

    fs = SimulatedFileSystem()
    async with open_broker("/d", fs=fs) as b:
        await b.handle(CreateTopic("g", partitions=1))
        info = await b.handle(AddPartitions("g", 3))
        assert 3 == info.partitions
        await b.handle(Produce("g", 2, encode_record(b"x", count=1)))
    async with open_broker("/d", fs=fs) as b:
        described = await b.handle(DescribeTopic("g"))
        assert [0, 0, 1] == [part.next_offset for part in described.partitions]
        await b.handle(Produce("g", 2, encode_record(b"y", count=1)))


def _subscription(*topics: str) -> bytes:
    from kafka.protocol.old.consumer_protocol import ConsumerProtocolMemberMetadata_v0

    return bytes(ConsumerProtocolMemberMetadata_v0(0, list(topics), b"").encode())


async def test_group_join_sync_heartbeat_leave(client: Client) -> None:
    """Kafka group membership: the first member leads and assigns; a second
    joining makes the first one's heartbeat say REBALANCE_IN_PROGRESS; both
    rejoin into the next generation, the leader's assignment reaches the
    follower; a non-consumer protocol is refused; leaving works."""
    from headwater.kafka._consumer_protocol import decode_assignment, encode_assignment

    await create(client, "gt", 2)

    def join_values(member: str) -> dict[str, Any]:
        return {
            "group_id": "kg",
            "session_timeout": 10_000,
            "rebalance_timeout": 10_000,
            "member_id": member,
            "group_instance_id": None,
            "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": _subscription("gt")}],
        }

    a = await client.call(11, 5, join_values(""))
    assert (ErrorCode.none, a.member_id) == (a.error_code, a.leader)
    assert [a.member_id] == [m.member_id for m in a.members]
    mine = encode_assignment((TopicPartition("gt", 0), TopicPartition("gt", 1)))
    sync = {
        "group_id": "kg",
        "generation_id": a.generation_id,
        "member_id": a.member_id,
        "group_instance_id": None,
        "assignments": [{"member_id": a.member_id, "assignment": mine}],
    }
    assert mine == (await client.call(14, 3, sync)).assignment

    async def heartbeat(member: str, generation: int) -> ErrorCode:
        r = await client.call(
            12,
            3,
            {
                "group_id": "kg",
                "generation_id": generation,
                "member_id": member,
                "group_instance_id": None,
            },
        )
        return r.error_code  # type: ignore[no-any-return]

    assert ErrorCode.none == await heartbeat(a.member_id, a.generation_id)
    answers: dict[str, Any] = {}

    async def join_as(key: str, member: str) -> None:
        answers[key] = await client.call(11, 5, join_values(member))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(join_as, "b", "")
        await trio.testing.wait_all_tasks_blocked()
        assert ErrorCode.rebalance_in_progress == await heartbeat(a.member_id, a.generation_id)
        nursery.start_soon(join_as, "a", a.member_id)
    a2, b = answers["a"], answers["b"]
    assert a2.generation_id == b.generation_id > a.generation_id
    assert a2.leader == b.leader == a2.member_id
    assert (2, 0) == (len(a2.members), len(b.members))
    shares = {
        a2.member_id: encode_assignment((TopicPartition("gt", 0),)),
        b.member_id: encode_assignment((TopicPartition("gt", 1),)),
    }
    got: dict[str, bytes] = {}

    async def sync_as(member: str, assignments: list[dict[str, Any]]) -> None:
        r = await client.call(
            14,
            3,
            {
                **sync,
                "generation_id": b.generation_id,
                "member_id": member,
                "assignments": assignments,
            },
        )
        got[member] = r.assignment

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync_as, b.member_id, [])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(
            sync_as,
            a2.member_id,
            [{"member_id": m, "assignment": x} for m, x in shares.items()],
        )
    assert shares == got
    assert (TopicPartition("gt", 1),) == decode_assignment(got[b.member_id])
    assert ErrorCode.none == await heartbeat(b.member_id, b.generation_id)
    r = await client.call(11, 5, {**join_values(""), "protocol_type": "connect"})
    assert ErrorCode.inconsistent_group_protocol == r.error_code
    r = await client.call(
        13,
        3,
        {"group_id": "kg", "members": [{"member_id": b.member_id, "group_instance_id": None}]},
    )
    assert [ErrorCode.none] == [m.error_code for m in r.members]
