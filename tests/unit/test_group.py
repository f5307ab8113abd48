"""The group coordinator core: membership, generations, I4, fencing, replay."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import (
    IllegalTransitionError,
    InvalidArgument,
    OffsetOutOfRangeError,
    StaleGenerationError,
    UnknownMemberError,
)
from headwater._protocol import PartitionOffset, TopicPartition
from headwater.broker import GroupCoordinator, GroupState, apply, compute_assignment

COUNTS = {"a": 3, "b": 2}


def po(topic, partition, offset):
    """Shorthand for a PartitionOffset."""
    return PartitionOffset(topic, partition, offset)


def owners(coord):
    """Map each owned (topic, partition) to the list of members owning it."""
    result: dict[tuple[str, int], list[str]] = {}
    for mid, m in coord.state.members.items():
        for tp in m.assignment:
            result.setdefault(tp, []).append(mid)
    return result


def test_join_assigns_ids_and_all_partitions():
    """The first member gets an id, generation 1 and every partition."""
    g = GroupCoordinator.new("billing")
    m = g.join(["a", "b"], COUNTS, now=0.0, client_id="app")
    assert ("app-1", 1) == (m.member_id, m.generation)
    expected = (
        TopicPartition("a", 0),
        TopicPartition("a", 1),
        TopicPartition("a", 2),
        TopicPartition("b", 0),
        TopicPartition("b", 1),
    )
    assert expected == m.assignment
    assert "stable" == g.state.status


def test_second_member_rebalances_sticky_and_heartbeat_reports_it():
    """A join bumps the generation; the first member keeps 3 of its 5 partitions
    and learns the new generation from its heartbeat."""
    g = GroupCoordinator.new("g")
    m1 = g.join(["a", "b"], COUNTS, now=0.0)
    m2 = g.join(["a", "b"], COUNTS, now=1.0)
    assert ("consumer-2", 2) == (m2.member_id, m2.generation)
    hb = g.heartbeat(m1.member_id, m1.generation, now=2.0)
    assert 2 == hb.generation
    assert 3 == len(hb.assignment)
    assert set(hb.assignment) <= set(m1.assignment)
    assert set(m1.assignment) == set(hb.assignment) | set(m2.assignment)


def test_plain_rejoin_does_not_bump_generation():
    """Rejoining with the same subscription only renews the session."""
    g = GroupCoordinator.new("g")
    m = g.join(["a"], COUNTS, now=0.0)
    g.take_events()
    again = g.join(["a"], COUNTS, now=5.0, member_id=m.member_id)
    assert m == again
    assert [] == g.take_events()
    assert 15.0 == g.next_deadline()
    changed = g.join(["a", "b"], COUNTS, now=5.0, member_id=m.member_id)
    assert (2, 5) == (changed.generation, len(changed.assignment))


def test_session_timeout_expires_members():
    """A member that stops heartbeating is removed at its deadline; others take over."""
    g = GroupCoordinator.new("g")
    m1 = g.join(["a"], COUNTS, now=0.0, session_timeout=10.0)
    m2 = g.join(["a"], COUNTS, now=0.0, session_timeout=10.0)
    g.heartbeat(m2.member_id, m2.generation, now=8.0)
    assert 10.0 == g.next_deadline()
    assert [] == g.tick(9.99)
    assert [m1.member_id] == g.tick(10.0)
    assert 3 == g.state.generation
    assert 3 == len(g.heartbeat(m2.member_id, 2, now=11.0).assignment)
    with pytest.raises(UnknownMemberError, match="consumer-1"):
        g.heartbeat(m1.member_id, 2, now=11.0)
    assert [m2.member_id] == g.tick(21.0)
    assert ("empty", None) == (g.state.status, g.next_deadline())


def test_commit_fencing():
    """Commits need the current generation and a known member; empty groups take
    member-less commits; negative offsets are refused; nothing changes on refusal."""
    g = GroupCoordinator.new("g")
    g.commit(None, -1, [po("a", 0, 5)])
    m1 = g.join(["a"], COUNTS, now=0.0)
    g.commit(m1.member_id, 1, [po("a", 0, 7)])
    g.join(["a"], COUNTS, now=0.0)
    with pytest.raises(StaleGenerationError, match="generation 1, but the group is at gen"):
        g.commit(m1.member_id, 1, [po("a", 0, 9)])
    with pytest.raises(UnknownMemberError, match="'nobody'"):
        g.commit("nobody", 2, [po("a", 0, 9)])
    with pytest.raises(UnknownMemberError):
        g.commit(None, -1, [po("a", 0, 9)])
    with pytest.raises(OffsetOutOfRangeError, match="-1"):
        g.commit(m1.member_id, 2, [po("a", 1, 3), po("a", 0, -1)])
    assert (po("a", 0, 7),) == g.committed()
    assert () == g.committed([TopicPartition("a", 1)])
    assert "stale_generation" == StaleGenerationError.code


def test_leave_delete_and_illegal_transitions():
    """The last leave empties the group; delete needs an empty group; a deleted
    group refuses everything."""
    g = GroupCoordinator.new("g")
    m = g.join(["a"], COUNTS, now=0.0)
    with pytest.raises(IllegalTransitionError, match="is stable: event 'deleted'"):
        g.delete()
    g.leave(m.member_id)
    assert ("empty", 2, {}) == (g.state.status, g.state.generation, dict(g.state.members))
    with pytest.raises(UnknownMemberError):
        g.leave(m.member_id)
    g.delete()
    with pytest.raises(IllegalTransitionError, match="deleted"):
        g.join(["a"], COUNTS, now=0.0)
    with pytest.raises(IllegalTransitionError, match="is dead"):
        apply(g.state, {"type": "committed", "offsets": []})
    with pytest.raises(IllegalTransitionError, match="unknown member"):
        apply(
            GroupState("x"), {"type": "left", "member_id": "m", "generation": 1, "assignment": {}}
        )
    with pytest.raises(InvalidArgument, match="'bogus'"):
        apply(GroupState("x"), {"type": "bogus"})


def test_bad_join_arguments():
    """Empty subscriptions, missing counts and silly timeouts are InvalidArgument."""
    g = GroupCoordinator.new("g")
    with pytest.raises(InvalidArgument, match="topic names"):
        g.join([], COUNTS, now=0.0)
    with pytest.raises(InvalidArgument, match="'zzz'"):
        g.join(["zzz"], COUNTS, now=0.0)
    with pytest.raises(InvalidArgument, match="session_timeout"):
        g.join(["a"], COUNTS, now=0.0, session_timeout=0.0)
    with pytest.raises(UnknownMemberError):
        g.join(["a"], COUNTS, now=0.0, member_id="ghost")
    assert [] == g.take_events()


def test_topic_change_rebalances():
    """More partitions for a subscribed topic start a new generation covering them."""
    g = GroupCoordinator.new("g")
    m = g.join(["a"], COUNTS, now=0.0)
    assert not g.update_topics({"a": 3})
    assert g.update_topics({"a": 5})
    assert 5 == len(g.heartbeat(m.member_id, 1, now=1.0).assignment)


def test_describe_lag():
    """describe() lists members, assignment, commits and lag per partition."""
    g = GroupCoordinator.new("g")
    m = g.join(["b"], COUNTS, now=0.0, client_id="c")
    g.commit(m.member_id, 1, [po("b", 0, 4)])
    d = g.describe({("b", 0): 10, ("b", 1): 3})
    assert ("g", "stable", 1, ("b",)) == (d.group, d.state, d.generation, d.topics)
    assert [("c-1", "c", 2)] == [(x.member_id, x.client_id, len(x.assignment)) for x in d.members]
    assert [("b", 0, 4, 10, 6), ("b", 1, None, 3, 3)] == [
        (p.topic, p.partition, p.committed, p.end_offset, p.lag) for p in d.partitions
    ]


def test_range_assignor():
    """Range: contiguous per-topic ranges in member order."""
    got = compute_assignment({"m1": ("a",), "m2": ("a",)}, {"a": 5}, assignor="range")
    assert {"m1": (("a", 0), ("a", 1), ("a", 2)), "m2": (("a", 3), ("a", 4))} == got


def test_heterogeneous_subscriptions():
    """A partition goes only to members subscribed to its topic."""
    got = compute_assignment({"m1": ("a",), "m2": ("b",), "m3": ("a", "b")}, COUNTS)
    for member, tps in got.items():
        subscribed = {"m1": {"a"}, "m2": {"b"}, "m3": {"a", "b"}}[member]
        assert all(t in subscribed for t, _ in tps)
    assert 5 == sum(len(tps) for tps in got.values())


ops = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.sampled_from([("a",), ("b",), ("a", "b")])),
        st.tuples(st.just("leave"), st.integers(0, 9)),
        st.tuples(st.just("heartbeat"), st.integers(0, 9)),
        st.tuples(st.just("advance"), st.floats(0, 8)),
        st.tuples(st.just("grow"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("commit"), st.integers(0, 9), st.integers(0, 100)),
    ),
    max_size=40,
)


@given(ops, st.sampled_from(["sticky", "range"]))
def test_i4_every_partition_owned_once_and_replay_matches(script, assignor):
    """I4 over random join/leave/heartbeat/timeout/grow sequences: after every step
    each partition of each subscribed topic is owned by exactly one subscribed member,
    equal subscriptions are balanced (sticky), events are CBOR-encodable, and replaying
    them rebuilds the same state."""
    g = GroupCoordinator.new("g", assignor=assignor)
    counts = dict(COUNTS)
    now = 0.0
    joined: list[str] = []
    for op in script:
        if op[0] == "join":
            joined.append(g.join(op[1], counts, now=now, session_timeout=10.0).member_id)
        elif op[0] == "advance":
            now += op[1]
            g.tick(now)
        elif op[0] == "grow":
            counts[op[1]] += 1
            g.update_topics({op[1]: counts[op[1]]})
        elif joined:
            mid = joined[op[1] % len(joined)]
            if mid not in g.state.members:
                continue
            if op[0] == "leave":
                g.leave(mid)
            elif op[0] == "heartbeat":
                g.heartbeat(mid, g.state.generation, now)
            else:
                g.commit(mid, g.state.generation, [po("a", 0, op[2])])
        members = g.state.members
        subscribed = {t for m in members.values() for t in m.topics}
        expected = {(t, p) for t in subscribed for p in range(g.state.topic_partitions[t])}
        owned = owners(g)
        assert expected == set(owned)
        assert all(1 == len(v) for v in owned.values())
        for tp, (mid,) in owned.items():
            assert tp[0] in members[mid].topics
        if assignor == "sticky" and members and len({m.topics for m in members.values()}) == 1:
            sizes = [len(m.assignment) for m in members.values()]
            assert max(sizes) - min(sizes) <= 1
    events = cbor2.loads(cbor2.dumps(g.take_events()))
    replayed = GroupCoordinator.recover("g", events, now=now, assignor=assignor)
    assert g.state == replayed.state


@given(st.integers(1, 30), st.lists(st.booleans(), min_size=1, max_size=12))
def test_sticky_moves_only_what_it_must(partitions, joins):
    """Equal subscriptions: on a join, existing members only lose partitions; on a
    leave, the remaining members only gain them."""
    g = GroupCoordinator.new("g")
    counts = {"a": partitions}
    alive: list[str] = []
    for join in joins:
        before = {mid: set(m.assignment) for mid, m in g.state.members.items()}
        if join or not alive:
            alive.append(g.join(["a"], counts, now=0.0).member_id)
            for mid, owned in before.items():
                assert set(g.state.members[mid].assignment) <= owned
        else:
            g.leave(alive.pop(0))
            for mid in alive:
                assert set(g.state.members[mid].assignment) >= before[mid]
