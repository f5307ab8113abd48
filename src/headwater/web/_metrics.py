"""``GET /metrics``: the broker's state in Prometheus text format.

Rendered with the official ``prometheus-client`` library into a registry of
its own (never the process-wide default one, which an embedding program may
use for itself). Values are read at scrape time from a
:class:`~headwater.web._snapshot.BrokerView`: counting costs the broker
nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from headwater._stats import LATENCY_BUCKETS, Histogram
from headwater.web._snapshot import MAX_PARTITION_SERIES, BrokerView, actor_kind, readiness

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["CONTENT_TYPE", "METRIC_NAMES", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format's content type."""

METRIC_NAMES = (
    "headwater_topic_produced_events_total",
    "headwater_topic_produced_bytes_total",
    "headwater_topic_fetched_events_total",
    "headwater_topic_fetched_bytes_total",
    "headwater_topic_log_bytes",
    "headwater_topic_log_segments",
    "headwater_partition_produced_events_total",
    "headwater_partition_produced_bytes_total",
    "headwater_partition_fetched_events_total",
    "headwater_partition_fetched_bytes_total",
    "headwater_partition_log_bytes",
    "headwater_partition_log_segments",
    "headwater_partition_next_offset",
    "headwater_partition_earliest_offset",
    "headwater_partition_recovery_seconds",
    "headwater_partitions",
    "headwater_partitions_failed",
    "headwater_partition_failed",
    "headwater_recovery_duration_seconds",
    "headwater_request_duration_seconds",
    "headwater_request_errors_total",
    "headwater_fsync_duration_seconds",
    "headwater_group_commit_appends",
    "headwater_segment_files_open",
    "headwater_segment_files_max",
    "headwater_segment_files_opened_total",
    "headwater_segment_files_evicted_total",
    "headwater_segment_files_thrashing",
    "headwater_group_lag",
    "headwater_group_topic_lag",
    "headwater_group_members",
    "headwater_group_generation",
    "headwater_connections",
    "headwater_connections_opened_total",
    "headwater_actors",
    "headwater_actor_restarts_total",
    "headwater_mailbox_depth",
    "headwater_mailbox_high_water",
    "headwater_messages_handled_total",
    "headwater_ready",
    "headwater_per_partition_series",
)
"""Every metric family ``/metrics`` may expose (see docs/observability.md)."""


