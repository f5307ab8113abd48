"""Kafka members on the group coordinator: the elected leader assigns, the
eager protocol (owners give up everything, then the leader's assignment
arrives), ownership fencing of commits, replay."""

from __future__ import annotations

import pytest

from headwater import InconsistentGroupProtocolError, InvalidArgument, StaleGenerationError
from headwater._protocol import PartitionOffset, TopicPartition
from headwater.broker import GroupCoordinator
from headwater.broker._group import GroupState, apply

COUNTS = {"a": 4}


def tp(partition: int) -> TopicPartition:
    return TopicPartition("a", partition)


def join(c: GroupCoordinator, client: str, now: float = 0.0, member: str | None = None) -> str:
    return c.join(
        ["a"],
        COUNTS,
        now,
        member_id=member,
        client_id=client,
        rebalance_timeout=30.0,
        protocol_type="kafka",
    ).member_id


def test_leader_assigns_and_a_third_member_rebalances_eagerly() -> None:
    """Two Kafka members wait in completing_rebalance (nothing assigned) until
    the leader's sync; a third joining makes owners release everything; the
    next sync hands out the new assignment; commits follow ownership."""
    c = GroupCoordinator.new("g")
    m1, m2 = join(c, "c1"), join(c, "c2")
    assert ("completing_rebalance", 2) == (c.state.status, c.state.generation)
    assert () == c.membership(m1).assignment
    with pytest.raises(StaleGenerationError):
        c.sync(m1, 7, {}, 0.0)
    with pytest.raises(InvalidArgument, match="twice"):
        c.sync(m1, 2, {m1: [tp(0), tp(1)], m2: [tp(1)]}, 0.0)
    c.sync(m1, 2, {m1: [tp(0), tp(1)], m2: [tp(2), tp(3)]}, 0.0)
    assert "stable" == c.state.status
    assert (tp(2), tp(3)) == c.membership(m2).assignment
    c.commit(m2, 2, [PartitionOffset("a", 2, 5)])
    m3 = join(c, "c3")
    assert "preparing_rebalance" == c.state.status
    assert (tp(0), tp(1)) == c.membership(m1).release
    for m in (m1, m2):
        c.release(m, c.membership(m).assignment, 1.0)
    assert ("completing_rebalance", 3) == (c.state.status, c.state.generation)
    c.sync(m1, 3, {m1: [tp(0), tp(1)], m2: [tp(2)], m3: [tp(3)]}, 1.0)
    assert ((tp(3),), "stable") == (c.membership(m3).assignment, c.state.status)
    c.sync(m2, 3, {}, 1.0)  # a late follower's sync changes nothing
    assert (tp(2),) == c.membership(m2).assignment


def test_events_replay_to_the_same_state() -> None:
    """The synced event is persisted and replays to the same assignment."""
    c = GroupCoordinator.new("g")
    events = []
    m1 = join(c, "c1")
    c.sync(m1, 1, {m1: [tp(0), tp(1), tp(2), tp(3)]}, 0.0)
    events.extend(c.take_events())
    state = GroupState("g")
    for event in events:
        state = apply(state, event)
    assert state == c.state


def test_kafka_and_headwater_members_do_not_mix() -> None:
    """The first member fixes the protocol: the other kind is refused."""
    c = GroupCoordinator.new("g")
    join(c, "k")
    with pytest.raises(InconsistentGroupProtocolError):
        c.join(["a"], COUNTS, 0.0, client_id="h")
