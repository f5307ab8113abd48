"""The consumer-group coordinator core: members, rebalances, assignment, commits.

Theory of operation
-------------------
One :class:`GroupCoordinator` per group (owned by the group actor). It has no
Trio in it: every call that needs time takes ``now`` (seconds on the actor's
clock), and :meth:`GroupCoordinator.next_deadline` says when to call
:meth:`GroupCoordinator.tick` next.

The group moves through Kafka's states (:data:`TRANSITIONS`)::

    empty --joined--> preparing_rebalance --rebalanced--> completing_rebalance
                        ^        |  ^                            |
                        |        |  +-- planned / released       | stabilized
                        |        +--left (last member)--> empty  v
                        +---- joined / left / topics_changed -- stable
    empty --deleted--> dead

Any membership change (a member joins, changes its subscription, leaves or
times out) or a change of the subscribed topics' partition counts *plans* a
rebalance: the group's :class:`Assigner` computes the target assignment from
the current ownership (sticky), and every member that owns a partition the
target gives to someone else is asked to **release** it (``release`` in its
:class:`~headwater.Membership`, pushed to it at once). Until the member
releases (its ``on_revoked`` ran and its final commit went through:
:meth:`GroupCoordinator.release`) or its rebalance timeout passes (it is then
removed), nobody else gets that partition. Partitions that do not move stay
with their owners, who keep reading and committing them. When no release is
outstanding the rebalance completes: the generation is bumped and every
member learns its new assignment (``rebalanced``; with the broker as
assigner ``stabilized`` follows at once; for Kafka members the elected
leader assigns (:class:`LeaderAssigner`: the target is empty, so owners give
up everything, as in Kafka's eager protocol) and the group waits in
``completing_rebalance`` until the leader's assignment arrives through
:meth:`GroupCoordinator.sync`, the ``synced`` event).

So a partition is never owned by two members, and commits are fenced by
**ownership**, not by generation equality: a known member may commit the
partitions it owns now (a commit for a partition it does not own raises
:class:`~headwater.StaleGenerationError`). A member that follows the notices
therefore never sees that error. A member the coordinator removed gets
:class:`~headwater.UnknownMemberError` and joins again. The first member
fixes the group's protocol type (``"headwater"`` or ``"kafka"``); a
member of another type is refused with
:class:`~headwater.InconsistentGroupProtocolError` while the group has members.

Transactions (DECISIONS #19) fit this shape without a new state: a release
of a partition whose offsets are pending in an open transaction is *held*
(the partition stays with its owner, the rebalance waits) until that
transaction commits, aborts or times out (:meth:`GroupCoordinator.complete_txn`);
the new owner's fetch of the committed offset would also answer a retriable
"unstable offset" while transactional offsets for it are pending. Held
releases live in memory: after a restart of the group's actor the owner's
rebalance timeout bounds the wait instead.

Static membership (DECISIONS #22, Kafka's KIP-345 with one difference): a
member may join with an ``instance_id``. While the member holding that
instance id is live (its session has not ended), another join with the same
id is refused with :class:`~headwater.MemberInstanceInUseError` (Kafka
fences the old member instead; we refuse the newcomer, so two live copies of
one processing instance never alternate). A join with the id of a holder
whose session ended takes its place in one ``replaced`` event: a new member
id, the same partitions, the same generation, no rebalance (outstanding
releases of the dead holder count as done: its uncommitted work is void, and
its open transaction is fenced by the newcomer's transactional id). And a
holder that was refused a successor while live is not removed when its
session ends but *vacated* for one more session timeout, so the waiting
successor (retrying its join) takes over in place instead of two
rebalances moving its partitions away and back. A vacated holder that
heartbeats again is live again; one that nobody claims is removed as usual
and the others take over its partitions. Refusals and vacancies are not
persisted (like deadlines): after a coordinator restart every holder gets a
fresh session.

Members learn what to do from :meth:`GroupCoordinator.take_notices` (the
memberships that changed since they were last told; the actor pushes them),
and from every join, heartbeat and release answer (a client without push
still follows, at heartbeat pace).

Persistence is event sourcing (state may later live in an internal
``__groups`` topic: DECISIONS #25). Every change is a plain CBOR-encodable
event that records its *outcome* (the target and the new assignment
included), applied with the pure :func:`apply`; the actor persists
:meth:`GroupCoordinator.take_events` before replying, and recovery replays
them through :func:`apply`. Replaying never recomputes an assignment.
Deadlines (sessions, rebalance timeouts) are not persisted: after recovery
every member gets fresh ones from the recovery time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol

import attrs

from headwater._errors import (
    IllegalTransitionError,
    InconsistentGroupProtocolError,
    InvalidArgument,
    MemberInstanceInUseError,
    OffsetOutOfRangeError,
    StaleGenerationError,
    UnknownMemberError,
    UnknownPartitionError,
    UnstableOffsetError,
)
from headwater._protocol import (
    GroupDescription,
    GroupMember,
    GroupPartition,
    Membership,
    PartitionOffset,
    TopicPartition,
)

__all__ = [
    "TRANSITIONS",
    "Assigner",
    "BrokerAssigner",
    "LeaderAssigner",
    "GroupCoordinator",
    "GroupEvent",
    "GroupState",
    "MemberState",
    "apply",
    "compute_assignment",
]

GroupStatus = Literal["empty", "preparing_rebalance", "completing_rebalance", "stable", "dead"]
AssignorName = Literal["sticky", "range"]
Assignor = AssignorName
#: A persisted change: a CBOR-encodable dict with a ``"type"`` key.
GroupEvent = dict[str, Any]
TP = tuple[str, int]

_REBALANCING = ("preparing_rebalance", "completing_rebalance")
_LIVE = ("empty", "preparing_rebalance", "completing_rebalance", "stable")

#: (state, event) -> the states the event may lead to.
TRANSITIONS: dict[tuple[str, str], frozenset[str]] = {
    **{(s, "joined"): frozenset({"preparing_rebalance"}) for s in _LIVE},
    **{
        (s, "left"): frozenset({"preparing_rebalance", "empty"})
        for s in ("preparing_rebalance", "completing_rebalance", "stable")
    },
    ("empty", "topics_changed"): frozenset({"empty"}),
    **{
        (s, "topics_changed"): frozenset({"preparing_rebalance"})
        for s in ("preparing_rebalance", "completing_rebalance", "stable")
    },
    ("preparing_rebalance", "planned"): frozenset({"preparing_rebalance"}),
    ("preparing_rebalance", "released"): frozenset({"preparing_rebalance"}),
    ("preparing_rebalance", "rebalanced"): frozenset({"completing_rebalance"}),
    ("completing_rebalance", "stabilized"): frozenset({"stable"}),
    ("completing_rebalance", "synced"): frozenset({"stable"}),
    **{(s, "committed"): frozenset({s}) for s in _LIVE},
    **{(s, "txn_offsets"): frozenset({s}) for s in _LIVE},
    **{
        (s, "replaced"): frozenset({s})
        for s in ("preparing_rebalance", "completing_rebalance", "stable")
    },
    **{(s, "txn_completed"): frozenset({s}) for s in _LIVE},
    ("empty", "deleted"): frozenset({"dead"}),
}

MIN_SESSION_TIMEOUT = 0.1
MAX_SESSION_TIMEOUT = 3600.0
DEFAULT_REBALANCE_TIMEOUT = 300.0
LEGACY_REBALANCE_TIMEOUT = 0.0
PROTOCOL_TYPES = ("headwater", "kafka")


@attrs.frozen
class MemberState:
    """One member as persisted: id, client id, subscription, session timeout,
    rebalance timeout, the partitions it owns now, those it was asked to
    release in the rebalance under way, and a static member's instance id."""

    member_id: str
    client_id: str
    topics: tuple[str, ...]
    session_timeout: float
    assignment: tuple[TP, ...] = ()
    rebalance_timeout: float = DEFAULT_REBALANCE_TIMEOUT
    release: tuple[TP, ...] = ()
    instance_id: str | None = None


