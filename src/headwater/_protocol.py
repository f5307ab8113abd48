"""The client protocol: one closed set of request and response messages.

Theory of operation
-------------------
Every client operation is one request message answered by one response
message (or a :class:`~headwater.HeadwaterError`). The embedded client hands
requests to the broker's :class:`~headwater.broker.BrokerService` directly; the
TCP client sends the same messages as CBOR frames and the server hands them to
the same service. So the embedded and remote clients share every line of
behaviour above the channel, and a test run against both keeps them equal.

Messages are frozen attrs classes with only CBOR-friendly fields (str, int,
bool, bytes, None, lists, tuples of those, and other messages). ``bytes`` fields
carry journal records unchanged: the broker never re-encodes events.

Version 1 of the protocol is this module. Adding an optional field with a
default is compatible; anything else needs a new protocol version. Version 2
adds server-pushed notices (see ``docs/protocol.md``): :class:`Membership` is
pushed to group members when their group starts or completes a rebalance.

:data:`PUSH_SINK` is how a front end tells the broker where pushes for the
request being handled go: the embedded channel and the server connection set
it around each request; the broker reads it when a member joins or heartbeats.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Literal

import attrs

__all__ = [
    "PROTOCOL_VERSION",
    "PUSH_SINK",
    "PushSink",
    "Durability",
    "CreateTopic",
    "DeleteTopic",
    "AddPartitions",
    "ListTopics",
    "DescribeTopic",
    "TopicInfo",
    "PartitionInfo",
    "TopicDescription",
    "InitProducer",
    "ProducerIdentity",
    "Produce",
    "ProduceResult",
    "FetchSubscribe",
    "FetchCredit",
    "FetchUnsubscribe",
    "CONNECTION_REQUEST_TYPES",
    "Fetch",
    "FetchResult",
    "ListOffset",
    "OffsetResult",
    "JoinGroup",
    "Heartbeat",
    "Membership",
    "ReleasePartitions",
    "LeaveGroup",
    "SyncGroup",
    "MemberAssignment",
    "CommitOffsets",
    "FetchCommitted",
    "CommittedOffsets",
    "TopicPartition",
    "PartitionOffset",
    "ListGroups",
    "DescribeGroup",
    "GroupMember",
    "GroupPartition",
    "GroupDescription",
    "GetTree",
    "TopicList",
    "GroupList",
    "TreeSnapshot",
    "Done",
    "InitTransactions",
    "AddPartitionsToTxn",
    "EndTxn",
    "SendOffsetsToTxn",
    "DescribeTransaction",
    "ListTransactions",
    "TransactionDescription",
    "TransactionList",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "ShareSubscribe",
    "ShareMembership",
    "ShareFetch",
    "ShareRecord",
    "ShareBatch",
    "ShareOutcome",
    "ShareAck",
    "ShareLeave",
    "SharePartitionState",
    "ShareDescription",
    "SHARE_REQUEST_TYPES",
    "SHARE_RESPONSE_TYPES",
]

PROTOCOL_VERSION = 2

MAX_FETCH_WAIT = 30.0
"""The longest a fetch may long-poll, in seconds; a pushed fetch (section 12)
pushes an empty result at least this often, so a client that hears nothing
for longer knows the subscription is gone."""

PushSink = Callable[[Any], None]
"""Delivers one pushed message to a client; never blocks, never raises."""

PUSH_SINK: ContextVar[PushSink | None] = ContextVar("headwater_push_sink", default=None)
"""Where pushes for the client of the request being handled go (``None``: the
client cannot take pushes; it learns from its heartbeats)."""

Durability = Literal["always", "interval", "never"]


@attrs.frozen
class TopicPartition:
    """One partition of one topic."""

    topic: str
    partition: int


@attrs.frozen
class PartitionOffset:
    """An offset for one partition of one topic (a commit, a position)."""

    topic: str
    partition: int
    offset: int
    metadata: str = ""


# --------------------------------------------------------------------------
# Admin


@attrs.frozen
class CreateTopic:
    """Create a topic. ``None`` settings take the broker's defaults."""

    name: str
    partitions: int = 1
    retention_ms: int | None = None
    retention_bytes: int | None = None
    compacted: bool = False
    durability: str | None = None


