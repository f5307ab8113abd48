"""Kafka consumer groups on Headwater's group coordinator.

Theory of operation
-------------------
Kafka members join with JoinGroup, learn the elected leader and (the leader
only) every member's subscription, the leader computes the assignment on the
client and hands it over with SyncGroup, and everyone receives its share from
SyncGroup; Heartbeat answers ``REBALANCE_IN_PROGRESS`` when the group must be
joined again (the eager protocol: a member gives up all its partitions, then
rejoins).

Headwater's coordinator (``broker/_group.py``, DECISIONS #15) keeps the one
truth: members, generations, ownership, committed offsets. A Kafka member is
a coordinator member of protocol type ``kafka``; its group's assigner is "the
elected leader assigns" (the group waits in ``completing_rebalance`` for the
leader's assignment). This module maps the Kafka calls onto it:

* JoinGroup: a member that already owns partitions releases them all (it
  revoked them before rejoining), then joins; the answer waits, bounded by the
  rebalance timeout, until the coordinator has completed the rebalance
  (generation bumped). The leader is the first member of the new generation
  (by member id order); it gets every member's subscription metadata.
* SyncGroup: the leader's assignment goes to the coordinator (which then
  marks the group stable); every member waits for it and gets its bytes.
* Heartbeat and LeaveGroup map one to one. A member of a Headwater group is
  refused with ``INCONSISTENT_GROUP_PROTOCOL`` (and a Kafka member of a
  Headwater group the other way round), by the coordinator.

What the coordinator does not keep -- the opaque subscription metadata and
the assignment bytes with their user data -- lives in :class:`KafkaGroups`,
in memory, shared by the connections of one listener; after a restart
members rejoin and send them again, as with Kafka.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio
from kio.schema.errors import ErrorCode

from headwater._errors import HeadwaterError, InvalidArgument
from headwater._protocol import (
    PUSH_SINK,
    DescribeGroup,
    GroupDescription,
    Heartbeat,
    JoinGroup,
    LeaveGroup,
    MemberAssignment,
    Membership,
    ReleasePartitions,
    SyncGroup,
)

from ._consumer_protocol import decode_assignment, decode_subscription, encode_assignment

__all__ = ["KafkaGroupApis", "KafkaGroups"]


@attrs.define
class _Group:
    # member -> its (protocol name, subscription bytes) pairs, as it joined
    metadata: dict[str, tuple[tuple[str, bytes], ...]] = attrs.Factory(dict)
    # generation -> member -> the leader's assignment bytes for it
    assignments: dict[int, dict[str, bytes]] = attrs.Factory(dict)
    protocol: str = "range"
    changed: trio.Event = attrs.Factory(trio.Event)


class KafkaGroups:
    """The Kafka-only state of every group a listener's members are in."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}

    def group(self, name: str) -> Any:
        """The state of group ``name`` (created on first use)."""
        return self._groups.setdefault(name, _Group())

    def poke(self, name: str) -> None:
        """Wake everyone waiting on group ``name``."""
        group = self.group(name)
        group.changed.set()
        group.changed = trio.Event()


_STABLE_OR_SYNCING = ("completing_rebalance", "stable")