@attrs.frozen
class GroupState:
    """A group's persisted state. Treat the mappings as read-only: :func:`apply`
    returns a new state and never changes an old one. ``target`` is the
    assignment the rebalance under way will hand out; ``metadata`` the text
    stored with each committed offset."""

    group: str
    status: GroupStatus = "empty"
    generation: int = 0
    members: Mapping[str, MemberState] = attrs.field(factory=dict)
    topic_partitions: Mapping[str, int] = attrs.field(factory=dict)
    committed: Mapping[TP, int] = attrs.field(factory=dict)
    member_seq: int = 0
    protocol_type: str | None = None
    target: Mapping[str, tuple[TP, ...]] = attrs.field(factory=dict)
    metadata: Mapping[TP, str] = attrs.field(factory=dict)
    pending: Mapping[int, tuple[tuple[Any, ...], ...]] = attrs.field(factory=dict)
    """Offsets sent in open transactions, by producer id: rows of
    (topic, partition, offset[, metadata]), committed with the transaction."""
    assignor: AssignorName | None = None
    """The assignor the first live member asked for (``None``: the
    coordinator's own); fixed while the group has members."""


def _tps(rows: Iterable[Iterable[Any]]) -> tuple[TP, ...]:
    return tuple((str(t), int(p)) for t, p in rows)


def state_to_plain(state: GroupState) -> dict[str, Any]:
    """A :class:`GroupState` as plain CBOR-friendly data (for snapshots)."""
    return {
        "group": state.group,
        "status": state.status,
        "generation": state.generation,
        "members": [
            [
                m.member_id,
                m.client_id,
                list(m.topics),
                m.session_timeout,
                [list(tp) for tp in m.assignment],
                m.rebalance_timeout,
                [list(tp) for tp in m.release],
                m.instance_id,
            ]
            for m in state.members.values()
        ],
        "topic_partitions": dict(state.topic_partitions),
        "committed": [[t, p, o] for (t, p), o in sorted(state.committed.items())],
        "member_seq": state.member_seq,
        "protocol_type": state.protocol_type,
        "target": {m: [list(tp) for tp in tps] for m, tps in state.target.items()},
        "metadata": [[t, p, s] for (t, p), s in sorted(state.metadata.items())],
        "pending": [[pid, [list(r) for r in rows]] for pid, rows in sorted(state.pending.items())],
        "assignor": state.assignor,
    }


def state_from_plain(data: dict[str, Any]) -> GroupState:
    """The inverse of :func:`state_to_plain` (also reads snapshots written
    before rebalances had states of their own)."""
    members = {}
    for m in data["members"]:
        rebalance_timeout = float(m[5]) if len(m) > 5 else DEFAULT_REBALANCE_TIMEOUT
        release = _tps(m[6]) if len(m) > 6 else ()
        instance_id = m[7] if len(m) > 7 else None
        members[m[0]] = MemberState(
            m[0],
            m[1],
            tuple(m[2]),
            float(m[3]),
            _tps(m[4]),
            rebalance_timeout,
            release,
            instance_id,
        )
    return GroupState(
        group=data["group"],
        status=data["status"],
        generation=data["generation"],
        members=members,
        topic_partitions=dict(data["topic_partitions"]),
        committed={(t, p): o for t, p, o in data["committed"]},
        member_seq=data["member_seq"],
        protocol_type=data.get("protocol_type", "headwater" if members else None),
        target={m: _tps(tps) for m, tps in data.get("target", {}).items()},
        metadata={(t, p): s for t, p, s in data.get("metadata", [])},
        pending={int(pid): tuple(tuple(r) for r in rows) for pid, rows in data.get("pending", [])},
        assignor=data.get("assignor"),
    )


# --------------------------------------------------------------------------
# Assignment