@attrs.frozen
class DeleteTopic:
    """Delete a topic and all its data."""

    name: str


@attrs.frozen
class AddPartitions:
    """Grow a topic to ``partitions`` partitions (more than it has). Keys map
    to partitions by count, so a keyed event may go to a new partition
    afterwards; existing events stay where they are."""

    name: str
    partitions: int


@attrs.frozen
class ListTopics:
    """List every topic."""


@attrs.frozen
class DescribeTopic:
    """Describe one topic: its configuration and each partition's offsets and size."""

    name: str


@attrs.frozen
class TopicInfo:
    """A topic's name and configuration."""

    name: str
    partitions: int
    retention_ms: int | None
    retention_bytes: int | None
    compacted: bool
    durability: str


@attrs.frozen
class PartitionInfo:
    """One partition's offsets and size on disk.

    ``state`` is ``serving``, or ``failed`` for a partition parked after its
    files could not be opened (``error`` then says why, naming file and byte;
    the offsets and size are 0), or ``restarting``.
    """

    partition: int
    earliest_offset: int
    next_offset: int
    size_bytes: int
    state: str = "serving"
    error: str | None = None
    last_stable_offset: int = -1
    """The first offset a read_committed reader cannot read yet (-1: not known)."""


@attrs.frozen
class TopicDescription:
    """A topic's configuration and its partitions."""

    topic: TopicInfo
    partitions: tuple[PartitionInfo, ...]


# --------------------------------------------------------------------------
# Produce and fetch


@attrs.frozen
class InitProducer:
    """Ask the broker for a new producer id (epoch 0) for idempotent produce."""


@attrs.frozen
class ProducerIdentity:
    """A producer id and epoch assigned by the broker."""

    producer_id: int
    epoch: int


@attrs.frozen
class Produce:
    """Append one batch (one journal record built by the client) to a partition."""

    topic: str
    partition: int
    record: bytes


@attrs.frozen
class ProduceResult:
    """Where a batch was stored. ``duplicate`` is true when the batch was a retry
    of one already stored (the offsets are those of the first copy)."""

    topic: str
    partition: int
    base_offset: int
    append_time: int
    duplicate: bool = False


@attrs.frozen
class Fetch:
    """Read whole records of a partition from ``offset``, up to ``max_bytes``
    (always at least one record when any exists), waiting up to ``max_wait``
    seconds for data when there is none yet (long poll)."""

    topic: str
    partition: int
    offset: int
    max_bytes: int = 1 << 20
    max_wait: float = 0.5
    isolation: str = "read_committed"
    """``read_committed``: up to the last stable offset, without aborted
    transactions' events; ``read_uncommitted``: up to the high watermark.
    Transaction markers are never returned."""


@attrs.frozen
class FetchResult:
    """Records read by a fetch. ``records`` is a run of whole journal records;
    ``high_watermark`` is the end of what consumers may read."""

    topic: str
    partition: int
    records: bytes
    high_watermark: int
    earliest_offset: int
    next_offset: int = -1
    """Where the next fetch starts (past records left out: markers, aborted
    events); -1: after the last record returned."""
    last_stable_offset: int = -1


@attrs.frozen
class FetchSubscribe:
    """Open a pushed fetch (protocol v2, over a connection; docs/protocol.md
    section 12): the server pushes ``fetch`` frames for subscription ``sub``
    (an id the client picks, unique among its open subscriptions on this
    connection) with the partition's records from ``offset`` on, each at most
    ``max_bytes``, while ``credit`` (bytes, returned with
    :class:`FetchCredit`) is positive."""

    sub: int
    topic: str
    partition: int
    offset: int
    credit: int
    max_bytes: int = 256 * 1024
    isolation: str = "read_committed"


@attrs.frozen
class FetchCredit:
    """Give subscription ``sub`` ``bytes`` more credit (the client consumed
    that much of what was pushed)."""

    sub: int
    bytes: int


@attrs.frozen
class FetchUnsubscribe:
    """Close subscription ``sub``: nothing more is pushed for it once the
    answer arrives (pushes already on their way are dropped by the client)."""

    sub: int


@attrs.frozen
class ListOffset:
    """Resolve a position: ``"earliest"``, ``"latest"``, or a timestamp in
    milliseconds (the first offset whose timestamp is at or after it)."""

    topic: str
    partition: int
    position: str | int


