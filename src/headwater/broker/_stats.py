"""What the broker counts for observability (plain data, no Trio).

One :class:`BrokerStats` lives in :class:`~headwater.broker._actors.BrokerSettings`,
so the request handler, the partition actors and the TCP server all count
into it. Front ends read it (the HTTP front end renders it for Prometheus);
the broker never imports them. Counts are per batch, taken from record
headers: the per-event path is never touched.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from headwater._stats import SIZE_BUCKETS, Histogram
from headwater.journal._record import RecordHeader, decode_header

__all__ = ["BrokerStats", "ConnectionStats", "PartitionCounters", "count_events"]


def count_events(data: bytes | bytearray | memoryview) -> int:
    """How many events a run of whole records (a fetch result) holds, read
    from the record headers only."""
    view = memoryview(data)
    pos = 0
    events = 0
    while pos < len(view):
        header = decode_header(view, pos, check_crc=False)
        if not isinstance(header, RecordHeader):
            break
        events += header.count
        pos += header.length
    return events


class PartitionCounters:
    """Produce and fetch counts of one partition since the broker started."""

    __slots__ = ("fetched_bytes", "fetched_events", "produced_bytes", "produced_events")

    def __init__(self) -> None:
        self.produced_events = 0
        self.produced_bytes = 0
        self.fetched_events = 0
        self.fetched_bytes = 0


@attrs.define
class ConnectionStats:
    """One open client connection, as the console lists it."""

    path: str
    peer: str
    opened_at: float = attrs.field(factory=time.time)
    client: str | None = None
    authenticated: bool = False
    requests: int = 0
    errors: int = 0
    subscriptions: list[str] = attrs.field(factory=list)
    """``topic/partition`` of each pushed fetch open on the connection."""

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON friendly)."""
        return attrs.asdict(self)


class BrokerStats:
    """Counters of one broker (see the module docstring)."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], PartitionCounters] = {}
        self.requests: dict[str, Histogram] = {}
        self.request_errors: dict[str, int] = {}
        self.connections: dict[str, ConnectionStats] = {}
        self.connections_total = 0
        self.recovery_seconds: dict[tuple[str, int], float] = {}
        self.fsync_latency = Histogram()
        self.fsync_batch = Histogram(SIZE_BUCKETS)

    def partition(self, topic: str, partition: int) -> PartitionCounters:
        """The counters of ``topic/partition`` (made on first use)."""
        key = (topic, partition)
        counters = self.partitions.get(key)
        if counters is None:
            counters = self.partitions[key] = PartitionCounters()
        return counters

    def request(self, op: str, seconds: float, *, failed: bool) -> None:
        """Count one answered request of operation ``op`` and its latency."""
        histogram = self.requests.get(op)
        if histogram is None:
            histogram = self.requests[op] = Histogram()
        histogram.observe(seconds)
        if failed:
            self.request_errors[op] = self.request_errors.get(op, 0) + 1

    def forget_topic(self, topic: str) -> None:
        """Drop a deleted topic's series."""
        for key in [k for k in self.partitions if k[0] == topic]:
            del self.partitions[key]
        for key in [k for k in self.recovery_seconds if k[0] == topic]:
            del self.recovery_seconds[key]

    def connection_opened(self, path: str, peer: str) -> ConnectionStats:
        """Record a new client connection."""
        entry = ConnectionStats(path, peer)
        self.connections[path] = entry
        self.connections_total += 1
        return entry

    def connection_closed(self, path: str) -> None:
        """Forget a closed client connection."""
        self.connections.pop(path, None)