def compute_assignment(
    members: Mapping[str, tuple[str, ...]],
    topic_partitions: Mapping[str, int],
    previous: Mapping[str, Iterable[TP]] | None = None,
    assignor: Assignor = "sticky",
) -> dict[str, tuple[TP, ...]]:
    """Assign every partition of every subscribed topic to exactly one member
    subscribed to it. ``members`` maps member id to its topics.

    ``"sticky"`` (default): balanced round-robin over all partitions that keeps
    each member's previous partitions where the balance allows (with equal
    subscriptions every member gets ``P // M`` or ``P // M + 1``).
    ``"range"``: Kafka's range assignor, per topic, contiguous ranges to
    members in id order. Deterministic: same input, same output.
    """
    order = sorted(members)
    owned: dict[str, list[TP]] = {m: [] for m in order}
    subscribed = {t for m in order for t in members[m]}
    partitions = [(t, p) for t in sorted(subscribed) for p in range(topic_partitions.get(t, 0))]
    if not order:
        return {}
    if assignor == "range":
        for topic in sorted(subscribed):
            eligible = [m for m in order if topic in members[m]]
            n = topic_partitions.get(topic, 0)
            q, r = divmod(n, len(eligible))
            start = 0
            for i, m in enumerate(eligible):
                size = q + (1 if i < r else 0)
                owned[m].extend((topic, p) for p in range(start, start + size))
                start += size
        return {m: tuple(sorted(owned[m])) for m in order}

    q, extras = divmod(len(partitions), len(order))
    valid = set(partitions)
    taken: set[TP] = set()
    prev = {m: sorted(previous.get(m, ())) if previous else [] for m in order}
    leftovers: dict[str, list[TP]] = {}
    for m in order:
        keep = [tp for tp in prev[m] if tp in valid and tp[0] in members[m] and tp not in taken]
        owned[m] = keep[:q]
        taken.update(owned[m])
        leftovers[m] = keep[q:]
    for m in order:
        if extras and leftovers[m]:
            tp = leftovers[m][0]
            owned[m].append(tp)
            taken.add(tp)
            extras -= 1
    for tp in partitions:
        if tp in taken:
            continue
        eligible = [m for m in order if tp[0] in members[m]]
        under = [m for m in eligible if len(owned[m]) < q]
        if not under and extras:
            under = [m for m in eligible if len(owned[m]) == q]
            if under:
                extras -= 1
        pool = under or eligible
        best = min(pool, key=lambda m: (len(owned[m]), order.index(m)))
        owned[best].append(tp)
        taken.add(tp)
    return {m: tuple(sorted(owned[m])) for m in order}


class Assigner(Protocol):
    """Who decides a group's assignment. The broker assigns for Headwater
    members (:class:`BrokerAssigner`), the elected leader for Kafka members
    (:class:`LeaderAssigner`, ``on_broker = False``: the group then waits in
    ``completing_rebalance`` for the leader's answer)."""

    @property
    def on_broker(self) -> bool:
        """Whether the broker decides (else an elected member does)."""
        ...

    def assign(
        self,
        members: Mapping[str, tuple[str, ...]],
        topic_partitions: Mapping[str, int],
        previous: Mapping[str, Iterable[TP]],
    ) -> dict[str, tuple[TP, ...]]:
        """The target assignment (member id -> partitions)."""
        ...


@attrs.frozen
class BrokerAssigner:
    """The broker computes the assignment with :func:`compute_assignment`."""

    assignor: AssignorName = "sticky"
    on_broker: bool = True

    def assign(
        self,
        members: Mapping[str, tuple[str, ...]],
        topic_partitions: Mapping[str, int],
        previous: Mapping[str, Iterable[TP]],
    ) -> dict[str, tuple[TP, ...]]:
        """See :class:`Assigner`."""
        return compute_assignment(members, topic_partitions, previous, self.assignor)


@attrs.frozen
class LeaderAssigner:
    """Kafka members: the elected leader assigns on its client. The broker's
    target is empty (every member gives up what it owns: Kafka's eager
    protocol), and the group waits in ``completing_rebalance`` until the
    leader's assignment arrives (:meth:`GroupCoordinator.sync`)."""

    on_broker: bool = False

    def assign(
        self,
        members: Mapping[str, tuple[str, ...]],
        topic_partitions: Mapping[str, int],
        previous: Mapping[str, Iterable[TP]],
    ) -> dict[str, tuple[TP, ...]]:
        """See :class:`Assigner`: nothing, until the leader says."""
        return dict.fromkeys(members, ())


# --------------------------------------------------------------------------
# Events and the pure apply


def _check_transition(state: GroupState, kind: str, target: str) -> None:
    allowed = TRANSITIONS.get((state.status, kind))
    if allowed is None or target not in allowed:
        raise IllegalTransitionError(
            f"group {state.group!r} is {state.status}: event {kind!r} is not allowed "
            f"(it would lead to {target!r})"
        ) from None


def _with_offsets(state: GroupState, rows: Iterable[Any]) -> GroupState:
    committed = dict(state.committed)
    metadata = dict(state.metadata)
    for row in rows:
        topic, partition, offset = row[0], row[1], row[2]
        committed[(topic, partition)] = offset
        text = row[3] if len(row) > 3 else ""
        if text:
            metadata[(topic, partition)] = text
        else:
            metadata.pop((topic, partition), None)
    return attrs.evolve(state, committed=committed, metadata=metadata)


