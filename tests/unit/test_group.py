"""The group coordinator core: states, release-before-reassign, fencing by
ownership, notices, deadlines on virtual time, replay."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import (
    IllegalTransitionError,
    InconsistentGroupProtocolError,
    InvalidArgument,
    OffsetOutOfRangeError,
    StaleGenerationError,
    UnknownMemberError,
)
from headwater._protocol import PartitionOffset, TopicPartition
from headwater.broker import (
    TRANSITIONS,
    GroupCoordinator,
    GroupState,
    _group,
    apply,
    compute_assignment,
)
from headwater.broker._group import state_from_plain, state_to_plain

COUNTS = {"a": 3, "b": 2}


def po(topic: str, partition: int, offset: int, metadata: str = "") -> PartitionOffset:
    """Shorthand for a PartitionOffset."""
    return PartitionOffset(topic, partition, offset, metadata)


def tp(topic: str, partition: int) -> TopicPartition:
    """Shorthand for a TopicPartition."""
    return TopicPartition(topic, partition)


def owners(coord: GroupCoordinator) -> dict[tuple[str, int], list[str]]:
    """Map each owned (topic, partition) to the list of members owning it."""
    result: dict[tuple[str, int], list[str]] = {}
    for mid, m in coord.state.members.items():
        for x in m.assignment:
            result.setdefault(x, []).append(mid)
    return result


def release_all(g: GroupCoordinator, member_id: str, now: float = 0.0) -> Any:
    """The member gives up what the rebalance asks of it."""
    asked = g.membership(member_id).release
    return g.release(member_id, asked, now)


def test_first_member_gets_everything_through_every_state():
    """The first member gets an id, generation 1 and every partition; the
    group passes empty -> preparing -> completing -> stable in one call."""
    g = GroupCoordinator.new("billing")
    m = g.join(["a", "b"], COUNTS, now=0.0, client_id="app", rebalance_timeout=30.0)
    assert ("app-1", 1, "stable") == (m.member_id, m.generation, m.state)
    assert (tp("a", 0), tp("a", 1), tp("a", 2), tp("b", 0), tp("b", 1)) == m.assignment
    kinds = [e["type"] for e in g.take_events()]
    assert ["joined", "planned", "rebalanced", "stabilized"] == kinds
    assert [] == g.take_notices()  # the answer told it already


def test_a_join_waits_for_the_owner_to_release_and_commits_never_go_stale():
    """The bug of issue 11 point 8: a second member joins; the first keeps
    owning (and committing) until it releases what moves, so its commits
    never fail; the second gets partitions only after that release."""
    g = GroupCoordinator.new("g")
    m1 = g.join(["a", "b"], COUNTS, now=0.0, rebalance_timeout=30.0)
    m2 = g.join(["a", "b"], COUNTS, now=1.0, rebalance_timeout=30.0)
    assert ("preparing_rebalance", 1, (), ()) == (
        m2.state,
        m2.generation,
        m2.assignment,
        m2.release,
    )
    (notice,) = g.take_notices()  # only m1 must hear: it has to give up two partitions
    assert (m1.member_id, "preparing_rebalance", 1) == (
        notice.member_id,
        notice.state,
        notice.generation,
    )
    assert 2 == len(notice.release)
    assert set(notice.release) < set(notice.assignment) == set(m1.assignment)
    # m1 still owns all five: a commit of every one of them goes through.
    g.commit(m1.member_id, 1, [po(x.topic, x.partition, 10) for x in m1.assignment])
    assert ("preparing_rebalance", 5) == (g.state.status, len(g.state.committed))
    done = g.release(m1.member_id, notice.release, now=2.0)
    assert ("stable", 2, 3) == (done.state, done.generation, len(done.assignment))
    notices = {n.member_id: n for n in g.take_notices()}
    assert [m2.member_id] == list(notices)  # m1 was told by the release answer
    assert set(notices[m2.member_id].assignment) == set(notice.release)
    with pytest.raises(StaleGenerationError, match="does not own"):
        g.commit(m1.member_id, 1, [po(notice.release[0].topic, notice.release[0].partition, 11)])
    g.commit(m1.member_id, 1, [po(x.topic, x.partition, 12) for x in done.assignment])


def test_a_release_waits_for_the_owners_open_transaction():
    """DECISIONS #19: the owner sent offsets for a partition in an open
    transaction; a second member joins and the owner releases what moves,
    but the partition with pending offsets stays with it (the rebalance
    waits) until the transaction ends; then it moves. The same after an abort."""
    for commit in (True, False):
        g = GroupCoordinator.new("g")
        m1 = g.join(["a"], {"a": 2}, now=0.0, rebalance_timeout=30.0)
        g.txn_commit(7, m1.member_id, 1, [po("a", 0, 5), po("a", 1, 6)])
        m2 = g.join(["a"], {"a": 2}, now=1.0, rebalance_timeout=30.0)
        (notice,) = g.take_notices()
        assert 1 == len(notice.release)
        moving = (notice.release[0].topic, notice.release[0].partition)
        held = g.release(m1.member_id, notice.release, now=2.0)
        assert ("preparing_rebalance", 1) == (held.state, held.generation)
        assert [m1.member_id] == owners(g)[moving]
        assert (moving,) == g.state.members[m1.member_id].release
        g.complete_txn(7, commit, now=3.0)
        assert ("stable", 2) == (g.state.status, g.state.generation)
        assert [m2.member_id] == owners(g)[moving]
        assert (5 if commit else None) == g.state.committed.get(("a", 0))


def test_a_held_release_ends_at_the_rebalance_timeout():
    """An owner whose transaction never ends is removed at its rebalance
    timeout like one that never releases; the partition then moves."""
    g = GroupCoordinator.new("g")
    m1 = g.join(["a"], {"a": 2}, now=0.0, rebalance_timeout=30.0, session_timeout=100.0)
    g.txn_commit(7, m1.member_id, 1, [po("a", 0, 5), po("a", 1, 6)])
    m2 = g.join(["a"], {"a": 2}, now=1.0, rebalance_timeout=30.0, session_timeout=100.0)
    (notice,) = g.take_notices()
    g.release(m1.member_id, notice.release, now=2.0)
    assert 31.0 == g.next_deadline()
    assert [m1.member_id] == g.tick(31.0)
    assert ("stable", [m2.member_id]) == (g.state.status, list(g.state.members))


def test_release_before_reassign_or_rebalance_timeout_on_virtual_time():
    """An owner that never releases keeps the partition (nobody else reads
    it) until its rebalance timeout; then it is removed, even while it still
    heartbeats, and the partition moves."""
    g = GroupCoordinator.new("g")
    m1 = g.join(["a"], COUNTS, now=0.0, session_timeout=10.0, rebalance_timeout=30.0)
    m2 = g.join(["a"], COUNTS, now=5.0, session_timeout=10.0, rebalance_timeout=30.0)
    assert 10.0 == g.next_deadline()  # m1 session first; its rebalance deadline is 35
    for now in (8.0, 16.0, 24.0, 32.0):
        g.heartbeat(m1.member_id, 1, now)
        g.heartbeat(m2.member_id, 1, now)
        assert [] == g.tick(now)
        assert {m1.member_id: 3, m2.member_id: 0} == {
            mid: len(m.assignment) for mid, m in g.state.members.items()
        }
    assert 35.0 == g.next_deadline()
    assert [] == g.tick(34.99)
    assert [m1.member_id] == g.tick(35.0)
    assert ("stable", 2) == (g.state.status, g.state.generation)
    assert 3 == len(g.heartbeat(m2.member_id, 2, now=35.0).assignment)
    with pytest.raises(UnknownMemberError, match="rebalance"):
        g.heartbeat(m1.member_id, 1, now=35.0)


def test_partitions_that_stay_keep_their_owner_during_a_rebalance():
    """Only what moves is released; the rest is owned and committable
    throughout, and a member asked for nothing is not told anything."""
    g = GroupCoordinator.new("g")
    m1 = g.join(["a"], {"a": 6}, now=0.0, rebalance_timeout=30.0)
    m2 = g.join(["a"], {"a": 6}, now=0.0, rebalance_timeout=30.0)
    release_all(g, m1.member_id)
    g.take_notices()
    keep1 = set(g.membership(m1.member_id).assignment)
    keep2 = set(g.membership(m2.member_id).assignment)
    g.join(["a"], {"a": 6}, now=0.0, rebalance_timeout=30.0)
    notices = g.take_notices()
    asked = {n.member_id: set(n.release) for n in notices}
    assert {m1.member_id, m2.member_id} == set(asked)
    assert all(1 == len(x) for x in asked.values())
    for mid, keep in ((m1.member_id, keep1), (m2.member_id, keep2)):
        stays = keep - asked[mid]
        g.commit(mid, 2, [po(x.topic, x.partition, 1) for x in stays])
    release_all(g, m1.member_id)
    assert "preparing_rebalance" == g.state.status  # m2 has not released yet
    release_all(g, m2.member_id)
    assert ("stable", 3) == (g.state.status, g.state.generation)
    assert [2, 2, 2] == sorted(len(m.assignment) for m in g.state.members.values())


def test_a_leave_during_a_rebalance_replans():
    """A member that leaves while another has yet to release: the plan is
    recomputed and what the leaver owned goes out at completion."""
    g = GroupCoordinator.new("g")
    m1 = g.join(["a"], COUNTS, now=0.0, rebalance_timeout=30.0)
    m2 = g.join(["a"], COUNTS, now=0.0, rebalance_timeout=30.0)
    g.leave(m2.member_id, now=1.0)
    assert ("stable", 2) == (g.state.status, g.state.generation)
    assert 3 == len(g.membership(m1.member_id).assignment)


def test_a_protocol_v1_member_releases_implicitly():
    """A member that did not say its rebalance timeout (a v1 client) cannot
    release: its partitions move at once, as in protocol v1."""
    g = GroupCoordinator.new("g")
    m1 = g.join(["a"], COUNTS, now=0.0)
    g.join(["a"], COUNTS, now=0.0)
    assert ("stable", 2) == (g.state.status, g.state.generation)
    assert 2 == len(g.membership(m1.member_id).assignment)


def test_the_first_member_fixes_the_protocol_type():
    """A member of the other kind is refused while the group has members; an
    empty group takes either."""
    g = GroupCoordinator.new("g")
    m = g.join(["a"], COUNTS, now=0.0)
    with pytest.raises(InconsistentGroupProtocolError, match="headwater members"):
        g.join(["a"], COUNTS, now=0.0, protocol_type="kafka")
    with pytest.raises(InvalidArgument, match="protocol_type"):
        g.join(["a"], COUNTS, now=0.0, protocol_type="amqp")
    g.leave(m.member_id)
    assert g.state.protocol_type is None
    g.join(["a"], COUNTS, now=0.0, protocol_type="kafka")
    assert "kafka" == g.state.protocol_type


def test_plain_rejoin_only_renews_the_session():
    """Rejoining with the same subscription only renews the session."""
    g = GroupCoordinator.new("g")
    m = g.join(["a"], COUNTS, now=0.0, rebalance_timeout=30.0)
    g.take_events()
    again = g.join(["a"], COUNTS, now=5.0, member_id=m.member_id, rebalance_timeout=30.0)
    assert m == again
    assert [] == g.take_events()
    assert 15.0 == g.next_deadline()
    changed = g.join(["a", "b"], COUNTS, now=5.0, member_id=m.member_id, rebalance_timeout=30.0)
    assert (2, 5) == (changed.generation, len(changed.assignment))


def test_session_timeout_expires_members():
    """A member that stops heartbeating is removed at its deadline; others take over."""
    g = GroupCoordinator.new("g")
    m1 = g.join(["a"], COUNTS, now=0.0, session_timeout=10.0, rebalance_timeout=60.0)
    m2 = g.join(["a"], COUNTS, now=0.0, session_timeout=10.0, rebalance_timeout=60.0)
    g.heartbeat(m2.member_id, 1, now=8.0)
    assert 10.0 == g.next_deadline()
    assert [] == g.tick(9.99)
    assert [m1.member_id] == g.tick(10.0)
    assert ("stable", 2) == (g.state.status, g.state.generation)
    assert 3 == len(g.heartbeat(m2.member_id, 2, now=11.0).assignment)
    with pytest.raises(UnknownMemberError, match="consumer-1"):
        g.heartbeat(m1.member_id, 2, now=11.0)
    assert [m2.member_id] == g.tick(21.0)
    assert ("empty", None) == (g.state.status, g.next_deadline())


def test_commit_fencing_is_by_ownership():
    """Known members commit what they own; empty groups take member-less
    commits; a future generation, an unknown member, a partition owned by
    another member and negative offsets are refused; nothing changes on refusal."""
    g = GroupCoordinator.new("g")
    g.commit(None, -1, [po("a", 0, 5)])
    m1 = g.join(["a"], COUNTS, now=0.0)
    g.commit(m1.member_id, 1, [po("a", 0, 7, "batch 7")])
    m2 = g.join(["a"], COUNTS, now=0.0)  # v1 member: m1 loses partitions at once
    theirs = g.membership(m2.member_id).assignment[0]
    with pytest.raises(StaleGenerationError, match="does not own"):
        g.commit(m1.member_id, 2, [po(theirs.topic, theirs.partition, 9)])
    with pytest.raises(StaleGenerationError, match="generation 3 does not exist"):
        g.commit(m1.member_id, 3, [])
    with pytest.raises(UnknownMemberError, match="'nobody'"):
        g.commit("nobody", 2, [po("a", 0, 9)])
    with pytest.raises(UnknownMemberError):
        g.commit(None, -1, [po("a", 0, 9)])
    with pytest.raises(OffsetOutOfRangeError, match="-1"):
        g.commit(m1.member_id, 2, [po("a", 0, -1)])
    assert (po("a", 0, 7, "batch 7"),) == g.committed()
    assert () == g.committed([TopicPartition("a", 1)])


def test_leave_delete_and_illegal_transitions():
    """The last leave empties the group; delete needs an empty group; a deleted
    group refuses everything; events the table does not allow raise."""
    g = GroupCoordinator.new("g")
    m = g.join(["a"], COUNTS, now=0.0)
    with pytest.raises(IllegalTransitionError, match="is stable: event 'deleted'"):
        g.delete()
    g.leave(m.member_id)
    assert ("empty", 1, {}) == (g.state.status, g.state.generation, dict(g.state.members))
    with pytest.raises(UnknownMemberError):
        g.leave(m.member_id)
    g.delete()
    with pytest.raises(IllegalTransitionError, match="deleted"):
        g.join(["a"], COUNTS, now=0.0)
    with pytest.raises(IllegalTransitionError, match="is dead"):
        apply(g.state, {"type": "committed", "offsets": []})
    with pytest.raises(IllegalTransitionError, match="unknown member"):
        apply(GroupState("x"), {"type": "left", "member_id": "m", "reason": "left"})
    with pytest.raises(IllegalTransitionError, match="is empty: event 'rebalanced'"):
        apply(GroupState("x"), {"type": "rebalanced", "generation": 1, "assignment": {}})
    with pytest.raises(IllegalTransitionError, match="is empty: event 'stabilized'"):
        apply(GroupState("x"), {"type": "stabilized"})
    with pytest.raises(InvalidArgument, match="'bogus'"):
        apply(GroupState("x"), {"type": "bogus"})


class _LeaderAssigns:
    """An assigner that leaves the decision to an elected leader (the seam a
    Kafka front end will fill): the group waits in completing_rebalance."""

    on_broker = False

    def assign(
        self,
        members: Mapping[str, tuple[str, ...]],
        topic_partitions: Mapping[str, int],
        previous: Mapping[str, Iterable[tuple[str, int]]],
    ) -> dict[str, tuple[tuple[str, int], ...]]:
        return compute_assignment(members, topic_partitions, previous)


def test_every_transition_of_the_table_is_taken():
    """Drive the coordinator (and, for completing_rebalance, an elected-leader
    assigner) through every (state, event) pair of TRANSITIONS."""
    seen: set[tuple[str, str]] = set()
    real_apply = _group.apply

    def recording(state: GroupState, event: dict[str, Any]) -> GroupState:
        seen.add((state.status, event["type"]))
        return real_apply(state, event)

    _group.apply = recording  # type: ignore[assignment]
    try:
        g = GroupCoordinator.new("g")
        g.commit(None, 0, [po("a", 0, 1)])  # empty/committed
        g.txn_commit(9, None, 0, [po("a", 0, 1)])  # .../txn_offsets
        g.complete_txn(9, True)  # .../txn_completed
        g.update_topics({"a": 3})  # empty/topics_changed
        m1 = g.join(["a"], COUNTS, now=0.0, rebalance_timeout=30.0)  # empty/joined ...
        g.commit(m1.member_id, 1, [po("a", 0, 2)])  # stable/committed
        g.txn_commit(9, m1.member_id, 1, [po("a", 0, 2)])  # .../txn_offsets
        g.complete_txn(9, True)  # .../txn_completed
        g.update_topics({"a": 4})  # stable/topics_changed
        m2 = g.join(["a"], COUNTS, now=0.0, rebalance_timeout=30.0)  # stable/joined
        m3 = g.join(["a"], COUNTS, now=0.0, rebalance_timeout=30.0)  # preparing/joined
        g.commit(m1.member_id, 2, [po("a", 0, 3)])  # preparing/committed
        g.txn_commit(9, m1.member_id, 2, [po("a", 0, 3)])  # .../txn_offsets
        g.complete_txn(9, True)  # .../txn_completed
        g.update_topics({"a": 5})  # preparing/topics_changed
        g.leave(m3.member_id)  # preparing/left
        release_all(g, m1.member_id)  # preparing/released, rebalanced, stabilized
        g.leave(m2.member_id)  # stable/left
        g.leave(m1.member_id)  # preparing... -> empty
        g.delete()  # empty/deleted

        st = GroupCoordinator.new("static")
        kw: dict[str, Any] = {"instance_id": "0", "session_timeout": 1.0, "rebalance_timeout": 9.0}
        st.join(["a"], COUNTS, now=0.0, **kw)
        st.join(["a"], COUNTS, now=2.0, **kw)  # stable/replaced
        st.join(["a"], COUNTS, now=2.0, rebalance_timeout=30.0)  # must release: preparing
        assert "preparing_rebalance" == st.state.status
        st.join(["a"], COUNTS, now=9.0, instance_id="0")  # preparing/replaced

        k = GroupCoordinator(GroupState("k"), _LeaderAssigns())
        a = k.join(["a"], COUNTS, now=0.0)
        assert "completing_rebalance" == k.state.status
        k.commit(a.member_id, 1, [po("a", 0, 1)])  # completing/committed
        k.txn_commit(9, a.member_id, 1, [po("a", 0, 1)])  # .../txn_offsets
        k.complete_txn(9, True)  # .../txn_completed
        k.update_topics({"a": 4})  # completing/topics_changed
        b = k.join(["a"], COUNTS, now=0.0, instance_id="1", session_timeout=1.0)  # .../joined
        b = k.join(["a"], COUNTS, now=5.0, instance_id="1")  # completing/replaced
        k.leave(b.member_id)  # completing/left
        assert "completing_rebalance" == k.state.status
        k.sync(a.member_id, k.state.generation, {}, 0.0)  # completing/synced: the leader's
        k.leave(a.member_id)  # stable/left -> empty
    finally:
        _group.apply = real_apply  # type: ignore[assignment]
    assert set(TRANSITIONS) == seen


def test_bad_join_arguments():
    """Empty subscriptions, missing counts and silly timeouts are InvalidArgument."""
    g = GroupCoordinator.new("g")
    with pytest.raises(InvalidArgument, match="topic names"):
        g.join([], COUNTS, now=0.0)
    with pytest.raises(InvalidArgument, match="'zzz'"):
        g.join(["zzz"], COUNTS, now=0.0)
    with pytest.raises(InvalidArgument, match="session_timeout"):
        g.join(["a"], COUNTS, now=0.0, session_timeout=0.0)
    with pytest.raises(InvalidArgument, match="max_poll_interval"):
        g.join(["a"], COUNTS, now=0.0, rebalance_timeout=-1)
    with pytest.raises(UnknownMemberError):
        g.join(["a"], COUNTS, now=0.0, member_id="ghost")
    assert [] == g.take_events()


def test_topic_change_rebalances():
    """More partitions for a subscribed topic start a new generation covering them."""
    g = GroupCoordinator.new("g")
    m = g.join(["a"], COUNTS, now=0.0, rebalance_timeout=30.0)
    assert not g.update_topics({"a": 3})
    assert g.update_topics({"a": 5})
    assert (2, 5) == (g.state.generation, len(g.heartbeat(m.member_id, 1, now=1.0).assignment))


def test_describe_lag_and_metadata():
    """describe() lists members, assignment, commits with metadata and lag."""
    g = GroupCoordinator.new("g")
    m = g.join(["b"], COUNTS, now=0.0, client_id="c")
    g.commit(m.member_id, 1, [po("b", 0, 4, "up to order 17")])
    d = g.describe({("b", 0): 10, ("b", 1): 3})
    assert ("g", "stable", 1, ("b",)) == (d.group, d.state, d.generation, d.topics)
    assert [("c-1", "c", 2)] == [(x.member_id, x.client_id, len(x.assignment)) for x in d.members]
    assert [("b", 0, 4, 10, 6, "up to order 17"), ("b", 1, None, 3, 3, "")] == [
        (p.topic, p.partition, p.committed, p.end_offset, p.lag, p.metadata) for p in d.partitions
    ]


def test_snapshots_round_trip_and_old_snapshots_load():
    """A state under way survives to_plain/from_plain; a snapshot written
    before rebalance states (5-field members) still loads."""
    g = GroupCoordinator.new("g")
    m1 = g.join(["a"], COUNTS, now=0.0, rebalance_timeout=30.0)
    g.commit(m1.member_id, 1, [po("a", 1, 3, "x")])
    g.join(["a"], COUNTS, now=0.0, rebalance_timeout=30.0)
    plain = cbor2.loads(cbor2.dumps(state_to_plain(g.state)))
    assert g.state == state_from_plain(plain)
    old = {
        "group": "o",
        "status": "stable",
        "generation": 4,
        "members": [["m-1", "", ["a"], 10.0, [["a", 0]]]],
        "topic_partitions": {"a": 1},
        "committed": [["a", 0, 7]],
        "member_seq": 1,
    }
    state = state_from_plain(old)
    assert ("headwater", (("a", 0),), ()) == (
        state.protocol_type,
        state.members["m-1"].assignment,
        state.members["m-1"].release,
    )


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
        st.tuples(st.just("release"), st.integers(0, 9)),
        st.tuples(st.just("advance"), st.floats(0, 8)),
        st.tuples(st.just("grow"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("commit"), st.integers(0, 9), st.integers(0, 100)),
    ),
    max_size=40,
)


@given(ops, st.sampled_from(["sticky", "range"]))
def test_owned_once_released_before_reassigned_and_replay_matches(script, assignor):
    """Over random join/leave/heartbeat/release/timeout/grow sequences: no
    partition is ever owned by two members; a partition changes owner only
    in a step where its old owner released it or left the group; a stable
    group owns every subscribed partition exactly once (balanced for sticky
    with equal subscriptions); commits of owned partitions never fail;
    events are CBOR-encodable and replaying them rebuilds the same state."""
    g = GroupCoordinator.new("g", assignor=assignor)
    counts = dict(COUNTS)
    now = 0.0
    joined: list[str] = []
    for op in script:
        before = {x: mids[0] for x, mids in owners(g).items()}
        released: set[tuple[str, tuple[str, int]]] = set()
        if op[0] == "join":
            m = g.join(op[1], counts, now=now, session_timeout=10.0, rebalance_timeout=20.0)
            joined.append(m.member_id)
        elif op[0] == "advance":
            now += op[1]
            g.tick(now)
        elif op[0] == "grow":
            counts[op[1]] += 1
            g.update_topics({op[1]: counts[op[1]]}, now)
        elif joined:
            mid = joined[op[1] % len(joined)]
            if mid not in g.state.members:
                continue
            if op[0] == "leave":
                g.leave(mid, now)
            elif op[0] == "heartbeat":
                g.heartbeat(mid, g.state.generation, now)
            elif op[0] == "release":
                released = {(mid, (x.topic, x.partition)) for x in g.membership(mid).release}
                release_all(g, mid, now)
            else:
                mine = g.state.members[mid].assignment
                g.commit(mid, g.state.generation, [po(t, p, op[2]) for t, p in mine])
        members = g.state.members
        owned = owners(g)
        assert all(1 == len(v) for v in owned.values())
        for x, (mid,) in owned.items():
            assert x[0] in members[mid].topics
            old = before.get(x)
            if old is not None and old != mid:
                assert (old, x) in released or old not in members
        if g.state.status == "stable":
            subscribed = {t for m in members.values() for t in m.topics}
            expected = {(t, p) for t in subscribed for p in range(g.state.topic_partitions[t])}
            assert expected == set(owned)
            if assignor == "sticky" and len({m.topics for m in members.values()}) == 1:
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
            alive.append(g.join(["a"], counts, now=0.0, rebalance_timeout=9.0).member_id)
            for mid in list(before):
                release_all(g, mid)
            for mid, owned in before.items():
                assert set(g.state.members[mid].assignment) <= owned
        else:
            g.leave(alive.pop(0))
            for mid in alive:
                assert set(g.state.members[mid].assignment) >= before[mid]


def test_transactional_offsets_are_pending_until_the_transaction_ends():
    """Offsets sent in a transaction are held per producer: the committed
    offset of their partitions is UnstableOffsetError meanwhile; a commit
    makes them committed, an abort drops them; ownership fences them like
    commit(); replay and snapshots keep the pending ones."""
    from headwater import UnstableOffsetError

    g = GroupCoordinator.new("g")
    m = g.join(["a"], COUNTS, now=0.0)
    g.commit(m.member_id, 1, [po("a", 0, 3)])
    g.txn_commit(7, m.member_id, 1, [po("a", 0, 5, "t")])
    g.txn_commit(8, m.member_id, 1, [po("a", 1, 2)])
    with pytest.raises(UnstableOffsetError, match="a/0"):
        g.committed([TopicPartition("a", 0)])
    with pytest.raises(UnstableOffsetError):
        g.committed()
    with pytest.raises(StaleGenerationError):
        g.txn_commit(7, m.member_id, 2, [])
    events = list(g.take_events())
    replayed = GroupState("g")
    for event in events:
        replayed = apply(replayed, cbor2.loads(cbor2.dumps(event)))
    assert replayed == g.state
    assert g.state == state_from_plain(cbor2.loads(cbor2.dumps(state_to_plain(g.state))))
    g.complete_txn(7, True)
    g.complete_txn(8, False)
    g.complete_txn(8, False)  # retried: nothing pending, nothing emitted
    assert ["txn_completed", "txn_completed"] == [e["type"] for e in g.take_events()]
    assert (po("a", 0, 5, "t"),) == g.committed()