@attrs.frozen
class OffsetResult:
    """The offset a :class:`ListOffset` resolved to."""

    topic: str
    partition: int
    offset: int


# --------------------------------------------------------------------------
# Consumer groups


@attrs.frozen
class JoinGroup:
    """Join (or rejoin, with ``member_id``) a consumer group subscribed to
    ``topics``. ``rebalance_timeout`` (the consumer's ``max_poll_interval``)
    bounds how long the member may take to release partitions in a rebalance;
    ``protocol_type`` is the kind of member (one kind per group);
    ``rebalance`` asks for a rebalance even when nothing changed (a Kafka
    leader rejoining does, as with Kafka's coordinator). ``instance_id``
    makes the member static (Kafka's ``group.instance.id``): one live member
    per instance id; a copy restarted after a crash takes over the dead
    copy's partitions in place, without a rebalance (docs/protocol.md).
    ``assignor`` (``"sticky"``, ``"range"``; ``None``: the broker's) is
    fixed by the group's first live member."""

    group: str
    topics: tuple[str, ...]
    member_id: str | None = None
    session_timeout: float = 10.0
    client_id: str = ""
    rebalance_timeout: float | None = None
    protocol_type: str = "headwater"
    rebalance: bool = False
    instance_id: str | None = None
    assignor: str | None = None


@attrs.frozen
class Heartbeat:
    """Tell the group coordinator this member is alive; returns the membership."""

    group: str
    member_id: str
    generation: int


@attrs.frozen
class Membership:
    """A member's view of its group: generation, the partitions it owns, the
    group's state, and the partitions it must release (run ``on_revoked``,
    commit, then :class:`ReleasePartitions`) before the rebalance under way can
    hand them to another member. Answers join, heartbeat and release requests,
    and is pushed as a group notice (protocol v2)."""

    group: str
    member_id: str
    generation: int
    assignment: tuple[TopicPartition, ...]
    state: str = "stable"
    release: tuple[TopicPartition, ...] = ()


@attrs.frozen
class ReleasePartitions:
    """A member gave up ``partitions`` in a rebalance (it committed what it
    wanted first); returns its :class:`Membership`."""

    group: str
    member_id: str
    generation: int
    partitions: tuple[TopicPartition, ...]


@attrs.frozen
class MemberAssignment:
    """The partitions an elected leader gives one member (in :class:`SyncGroup`)."""

    member_id: str
    partitions: tuple[TopicPartition, ...]


@attrs.frozen
class SyncGroup:
    """The elected leader's assignment for ``generation`` (Kafka members, whose
    leader assigns on its client): ``assignment`` pairs member ids with their
    partitions. Returns the leader's :class:`Membership`; the group is stable."""

    group: str
    member_id: str
    generation: int
    assignment: tuple[MemberAssignment, ...]


@attrs.frozen
class LeaveGroup:
    """Leave a group at once (its partitions are reassigned)."""

    group: str
    member_id: str


@attrs.frozen
class CommitOffsets:
    """Commit positions (the next offset to read) for a group, fenced by the
    member's generation."""

    group: str
    member_id: str | None
    generation: int
    offsets: tuple[PartitionOffset, ...]


@attrs.frozen
class FetchCommitted:
    """Read a group's committed offsets for some partitions (all if empty)."""

    group: str
    partitions: tuple[TopicPartition, ...] = ()
    require_stable: bool = True
    """``True``: answer ``unstable_offset`` while a transaction holds
    offsets for a partition asked for (KIP-447); ``False``: answer the last
    committed offsets, ignoring pending ones (Kafka's OffsetFetch before v7)."""


@attrs.frozen
class CommittedOffsets:
    """Committed offsets of a group; partitions without a commit are absent."""

    group: str
    offsets: tuple[PartitionOffset, ...]


@attrs.frozen
class ListGroups:
    """List every consumer group."""


@attrs.frozen
class DescribeGroup:
    """Describe a group: members, assignment, committed offsets and lag."""

    group: str


@attrs.frozen
class GroupMember:
    """One member of a group and the partitions it owns (``instance_id``: a
    static member's instance id)."""

    member_id: str
    client_id: str
    assignment: tuple[TopicPartition, ...]
    instance_id: str | None = None


