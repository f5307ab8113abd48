"""One consistent read of a broker's state, for the metrics and the console.

:func:`gather` reads the broker's counters (:class:`~headwater.broker._stats.BrokerStats`),
each partition's log statistics, each group's description and the
supervision tree, and returns plain data. It runs in the HTTP actor's task:
reading logs' statistics is synchronous and group descriptions are asks, so a
scrape costs one ask per group and no disk I/O.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from headwater._errors import HeadwaterError
from headwater._protocol import ShareDescription
from headwater.broker._broker import Broker
from headwater.supervision._specs import ActorSnapshot

__all__ = ["MAX_PARTITION_SERIES", "BrokerView", "actor_kind", "gather", "readiness"]

MAX_PARTITION_SERIES = 1000
"""Above this many partitions, per-partition metric series are left out
(per-topic series remain), so a scrape stays small (DECISIONS #28)."""

SERVING = frozenset({"running"})


@attrs.frozen
class BrokerView:
    """Everything the console and ``/metrics`` show, as plain data."""

    taken_at: float
    topics: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    connections: list[dict[str, Any]]
    connections_total: int
    tree: ActorSnapshot
    requests: dict[str, Any]
    request_errors: dict[str, int]
    fsync_latency: Any
    fsync_batch: Any
    recovery_seconds: dict[tuple[str, int], float]
    segment_files: dict[str, Any]
    """The segment-file cache (:class:`headwater.journal.FileCache`): ``open``,
    ``max_open`` (None: no cap), ``opened`` and ``evicted`` (counts since
    start) and ``scan_resistant`` (whether it is thrashing: more files in
    use than the cap)."""

    @property
    def partition_count(self) -> int:
        """How many partitions the broker has."""
        return sum(len(t["partitions"]) for t in self.topics)

    def as_json(self) -> dict[str, Any]:
        """The console's view (JSON friendly)."""
        return {
            "taken_at": self.taken_at,
            "topics": self.topics,
            "groups": self.groups,
            "connections": self.connections,
            "tree": self.tree.as_dict(),
            "ready": readiness(self),
        }


def actor_kind(path: str) -> str:
    """The kind of actor at ``path``, for per-kind series: the path with its
    names (topics, partitions, groups, connections) replaced by their role."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["broker", "topics"]:
        return ("topics", "topic", "partition")[min(len(parts), 4) - 2]
    if parts[:2] == ["broker", "groups"] and len(parts) > 2:
        return "group"
    if parts[0] == "server" and len(parts) > 1 and parts[1].startswith("conn-"):
        return "connection"
    return "/".join(parts) or "root"


def readiness(view: BrokerView) -> dict[str, Any]:
    """Ready when every partition is serving or parked as ``failed``
    (DECISIONS #28); lists the failed and the not yet serving."""
    failed: list[dict[str, Any]] = []
    waiting: list[str] = []
    for topic in view.topics:
        for p in topic["partitions"]:
            name = f"{topic['name']}/{p['partition']}"
            if p["state"] == "failed":
                failed.append({"partition": name, "error": p["error"]})
            elif p["state"] not in SERVING:
                waiting.append(name)
    return {"ready": not waiting, "failed": failed, "not_serving": waiting}


async def gather(broker: Broker) -> BrokerView:
    """Read the broker's state now (see the module docstring)."""
    service = broker.service
    stats = service.stats
    tree = broker.tree()
    nodes = {n.path: n for n in tree.walk()}
    topics: list[dict[str, Any]] = []
    for name, config in sorted(service.topic_configs().items()):
        partitions = []
        for p in range(config.partitions):
            path = f"/broker/topics/{name}/{p}"
            node = nodes.get(path)
            state = node.state if node is not None else "missing"
            counters = stats.partitions.get((name, p))
            entry: dict[str, Any] = {
                "partition": p,
                "path": path,
                "state": state,
                "restarts": node.restarts if node is not None else 0,
                "error": node.last_failure if node is not None and state == "failed" else None,
                "earliest_offset": 0,
                "next_offset": 0,
                "size_bytes": 0,
                "segments": 0,
                "produced_events": counters.produced_events if counters else 0,
                "produced_bytes": counters.produced_bytes if counters else 0,
                "fetched_events": counters.fetched_events if counters else 0,
                "fetched_bytes": counters.fetched_bytes if counters else 0,
            }
            if state in SERVING:
                try:
                    log = await service.log_statistics(name, p)
                except HeadwaterError:
                    pass
                else:
                    for key in ("earliest_offset", "next_offset", "size_bytes", "segments"):
                        entry[key] = log[key]
            partitions.append(entry)
        topics.append(
            {
                "name": name,
                "partitions": partitions,
                "durability": config.durability,
                "compacted": config.compacted,
                "retention_ms": config.retention_ms,
                "retention_bytes": config.retention_bytes,
                "size_bytes": sum(p["size_bytes"] for p in partitions),
                "events": sum(p["next_offset"] - p["earliest_offset"] for p in partitions),
                "produced_events": sum(p["produced_events"] for p in partitions),
                "produced_bytes": sum(p["produced_bytes"] for p in partitions),
                "fetched_events": sum(p["fetched_events"] for p in partitions),
                "fetched_bytes": sum(p["fetched_bytes"] for p in partitions),
            }
        )
    groups: list[dict[str, Any]] = []
    for group, description in await service.group_descriptions():
        if isinstance(description, HeadwaterError):
            groups.append({"group": group, "state": "unavailable", "error": str(description)})
        else:
            groups.append(_group_json(description))
    return BrokerView(
        taken_at=time.time(),
        topics=topics,
        groups=groups,
        connections=[c.as_dict() for c in stats.connections.values()],
        connections_total=stats.connections_total,
        tree=tree,
        requests=dict(stats.requests),
        request_errors=dict(stats.request_errors),
        fsync_latency=stats.fsync_latency,
        fsync_batch=stats.fsync_batch,
        recovery_seconds=dict(stats.recovery_seconds),
        segment_files=service.settings.files.statistics(),
    )


def _share_json(d: ShareDescription) -> dict[str, Any]:
    """A share subscription in the shape of a group (its backlog as lag)."""
    partitions = [
        {
            "topic": d.topic,
            "partition": p.partition,
            "committed": p.ack_floor,
            "end_offset": p.end_offset,
            "lag": p.backlog,
            "owner": None,
            "in_flight": p.in_flight,
            "acked": p.acked,
            "redelivered": p.redelivered,
            "dead_lettered": p.dead_lettered,
        }
        for p in d.partitions
    ]
    return {
        "group": d.name,
        "state": f"share ({d.mode})",
        "generation": 0,
        "topics": [d.topic],
        "members": [{"member_id": c, "client_id": "", "assignment": []} for c in d.consumers],
        "partitions": partitions,
        "lag": sum(p["lag"] for p in partitions),
    }


def _group_json(description: Any) -> dict[str, Any]:
    if isinstance(description, ShareDescription):
        return _share_json(description)
    owners: dict[tuple[str, int], str] = {}
    members = []
    for m in description.members:
        assignment = [(tp.topic, tp.partition) for tp in m.assignment]
        for tp in assignment:
            owners[tp] = m.member_id
        members.append(
            {
                "member_id": m.member_id,
                "client_id": getattr(m, "client_id", ""),
                "assignment": [f"{t}/{p}" for t, p in assignment],
            }
        )
    partitions = [
        {
            "topic": gp.topic,
            "partition": gp.partition,
            "committed": gp.committed,
            "end_offset": gp.end_offset,
            "lag": gp.lag,
            "owner": owners.get((gp.topic, gp.partition)),
        }
        for gp in description.partitions
    ]
    return {
        "group": description.group,
        "state": str(description.state),
        "generation": description.generation,
        "topics": list(description.topics),
        "members": members,
        "partitions": partitions,
        "lag": sum(p["lag"] for p in partitions),
    }
