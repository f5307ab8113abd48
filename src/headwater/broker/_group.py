"""The consumer-group coordinator core: members, generations, assignment, commits.

Theory of operation
-------------------
One :class:`GroupCoordinator` per group (owned by the group actor) computes the
partition assignment itself; members do not run an assignor. Any membership
change (a member joins, changes its subscription, leaves, or misses its
session timeout) or a change of the subscribed topics' partition counts
**bumps the generation and recomputes the whole assignment at once**. So the
group is always either ``empty`` (no members; commits without a member id are
allowed, for consumers that assign partitions themselves) or ``stable`` (every
partition of every subscribed topic owned by exactly one member: I4).

A member learns of a new generation from its next heartbeat (which answers
with the current generation and the member's assignment). Until then its view
is stale, and its commits are refused with
:class:`~headwater.StaleGenerationError`: a partition that moved to another
member can be committed only by its new owner, which starts from the last
committed offset (at-least-once delivery; never a lost commit). A member the
coordinator no longer knows (it left or expired) gets
:class:`~headwater.UnknownMemberError` and must join again.

Time is never read here: every call that needs it takes ``now`` (seconds on
the actor's clock). Each member's session deadline is ``now +
session_timeout``, renewed by join and heartbeat; :meth:`GroupCoordinator.tick`
removes expired members and :meth:`GroupCoordinator.next_deadline` says when
to call it next. Deadlines are not persisted: after recovery every member gets
a fresh session from the recovery time, as after a Kafka coordinator failover.

Persistence is event sourcing. Every change is first computed as a plain,
CBOR-encodable event (a dict of str, int, float, lists and dicts) that records
its *outcome* (including the new generation and assignment), then applied with
the pure :func:`apply`. The actor persists :meth:`GroupCoordinator.take_events`
before replying; recovery replays them through :func:`apply`
(:meth:`GroupCoordinator.recover`). Replaying never recomputes an assignment.

Group lifecycle (:data:`TRANSITIONS`; anything else raises
:class:`~headwater.IllegalTransitionError`)::

    state    event            next state
    -------  ---------------  ----------------------------------------
    empty    joined           stable
    stable   joined           stable
    stable   left             stable, or empty when the last member left
    empty    committed        empty
    stable   committed        stable
    empty    topics_changed   empty
    stable   topics_changed   stable
    empty    deleted          dead
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from headwater._errors import (
    IllegalTransitionError,
    InvalidArgument,
    OffsetOutOfRangeError,
    StaleGenerationError,
    UnknownMemberError,
    UnknownPartitionError,
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
    "GroupCoordinator",
    "GroupEvent",
    "GroupState",
    "MemberState",
    "apply",
    "compute_assignment",
]

GroupStatus = Literal["empty", "stable", "dead"]
Assignor = Literal["sticky", "range"]
#: A persisted change: a CBOR-encodable dict with a ``"type"`` key.
GroupEvent = dict[str, Any]
TP = tuple[str, int]

TRANSITIONS: dict[tuple[str, str], frozenset[str]] = {
    ("empty", "joined"): frozenset({"stable"}),
    ("stable", "joined"): frozenset({"stable"}),
    ("stable", "left"): frozenset({"stable", "empty"}),
    ("empty", "committed"): frozenset({"empty"}),
    ("stable", "committed"): frozenset({"stable"}),
    ("empty", "topics_changed"): frozenset({"empty"}),
    ("stable", "topics_changed"): frozenset({"stable"}),
    ("empty", "deleted"): frozenset({"dead"}),
}

MIN_SESSION_TIMEOUT = 0.1
MAX_SESSION_TIMEOUT = 3600.0


@attrs.frozen
class MemberState:
    """One member as persisted: id, client id, subscription, session timeout
    and the partitions it owns in the current generation."""

    member_id: str
    client_id: str
    topics: tuple[str, ...]
    session_timeout: float
    assignment: tuple[TP, ...] = ()


@attrs.frozen
class GroupState:
    """A group's persisted state. Treat the mappings as read-only: :func:`apply`
    returns a new state and never changes an old one."""

    group: str
    status: GroupStatus = "empty"
    generation: int = 0
    members: Mapping[str, MemberState] = attrs.field(factory=dict)
    topic_partitions: Mapping[str, int] = attrs.field(factory=dict)
    committed: Mapping[TP, int] = attrs.field(factory=dict)
    member_seq: int = 0


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
            ]
            for m in state.members.values()
        ],
        "topic_partitions": dict(state.topic_partitions),
        "committed": [[t, p, o] for (t, p), o in sorted(state.committed.items())],
        "member_seq": state.member_seq,
    }


def state_from_plain(data: dict[str, Any]) -> GroupState:
    """The inverse of :func:`state_to_plain`."""
    members = {
        m[0]: MemberState(m[0], m[1], tuple(m[2]), float(m[3]), tuple((t, p) for t, p in m[4]))
        for m in data["members"]
    }
    return GroupState(
        group=data["group"],
        status=data["status"],
        generation=data["generation"],
        members=members,
        topic_partitions=dict(data["topic_partitions"]),
        committed={(t, p): o for t, p, o in data["committed"]},
        member_seq=data["member_seq"],
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


# --------------------------------------------------------------------------
# Events and the pure apply


def _check_transition(state: GroupState, kind: str, target: str) -> None:
    allowed = TRANSITIONS.get((state.status, kind))
    if allowed is None or target not in allowed:
        raise IllegalTransitionError(
            f"group {state.group!r} is {state.status}: event {kind!r} is not allowed "
            f"(it would lead to {target!r})"
        ) from None


def _with_assignment(
    members: dict[str, MemberState], assignment: Mapping[str, list[list[Any]]]
) -> dict[str, MemberState]:
    return {
        mid: attrs.evolve(m, assignment=tuple((t, p) for t, p in assignment.get(mid, [])))
        for mid, m in members.items()
    }


def apply(state: GroupState, event: GroupEvent) -> GroupState:
    """Return the state after ``event`` (pure: ``state`` is not changed).

    Raises :class:`~headwater.IllegalTransitionError` for an event the
    lifecycle table does not allow in the current state, and
    :class:`~headwater.InvalidArgument` for an unknown event type."""
    kind = event.get("type")
    if kind == "joined":
        _check_transition(state, "joined", "stable")
        m = event["member"]
        member = MemberState(
            m["member_id"], m["client_id"], tuple(m["topics"]), float(m["session_timeout"])
        )
        members = dict(state.members)
        members[member.member_id] = member
        return attrs.evolve(
            state,
            status="stable",
            generation=event["generation"],
            members=_with_assignment(members, event["assignment"]),
            topic_partitions={**state.topic_partitions, **event["topic_partitions"]},
            member_seq=event["member_seq"],
        )
    if kind == "left":
        members = dict(state.members)
        if event["member_id"] not in members:
            raise IllegalTransitionError(
                f"group {state.group!r}: event 'left' names unknown member {event['member_id']!r}"
            )
        del members[event["member_id"]]
        target: GroupStatus = "stable" if members else "empty"
        _check_transition(state, "left", target)
        return attrs.evolve(
            state,
            status=target,
            generation=event["generation"],
            members=_with_assignment(members, event["assignment"]),
        )
    if kind == "committed":
        _check_transition(state, "committed", state.status)
        committed = dict(state.committed)
        for topic, partition, offset in event["offsets"]:
            committed[(topic, partition)] = offset
        return attrs.evolve(state, committed=committed)
    if kind == "topics_changed":
        _check_transition(state, "topics_changed", state.status)
        return attrs.evolve(
            state,
            generation=event["generation"],
            topic_partitions=dict(event["topic_partitions"]),
            members=_with_assignment(dict(state.members), event["assignment"]),
        )
    if kind == "deleted":
        _check_transition(state, "deleted", "dead")
        return attrs.evolve(state, status="dead")
    raise InvalidArgument(f"unknown group event type {kind!r}")


# --------------------------------------------------------------------------
# The coordinator


def _assignment_wire(assignment: Mapping[str, tuple[TP, ...]]) -> dict[str, list[list[Any]]]:
    return {m: [[t, p] for t, p in tps] for m, tps in assignment.items()}


@attrs.define
class GroupCoordinator:
    """One group's coordinator (see the module docs). Commands validate, emit
    an event, apply it, and queue it for :meth:`take_events`; they raise
    without changing anything when the request is refused."""

    state: GroupState
    assignor: Assignor = "sticky"
    _deadlines: dict[str, float] = attrs.field(factory=dict)
    _outbox: list[GroupEvent] = attrs.field(factory=list)

    @classmethod
    def new(cls, group: str, assignor: Assignor = "sticky") -> GroupCoordinator:
        """A coordinator for a group with no history."""
        return cls(GroupState(group), assignor)

    @classmethod
    def recover(
        cls, group: str, events: Iterable[GroupEvent], now: float, assignor: Assignor = "sticky"
    ) -> GroupCoordinator:
        """Rebuild from persisted events; every member gets a fresh session
        deadline from ``now``."""
        state = GroupState(group)
        for event in events:
            state = apply(state, event)
        coordinator = cls(state, assignor)
        for m in state.members.values():
            coordinator._deadlines[m.member_id] = now + m.session_timeout
        return coordinator

    @classmethod
    def from_state(
        cls, state: GroupState, now: float, assignor: Assignor = "sticky"
    ) -> GroupCoordinator:
        """A coordinator for an already folded ``state`` (as replayed from a
        journal); every member gets a fresh session deadline from ``now``."""
        coordinator = cls(state, assignor)
        for m in state.members.values():
            coordinator._deadlines[m.member_id] = now + m.session_timeout
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

    def _check_alive(self) -> None:
        if self.state.status == "dead":
            raise IllegalTransitionError(f"group {self.state.group!r} was deleted")

    def _rebalance(
        self, members: Mapping[str, tuple[str, ...]], topic_partitions: Mapping[str, int]
    ) -> dict[str, list[list[Any]]]:
        previous = {mid: m.assignment for mid, m in self.state.members.items()}
        return _assignment_wire(
            compute_assignment(members, topic_partitions, previous, self.assignor)
        )

    def _membership(self, member_id: str) -> Membership:
        member = self.state.members[member_id]
        return Membership(
            self.state.group,
            member_id,
            self.state.generation,
            tuple(TopicPartition(t, p) for t, p in member.assignment),
        )

    def _member(self, member_id: str | None, action: str) -> MemberState:
        member = self.state.members.get(member_id) if member_id is not None else None
        if member is None:
            raise UnknownMemberError(
                f"group {self.state.group!r} has no member {member_id!r} (it left or missed "
                f"its session timeout); join the group again before you {action}"
            )
        return member

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
    ) -> Membership:
        """Add a member (``member_id=None``: a new id is assigned) or rejoin
        as ``member_id``. ``partition_counts`` gives the partition count of
        each subscribed topic (the caller checked they exist). A new member,
        a changed subscription or changed partition counts start a new
        generation; a plain rejoin only renews the session."""
        self._check_alive()
        topic_list = tuple(sorted(set(topics)))
        if not topic_list or not all(isinstance(t, str) and t for t in topic_list):
            raise InvalidArgument(f"a group member must subscribe to topic names, not {topics!r}")
        missing = [t for t in topic_list if t not in partition_counts]
        if missing:
            raise InvalidArgument(f"partition counts missing for topics {missing}")
        if not MIN_SESSION_TIMEOUT <= session_timeout <= MAX_SESSION_TIMEOUT:
            raise InvalidArgument(
                f"session_timeout must be in [{MIN_SESSION_TIMEOUT}, {MAX_SESSION_TIMEOUT}] "
                f"seconds, not {session_timeout!r}"
            )
        counts = {t: partition_counts[t] for t in topic_list}
        if member_id is not None:
            old = self._member(member_id, "rejoin")
            unchanged = all(self.state.topic_partitions.get(t) == n for t, n in counts.items())
            if old.topics == topic_list and old.session_timeout == session_timeout and unchanged:
                self._deadlines[member_id] = now + session_timeout
                return self._membership(member_id)
            seq = self.state.member_seq
        else:
            seq = self.state.member_seq + 1
            member_id = f"{client_id or 'consumer'}-{seq}"
            while member_id in self.state.members:  # a client id that looks like ours
                seq += 1
                member_id = f"{client_id or 'consumer'}-{seq}"
        subs = {mid: m.topics for mid, m in self.state.members.items()}
        subs[member_id] = topic_list
        all_counts = {**self.state.topic_partitions, **counts}
        self._emit(
            {
                "type": "joined",
                "member": {
                    "member_id": member_id,
                    "client_id": client_id,
                    "topics": list(topic_list),
                    "session_timeout": float(session_timeout),
                },
                "generation": self.state.generation + 1,
                "assignment": self._rebalance(subs, all_counts),
                "topic_partitions": counts,
                "member_seq": seq,
            }
        )
        self._deadlines[member_id] = now + session_timeout
        return self._membership(member_id)

    def heartbeat(self, member_id: str, generation: int, now: float) -> Membership:
        """Renew the member's session and return its current membership. A stale
        ``generation`` is answered with the new one (adopt its assignment);
        an unknown member raises :class:`~headwater.UnknownMemberError`."""
        self._check_alive()
        self._member(member_id, "heartbeat")
        if generation > self.state.generation:
            raise StaleGenerationError(
                f"group {self.state.group!r} is at generation {self.state.generation}; "
                f"generation {generation} does not exist"
            )
        self._deadlines[member_id] = now + self.state.members[member_id].session_timeout
        return self._membership(member_id)

    def leave(self, member_id: str) -> None:
        """Remove a member at once; its partitions go to the others."""
        self._check_alive()
        self._member(member_id, "leave")
        self._remove(member_id, "left")

    def _remove(self, member_id: str, reason: str) -> None:
        subs = {mid: m.topics for mid, m in self.state.members.items() if mid != member_id}
        self._emit(
            {
                "type": "left",
                "member_id": member_id,
                "reason": reason,
                "generation": self.state.generation + 1,
                "assignment": self._rebalance(subs, self.state.topic_partitions),
            }
        )
        self._deadlines.pop(member_id, None)

    def tick(self, now: float) -> list[str]:
        """Remove every member whose session deadline is at or before ``now``;
        return their ids (in deadline order)."""
        expired = sorted((d, mid) for mid, d in self._deadlines.items() if d <= now)
        for _, mid in expired:
            self._remove(mid, "expired")
        return [mid for _, mid in expired]

    def next_deadline(self) -> float | None:
        """The earliest member session deadline (``None`` with no members)."""
        return min(self._deadlines.values(), default=None)

    def update_topics(self, partition_counts: Mapping[str, int]) -> bool:
        """Tell the group the current partition counts of its subscribed topics
        (a deleted topic has 0). Returns whether that started a new generation."""
        self._check_alive()
        counts = dict(self.state.topic_partitions)
        counts.update(partition_counts)
        if counts == self.state.topic_partitions:
            return False
        subs = {mid: m.topics for mid, m in self.state.members.items()}
        self._emit(
            {
                "type": "topics_changed",
                "topic_partitions": counts,
                "generation": self.state.generation + 1,
                "assignment": self._rebalance(subs, counts),
            }
        )
        return True

    def commit(
        self, member_id: str | None, generation: int, offsets: Iterable[PartitionOffset]
    ) -> None:
        """Store committed offsets (the next offset to read per partition).

        With members, only a known member at the current generation may commit
        (else :class:`~headwater.UnknownMemberError` /
        :class:`~headwater.StaleGenerationError`). An empty group accepts
        commits with ``member_id=None`` (consumers that assign partitions
        themselves). Negative offsets raise
        :class:`~headwater.OffsetOutOfRangeError`. All or nothing."""
        self._check_alive()
        if member_id is not None or self.state.members:
            self._member(member_id, "commit")
            if generation != self.state.generation:
                raise StaleGenerationError(
                    f"member {member_id!r} of group {self.state.group!r} committed with "
                    f"generation {generation}, but the group is at generation "
                    f"{self.state.generation} (it rebalanced): rejoin, then commit "
                    "only the partitions you still own"
                )
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
            rows.append([po.topic, po.partition, po.offset])
        if rows:
            self._emit({"type": "committed", "offsets": rows})

    def delete(self) -> None:
        """Delete the group (only when it has no members)."""
        self._check_alive()
        self._emit({"type": "deleted"})

    # ------------------------------------------------------------ queries

    def committed(self, partitions: Iterable[TopicPartition] = ()) -> tuple[PartitionOffset, ...]:
        """Committed offsets for ``partitions`` (all when empty); partitions
        without a commit are absent."""
        wanted = [(tp.topic, tp.partition) for tp in partitions]
        items = (
            [(tp, self.state.committed[tp]) for tp in wanted if tp in self.state.committed]
            if wanted
            else sorted(self.state.committed.items())
        )
        return tuple(PartitionOffset(t, p, off) for (t, p), off in items)

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
            partitions.append(GroupPartition(t, p, committed, end, max(0, end - (committed or 0))))
        return GroupDescription(
            group=s.group,
            state=s.status,
            generation=s.generation,
            topics=tuple(subscribed),
            members=tuple(
                GroupMember(
                    m.member_id, m.client_id, tuple(TopicPartition(t, p) for t, p in m.assignment)
                )
                for _, m in sorted(s.members.items())
            ),
            partitions=tuple(partitions),
        )
