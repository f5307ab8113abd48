"""Group changes named for the log, with their numbers (sans-IO)."""

from __future__ import annotations

import attrs

from headwater.broker import GroupState, MemberState
from headwater.broker._grouplog import group_changes


def member(mid: str, *tps: tuple[str, int]) -> MemberState:
    return MemberState(mid, f"client-{mid}", ("orders",), 10.0, tuple(tps))


def test_join_rebalance_and_leave_are_named_with_numbers() -> None:
    """A join, the rebalance that follows and a leave each give their event."""
    empty = GroupState("billing")
    joined = attrs.evolve(empty, status="stable", generation=1, members={"a": member("a")})
    assert [
        (
            "group_member_joined",
            {"member_id": "a", "client_id": "client-a", "topics": ["orders"], "members": 1},
        ),
        (
            "group_state_changed",
            {"from_state": "empty", "to_state": "stable", "generation": 1, "members": 1},
        ),
        (
            "group_rebalanced",
            {"generation": 1, "members": 1, "partitions": 0, "assignment": {"a": 0}},
        ),
    ] == group_changes(empty, joined)
    two = attrs.evolve(
        joined,
        generation=2,
        members={"a": member("a", ("orders", 0)), "b": member("b", ("orders", 1), ("orders", 2))},
    )
    assert [
        (
            "group_member_joined",
            {"member_id": "b", "client_id": "client-b", "topics": ["orders"], "members": 2},
        ),
        (
            "group_rebalanced",
            {"generation": 2, "members": 2, "partitions": 3, "assignment": {"a": 1, "b": 2}},
        ),
    ] == group_changes(joined, two)
    left = attrs.evolve(two, generation=3, members={"b": member("b", ("orders", 0))})
    assert ["group_member_left", "group_rebalanced"] == [e for e, _ in group_changes(two, left)]
    assert {"member_id": "a", "members": 1} == group_changes(two, left)[0][1]
    assert [] == group_changes(left, left)