@attrs.frozen
class GroupPartition:
    """One partition as a group sees it: committed offset, end offset, lag."""

    topic: str
    partition: int
    committed: int | None
    end_offset: int
    lag: int
    metadata: str = ""


@attrs.frozen
class GroupDescription:
    """A group's state: generation, members and per-partition lag."""

    group: str
    state: str
    generation: int
    topics: tuple[str, ...]
    members: tuple[GroupMember, ...]
    partitions: tuple[GroupPartition, ...]


@attrs.frozen
class GetTree:
    """Return the live supervision tree of the broker."""


@attrs.frozen
class TopicList:
    """The response of :class:`ListTopics`: every topic, by name."""

    topics: tuple[TopicInfo, ...]


@attrs.frozen
class GroupList:
    """The response of :class:`ListGroups`: every consumer group's name."""

    groups: tuple[str, ...]


@attrs.frozen
class TreeSnapshot:
    """The response of :class:`GetTree`: the supervision tree as nested maps
    (``ActorSnapshot.as_dict()``: path, kind, state, restarts, incarnation,
    last_failure, children)."""

    root: dict[str, Any]


@attrs.frozen
class Done:
    """The response of requests that return nothing."""


# --------------------------------------------------------------------------
# Transactions


@attrs.frozen
class InitTransactions:
    """Give a transactional producer its identity: the transactional id's
    producer id with a bumped epoch, fencing older instances (after the
    broker aborted what they left open)."""

    transactional_id: str
    timeout: float = 60.0


@attrs.frozen
class AddPartitionsToTxn:
    """Put partitions into the producer's transaction before writing to them
    (the first add starts the transaction)."""

    transactional_id: str
    producer_id: int
    epoch: int
    partitions: tuple[TopicPartition, ...]


@attrs.frozen
class SendOffsetsToTxn:
    """Commit a group's consumer positions as part of the producer's open
    transaction: held pending (the group's committed offset for those
    partitions answers ``unstable_offset`` meanwhile) and committed with it.
    Fenced by the member's ownership like ``commit_offsets``. Empty
    ``offsets`` only put the group into the transaction (Kafka's
    AddOffsetsToTxn)."""

    transactional_id: str
    producer_id: int
    epoch: int
    group: str
    member_id: str | None
    generation: int
    offsets: tuple[PartitionOffset, ...]


@attrs.frozen
class EndTxn:
    """Commit or abort the producer's open transaction; answered when every
    partition's marker is durable."""

    transactional_id: str
    producer_id: int
    epoch: int
    commit: bool


@attrs.frozen
class DescribeTransaction:
    """Describe one transactional id."""

    transactional_id: str


@attrs.frozen
class ListTransactions:
    """List every transactional id the coordinator knows."""


@attrs.frozen
class TransactionDescription:
    """One transactional id: its producer identity, the state of its last
    transaction, its timeout and the partitions of the transaction."""

    transactional_id: str
    producer_id: int
    epoch: int
    state: str
    timeout: float
    partitions: tuple[TopicPartition, ...]
    pending_partitions: tuple[TopicPartition, ...]
    groups: tuple[str, ...] = ()


@attrs.frozen
class TransactionList:
    """The response of :class:`ListTransactions`."""

    transactions: tuple[TransactionDescription, ...]


REQUEST_TYPES: tuple[type, ...] = (
    CreateTopic,
    DeleteTopic,
    AddPartitions,
    ListTopics,
    DescribeTopic,
    InitProducer,
    Produce,
    Fetch,
    ListOffset,
    JoinGroup,
    Heartbeat,
    ReleasePartitions,
    LeaveGroup,
    SyncGroup,
    CommitOffsets,
    FetchCommitted,
    ListGroups,
    DescribeGroup,
    GetTree,
    InitTransactions,
    AddPartitionsToTxn,
    SendOffsetsToTxn,
    EndTxn,
    DescribeTransaction,
    ListTransactions,
)

RESPONSE_TYPES: tuple[type, ...] = (
    MemberAssignment,
    TopicInfo,
    PartitionInfo,
    TopicDescription,
    ProducerIdentity,
    ProduceResult,
    FetchResult,
    OffsetResult,
    Membership,
    CommittedOffsets,
    GroupMember,
    GroupPartition,
    GroupDescription,
    TopicPartition,
    PartitionOffset,
    TopicList,
    GroupList,
    TreeSnapshot,
    Done,
    TransactionDescription,
    TransactionList,
)