class KafkaGroupApis:
    """JoinGroup, SyncGroup, Heartbeat and LeaveGroup of one connection,
    answered through the broker service (see the module docstring)."""

    def __init__(self, service: Any, groups: KafkaGroups, client_id: str | None) -> None:
        self.service = service
        self.groups = groups
        self.client_id = client_id or ""

    async def _call(self, group: str, message: Any) -> Any:
        """Call the service with a push sink that wakes this group's waiters."""
        groups = self.groups

        def sink(_notice: Any) -> None:
            groups.poke(group)

        token = PUSH_SINK.set(sink)
        try:
            return await self.service.handle(message)
        finally:
            PUSH_SINK.reset(token)

    async def _wait(self, group: str, member: str, done: Any, timeout: float) -> Membership | None:
        """Heartbeat until ``done(membership)`` (woken by pushed notices), or
        ``None`` after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while True:
                changed = self.groups.group(group).changed
                m: Membership = await self._call(group, Heartbeat(group, member, 0))
                if done(m):
                    return m
                with trio.move_on_after(0.25):
                    await changed.wait()
        return None

    async def join(self, body: Any) -> dict[str, Any]:
        """JoinGroup (see the module docstring)."""
        group = body.group_id
        failed = {"generation_id": -1, "protocol_name": "", "leader": "", "members": []}
        if body.protocol_type != "consumer" or not body.protocols:
            return {
                **failed,
                "error_code": ErrorCode.inconsistent_group_protocol,
                "member_id": body.member_id,
            }
        try:
            topics = decode_subscription(body.protocols[0].metadata)
        except InvalidArgument:
            return {**failed, "error_code": ErrorCode.invalid_request, "member_id": body.member_id}
        session = body.session_timeout.total_seconds()
        rebalance = getattr(body, "rebalance_timeout", body.session_timeout).total_seconds()
        try:
            protocols = tuple((p.name, bytes(p.metadata)) for p in body.protocols)
            force = False
            if body.member_id:
                # Eager protocol: a member rejoining gave up everything it owned.
                m = await self._call(group, Heartbeat(group, body.member_id, 0))
                if m.assignment:
                    await self._call(
                        group, ReleasePartitions(group, body.member_id, m.generation, m.assignment)
                    )
                # As Kafka's coordinator: the leader rejoining a stable group, or a
                # member whose subscription changed, starts a rebalance.
                if m.state == "stable":
                    state = self.groups.group(group)
                    before: GroupDescription = await self.service.handle(DescribeGroup(group))
                    leader = min((x.member_id for x in before.members), default=None)
                    force = body.member_id == leader or (
                        state.metadata.get(body.member_id) != protocols
                    )
            joined: Membership = await self._call(
                group,
                JoinGroup(
                    group,
                    topics,
                    member_id=body.member_id or None,
                    session_timeout=session,
                    client_id=self.client_id,
                    rebalance_timeout=rebalance,
                    protocol_type="kafka",
                    rebalance=force,
                ),
            )
            member = joined.member_id
            state = self.groups.group(group)
            state.metadata[member] = protocols
            self.groups.poke(group)
            m = await self._wait(
                group, member, lambda m: m.state in _STABLE_OR_SYNCING, max(rebalance, 1.0)
            )
            if m is None:
                return {
                    **failed,
                    "error_code": ErrorCode.rebalance_in_progress,
                    "member_id": member,
                }
            desc: GroupDescription = await self.service.handle(DescribeGroup(group))
        except HeadwaterError as exc:
            return {**failed, "error_code": _code(exc), "member_id": body.member_id}
        ids = sorted(x.member_id for x in desc.members)
        leader = ids[0] if ids else member
        protocols = state.metadata
        names = [n for n, _meta in protocols.get(leader, ())]
        common = [
            n for n in names if all(n in dict(protocols.get(i, ())) for i in ids if i in protocols)
        ]
        chosen = common[0] if common else (names[0] if names else "range")
        members = (
            [
                {"member_id": i, "group_instance_id": None, "metadata": dict(protocols[i])[chosen]}
                for i in ids
                if i in protocols and chosen in dict(protocols[i])
            ]
            if member == leader
            else []
        )
        state.protocol = chosen
        return {
            "error_code": ErrorCode.none,
            "generation_id": m.generation,
            "protocol_type": "consumer",
            "protocol_name": chosen,
            "leader": leader,
            "member_id": member,
            "members": members,
        }

    async def sync(self, body: Any) -> dict[str, Any]:
        """SyncGroup (see the module docstring)."""
        group, member, generation = body.group_id, body.member_id, body.generation_id
        state = self.groups.group(group)
        try:
            if body.assignments:
                raw = {a.member_id: bytes(a.assignment) for a in body.assignments}
                decoded = tuple(
                    MemberAssignment(mid, decode_assignment(data)) for mid, data in raw.items()
                )
                await self._call(group, SyncGroup(group, member, generation, decoded))
                state.assignments[generation] = raw
                for old in [g for g in state.assignments if g < generation]:
                    del state.assignments[old]
                self.groups.poke(group)
            m = await self._wait(
                group,
                member,
                lambda m: (
                    m.generation != generation or m.state in ("stable", "preparing_rebalance")
                ),
                60.0,
            )
        except HeadwaterError as exc:
            return {"error_code": _code(exc), "assignment": b""}
        if m is None or m.generation != generation or m.state != "stable":
            return {"error_code": ErrorCode.rebalance_in_progress, "assignment": b""}
        data = state.assignments.get(generation, {}).get(member)
        return {
            "error_code": ErrorCode.none,
            "protocol_type": "consumer",
            "protocol_name": state.protocol,
            "assignment": data if data is not None else encode_assignment(m.assignment),
        }

    async def heartbeat(self, body: Any) -> dict[str, Any]:
        """Heartbeat: REBALANCE_IN_PROGRESS while the group is rebalancing."""
        group = body.group_id
        try:
            m: Membership = await self._call(
                group, Heartbeat(group, body.member_id, max(body.generation_id, 0))
            )
        except HeadwaterError as exc:
            return {"error_code": _code(exc)}
        if m.generation != body.generation_id:
            code = (
                ErrorCode.rebalance_in_progress
                if m.state != "stable"
                else ErrorCode.illegal_generation
            )
        elif m.state != "stable":
            code = ErrorCode.rebalance_in_progress
        else:
            code = ErrorCode.none
        return {"error_code": code}

    async def leave(self, body: Any) -> dict[str, Any]:
        """LeaveGroup (one member before v3, a list from v3)."""
        group = body.group_id
        ids = [m.member_id for m in body.members] if hasattr(body, "members") else [body.member_id]
        results = []
        for mid in ids:
            try:
                await self.service.handle(LeaveGroup(group, mid))
                code = ErrorCode.none
            except HeadwaterError as exc:
                code = _code(exc)
            self.groups.group(group).metadata.pop(mid, None)
            results.append({"member_id": mid, "group_instance_id": None, "error_code": code})
        self.groups.poke(group)
        return {
            "error_code": results[0]["error_code"] if len(results) == 1 else ErrorCode.none,
            "members": results,
        }


def _code(exc: BaseException) -> ErrorCode:
    from ._handler import error_code

    return error_code(exc)
