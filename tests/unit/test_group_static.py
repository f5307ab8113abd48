"""Static membership in the group coordinator (DECISIONS #22): one live member
per instance id; a restart after a death takes the dead member's place (same
partitions, same generation, no rebalance); a copy that goes away for good is
removed and the others take over."""

from __future__ import annotations

import pytest

from headwater import InvalidArgument, MemberInstanceInUseError, UnknownMemberError
from headwater.broker import GroupCoordinator
from headwater.broker._group import state_from_plain, state_to_plain

COUNTS = {"t": 4}


def two_copies() -> tuple[GroupCoordinator, str, str]:
    """Instances "0" and "1" of one job, stable, two partitions each
    (session 10 s, rebalance timeout 30 s); both last heard at t=0."""
    g = GroupCoordinator.new("job")
    a = g.join(["t"], COUNTS, now=0.0, instance_id="0", rebalance_timeout=30.0)
    b = g.join(["t"], COUNTS, now=0.0, instance_id="1", rebalance_timeout=30.0)
    g.release(a.member_id, g.membership(a.member_id).release, now=0.0)
    g.heartbeat(b.member_id, 2, now=0.0)
    assert ("stable", 2) == (g.state.status, g.state.generation)
    g.take_events()
    g.take_notices()
    return g, a.member_id, b.member_id


def owned(g: GroupCoordinator) -> dict[str, list[int]]:
    """Member id -> partitions of topic t it owns."""
    return {mid: sorted(p for _, p in m.assignment) for mid, m in g.state.members.items()}


def test_a_second_live_member_with_the_same_instance_is_refused():
    """While the holder heartbeats, a join with its instance id is refused
    with a typed error naming the holder; nothing changes."""
    g, a, _ = two_copies()
    before = g.state
    with pytest.raises(MemberInstanceInUseError, match=f"instance '0' of group 'job'.*{a}"):
        g.join(["t"], COUNTS, now=5.0, instance_id="0")
    assert [] == g.take_events()
    assert before == g.state
    g.heartbeat(a, 2, now=8.0)
    with pytest.raises(MemberInstanceInUseError, match=r"ends within 8\.0s"):
        g.join(["t"], COUNTS, now=10.0, instance_id="0")
    assert before == g.state


def test_a_restart_after_the_session_ended_takes_over_in_place():
    """The holder died (no heartbeat since t=0, session 10 s); a join with
    its instance id after that takes its place: a new member id, the same
    partitions, the same generation, one event, nobody else told anything."""
    g, a, b = two_copies()
    mine = owned(g)[a]
    m = g.join(["t"], COUNTS, now=10.5, instance_id="0", client_id="copy")
    assert ["replaced"] == [e["type"] for e in g.take_events()]
    assert ("stable", 2, mine) == (m.state, m.generation, sorted(x.partition for x in m.assignment))
    assert m.member_id != a
    assert {m.member_id, b} == set(g.state.members)
    assert [] == g.take_notices()
    with pytest.raises(UnknownMemberError):
        g.heartbeat(a, 2, now=11.0)  # the dead one's id is gone
    assert "0" == g.state.members[m.member_id].instance_id


def test_a_successor_refused_while_the_holder_lived_takes_over_at_expiry():
    """A restart that arrives before the dead copy's session ended is
    refused; at the expiry the holder is vacated (not removed: no
    rebalance), and the successor's next try takes its place."""
    g, a, b = two_copies()
    mine = owned(g)[a]
    with pytest.raises(MemberInstanceInUseError):
        g.join(["t"], COUNTS, now=1.0, instance_id="0")
    g.heartbeat(b, 2, now=9.0)
    assert 10.0 == g.next_deadline()
    assert [] == g.tick(10.0)  # vacated, not removed
    assert ("stable", 2, mine) == (g.state.status, g.state.generation, owned(g)[a])
    assert [] == g.take_events()
    m = g.join(["t"], COUNTS, now=10.5, instance_id="0")
    assert ("stable", 2, mine) == (
        m.state,
        m.generation,
        sorted(x.partition for x in m.assignment),
    )
    assert ["replaced"] == [e["type"] for e in g.take_events()]


def test_a_copy_that_goes_away_for_good_is_removed_and_the_others_take_over():
    """Without a waiting successor the expired holder is removed at once;
    with one that never comes back, one session later. Either way the other
    copy ends up owning every partition."""
    g, a, b = two_copies()
    g.heartbeat(b, 2, now=9.0)
    assert [a] == g.tick(10.0)
    release = g.membership(b).release
    assert () == release
    assert {b: [0, 1, 2, 3]} == owned(g)

    g, a, b = two_copies()
    with pytest.raises(MemberInstanceInUseError):
        g.join(["t"], COUNTS, now=1.0, instance_id="0")
    g.heartbeat(b, 2, now=9.0)
    assert [] == g.tick(10.0)
    g.heartbeat(b, 2, now=18.0)
    assert [a] == g.tick(20.0)
    assert {b: [0, 1, 2, 3]} == owned(g)