# --------------------------------------------------------------------------
# Share subscriptions (docs/protocol.md, "Share subscriptions")


@attrs.frozen
class ShareSubscribe:
    """Join (creating on first use) the share subscription ``name`` of
    ``topic``. The settings are fixed by the first subscribe; a later one
    with different settings is refused (``subscription_conflict``).
    ``consumer_id`` rejoins as the same consumer."""

    topic: str
    name: str
    mode: str = "shared"
    start: str = "earliest"
    ack_timeout_ms: int = 30_000
    max_deliveries: int = 5
    backoff_ms: tuple[int, ...] = ()
    backoff_base_ms: int = 0
    backoff_max_ms: int = 60_000
    window: int = 1000
    session_timeout: float = 10.0
    client_id: str = ""
    consumer_id: str | None = None


@attrs.frozen
class ShareMembership:
    """The answer to :class:`ShareSubscribe`: who this consumer is."""

    name: str
    topic: str
    consumer_id: str
    mode: str
    partitions: int


@attrs.frozen
class ShareFetch:
    """Take up to ``max_events`` events (the consumer's free credit), waiting
    up to ``max_wait`` seconds when none is ready. Each returned event is
    locked to this consumer until the subscription's ack timeout. A fetch
    also keeps the consumer's session alive."""

    name: str
    consumer_id: str
    max_events: int
    max_wait: float = 0.5


@attrs.frozen
class ShareRecord:
    """One delivered event; ``headers`` is a flat list ``[name, value, ...]``."""

    partition: int
    offset: int
    timestamp: int
    key: bytes | str | None
    value: bytes | None
    headers: Any
    delivery_count: int


@attrs.frozen
class ShareBatch:
    """The answer to :class:`ShareFetch`."""

    name: str
    records: tuple[ShareRecord, ...]


@attrs.frozen
class ShareOutcome:
    """What a consumer did with one event: ``ack``, ``nack`` (redeliver after
    the backoff, or ``delay_ms``), ``reject`` (dead-letter now) or
    ``extend`` (renew the lock). ``error`` is kept for the dead-letter headers."""

    partition: int
    offset: int
    outcome: str
    delay_ms: int | None = None
    error: str | None = None


@attrs.frozen
class ShareAck:
    """Settle events this consumer holds; answered with :class:`Done` or
    ``lock_lost`` naming the events it no longer holds (the rest applied)."""

    name: str
    consumer_id: str
    outcomes: tuple[ShareOutcome, ...]


@attrs.frozen
class ShareLeave:
    """Leave a share subscription; events this consumer holds go back at once."""

    name: str
    consumer_id: str


@attrs.frozen
class SharePartitionState:
    """One partition of a share subscription, for ``groups describe``."""

    partition: int
    ack_floor: int
    end_offset: int
    backlog: int
    in_flight: int
    waiting: int
    acked: int
    redelivered: int
    dead_lettered: int


@attrs.frozen
class ShareDescription:
    """The answer to :class:`DescribeGroup` for a share subscription."""

    name: str
    topic: str
    mode: str
    dead_letter_topic: str
    consumers: tuple[str, ...]
    partitions: tuple[SharePartitionState, ...]


SHARE_REQUEST_TYPES: tuple[type, ...] = (ShareSubscribe, ShareFetch, ShareAck, ShareLeave)
CONNECTION_REQUEST_TYPES: tuple[type, ...] = (FetchSubscribe, FetchCredit, FetchUnsubscribe)
"""Requests a server connection answers itself (pushed fetches live on a
connection); the broker service refuses them."""
SHARE_RESPONSE_TYPES: tuple[type, ...] = (
    ShareMembership,
    ShareRecord,
    ShareBatch,
    ShareOutcome,
    SharePartitionState,
    ShareDescription,
)
REQUEST_TYPES = (*REQUEST_TYPES, *SHARE_REQUEST_TYPES, *CONNECTION_REQUEST_TYPES)
RESPONSE_TYPES = (*RESPONSE_TYPES, *SHARE_RESPONSE_TYPES)
