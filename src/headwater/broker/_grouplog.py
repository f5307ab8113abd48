"""What changed in a consumer group, as log events (sans-IO, no Trio).

:func:`group_changes` compares a group's state before and after a command and
names what an operator wants in the log at info level, with its numbers:
members joining and leaving, state changes, and each completed rebalance
(generation, members, partitions per member). The group actor logs them after
the change is durable, so the log never tells of a change a crash undid.
"""

from __future__ import annotations

from typing import Any

from headwater.broker._group import GroupState

__all__ = ["group_changes"]


def group_changes(before: GroupState, after: GroupState) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, fields)`` for every change from ``before`` to ``after``."""
    out: list[tuple[str, dict[str, Any]]] = []
    for mid in sorted(set(after.members) - set(before.members)):
        member = after.members[mid]
        out.append(
            (
                "group_member_joined",
                {
                    "member_id": mid,
                    "client_id": member.client_id,
                    "topics": list(member.topics),
                    "members": len(after.members),
                    **({"instance_id": member.instance_id} if member.instance_id else {}),
                },
            )
        )
    out.extend(
        ("group_member_left", {"member_id": mid, "members": len(after.members)})
        for mid in sorted(set(before.members) - set(after.members))
    )
    if after.status != before.status:
        out.append(
            (
                "group_state_changed",
                {
                    "from_state": before.status,
                    "to_state": after.status,
                    "generation": after.generation,
                    "members": len(after.members),
                },
            )
        )
    if after.generation != before.generation:
        assignment = {mid: len(m.assignment) for mid, m in sorted(after.members.items())}
        out.append(
            (
                "group_rebalanced",
                {
                    "generation": after.generation,
                    "members": len(after.members),
                    "partitions": sum(assignment.values()),
                    "assignment": assignment,
                },
            )
        )
    return out