def test_a_vacated_holder_that_heartbeats_again_is_live_again():
    """A holder that was only slow (it heartbeats after its session ended)
    keeps its place, and the successor is refused again."""
    g, a, b = two_copies()
    with pytest.raises(MemberInstanceInUseError):
        g.join(["t"], COUNTS, now=1.0, instance_id="0")
    g.heartbeat(b, 2, now=9.0)
    assert [] == g.tick(10.0)
    g.heartbeat(a, 2, now=10.2)
    with pytest.raises(MemberInstanceInUseError):
        g.join(["t"], COUNTS, now=11.0, instance_id="0")


def test_a_takeover_during_a_rebalance_counts_the_dead_holders_release_as_done():
    """Instance 0 owned everything and was asked to release half when it
    died; its successor's join completes the rebalance at once (the dead
    copy's uncommitted work is void), instead of waiting 30 s."""
    g = GroupCoordinator.new("job")
    a = g.join(["t"], COUNTS, now=0.0, instance_id="0", rebalance_timeout=30.0)
    b = g.join(["t"], COUNTS, now=0.0, instance_id="1", rebalance_timeout=30.0)
    assert 2 == len(g.membership(a.member_id).release)
    g.heartbeat(b.member_id, 1, now=9.0)
    m = g.join(["t"], COUNTS, now=10.0, instance_id="0", rebalance_timeout=30.0)
    assert ("stable", 2, 2) == (m.state, m.generation, len(m.assignment))
    assert [0, 1, 2, 3] == sorted(p for ps in owned(g).values() for p in ps)
    kinds = [e["type"] for e in g.take_events()]
    assert ["replaced", "released", "rebalanced", "stabilized"] == kinds[-4:]


def test_instance_ids_survive_replay_and_snapshots():
    """The instance id is part of the persisted member: replaying the
    events (or a snapshot) knows who holds which instance."""
    g = GroupCoordinator.new("job")
    g.join(["t"], COUNTS, now=0.0, instance_id="0")
    g.join(["t"], COUNTS, now=20.0, instance_id="0")  # a takeover
    events = g.take_events()
    replayed = GroupCoordinator.recover("job", events, now=30.0)
    assert g.state == replayed.state
    assert g.state == state_from_plain(state_to_plain(g.state))
    with pytest.raises(MemberInstanceInUseError):  # fresh sessions after recovery
        replayed.join(["t"], COUNTS, now=31.0, instance_id="0")
    assert ["0"] == [m.instance_id for m in g.describe({}).members]


def test_bad_instance_ids():
    """An instance id is a non-empty str of at most 255 characters."""
    g = GroupCoordinator.new("job")
    for bad in ("", "x" * 256, 7):
        with pytest.raises(InvalidArgument, match="instance_id"):
            g.join(["t"], COUNTS, now=0.0, instance_id=bad)  # type: ignore[arg-type]


def test_the_first_member_fixes_the_assignor_and_range_co_partitions():
    """A group whose first member asks for the range assignor gives
    partition p of every co-partitioned topic to one member (what a stream
    processing task needs); a member asking for another assignor is
    refused while the group has members; the choice survives replay."""
    from headwater import InconsistentGroupProtocolError

    counts = {"s": 4, "r": 4}
    g = GroupCoordinator.new("job")
    a = g.join(["s", "r"], counts, now=0.0, assignor="range", rebalance_timeout=30.0)
    b = g.join(["s", "r"], counts, now=0.0, assignor="range", rebalance_timeout=30.0)
    g.release(a.member_id, g.membership(a.member_id).release, now=0.0)
    for mid in (a.member_id, b.member_id):
        mine = g.state.members[mid].assignment
        assert {p for t, p in mine if t == "s"} == {p for t, p in mine if t == "r"}
        assert 4 == len(mine)
    with pytest.raises(InconsistentGroupProtocolError, match="range"):
        g.join(["s", "r"], counts, now=0.0, assignor="sticky")
    assert "range" == GroupCoordinator.recover("job", g.take_events(), now=1.0).state.assignor
    assert "range" == state_from_plain(state_to_plain(g.state)).assignor
    with pytest.raises(InvalidArgument, match="assignor"):
        g.join(["s"], counts, now=0.0, assignor="roundrobin")  # type: ignore[arg-type]