def _histogram(name: str, doc: str, h: Histogram, labels: dict[str, str] | None = None) -> Metric:
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(name, doc, labels=list(labels or {}))
    buckets = [(_bound(b), float(n)) for b, n in h.cumulative()]
    family.add_metric(list((labels or {}).values()), buckets, h.sum)
    return family


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _ViewCollector:
    """A prometheus-client collector of one view (duck-typed: the library
    is imported on first scrape, so `import headwater` stays quick)."""

    def __init__(self, view: BrokerView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        yield from _families(self.view)


def _families(view: BrokerView) -> Iterable[Metric]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    per_partition = view.partition_count <= MAX_PARTITION_SERIES

    def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        return CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels)

    topic_families = {
        "produced_events": counter(
            "headwater_topic_produced_events_total", "Events stored by produce requests.", ["topic"]
        ),
        "produced_bytes": counter(
            "headwater_topic_produced_bytes_total", "Batch bytes stored by produces.", ["topic"]
        ),
        "fetched_events": counter(
            "headwater_topic_fetched_events_total", "Events returned by fetches.", ["topic"]
        ),
        "fetched_bytes": counter(
            "headwater_topic_fetched_bytes_total", "Batch bytes returned by fetches.", ["topic"]
        ),
    }
    log_bytes = GaugeMetricFamily(
        "headwater_topic_log_bytes", "Log size on disk.", labels=["topic"]
    )
    log_segments = GaugeMetricFamily(
        "headwater_topic_log_segments", "Segment files.", labels=["topic"]
    )
    tp = ["topic", "partition"]
    part_families = {
        "produced_events": counter(
            "headwater_partition_produced_events_total", "Events stored by produces.", tp
        ),
        "produced_bytes": counter(
            "headwater_partition_produced_bytes_total", "Batch bytes stored by produces.", tp
        ),
        "fetched_events": counter(
            "headwater_partition_fetched_events_total", "Events returned by fetches.", tp
        ),
        "fetched_bytes": counter(
            "headwater_partition_fetched_bytes_total", "Batch bytes returned by fetches.", tp
        ),
    }
    part_gauges = {
        "size_bytes": GaugeMetricFamily("headwater_partition_log_bytes", "Log bytes.", labels=tp),
        "segments": GaugeMetricFamily("headwater_partition_log_segments", "Segments.", labels=tp),
        "next_offset": GaugeMetricFamily(
            "headwater_partition_next_offset", "The next offset (log end).", labels=tp
        ),
        "earliest_offset": GaugeMetricFamily(
            "headwater_partition_earliest_offset", "The earliest offset kept.", labels=tp
        ),
    }
    recovery = GaugeMetricFamily(
        "headwater_partition_recovery_seconds",
        "How long the partition's last start (log recovery) took.",
        labels=tp,
    )
    failed_one = GaugeMetricFamily(
        "headwater_partition_failed", "1 for a partition parked as failed.", labels=tp
    )
    failed = 0
    for topic in view.topics:
        name = topic["name"]
        for key, family in topic_families.items():
            family.add_metric([name], topic[key])
        log_bytes.add_metric([name], topic["size_bytes"])
        log_segments.add_metric([name], sum(p["segments"] for p in topic["partitions"]))
        for p in topic["partitions"]:
            labels = [name, str(p["partition"])]
            if p["state"] == "failed":
                failed += 1
                failed_one.add_metric(labels, 1)
            if not per_partition:
                continue
            for key, family in part_families.items():
                family.add_metric(labels, p[key])
            for key, gauge in part_gauges.items():
                gauge.add_metric(labels, p[key])
            seconds = view.recovery_seconds.get((name, p["partition"]))
            if seconds is not None:
                recovery.add_metric(labels, seconds)
    yield from topic_families.values()
    yield log_bytes
    yield log_segments
    if per_partition:
        yield from part_families.values()
        yield from part_gauges.values()
        yield recovery
    yield failed_one
    yield GaugeMetricFamily("headwater_partitions", "Partitions.", value=view.partition_count)
    yield GaugeMetricFamily(
        "headwater_partitions_failed", "Partitions parked as failed.", value=failed
    )
    yield GaugeMetricFamily(
        "headwater_per_partition_series",
        f"1 when per-partition series are shown (at most {MAX_PARTITION_SERIES} partitions).",
        value=1 if per_partition else 0,
    )
    recoveries = Histogram(LATENCY_BUCKETS)
    for seconds in view.recovery_seconds.values():
        recoveries.observe(seconds)
    yield _histogram(
        "headwater_recovery_duration_seconds",
        "Partition recovery (log open) durations, one per live partition.",
        recoveries,
    )

    durations = HistogramMetricFamily(
        "headwater_request_duration_seconds", "Request latency by operation.", labels=["op"]
    )
    for op, h in sorted(view.requests.items()):
        durations.add_metric([op], [(_bound(b), float(n)) for b, n in h.cumulative()], h.sum)
    yield durations
    errors = counter("headwater_request_errors_total", "Requests refused, by operation.", ["op"])
    for op, n in sorted(view.request_errors.items()):
        errors.add_metric([op], n)
    yield errors
    yield _histogram(
        "headwater_fsync_duration_seconds",
        "Journal fsync latency (the count is the number of fsyncs).",
        view.fsync_latency,
    )
    yield _histogram(
        "headwater_group_commit_appends",
        "Appends covered by one fsync (group-commit batch size).",
        view.fsync_batch,
    )
    files = view.segment_files
    yield GaugeMetricFamily(
        "headwater_segment_files_open", "Segment files open now.", value=files["open"]
    )
    if files["max_open"] is not None:
        yield GaugeMetricFamily(
            "headwater_segment_files_max",
            "The cap on idle open segment files (--max-open-files).",
            value=files["max_open"],
        )
    opened = counter("headwater_segment_files_opened_total", "Segment files opened.", [])
    opened.add_metric([], files["opened"])
    yield opened
    evicted = counter(
        "headwater_segment_files_evicted_total", "Idle segment files closed by the cap.", []
    )
    evicted.add_metric([], files["evicted"])
    yield evicted
    yield GaugeMetricFamily(
        "headwater_segment_files_thrashing",
        "1 while most uses of segment files miss the cache (raise --max-open-files).",
        value=1 if files["scan_resistant"] else 0,
    )

    lag = GaugeMetricFamily(
        "headwater_group_lag", "Events behind the log end, per partition.", labels=["group", *tp]
    )
    topic_lag = GaugeMetricFamily(
        "headwater_group_topic_lag",
        "Events behind the log end, per topic.",
        labels=["group", "topic"],
    )
    members = GaugeMetricFamily("headwater_group_members", "Live members.", labels=["group"])
    generation = GaugeMetricFamily("headwater_group_generation", "Generation.", labels=["group"])
    for g in view.groups:
        if "partitions" not in g:
            continue
        members.add_metric([g["group"]], len(g["members"]))
        generation.add_metric([g["group"]], g["generation"])
        sums: dict[str, int] = {}
        for p in g["partitions"]:
            sums[p["topic"]] = sums.get(p["topic"], 0) + p["lag"]
            if per_partition:
                lag.add_metric([g["group"], p["topic"], str(p["partition"])], p["lag"])
        for t, n in sorted(sums.items()):
            topic_lag.add_metric([g["group"], t], n)
    if per_partition:
        yield lag
    yield topic_lag
    yield members
    yield generation

    yield GaugeMetricFamily(
        "headwater_connections", "Open client connections.", value=len(view.connections)
    )
    opened = counter("headwater_connections_opened_total", "Client connections accepted.", [])
    opened.add_metric([], view.connections_total)
    yield opened

    states: dict[str, int] = {}
    restarts = counter(
        "headwater_actor_restarts_total", "Restarts of the actor at each path.", ["path"]
    )
    depth: dict[str, int] = {}
    high: dict[str, int] = {}
    handled: dict[str, int] = {}
    for node in view.tree.walk():
        states[node.state] = states.get(node.state, 0) + 1
        kind = actor_kind(node.path)
        if per_partition or kind != "partition":
            restarts.add_metric([node.path], node.restarts)
        if node.kind == "actor":
            depth[kind] = depth.get(kind, 0) + getattr(node, "mailbox_depth", 0)
            high[kind] = max(high.get(kind, 0), getattr(node, "mailbox_high_water", 0))
            handled[kind] = handled.get(kind, 0) + getattr(node, "handled", 0)
    actors = GaugeMetricFamily("headwater_actors", "Actors by state.", labels=["state"])
    for state, n in sorted(states.items()):
        actors.add_metric([state], n)
    yield actors
    yield restarts
    d = GaugeMetricFamily(
        "headwater_mailbox_depth", "Messages waiting, summed per actor kind.", labels=["kind"]
    )
    hw = GaugeMetricFamily(
        "headwater_mailbox_high_water",
        "Most messages ever waiting, per actor kind.",
        labels=["kind"],
    )
    hd = counter("headwater_messages_handled_total", "Messages handled, per actor kind.", ["kind"])
    for kind in sorted(depth):
        d.add_metric([kind], depth[kind])
        hw.add_metric([kind], high[kind])
        hd.add_metric([kind], handled[kind])
    yield d
    yield hw
    yield hd
    yield GaugeMetricFamily(
        "headwater_ready",
        "1 when every partition serves or is failed.",
        value=1 if readiness(view)["ready"] else 0,
    )


def render_metrics(view: BrokerView) -> bytes:
    """``view`` in Prometheus text format, from a registry of its own."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ViewCollector(view))
    data: Any = generate_latest(registry)
    return bytes(data)