def apply(state: GroupState, event: GroupEvent) -> GroupState:
    """Return the state after ``event`` (pure: ``state`` is not changed).

    Raises :class:`~headwater.IllegalTransitionError` for an event the
    lifecycle table does not allow in the current state, and
    :class:`~headwater.InvalidArgument` for an unknown event type."""
    kind = event.get("type")
    if kind == "joined":
        _check_transition(state, "joined", "preparing_rebalance")
        m = event["member"]
        old = state.members.get(m["member_id"])
        member = MemberState(
            m["member_id"],
            m["client_id"],
            tuple(m["topics"]),
            float(m["session_timeout"]),
            old.assignment if old is not None else (),
            float(m.get("rebalance_timeout", DEFAULT_REBALANCE_TIMEOUT)),
            old.release if old is not None else (),
            m.get("instance_id"),
        )
        return attrs.evolve(
            state,
            status="preparing_rebalance",
            members={**state.members, member.member_id: member},
            topic_partitions={**state.topic_partitions, **event["topic_partitions"]},
            member_seq=event["member_seq"],
            protocol_type=event.get("protocol_type", state.protocol_type or "headwater"),
            assignor=event.get("assignor", state.assignor)
            if state.members
            else event.get("assignor"),
        )
    if kind == "left":
        members = dict(state.members)
        if event["member_id"] not in members:
            raise IllegalTransitionError(
                f"group {state.group!r}: event 'left' names unknown member {event['member_id']!r}"
            )
        del members[event["member_id"]]
        left: GroupStatus = "preparing_rebalance" if members else "empty"
        _check_transition(state, "left", left)
        target = {mid: tps for mid, tps in state.target.items() if mid in members}
        return attrs.evolve(
            state,
            status=left,
            members=members,
            target=target if members else {},
            protocol_type=state.protocol_type if members else None,
            assignor=state.assignor if members else None,
        )
    if kind == "replaced":
        _check_transition(state, "replaced", state.status)
        old_id = event["old_member_id"]
        old_member = state.members.get(old_id)
        if old_member is None:
            raise IllegalTransitionError(
                f"group {state.group!r}: event 'replaced' names unknown member {old_id!r}"
            )
        m = event["member"]
        member = MemberState(
            m["member_id"],
            m["client_id"],
            old_member.topics,
            float(m["session_timeout"]),
            old_member.assignment,
            float(m.get("rebalance_timeout", DEFAULT_REBALANCE_TIMEOUT)),
            old_member.release,
            old_member.instance_id,
        )
        members = {mid: ms for mid, ms in state.members.items() if mid != old_id}
        members[member.member_id] = member
        target = {
            (member.member_id if mid == old_id else mid): tps for mid, tps in state.target.items()
        }
        return attrs.evolve(state, members=members, target=target, member_seq=event["member_seq"])
    if kind == "topics_changed":
        changed: GroupStatus = "empty" if state.status == "empty" else "preparing_rebalance"
        _check_transition(state, "topics_changed", changed)
        return attrs.evolve(state, status=changed, topic_partitions=dict(event["topic_partitions"]))
    if kind == "planned":
        _check_transition(state, "planned", "preparing_rebalance")
        target = {mid: _tps(tps) for mid, tps in event["target"].items()}
        members = {}
        for mid, m in state.members.items():
            mine = set(target.get(mid, ()))
            release = tuple(tp for tp in m.assignment if tp not in mine)
            members[mid] = attrs.evolve(m, release=release)
        return attrs.evolve(state, target=target, members=members)
    if kind == "released":
        _check_transition(state, "released", "preparing_rebalance")
        mid = event["member_id"]
        gone = set(_tps(event["partitions"]))
        m = state.members.get(mid)
        if m is None:
            raise IllegalTransitionError(
                f"group {state.group!r}: event 'released' names unknown member {mid!r}"
            )
        member = attrs.evolve(
            m,
            assignment=tuple(tp for tp in m.assignment if tp not in gone),
            release=tuple(tp for tp in m.release if tp not in gone),
        )
        return attrs.evolve(state, members={**state.members, mid: member})
    if kind == "rebalanced":
        _check_transition(state, "rebalanced", "completing_rebalance")
        assignment = {mid: _tps(tps) for mid, tps in event["assignment"].items()}
        members = {
            mid: attrs.evolve(m, assignment=assignment.get(mid, ()), release=())
            for mid, m in state.members.items()
        }
        return attrs.evolve(
            state,
            status="completing_rebalance",
            generation=event["generation"],
            members=members,
            target={},
        )
    if kind == "stabilized":
        _check_transition(state, "stabilized", "stable")
        return attrs.evolve(state, status="stable")
    if kind == "synced":
        _check_transition(state, "synced", "stable")
        assignment = {mid: _tps(tps) for mid, tps in event["assignment"].items()}
        members = {
            mid: attrs.evolve(m, assignment=assignment.get(mid, ()))
            for mid, m in state.members.items()
        }
        return attrs.evolve(state, status="stable", members=members)
    if kind == "committed":
        _check_transition(state, "committed", state.status)
        return _with_offsets(state, event["offsets"])
    if kind == "txn_offsets":
        _check_transition(state, "txn_offsets", state.status)
        pid = int(event["producer_id"])
        rows = {(r[0], r[1]): tuple(r) for r in state.pending.get(pid, ())}
        rows.update({(r[0], r[1]): tuple(r) for r in event["offsets"]})
        return attrs.evolve(state, pending={**state.pending, pid: tuple(rows.values())})
    if kind == "txn_completed":
        _check_transition(state, "txn_completed", state.status)
        pending = dict(state.pending)
        sent = pending.pop(int(event["producer_id"]), ())
        if event["commit"]:
            state = _with_offsets(state, sent)
        return attrs.evolve(state, pending=pending)
    if kind == "deleted":
        _check_transition(state, "deleted", "dead")
        return attrs.evolve(state, status="dead")
    raise InvalidArgument(f"unknown group event type {kind!r}")


# --------------------------------------------------------------------------
# The coordinator


def _wire(assignment: Mapping[str, Iterable[TP]]) -> dict[str, list[list[Any]]]:
    return {m: [[t, p] for t, p in tps] for m, tps in assignment.items()}


def _check_timeout(name: str, value: object) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not MIN_SESSION_TIMEOUT <= value <= MAX_SESSION_TIMEOUT
    ):
        raise InvalidArgument(
            f"{name} must be in [{MIN_SESSION_TIMEOUT}, {MAX_SESSION_TIMEOUT}] seconds, "
            f"not {value!r}"
        )
    return float(value)


