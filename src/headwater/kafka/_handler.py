"""Kafka requests answered by the one broker service.

Theory of operation
-------------------
:class:`KafkaHandler` takes one decoded :class:`~headwater.kafka._wire.KafkaRequest`
and returns its response body (a ``kio`` dataclass), or ``None`` for a
produce with ``acks=0`` (Kafka sends no response then). Each API method turns
the Kafka request into :mod:`headwater._protocol` messages for
:class:`~headwater.broker.BrokerService` -- the same service the Headwater
protocol and embedded clients call -- and the answers back into Kafka
fields; :func:`error_code` maps :class:`~headwater.HeadwaterError` types to
the Kafka error codes clients act on (retriable or fatal).

There is one broker (node 0) and it leads every partition; it is also the
group coordinator and the transaction coordinator for every id.
``read_committed`` fetches read up to the last stable offset with aborted
transactions dropped broker-side (DECISIONS #21). The transactional APIs
(InitProducerId with a transactional id, AddPartitionsToTxn,
AddOffsetsToTxn, TxnOffsetCommit, EndTxn) call the same transaction
operations as Headwater's own producer, so transactional ids are one
namespace across both protocols.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from kio.schema.errors import ErrorCode

from headwater._errors import (
    AuthenticationError,
    BrokenError,
    ClosedError,
    ConcurrentTransactionsError,
    CorruptionError,
    EventTooLarge,
    HeadwaterError,
    HeadwaterTimeoutError,
    InconsistentGroupProtocolError,
    InvalidArgument,
    InvalidTopicName,
    InvalidTransactionStateError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    ProducerFencedError,
    StaleGenerationError,
    StorageError,
    TopicExistsError,
    TransactionTimedOutError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownPartitionError,
    UnknownTopicError,
    UnknownTransactionalIdError,
    UnstableOffsetError,
)
from headwater._logging import get_logger
from headwater._protocol import (
    AddPartitions,
    AddPartitionsToTxn,
    CommitOffsets,
    CommittedOffsets,
    CreateTopic,
    DeleteTopic,
    DescribeGroup,
    DescribeTopic,
    DescribeTransaction,
    EndTxn,
    Fetch,
    FetchCommitted,
    FetchResult,
    GroupDescription,
    GroupList,
    InitProducer,
    InitTransactions,
    ListGroups,
    ListOffset,
    ListTopics,
    OffsetResult,
    PartitionOffset,
    Produce,
    ProduceResult,
    ProducerIdentity,
    SendOffsetsToTxn,
    TopicDescription,
    TopicInfo,
    TopicList,
    TopicPartition,
    TransactionDescription,
)
from headwater.broker._service import MAX_FETCH_WAIT
from headwater.broker._transactions import MAX_TIMEOUT, MIN_TIMEOUT
from headwater.journal._batch import decode_record_events
from headwater.journal._record import iter_records

from ._consumer_protocol import encode_assignment
from ._groups import KafkaGroupApis, KafkaGroups
from ._records import KafkaCorruptBatch, control_batch, decode_batches
from ._translate import batch_to_record, records_to_kafka
from ._wire import SUPPORTED, KafkaRequest, build, response_class

__all__ = ["KafkaHandler", "error_code"]

_log = get_logger("headwater.kafka")

NODE_ID = 0
CLUSTER_ID = "headwater"
_LATEST = -1
_EARLIEST = -2

_ERRORS: list[tuple[type[BaseException], ErrorCode]] = [
    (KafkaCorruptBatch, ErrorCode.corrupt_message),
    (CorruptionError, ErrorCode.kafka_storage_error),
    (UnknownTopicError, ErrorCode.unknown_topic_or_partition),
    (UnknownPartitionError, ErrorCode.unknown_topic_or_partition),
    (OffsetOutOfRangeError, ErrorCode.offset_out_of_range),
    (TopicExistsError, ErrorCode.topic_already_exists),
    (InvalidTopicName, ErrorCode.invalid_topic_exception),
    (EventTooLarge, ErrorCode.message_too_large),
    (OutOfOrderSequenceError, ErrorCode.out_of_order_sequence_number),
    (ProducerFencedError, ErrorCode.invalid_producer_epoch),
    # A transaction the broker aborted on its timeout bumped the epoch: the
    # producer hears what Kafka's coordinator says then.
    (TransactionTimedOutError, ErrorCode.invalid_producer_epoch),
    (InvalidTransactionStateError, ErrorCode.invalid_txn_state),
    (ConcurrentTransactionsError, ErrorCode.concurrent_transactions),
    (UnknownTransactionalIdError, ErrorCode.invalid_producer_id_mapping),
    (UnstableOffsetError, ErrorCode.unstable_offset_commit),
    (StaleGenerationError, ErrorCode.illegal_generation),
    (UnknownMemberError, ErrorCode.unknown_member_id),
    (UnknownGroupError, ErrorCode.group_id_not_found),
    (InconsistentGroupProtocolError, ErrorCode.inconsistent_group_protocol),
    (AuthenticationError, ErrorCode.sasl_authentication_failed),
    (StorageError, ErrorCode.kafka_storage_error),
    (HeadwaterTimeoutError, ErrorCode.request_timed_out),
    (ClosedError, ErrorCode.not_leader_or_follower),
    (BrokenError, ErrorCode.not_leader_or_follower),
    (InvalidArgument, ErrorCode.invalid_request),
]


def error_code(exc: BaseException) -> ErrorCode:
    """The Kafka error code for a Headwater error (retriable ones for
    storage hiccups and restarts, so clients retry; fatal ones for bad input)."""
    for kind, code in _ERRORS:
        if isinstance(exc, kind):
            return code
    return ErrorCode.unknown_server_error


#: API key -> the first version whose response may carry PRODUCER_FENCED
#: (KIP-588); older versions hear INVALID_PRODUCER_EPOCH for a fenced producer.
_PRODUCER_FENCED_FROM = {22: 4, 24: 2, 25: 2, 26: 2}


def _txn_error(exc: HeadwaterError, r: KafkaRequest) -> ErrorCode:
    """:func:`error_code` for the transactional APIs: a producer fenced by a
    newer instance hears PRODUCER_FENCED where its request version knows it."""
    first = _PRODUCER_FENCED_FROM.get(r.api_key)
    if isinstance(exc, ProducerFencedError) and first is not None and r.api_version >= first:
        return ErrorCode.producer_fenced
    return error_code(exc)


class KafkaHandler:
    """Answers the Kafka requests of one connection (see the module docstring).

    ``service`` is the broker's :class:`~headwater.broker.BrokerService`;
    ``host`` and ``port`` are what Metadata and FindCoordinator advertise
    (the address this connection reached)."""

    def __init__(
        self, service: Any, *, host: str, port: int, groups: KafkaGroups | None = None
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.groups = groups if groups is not None else KafkaGroups()

    def _group_apis(self, r: KafkaRequest) -> KafkaGroupApis:
        return KafkaGroupApis(self.service, self.groups, r.client_id)

    async def _join_group(self, r: KafkaRequest) -> dict[str, Any]:
        return {"throttle_time": 0, **await self._group_apis(r).join(r.body)}

    async def _sync_group(self, r: KafkaRequest) -> dict[str, Any]:
        return {"throttle_time": 0, **await self._group_apis(r).sync(r.body)}

    async def _heartbeat(self, r: KafkaRequest) -> dict[str, Any]:
        return {"throttle_time": 0, **await self._group_apis(r).heartbeat(r.body)}

    async def _leave_group(self, r: KafkaRequest) -> dict[str, Any]:
        return {"throttle_time": 0, **await self._group_apis(r).leave(r.body)}

    async def handle(self, request: KafkaRequest) -> Any:
        """The response body for ``request`` (``None``: send nothing)."""
        method: Callable[[KafkaHandler, KafkaRequest], Any] | None = self._methods.get(
            request.api_key
        )
        if method is None:  # pragma: no cover - the codec refuses these
            raise InvalidArgument(f"API key {request.api_key} has no handler")
        values = await method(self, request)
        if values is None:
            return None
        # An ApiVersions request of a version we do not know is answered in v0.
        version = request.api_version if request.body is not None else 0
        return build(response_class(request.api_key, version), values)

    # ------------------------------------------------------------- helpers

    async def _call(self, message: Any) -> Any:
        return await self.service.handle(message)

    async def _topics(self) -> dict[str, TopicInfo]:
        result: TopicList = await self._call(ListTopics())
        return {t.name: t for t in result.topics}

    # ------------------------------------------------------------- ApiVersions

    async def _api_versions(self, r: KafkaRequest) -> dict[str, Any]:
        keys = [
            {"api_key": key, "min_version": low, "max_version": high}
            for key, (_name, low, high) in sorted(SUPPORTED.items())
        ]
        # A version we do not know (no body): answer v0 with our ranges (KIP-511).
        error = ErrorCode.unsupported_version if r.body is None else ErrorCode.none
        return {"error_code": error, "api_keys": keys, "throttle_time": 0}

    # ------------------------------------------------------------- Metadata

    def _broker(self) -> dict[str, Any]:
        return {"node_id": NODE_ID, "host": self.host, "port": self.port, "rack": None}

    async def _metadata(self, r: KafkaRequest) -> dict[str, Any]:
        topics = await self._topics()
        wanted = r.body.topics
        if wanted is None or (r.api_version == 0 and not wanted):
            names = sorted(topics)
        else:
            names = [t.name for t in wanted]
        out = []
        for name in names:
            info = topics.get(name)
            if info is None:
                out.append(
                    {
                        "error_code": ErrorCode.unknown_topic_or_partition,
                        "name": name,
                        "is_internal": False,
                        "partitions": [],
                    }
                )
                continue
            out.append(
                {
                    "error_code": ErrorCode.none,
                    "name": name,
                    "is_internal": False,
                    "partitions": [
                        {
                            "error_code": ErrorCode.none,
                            "partition_index": p,
                            "leader_id": NODE_ID,
                            "leader_epoch": 0,
                            "replica_nodes": [NODE_ID],
                            "isr_nodes": [NODE_ID],
                            "offline_replicas": [],
                        }
                        for p in range(info.partitions)
                    ],
                }
            )
        return {
            "throttle_time": 0,
            "brokers": [self._broker()],
            "cluster_id": CLUSTER_ID,
            "controller_id": NODE_ID,
            "topics": out,
        }

    # ------------------------------------------------------------- Produce

    async def _produce_partition(self, topic: str, index: int, records: bytes | None) -> Any:
        base = -1
        append_time = -1
        try:
            if not records:
                raise KafkaCorruptBatch("a produce request for a partition carries no records")
            batches = decode_batches(records)
            if not batches:
                raise KafkaCorruptBatch("a produce request for a partition carries no batches")
            for batch in batches:
                if batch.control:
                    raise InvalidArgument(
                        "a client may not write control batches (transaction markers); "
                        "end a transaction with EndTxn"
                    )
                if not batch.records:
                    raise KafkaCorruptBatch("a record batch holds no records")
                result: ProduceResult = await self._call(
                    Produce(topic, index, batch_to_record(batch))
                )
                if base < 0:
                    base, append_time = result.base_offset, result.append_time
        except HeadwaterError as exc:
            return {
                "index": index,
                "error_code": error_code(exc),
                "base_offset": -1,
                "log_start_offset": -1,
                "error_message": str(exc),
            }
        return {
            "index": index,
            "error_code": ErrorCode.none,
            "base_offset": base,
            "log_start_offset": 0,
            "error_message": None,
            "_append_time": append_time,
        }

    async def _produce(self, r: KafkaRequest) -> dict[str, Any] | None:
        body = r.body
        results: dict[tuple[str, int], Any] = {}

        async def one(topic: str, index: int, records: bytes | None) -> None:
            results[(topic, index)] = await self._produce_partition(topic, index, records)

        # Partitions of one request are independent; each partition's
        # batches go in order (DECISIONS #24). Transactional batches are
        # checked by the partition: only a producer the transaction
        # coordinator admitted there (AddPartitionsToTxn) may write one.
        async with trio.open_nursery() as nursery:
            for topic in body.topic_data:
                for part in topic.partition_data:
                    nursery.start_soon(one, topic.name, part.index, part.records)
        if body.acks == 0:
            return None
        return {
            "throttle_time": 0,
            "responses": [
                {
                    "name": topic.name,
                    "partition_responses": [
                        {k: v for k, v in results[(topic.name, p.index)].items() if k[0] != "_"}
                        for p in topic.partition_data
                    ],
                }
                for topic in body.topic_data
            ],
        }

    # ------------------------------------------------------------- Fetch

    async def _fetch_partition(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_bytes: int,
        wait: float,
        isolation: str = "read_uncommitted",
    ) -> tuple[FetchResult | None, ErrorCode, int, int]:
        try:
            result: FetchResult = await self._call(
                Fetch(
                    topic,
                    partition,
                    offset,
                    max_bytes=max(1, max_bytes),
                    max_wait=wait,
                    isolation=isolation,
                )
            )
        except HeadwaterError as exc:
            return None, error_code(exc), -1, -1
        return result, ErrorCode.none, result.high_watermark, result.earliest_offset

    async def _fetch(self, r: KafkaRequest) -> dict[str, Any]:
        body = r.body
        wanted = [
            (t.topic, p.partition, p.fetch_offset, p.partition_max_bytes)
            for t in body.topics
            for p in t.partitions
        ]
        total_max = body.max_bytes if body.max_bytes > 0 else 1 << 30
        max_wait = min(max(body.max_wait.total_seconds(), 0.0), MAX_FETCH_WAIT)
        min_bytes = max(body.min_bytes, 0)
        # Fetch v4+ says; older versions read uncommitted, as in Kafka.
        level = int(getattr(body, "isolation_level", 0))
        isolation = "read_committed" if level == 1 else "read_uncommitted"

        async def read_all() -> tuple[dict[tuple[str, int], Any], int]:
            out: dict[tuple[str, int], Any] = {}
            budget = total_max
            size = 0
            for topic, partition, offset, part_max in wanted:
                limit = min(part_max, budget)
                if limit <= 0 and size:
                    out[(topic, partition)] = (None, ErrorCode.none, -2, -2)
                    continue
                got = await self._fetch_partition(topic, partition, offset, limit, 0, isolation)
                out[(topic, partition)] = got
                if got[0] is not None:
                    n = len(got[0].records)
                    size += n
                    budget -= n
            return out, size

        results, size = await read_all()
        errors = any(v[1] != ErrorCode.none for v in results.values())
        if size < max(min_bytes, 1) and max_wait > 0 and not errors and wanted:
            # Long poll: wait for data on any partition, up to max_wait.
            async with trio.open_nursery() as nursery:

                async def wait_one(topic: str, partition: int, offset: int) -> None:
                    got = await self._fetch_partition(
                        topic, partition, offset, 1, max_wait, isolation
                    )
                    if got[0] is None or got[0].records or _skipped_to(got[0], offset) > offset:
                        nursery.cancel_scope.cancel()

                for topic, partition, offset, _m in wanted:
                    nursery.start_soon(wait_one, topic, partition, offset)
            results, size = await read_all()
        topics: dict[str, list[dict[str, Any]]] = {}
        for topic, partition, offset, _m in wanted:
            result, code, hw, start = results[(topic, partition)]
            lso = hw
            if hw == -2:  # skipped for the byte budget: report the partition, no data
                records = b""
                hw = lso = start = -1
            else:
                records = (
                    records_to_kafka(result.records, topic=topic, partition=partition)
                    if result is not None and result.records
                    else b""
                )
                if result is not None:
                    if result.last_stable_offset >= 0:
                        lso = result.last_stable_offset
                    skipped_to = _skipped_to(result, offset)
                    if skipped_to > _end_of(result, offset):
                        # Markers (and aborted events) at the end were left out
                        # broker-side: a control batch ending just before
                        # ``skipped_to`` lets Kafka clients step over them.
                        records += control_batch(skipped_to - 1)
            topics.setdefault(topic, []).append(
                {
                    "partition_index": partition,
                    "error_code": code,
                    "high_watermark": hw,
                    "last_stable_offset": lso,
                    "log_start_offset": start,
                    "aborted_transactions": [],
                    "preferred_read_replica": -1,
                    "records": records,
                }
            )
        return {
            "throttle_time": 0,
            "error_code": ErrorCode.none,
            "session_id": 0,
            "responses": [{"topic": name, "partitions": parts} for name, parts in topics.items()],
        }

    # ------------------------------------------------------------- ListOffsets

    async def _timestamp_at(self, topic: str, partition: int, offset: int) -> int:
        result: FetchResult = await self._call(Fetch(topic, partition, offset, 1, 0))
        for header, record in iter_records(result.records):
            for event in decode_record_events(
                header, record, topic=topic, partition=partition, first_offset=offset
            ):
                return event.timestamp
        return -1

    async def _list_offsets(self, r: KafkaRequest) -> dict[str, Any]:
        out = []
        for topic in r.body.topics:
            parts = []
            for p in topic.partitions:
                ts = p.timestamp
                position: str | int = (
                    "latest" if ts == _LATEST else "earliest" if ts == _EARLIEST else ts
                )
                try:
                    result: OffsetResult = await self._call(
                        ListOffset(topic.name, p.partition_index, position)
                    )
                    offset, found_ts = result.offset, -1
                    if isinstance(position, int):
                        latest: OffsetResult = await self._call(
                            ListOffset(topic.name, p.partition_index, "latest")
                        )
                        if offset >= latest.offset:
                            offset = -1  # no event at or after that time
                        else:
                            found_ts = await self._timestamp_at(
                                topic.name, p.partition_index, offset
                            )
                    code = ErrorCode.none
                except HeadwaterError as exc:
                    offset, found_ts, code = -1, -1, error_code(exc)
                parts.append(
                    {
                        "partition_index": p.partition_index,
                        "error_code": code,
                        "timestamp": found_ts,
                        "offset": offset,
                        "leader_epoch": 0,
                    }
                )
            out.append({"name": topic.name, "partitions": parts})
        return {"throttle_time": 0, "topics": out}

    # ------------------------------------------------------------- admin

    async def _create_topics(self, r: KafkaRequest) -> dict[str, Any]:
        out = []
        validate_only = getattr(r.body, "validate_only", False)
        for t in r.body.topics:
            entry: dict[str, Any] = {"name": t.name, "error_message": None}
            try:
                if t.replication_factor not in (-1, 1):
                    entry["error_code"] = ErrorCode.invalid_replication_factor
                    entry["error_message"] = (
                        f"replication factor {t.replication_factor}: this Headwater broker "
                        "is a single node; use 1 (or -1 for the default)"
                    )
                    out.append(entry)
                    continue
                if t.assignments:
                    raise InvalidArgument("manual replica assignments are not supported")
                configs = {c.name: c.value for c in t.configs}
                policy = configs.get("cleanup.policy") or "delete"
                request = CreateTopic(
                    t.name,
                    partitions=1 if t.num_partitions == -1 else t.num_partitions,
                    retention_ms=_int_config(configs.get("retention.ms")),
                    retention_bytes=_int_config(configs.get("retention.bytes")),
                    compacted="compact" in policy,
                )
                if validate_only:
                    if t.name in await self._topics():
                        raise TopicExistsError(f"topic {t.name!r} already exists")
                else:
                    await self._call(request)
                entry["error_code"] = ErrorCode.none
                entry["num_partitions"] = request.partitions
                entry["replication_factor"] = 1
            except HeadwaterError as exc:
                code = error_code(exc)
                if code is ErrorCode.invalid_request:
                    code = ErrorCode.invalid_config
                entry["error_code"] = code
                entry["error_message"] = str(exc)
            out.append(entry)
        return {"throttle_time": 0, "topics": out}

    async def _delete_topics(self, r: KafkaRequest) -> dict[str, Any]:
        out = []
        for name in r.body.topic_names:
            try:
                await self._call(DeleteTopic(name))
                code = ErrorCode.none
            except HeadwaterError as exc:
                code = error_code(exc)
            out.append({"name": name, "error_code": code})
        return {"throttle_time": 0, "responses": out}

    async def _create_partitions(self, r: KafkaRequest) -> dict[str, Any]:
        out = []
        for t in r.body.topics:
            code, message = ErrorCode.none, None
            try:
                if t.assignments:
                    raise InvalidArgument("manual replica assignments are not supported")
                if not r.body.validate_only:
                    await self._call(AddPartitions(t.name, t.count))
            except HeadwaterError as exc:
                code = error_code(exc)
                if code is ErrorCode.invalid_request:
                    code = ErrorCode.invalid_partitions
                message = str(exc)
            out.append({"name": t.name, "error_code": code, "error_message": message})
        return {"throttle_time": 0, "results": out}

    async def _describe_configs(self, r: KafkaRequest) -> dict[str, Any]:
        out = []
        for res in r.body.resources:
            configs: list[dict[str, Any]] = []
            code, message = ErrorCode.none, None
            if res.resource_type == 2:  # topic
                try:
                    desc: TopicDescription = await self._call(DescribeTopic(res.resource_name))
                    t = desc.topic
                    items = {
                        "cleanup.policy": "compact" if t.compacted else "delete",
                        "retention.ms": str(-1 if t.retention_ms is None else t.retention_ms),
                        "retention.bytes": str(
                            -1 if t.retention_bytes is None else t.retention_bytes
                        ),
                        "headwater.durability": t.durability,
                        "message.timestamp.type": "CreateTime",
                        "min.insync.replicas": "1",
                    }
                except HeadwaterError as exc:
                    items = {}
                    code, message = error_code(exc), str(exc)
            elif res.resource_type == 4:  # broker
                items = {"broker.id": str(NODE_ID), "auto.create.topics.enable": "false"}
            else:
                items = {}
                code, message = (
                    ErrorCode.invalid_request,
                    (f"resource type {res.resource_type} is not supported (topic 2, broker 4)"),
                )
            keys = res.configuration_keys
            for name, value in items.items():
                if keys is not None and name not in keys:
                    continue
                configs.append(
                    {
                        "name": name,
                        "value": value,
                        "read_only": res.resource_type == 4,
                        "is_default": False,
                        "config_source": 1 if res.resource_type == 2 else 4,
                        "is_sensitive": False,
                        "synonyms": [],
                        "config_type": 2 if name != "cleanup.policy" else 7,
                        "documentation": None,
                    }
                )
            out.append(
                {
                    "error_code": code,
                    "error_message": message,
                    "resource_type": res.resource_type,
                    "resource_name": res.resource_name,
                    "configs": configs,
                }
            )
        return {"throttle_time": 0, "results": out}

    # ------------------------------------------------------------- producers

    async def _init_producer_id(self, r: KafkaRequest) -> dict[str, Any]:
        body = r.body
        tid = body.transactional_id
        if tid is None:
            identity: ProducerIdentity = await self._call(InitProducer())
            return _identity(ErrorCode.none, identity.producer_id, identity.epoch)
        timeout = body.transaction_timeout.total_seconds()
        if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
            return _identity(ErrorCode.invalid_transaction_timeout)
        try:
            # v3+ (KIP-360): a producer re-initializing names its identity;
            # only the current one may bump its epoch, a zombie is fenced.
            if getattr(body, "producer_id", -1) >= 0:
                current = await self._known_txn(tid)
                if current is None or (current.producer_id, current.epoch) != (
                    body.producer_id,
                    body.producer_epoch,
                ):
                    raise ProducerFencedError(
                        f"producer {body.producer_id} epoch {body.producer_epoch} of {tid!r} "
                        "is not the transactional id's current identity"
                    )
            ident: ProducerIdentity = await self._call(InitTransactions(tid, timeout))
        except HeadwaterError as exc:
            return _identity(_txn_error(exc, r))
        return _identity(ErrorCode.none, ident.producer_id, ident.epoch)

    async def _known_txn(self, tid: str) -> TransactionDescription | None:
        try:
            desc: TransactionDescription = await self._call(DescribeTransaction(tid))
        except UnknownTransactionalIdError:
            return None
        return desc

    # ------------------------------------------------------------- transactions

    async def _add_partitions_to_txn(self, r: KafkaRequest) -> dict[str, Any]:
        body = r.body
        wanted = [(t.name, p) for t in body.v3_and_below_topics for p in t.partitions]
        topics = await self._topics()
        unknown = {
            (t, p) for t, p in wanted if t not in topics or not 0 <= p < topics[t].partitions
        }
        if unknown:
            # Kafka's rule: the unknown ones are named, the rest not attempted.
            codes = {
                tp: ErrorCode.unknown_topic_or_partition
                if tp in unknown
                else ErrorCode.operation_not_attempted
                for tp in wanted
            }
        else:
            code = ErrorCode.none
            if wanted:
                try:
                    await self._call(
                        AddPartitionsToTxn(
                            body.v3_and_below_transactional_id,
                            body.v3_and_below_producer_id,
                            body.v3_and_below_producer_epoch,
                            tuple(TopicPartition(t, p) for t, p in wanted),
                        )
                    )
                except HeadwaterError as exc:
                    code = _txn_error(exc, r)
            codes = dict.fromkeys(wanted, code)
        return {
            "throttle_time": 0,
            "results_by_topic_v3_and_below": [
                {
                    "name": t.name,
                    "results_by_partition": [
                        {"partition_index": p, "partition_error_code": codes[(t.name, p)]}
                        for p in t.partitions
                    ],
                }
                for t in body.v3_and_below_topics
            ],
        }

    async def _add_offsets_to_txn(self, r: KafkaRequest) -> dict[str, Any]:
        body = r.body
        code = ErrorCode.none
        try:
            # The group joins the transaction; its offsets follow in TxnOffsetCommit.
            await self._call(
                SendOffsetsToTxn(
                    body.transactional_id,
                    body.producer_id,
                    body.producer_epoch,
                    body.group_id,
                    None,
                    -1,
                    (),
                )
            )
        except HeadwaterError as exc:
            code = _txn_error(exc, r)
        return {"throttle_time": 0, "error_code": code}

    async def _txn_offset_commit(self, r: KafkaRequest) -> dict[str, Any]:
        body = r.body
        offsets = tuple(
            PartitionOffset(
                t.name, p.partition_index, p.committed_offset, p.committed_metadata or ""
            )
            for t in body.topics
            for p in t.partitions
        )
        code = ErrorCode.none
        try:
            member: str | None = getattr(body, "member_id", "") or None
            generation: int = getattr(body, "generation_id", -1)
            if member is None:
                # Before v3 (and from a consumer outside a group) the request
                # carries no membership: Kafka fences it by the producer epoch
                # alone. Commit as the partitions' current owner, if any.
                member, generation = await self._owner(body.group_id, offsets)
            await self._call(
                SendOffsetsToTxn(
                    body.transactional_id,
                    body.producer_id,
                    body.producer_epoch,
                    body.group_id,
                    member,
                    generation,
                    offsets,
                )
            )
        except HeadwaterError as exc:
            code = _txn_error(exc, r)
        return {
            "throttle_time": 0,
            "topics": [
                {
                    "name": t.name,
                    "partitions": [
                        {"partition_index": p.partition_index, "error_code": code}
                        for p in t.partitions
                    ],
                }
                for t in body.topics
            ],
        }

    async def _owner(
        self, group: str, offsets: tuple[PartitionOffset, ...]
    ) -> tuple[str | None, int]:
        """The member owning every partition of ``offsets`` now, with the
        group's generation (``(None, -1)`` for a group without members)."""
        try:
            desc: GroupDescription = await self._call(DescribeGroup(group))
        except UnknownGroupError:
            return None, -1
        if not desc.members:
            return None, -1
        wanted = {(o.topic, o.partition) for o in offsets}
        for m in desc.members:
            if wanted <= {(tp.topic, tp.partition) for tp in m.assignment}:
                return m.member_id, desc.generation
        raise StaleGenerationError(
            f"group {group!r} has members and no one member owns all of "
            f"{', '.join(f'{t}/{p}' for t, p in sorted(wanted))}: commit the offsets of "
            "partitions the consumer owns"
        )

    async def _end_txn(self, r: KafkaRequest) -> dict[str, Any]:
        body = r.body
        code = ErrorCode.none
        try:
            await self._call(
                EndTxn(body.transactional_id, body.producer_id, body.producer_epoch, body.committed)
            )
        except HeadwaterError as exc:
            code = _txn_error(exc, r)
        return {"throttle_time": 0, "error_code": code}

    # ------------------------------------------------------------- groups

    async def _find_coordinator(self, r: KafkaRequest) -> dict[str, Any]:
        # Group (0) and transaction (1) coordinators are this broker: the one
        # placement of ``__groups`` and ``__transactions`` (DECISIONS #25).
        key_type = getattr(r.body, "key_type", 0)
        if key_type not in (0, 1):
            return {
                "throttle_time": 0,
                "error_code": ErrorCode.invalid_request,
                "error_message": f"key type {key_type}: use 0 (group) or 1 (transaction)",
                "node_id": -1,
                "host": "",
                "port": -1,
            }
        return {
            "throttle_time": 0,
            "error_code": ErrorCode.none,
            "error_message": None,
            "node_id": NODE_ID,
            "host": self.host,
            "port": self.port,
        }

    async def _offset_commit(self, r: KafkaRequest) -> dict[str, Any]:
        body = r.body
        member = body.member_id or None
        gen = body.generation_id_or_member_epoch
        generation = gen if gen >= 0 else 0
        offsets = tuple(
            PartitionOffset(t.name, p.partition_index, p.committed_offset)
            for t in body.topics
            for p in t.partitions
        )
        code = ErrorCode.none
        try:
            await self._call(CommitOffsets(body.group_id, member, generation, offsets))
        except HeadwaterError as exc:
            code = error_code(exc)
        return {
            "throttle_time": 0,
            "topics": [
                {
                    "name": t.name,
                    "partitions": [
                        {"partition_index": p.partition_index, "error_code": code}
                        for p in t.partitions
                    ],
                }
                for t in body.topics
            ],
        }

    async def _offset_fetch(self, r: KafkaRequest) -> dict[str, Any]:
        body = r.body
        wanted = (
            None
            if body.topics is None
            else [(t.name, p) for t in body.topics for p in t.partition_indexes]
        )
        # v7+ (KIP-447): a read_committed consumer asks for stable offsets
        # only; a partition with offsets pending in a transaction answers
        # UNSTABLE_OFFSET_COMMIT (retriable). Older versions get the last
        # committed offsets, pending ones ignored, as from Kafka.
        require_stable = bool(getattr(body, "require_stable", False))
        unstable: set[tuple[str, int]] = set()
        try:
            result: CommittedOffsets = await self._call(
                FetchCommitted(
                    body.group_id,
                    tuple(TopicPartition(t, p) for t, p in wanted) if wanted else (),
                    require_stable=False,
                )
            )
            committed = {(o.topic, o.partition): o.offset for o in result.offsets}
            code = ErrorCode.none
            if require_stable:
                for tp in wanted if wanted else sorted(committed):
                    try:
                        await self._call(FetchCommitted(body.group_id, (TopicPartition(*tp),)))
                    except UnstableOffsetError:
                        unstable.add(tp)
        except UnknownGroupError:
            committed, code = {}, ErrorCode.none
        except HeadwaterError as exc:
            committed, code = {}, error_code(exc)
        if wanted is None:
            wanted = sorted(committed)
        topics: dict[str, list[dict[str, Any]]] = {}
        for t, p in wanted:
            stable = (t, p) not in unstable
            topics.setdefault(t, []).append(
                {
                    "partition_index": p,
                    "committed_offset": committed.get((t, p), -1) if stable else -1,
                    "committed_leader_epoch": -1,
                    "metadata": "",
                    "error_code": ErrorCode.none if stable else ErrorCode.unstable_offset_commit,
                }
            )
        return {
            "throttle_time": 0,
            "error_code": code,
            "topics": [{"name": t, "partitions": parts} for t, parts in topics.items()],
        }

    async def _list_groups(self, r: KafkaRequest) -> dict[str, Any]:
        result: GroupList = await self._call(ListGroups())
        return {
            "throttle_time": 0,
            "error_code": ErrorCode.none,
            "groups": [{"group_id": g, "protocol_type": "consumer"} for g in result.groups],
        }

    async def _describe_groups(self, r: KafkaRequest) -> dict[str, Any]:
        out = []
        for group in r.body.groups:
            try:
                desc: GroupDescription = await self._call(DescribeGroup(group))
            except UnknownGroupError:
                out.append(
                    {
                        "error_code": ErrorCode.none,
                        "group_id": group,
                        "group_state": "Dead",
                        "protocol_type": "",
                        "protocol_data": "",
                        "members": [],
                        "authorized_operations": -2147483648,
                    }
                )
                continue
            except HeadwaterError as exc:
                out.append({"error_code": error_code(exc), "group_id": group, "members": []})
                continue
            kafka = self.groups.group(group)
            protocol = kafka.protocol if kafka.metadata else ""
            out.append(
                {
                    "error_code": ErrorCode.none,
                    "group_id": group,
                    "group_state": _group_state(desc.state),
                    "protocol_type": "consumer",
                    "protocol_data": protocol,
                    "members": [
                        {
                            "member_id": m.member_id,
                            "group_instance_id": None,
                            "client_id": m.client_id,
                            "client_host": "",
                            "member_metadata": dict(kafka.metadata.get(m.member_id, ())).get(
                                protocol, b""
                            ),
                            "member_assignment": encode_assignment(m.assignment),
                        }
                        for m in desc.members
                    ],
                    "authorized_operations": -2147483648,
                }
            )
        return {"throttle_time": 0, "groups": out}

    # ------------------------------------------------------------- SASL

    async def _sasl_handshake(self, r: KafkaRequest) -> dict[str, Any]:
        ok = r.body.mechanism == "PLAIN"
        return {
            "error_code": ErrorCode.none if ok else ErrorCode.unsupported_sasl_mechanism,
            "mechanisms": ["PLAIN"],
        }

    async def _sasl_authenticate(self, r: KafkaRequest) -> dict[str, Any]:
        # Answered by the connection, which owns the authentication state.
        raise InvalidArgument("SaslAuthenticate is answered by the connection")

    _methods: dict[int, Any] = {  # noqa: RUF012 - filled once below
        0: _produce,
        1: _fetch,
        2: _list_offsets,
        3: _metadata,
        8: _offset_commit,
        9: _offset_fetch,
        10: _find_coordinator,
        11: _join_group,
        12: _heartbeat,
        13: _leave_group,
        14: _sync_group,
        15: _describe_groups,
        16: _list_groups,
        17: _sasl_handshake,
        18: _api_versions,
        19: _create_topics,
        20: _delete_topics,
        22: _init_producer_id,
        24: _add_partitions_to_txn,
        25: _add_offsets_to_txn,
        26: _end_txn,
        28: _txn_offset_commit,
        32: _describe_configs,
        36: _sasl_authenticate,
        37: _create_partitions,
    }


def _identity(code: ErrorCode, producer_id: int = -1, epoch: int = -1) -> dict[str, Any]:
    return {
        "throttle_time": 0,
        "error_code": code,
        "producer_id": producer_id,
        "producer_epoch": epoch,
    }


def _int_config(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"config value {value!r} is not an integer") from None
    return None if number < 0 else number


_STATES = {
    "empty": "Empty",
    "stable": "Stable",
    "preparing_rebalance": "PreparingRebalance",
    "completing_rebalance": "CompletingRebalance",
    "dead": "Dead",
}


def _group_state(state: str) -> str:
    return _STATES.get(state, state[:1].upper() + state[1:] if state else "Empty")


def _end_of(result: FetchResult, offset: int) -> int:
    """The offset after the last record a fetch returned (``offset`` if none)."""
    end = offset
    for header, _record in iter_records(result.records):
        end = header.base_offset + header.count
    return end


def _skipped_to(result: FetchResult, offset: int) -> int:
    """Where the next fetch starts, past records the broker left out."""
    return result.next_offset if result.next_offset >= 0 else _end_of(result, offset)