@attrs.define
class GroupCoordinator:
    """One group's coordinator (see the module docs). Commands validate, emit
    events, apply them, and queue them for :meth:`take_events`; they raise
    without changing anything when the request is refused."""

    state: GroupState
    assigner: Assigner = attrs.field(factory=BrokerAssigner)
    _deadlines: dict[str, float] = attrs.field(factory=dict)
    _rebalance_deadlines: dict[str, float] = attrs.field(factory=dict)
    _outbox: list[GroupEvent] = attrs.field(factory=list)
    _told: dict[str, Membership] = attrs.field(factory=dict)
    # member id -> partitions it released while they had offsets pending in
    # an open transaction (DECISIONS #19): released when the transaction ends.
    _held: dict[str, set[TP]] = attrs.field(factory=dict)
    _claims: dict[str, float] = attrs.field(factory=dict)
    """Static instance id -> when a join for it was last refused."""
    _vacant: set[str] = attrs.field(factory=set)
    """Static members whose session ended while a successor was waiting."""

    @classmethod
    def new(cls, group: str, assignor: AssignorName = "sticky") -> GroupCoordinator:
        """A coordinator for a group with no history."""
        return cls(GroupState(group), BrokerAssigner(assignor))

    @classmethod
    def recover(
        cls,
        group: str,
        events: Iterable[GroupEvent],
        now: float,
        assignor: AssignorName = "sticky",
    ) -> GroupCoordinator:
        """Rebuild from persisted events; every member gets fresh deadlines
        from ``now``."""
        state = GroupState(group)
        for event in events:
            state = apply(state, event)
        return cls.from_state(state, now, assignor)

    @classmethod
    def from_state(
        cls, state: GroupState, now: float, assignor: AssignorName = "sticky"
    ) -> GroupCoordinator:
        """A coordinator for an already folded ``state`` (as replayed from a
        journal); every member gets fresh deadlines from ``now``."""
        coordinator = cls(state, BrokerAssigner(assignor))
        for m in state.members.values():
            coordinator._deadlines[m.member_id] = now + m.session_timeout
            if m.release:
                coordinator._rebalance_deadlines[m.member_id] = now + m.rebalance_timeout
        return coordinator

    # ------------------------------------------------------------ plumbing

    def _emit(self, event: GroupEvent) -> None:
        self.state = apply(self.state, event)
        self._outbox.append(event)

    def take_events(self) -> list[GroupEvent]:
        """Return and forget the events emitted since the last call (persist
        them before replying to the request that caused them)."""
        events, self._outbox = self._outbox, []
        return events

    def take_notices(self) -> list[Membership]:
        """The memberships that changed since each member was last told (by a
        notice or by an answer): push them to their members."""
        out = []
        for mid in sorted(self.state.members):
            view = self.membership(mid)
            if self._told.get(mid) != view:
                self._told[mid] = view
                out.append(view)
        for mid in [mid for mid in self._told if mid not in self.state.members]:
            del self._told[mid]
        return out

    def _check_alive(self) -> None:
        if self.state.status == "dead":
            raise IllegalTransitionError(f"group {self.state.group!r} was deleted")

    def membership(self, member_id: str) -> Membership:
        """What ``member_id`` should know now: generation, owned partitions,
        the group state and the partitions it must release."""
        member = self.state.members[member_id]
        return Membership(
            self.state.group,
            member_id,
            self.state.generation,
            tuple(TopicPartition(t, p) for t, p in member.assignment),
            state=self.state.status,
            release=tuple(TopicPartition(t, p) for t, p in member.release),
        )

    def _told_now(self, member_id: str) -> Membership:
        view = self.membership(member_id)
        self._told[member_id] = view
        return view

    def _member(self, member_id: str | None, action: str) -> MemberState:
        member = self.state.members.get(member_id) if member_id is not None else None
        if member is None:
            raise UnknownMemberError(
                f"group {self.state.group!r} has no member {member_id!r} (it left, missed its "
                f"session timeout or did not release its partitions within its rebalance "
                f"timeout); join the group again before you {action}"
            )
        return member

    def assigner_name(self) -> str:
        """The name of the coordinator's own assignor (when members ask for none)."""
        return str(getattr(self.assigner, "assignor", "custom"))

    def _assigner(self) -> Assigner:
        """The broker assigns for Headwater members (with the assignor the
        first member asked for, if any), the elected leader for Kafka's."""
        if self.state.protocol_type == "kafka":
            return LeaderAssigner()
        if self.state.assignor is not None:
            return BrokerAssigner(self.state.assignor)
        return self.assigner

    def _plan(self, now: float) -> None:
        """Compute the target assignment, ask for releases, complete if none."""
        if self.state.status != "preparing_rebalance":
            return
        subs = {mid: m.topics for mid, m in self.state.members.items()}
        owned = {mid: m.assignment for mid, m in self.state.members.items()}
        target = self._assigner().assign(subs, self.state.topic_partitions, owned)
        self._emit({"type": "planned", "target": _wire(target)})
        for mid, m in list(self.state.members.items()):
            if m.release and m.rebalance_timeout == LEGACY_REBALANCE_TIMEOUT:
                self._emit(
                    {
                        "type": "released",
                        "member_id": mid,
                        "partitions": [list(tp) for tp in m.release],
                    }
                )
        for mid, m in self.state.members.items():
            if m.release:
                self._rebalance_deadlines.setdefault(mid, now + m.rebalance_timeout)
            else:
                self._rebalance_deadlines.pop(mid, None)
        self._complete()

    def _complete(self) -> None:
        s = self.state
        if s.status != "preparing_rebalance" or any(m.release for m in s.members.values()):
            return
        self._emit(
            {
                "type": "rebalanced",
                "generation": s.generation + 1,
                "assignment": _wire(s.target),
            }
        )
        self._rebalance_deadlines.clear()
        if self._assigner().on_broker:
            self._emit({"type": "stabilized"})

    # ------------------------------------------------------------ commands

    def join(
        self,
        topics: Iterable[str],
        partition_counts: Mapping[str, int],
        now: float,
        *,
        member_id: str | None = None,
        client_id: str = "",
        session_timeout: float = 10.0,
        rebalance_timeout: float | None = None,
        protocol_type: str = "headwater",
        force: bool = False,
        instance_id: str | None = None,
        assignor: AssignorName | None = None,
    ) -> Membership:
        """Add a member (``member_id=None``: a new id is assigned) or rejoin
        as ``member_id``. ``partition_counts`` gives the partition count of
        each subscribed topic (the caller checked they exist). A new member,
        a changed subscription or changed partition counts plan a rebalance;
        a plain rejoin only renews the session (unless ``force``: then it
        plans a rebalance too). The answer may say
        ``preparing_rebalance`` with no partitions yet: the member then waits
        for its notice (or its next heartbeat).

        ``instance_id`` makes the member static (see the module docs): a
        live holder of the same id refuses this join with
        :class:`~headwater.MemberInstanceInUseError`; a holder whose session
        ended is replaced in place. ``assignor`` (``"sticky"`` or
        ``"range"``; ``None``: the coordinator's) is fixed by the first live
        member; another one is refused with
        :class:`~headwater.InconsistentGroupProtocolError`. A stream
        processing job asks for ``"range"``: with equal subscriptions it
        gives partition ``p`` of every co-partitioned input to one member."""
        self._check_alive()
        if assignor is not None and assignor not in ("sticky", "range"):
            raise InvalidArgument(f"assignor={assignor!r}; use 'sticky' or 'range'")
        if assignor is not None and self.state.members and self.state.assignor != assignor:
            raise InconsistentGroupProtocolError(
                f"group {self.state.group!r} assigns with the "
                f"{self.state.assignor or self.assigner_name()} assignor; a member asking for "
                f"{assignor!r} cannot join it: use another group name"
            )
        if instance_id is not None and (
            not isinstance(instance_id, str) or not instance_id or len(instance_id) > 255
        ):
            raise InvalidArgument(
                f"instance_id must be a non-empty str of at most 255 characters, not "
                f"{instance_id!r:.80}"
            )
        topic_list = tuple(sorted(set(topics)))
        if not topic_list or not all(isinstance(t, str) and t for t in topic_list):
            raise InvalidArgument(f"a group member must subscribe to topic names, not {topics!r}")
        missing = [t for t in topic_list if t not in partition_counts]
        if missing:
            raise InvalidArgument(f"partition counts missing for topics {missing}")
        session_timeout = _check_timeout("session_timeout", session_timeout)
        # A member that does not say its rebalance timeout (a protocol v1
        # client) does not release: its partitions move at once, as before.
        rebalance = (
            LEGACY_REBALANCE_TIMEOUT
            if rebalance_timeout is None
            else _check_timeout("rebalance_timeout (max_poll_interval)", rebalance_timeout)
        )
        if protocol_type not in PROTOCOL_TYPES:
            raise InvalidArgument(
                f"protocol_type={protocol_type!r}; use one of {', '.join(PROTOCOL_TYPES)}"
            )
        if self.state.members and self.state.protocol_type not in (None, protocol_type):
            raise InconsistentGroupProtocolError(
                f"group {self.state.group!r} has {self.state.protocol_type} members; a "
                f"{protocol_type} member cannot join it: use another group name"
            )
        counts = {t: partition_counts[t] for t in topic_list}
        if member_id is None and instance_id is not None:
            holder = self._holder(instance_id)
            if holder is not None:
                return self._take_over(
                    holder,
                    instance_id,
                    topic_list,
                    counts,
                    now,
                    client_id=client_id,
                    session_timeout=session_timeout,
                    rebalance_timeout=rebalance,
                )
        if member_id is not None:
            old = self._member(member_id, "rejoin")
            instance_id = old.instance_id
            unchanged = all(self.state.topic_partitions.get(t) == n for t, n in counts.items())
            if (
                old.topics == topic_list
                and old.session_timeout == session_timeout
                and old.rebalance_timeout == rebalance
                and unchanged
                and not force
            ):
                self._deadlines[member_id] = now + session_timeout
                return self._told_now(member_id)
            seq = self.state.member_seq
        else:
            seq = self.state.member_seq + 1
            member_id = f"{client_id or 'consumer'}-{seq}"
            while member_id in self.state.members:  # a client id that looks like ours
                seq += 1
                member_id = f"{client_id or 'consumer'}-{seq}"
        self._emit(
            {
                "type": "joined",
                "member": {
                    "member_id": member_id,
                    "client_id": client_id,
                    "topics": list(topic_list),
                    "session_timeout": session_timeout,
                    "rebalance_timeout": rebalance,
                    **({"instance_id": instance_id} if instance_id is not None else {}),
                },
                "topic_partitions": counts,
                "member_seq": seq,
                "protocol_type": protocol_type,
                **({"assignor": assignor} if assignor is not None else {}),
            }
        )
        self._deadlines[member_id] = now + session_timeout
        self._plan(now)
        return self._told_now(member_id)

    def _holder(self, instance_id: str) -> MemberState | None:
        return next((m for m in self.state.members.values() if m.instance_id == instance_id), None)

    def _take_over(
        self,
        holder: MemberState,
        instance_id: str,
        topics: tuple[str, ...],
        counts: Mapping[str, int],
        now: float,
        *,
        client_id: str,
        session_timeout: float,
        rebalance_timeout: float,
    ) -> Membership:
        """A join for ``instance_id``, held by ``holder``: refused while the
        holder is live, else the newcomer takes its place (no rebalance)."""
        old_id = holder.member_id
        deadline = self._deadlines.get(old_id, now)
        if old_id not in self._vacant and deadline > now:
            self._claims[instance_id] = now
            raise MemberInstanceInUseError(
                f"instance {instance_id!r} of group {self.state.group!r} is held by live member "
                f"{old_id!r} (its session ends within {deadline - now:.1f}s unless it "
                "heartbeats): stop the other copy or give this one another instance id; a "
                "copy restarted after a crash is admitted once that session ends"
            )
        seq = self.state.member_seq + 1
        member_id = f"{client_id or 'consumer'}-{seq}"
        while member_id in self.state.members:
            seq += 1
            member_id = f"{client_id or 'consumer'}-{seq}"
        self._emit(
            {
                "type": "replaced",
                "old_member_id": old_id,
                "member": {
                    "member_id": member_id,
                    "client_id": client_id,
                    "session_timeout": session_timeout,
                    "rebalance_timeout": rebalance_timeout,
                },
                "member_seq": seq,
            }
        )
        self._deadlines.pop(old_id, None)
        self._rebalance_deadlines.pop(old_id, None)
        self._told.pop(old_id, None)
        self._vacant.discard(old_id)
        self._claims.pop(instance_id, None)
        self._deadlines[member_id] = now + session_timeout
        released = self.state.members[member_id].release
        if released and self.state.status == "preparing_rebalance":
            # The dead holder's work is void: its releases count as done.
            self._emit(
                {
                    "type": "released",
                    "member_id": member_id,
                    "partitions": [list(tp) for tp in released],
                }
            )
            self._complete()
        elif released:
            self._rebalance_deadlines[member_id] = now + rebalance_timeout
        unchanged = all(self.state.topic_partitions.get(t) == n for t, n in counts.items())
        if holder.topics != topics or not unchanged:
            return self.join(
                topics,
                counts,
                now,
                member_id=member_id,
                client_id=client_id,
                session_timeout=session_timeout,
                rebalance_timeout=rebalance_timeout,
            )
        return self._told_now(member_id)

    def heartbeat(self, member_id: str, generation: int, now: float) -> Membership:
        """Renew the member's session and return what it should know now (a
        rebalance under way, partitions to release, a new assignment). An
        unknown member raises :class:`~headwater.UnknownMemberError`."""
        self._check_alive()
        self._member(member_id, "heartbeat")
        if generation > self.state.generation:
            raise StaleGenerationError(
                f"group {self.state.group!r} is at generation {self.state.generation}; "
                f"generation {generation} does not exist"
            )
        self._deadlines[member_id] = now + self.state.members[member_id].session_timeout
        self._vacant.discard(member_id)  # it was not dead after all
        return self._told_now(member_id)

    def release(
        self, member_id: str, partitions: Iterable[TopicPartition], now: float
    ) -> Membership:
        """The member gave up ``partitions`` (its ``on_revoked`` ran and its
        final commit went through). Partitions it does not own, or a release
        outside a rebalance, are ignored (the answer says what it owns). When
        no release is outstanding any more, the rebalance completes."""
        self._check_alive()
        member = self._member(member_id, "release partitions")
        self._deadlines[member_id] = now + member.session_timeout
        owned = set(member.assignment)
        gone = {(tp.topic, tp.partition) for tp in partitions} & owned
        if self.state.status == "preparing_rebalance":
            # DECISIONS #19: a partition whose offsets are pending in an open
            # transaction stays with its owner until the transaction ends.
            held = gone & self._pending_partitions()
            if held:
                self._held.setdefault(member_id, set()).update(held)
                gone -= held
        self._released(member_id, sorted(gone), now)
        return self._told_now(member_id)

    def _pending_partitions(self) -> set[TP]:
        return {(r[0], r[1]) for rows in self.state.pending.values() for r in rows}

    def _released(self, member_id: str, gone: list[TP], now: float) -> None:
        member = self.state.members[member_id]
        if gone and self.state.status == "preparing_rebalance":
            self._emit({"type": "released", "member_id": member_id, "partitions": gone})
            if not self.state.members[member_id].release:
                self._rebalance_deadlines.pop(member_id, None)
            if any(tp not in member.release for tp in gone):
                self._plan(now)  # it gave up more than asked: those need an owner
            else:
                self._complete()

    def _release_held(self, now: float) -> None:
        """Release what was held for transactions that have ended since."""
        pending = self._pending_partitions()
        for mid in list(self._held):
            member = self.state.members.get(mid)
            free = self._held[mid] - pending
            if member is None or self.state.status != "preparing_rebalance":
                del self._held[mid]
                continue
            if free:
                self._held[mid] -= free
                if not self._held[mid]:
                    del self._held[mid]
                self._released(mid, sorted(free & set(member.release)), now)

    def sync(
        self,
        member_id: str,
        generation: int,
        assignment: Mapping[str, Iterable[TopicPartition]],
        now: float,
    ) -> Membership:
        """The elected leader's assignment for ``generation`` (Kafka's
        SyncGroup): every member owns what it says from now on and the group
        is stable. Members it does not know are ignored; a partition given
        twice, or one of a topic nobody subscribes to, is refused. A sync for
        another generation raises :class:`~headwater.StaleGenerationError`;
        one when the group is already stable at this generation changes
        nothing."""
        self._check_alive()
        member = self._member(member_id, "sync")
        self._deadlines[member_id] = now + member.session_timeout
        s = self.state
        if generation != s.generation or s.status not in ("completing_rebalance", "stable"):
            raise StaleGenerationError(
                f"group {s.group!r} is {s.status} at generation {s.generation}, not ready "
                f"for an assignment of generation {generation}: join the group again"
            )
        if s.status == "completing_rebalance":
            seen: set[TP] = set()
            wire: dict[str, list[list[Any]]] = {}
            for mid, tps in assignment.items():
                if mid not in s.members:
                    continue
                rows = []
                for tp in tps:
                    key = (tp.topic, tp.partition)
                    if key in seen or not 0 <= tp.partition < s.topic_partitions.get(tp.topic, 0):
                        raise InvalidArgument(
                            f"the assignment for group {s.group!r} gives {tp.topic}/"
                            f"{tp.partition} twice or names a partition the group does not "
                            "subscribe to; fix the client's assignor"
                        )
                    seen.add(key)
                    rows.append([tp.topic, tp.partition])
                wire[mid] = rows
            self._emit({"type": "synced", "assignment": wire})
        return self._told_now(member_id)

    def leave(self, member_id: str, now: float = 0.0) -> None:
        """Remove a member at once (it released what it owned); its partitions
        go to the others."""
        self._check_alive()
        self._member(member_id, "leave")
        self._remove(member_id, "left", now)

    def _remove(self, member_id: str, reason: str, now: float) -> None:
        self._emit({"type": "left", "member_id": member_id, "reason": reason})
        self._held.pop(member_id, None)
        self._deadlines.pop(member_id, None)
        self._rebalance_deadlines.pop(member_id, None)
        self._told.pop(member_id, None)
        self._vacant.discard(member_id)
        self._plan(now)

    def tick(self, now: float) -> list[str]:
        """Remove every member whose session deadline, or whose rebalance
        timeout while it holds partitions to release, is at or before
        ``now``; return their ids (in deadline order)."""
        expired = sorted(
            [(d, mid, "expired") for mid, d in self._deadlines.items() if d <= now]
            + [
                (d, mid, "rebalance_timeout")
                for mid, d in self._rebalance_deadlines.items()
                if d <= now
            ]
        )
        gone: list[str] = []
        for _, mid, reason in expired:
            if mid in self.state.members and mid not in gone:
                if reason == "expired" and self._vacate(mid, now):
                    continue
                self._remove(mid, reason, now)
                gone.append(mid)
        return gone

    def _vacate(self, member_id: str, now: float) -> bool:
        """A static member's session ended while a successor was refused
        within the last session timeout: keep its place (and partitions)
        for one more session timeout, for the successor to take over."""
        member = self.state.members[member_id]
        instance = member.instance_id
        if instance is None or member_id in self._vacant:
            return False
        claimed = self._claims.get(instance)
        if claimed is None or now - claimed > member.session_timeout:
            self._claims.pop(instance, None)
            return False
        self._vacant.add(member_id)
        self._deadlines[member_id] = now + member.session_timeout
        return True

    def next_deadline(self) -> float | None:
        """The earliest session or rebalance deadline (``None`` with no members)."""
        return min([*self._deadlines.values(), *self._rebalance_deadlines.values()], default=None)

    def update_topics(self, partition_counts: Mapping[str, int], now: float = 0.0) -> bool:
        """Tell the group the current partition counts of its subscribed topics
        (a deleted topic has 0). Returns whether that planned a rebalance."""
        self._check_alive()
        counts = dict(self.state.topic_partitions)
        counts.update(partition_counts)
        if counts == self.state.topic_partitions:
            return False
        self._emit({"type": "topics_changed", "topic_partitions": counts})
        self._plan(now)
        return self.state.status != "empty"

    def txn_commit(
        self,
        producer_id: int,
        member_id: str | None,
        generation: int,
        offsets: Iterable[PartitionOffset],
    ) -> None:
        """Hold offsets sent in ``producer_id``'s open transaction (checked
        like :meth:`commit`, fenced by ownership); they become committed when
        :meth:`complete_txn` commits it, and until then :meth:`committed`
        answers :class:`~headwater.UnstableOffsetError` for their partitions
        (DECISIONS #19)."""
        self._check_alive()
        rows = self._commit_rows(member_id, generation, offsets)
        if rows:
            self._emit({"type": "txn_offsets", "producer_id": producer_id, "offsets": rows})

    def complete_txn(self, producer_id: int, commit: bool, now: float = 0.0) -> None:
        """The transaction of ``producer_id`` ended: commit or drop its
        offsets (idempotent: nothing pending, nothing done); partitions
        their owner released meanwhile move on now."""
        if producer_id in self.state.pending:
            self._emit({"type": "txn_completed", "producer_id": producer_id, "commit": commit})
            self._release_held(now)

    def commit(
        self, member_id: str | None, generation: int, offsets: Iterable[PartitionOffset]
    ) -> None:
        """Store committed offsets (the next offset to read per partition) and
        their metadata.

        With members, only a known member may commit, and only partitions it
        owns now (else :class:`~headwater.UnknownMemberError` /
        :class:`~headwater.StaleGenerationError`). An empty group accepts
        commits with ``member_id=None`` (consumers that assign partitions
        themselves). Negative offsets raise
        :class:`~headwater.OffsetOutOfRangeError`. All or nothing."""
        self._check_alive()
        rows = self._commit_rows(member_id, generation, offsets)
        if rows:
            self._emit({"type": "committed", "offsets": rows})

    def _commit_rows(
        self, member_id: str | None, generation: int, offsets: Iterable[PartitionOffset]
    ) -> list[list[Any]]:
        owned: set[TP] | None = None
        if member_id is not None or self.state.members:
            member = self._member(member_id, "commit")
            if generation > self.state.generation:
                raise StaleGenerationError(
                    f"group {self.state.group!r} is at generation {self.state.generation}; "
                    f"generation {generation} does not exist"
                )
            owned = set(member.assignment)
        rows: list[list[Any]] = []
        for po in offsets:
            if type(po.offset) is not int or po.offset < 0:
                raise OffsetOutOfRangeError(
                    f"cannot commit offset {po.offset!r} for {po.topic}/{po.partition}: "
                    "offsets are ints >= 0"
                )
            if type(po.partition) is not int or po.partition < 0:
                raise UnknownPartitionError(
                    f"cannot commit for partition {po.partition!r} of {po.topic!r}"
                )
            if not isinstance(po.metadata, str):
                raise InvalidArgument(f"commit metadata must be text, not {po.metadata!r:.80}")
            if owned is not None and (po.topic, po.partition) not in owned:
                raise StaleGenerationError(
                    f"member {member_id!r} of group {self.state.group!r} does not own "
                    f"{po.topic}/{po.partition} (generation {self.state.generation}; it moved "
                    "in a rebalance): commit only the partitions you own"
                )
            row: list[Any] = [po.topic, po.partition, po.offset]
            if po.metadata:
                row.append(po.metadata)
            rows.append(row)
        return rows

    def delete(self) -> None:
        """Delete the group (only when it has no members)."""
        self._check_alive()
        self._emit({"type": "deleted"})

    # ------------------------------------------------------------ queries

    def committed(
        self, partitions: Iterable[TopicPartition] = (), *, require_stable: bool = True
    ) -> tuple[PartitionOffset, ...]:
        """Committed offsets (with metadata) for ``partitions`` (all when
        empty); partitions without a commit are absent. With
        ``require_stable=False`` offsets pending in a transaction are
        ignored instead of answered with :class:`~headwater.UnstableOffsetError`."""
        s = self.state
        wanted = [(tp.topic, tp.partition) for tp in partitions]
        if s.pending and require_stable:
            unstable = {(r[0], r[1]) for rows in s.pending.values() for r in rows}
            hit = sorted(unstable.intersection(wanted) if wanted else unstable)
            if hit:
                raise UnstableOffsetError(
                    f"group {s.group!r} has offsets for {', '.join(f'{t}/{p}' for t, p in hit)} "
                    "in an open transaction; retry once it ends"
                )
        items = (
            [(tp, s.committed[tp]) for tp in wanted if tp in s.committed]
            if wanted
            else sorted(s.committed.items())
        )
        return tuple(
            PartitionOffset(t, p, off, s.metadata.get((t, p), "")) for (t, p), off in items
        )

    def describe(self, end_offsets: Mapping[TP, int]) -> GroupDescription:
        """The group's members, assignment, commits and lag. ``end_offsets``
        gives each partition's next offset; lag is ``end - committed`` (``end``
        when nothing was committed), never below 0."""
        s = self.state
        subscribed = sorted({t for m in s.members.values() for t in m.topics})
        tps = {(t, p) for t in subscribed for p in range(s.topic_partitions.get(t, 0))}
        tps.update(s.committed)
        partitions = []
        for t, p in sorted(tps):
            committed = s.committed.get((t, p))
            end = end_offsets.get((t, p), 0)
            partitions.append(
                GroupPartition(
                    t,
                    p,
                    committed,
                    end,
                    max(0, end - (committed or 0)),
                    metadata=s.metadata.get((t, p), ""),
                )
            )
        return GroupDescription(
            group=s.group,
            state=s.status,
            generation=s.generation,
            topics=tuple(subscribed),
            members=tuple(
                GroupMember(
                    m.member_id,
                    m.client_id,
                    tuple(TopicPartition(t, p) for t, p in m.assignment),
                    m.instance_id,
                )
                for _, m in sorted(s.members.items())
            ),
            partitions=tuple(partitions),
        )
