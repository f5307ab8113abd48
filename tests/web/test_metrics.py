"""/metrics and /readyz after known workloads, on an embedded broker under
MockClock (the in-memory file layer, no sockets)."""

from __future__ import annotations

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from headwater._errors import InvalidArgument
from headwater._protocol import CreateTopic, DescribeTopic, Fetch, Produce
from headwater.broker import open_broker
from headwater.journal import SimulatedFileSystem, encode_record
from headwater.web import METRIC_NAMES, HttpApp, Request, gather, readiness, render_metrics
from headwater.web import _metrics as metrics_module

DATA = "/data"


def batch(tag: bytes, count: int) -> bytes:
    return encode_record(
        tag,
        count=count,
        first_timestamp=0,
        max_timestamp=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(broker: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(render_metrics(await gather(broker)).decode())  # type: ignore[arg-type]


async def test_counters_equal_a_known_workload(autojump_clock: trio.abc.Clock) -> None:
    """7 produces (3 to partition 0 with 2+3+4 events, 4 to partition 1 with 1
    event each), 2 fetches and 1 refused fetch: the scraped counters say so exactly."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("orders", partitions=2))
        sizes = {0: 0, 1: 0}
        for n in (2, 3, 4):
            record = batch(b"x" * (10 * n), n)
            sizes[0] += len(record)
            await broker.handle(Produce("orders", 0, record))
        for i in range(4):
            record = batch(b"y%d" % i, 1)
            sizes[1] += len(record)
            await broker.handle(Produce("orders", 1, record))
        got0 = await broker.handle(Fetch("orders", 0, 0, max_wait=0))
        got1 = await broker.handle(Fetch("orders", 1, 2, max_wait=0))
        with pytest.raises(InvalidArgument):
            await broker.handle(Fetch("orders", 1, 0, max_bytes=0, max_wait=0))
        m = await scrape(broker)

    p0 = (("partition", "0"), ("topic", "orders"))
    p1 = (("partition", "1"), ("topic", "orders"))
    topic = (("topic", "orders"),)
    assert 9.0 == m[("headwater_partition_produced_events_total", p0)]
    assert 4.0 == m[("headwater_partition_produced_events_total", p1)]
    assert 13.0 == m[("headwater_topic_produced_events_total", topic)]
    assert float(sizes[0]) == m[("headwater_partition_produced_bytes_total", p0)]
    assert float(sizes[0] + sizes[1]) == m[("headwater_topic_produced_bytes_total", topic)]
    assert 9.0 == m[("headwater_partition_fetched_events_total", p0)]
    assert 2.0 == m[("headwater_partition_fetched_events_total", p1)]
    assert float(len(got0.records)) == m[("headwater_partition_fetched_bytes_total", p0)]
    assert float(len(got1.records)) == m[("headwater_partition_fetched_bytes_total", p1)]
    assert 9.0 == m[("headwater_partition_next_offset", p0)]
    assert float(sizes[0]) == m[("headwater_partition_log_bytes", p0)]
    assert 1.0 == m[("headwater_partition_log_segments", p0)]
    # Latency histograms count every request by operation; errors apart.
    assert 7.0 == m[("headwater_request_duration_seconds_count", (("op", "produce"),))]
    assert 3.0 == m[("headwater_request_duration_seconds_count", (("op", "fetch"),))]
    assert 1.0 == m[("headwater_request_duration_seconds_count", (("op", "create_topic"),))]
    assert 1.0 == m[("headwater_request_errors_total", (("op", "fetch"),))]
    # `always`: each produce waited for its own fsync (one at a time).
    assert 7.0 == m[("headwater_fsync_duration_seconds_count", ())]
    assert 7.0 == m[("headwater_group_commit_appends_count", ())]
    assert 7.0 == m[("headwater_group_commit_appends_bucket", (("le", "1.0"),))]
    assert 2.0 == m[("headwater_partitions", ())]
    assert 0.0 == m[("headwater_partitions_failed", ())]
    assert 2.0 == m[("headwater_recovery_duration_seconds_count", ())]
    assert 0.0 == m[("headwater_connections", ())]
    assert 1.0 == m[("headwater_ready", ())]
    # The segment-file cache: one active segment per partition, open, none
    # closed by the cap, not thrashing.
    assert 2.0 == m[("headwater_segment_files_open", ())]
    assert 2.0 <= m[("headwater_segment_files_opened_total", ())]
    assert 0.0 == m[("headwater_segment_files_evicted_total", ())]
    assert 16384.0 == m[("headwater_segment_files_max", ())]
    assert 0.0 == m[("headwater_segment_files_thrashing", ())]
    names = {name for name, _ in m}
    for family in ("headwater_topic_produced_events_total", "headwater_actor_restarts_total"):
        assert family in METRIC_NAMES
    assert {n for n in names if not n.endswith(("_bucket", "_count", "_sum", "_created"))} <= set(
        METRIC_NAMES
    )


async def test_group_lag_per_partition(autojump_clock: trio.abc.Clock) -> None:
    """A group that committed 3 of 10 events shows lag 7, then 0 after committing all."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, broker.connect() as client:
        await client.create_topic("orders", partitions=1)
        async with client.producer() as producer:
            for i in range(10):
                await producer.send("orders", i)
        async with client.consumer("orders", group="billing") as consumer:
            seen = 0
            async for _event in consumer:
                seen += 1
                if seen == 3:
                    await consumer.commit()
                    break
        lag = (("group", "billing"), ("partition", "0"), ("topic", "orders"))
        assert 7.0 == (await scrape(broker))[("headwater_group_lag", lag)]
        view = await gather(broker)
        assert [("orders", 0, 3, 10, 7)] == [
            (p["topic"], p["partition"], p["committed"], p["end_offset"], p["lag"])
            for p in view.groups[0]["partitions"]
        ]
        async with client.consumer("orders", group="billing") as consumer:
            seen = 0
            async for event in consumer:
                seen += 1
                if event.offset == 9:
                    await consumer.commit()
                    break
        m = await scrape(broker)
        assert 0.0 == m[("headwater_group_lag", lag)]
        assert 0.0 == m[("headwater_group_topic_lag", lag[:1] + lag[2:])]
        # Scrapes read groups without counting as client requests.
        ops = {dict(labels).get("op") for name, labels in m if name.startswith("headwater_request")}
        assert not ops & {"list_groups", "describe_group"}


async def test_per_partition_series_switch_off_above_the_limit(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above MAX_PARTITION_SERIES partitions only per-topic series remain."""
    monkeypatch.setattr(metrics_module, "MAX_PARTITION_SERIES", 2)
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("a", partitions=2))
        await broker.handle(Produce("a", 1, batch(b"z", 5)))
        m = await scrape(broker)
        assert (
            5.0
            == m[
                ("headwater_partition_produced_events_total", (("partition", "1"), ("topic", "a")))
            ]
        )
        assert 1.0 == m[("headwater_per_partition_series", ())]
        await broker.handle(CreateTopic("b", partitions=1))
        m = await scrape(broker)
        assert 0.0 == m[("headwater_per_partition_series", ())]
        assert not [name for name, _ in m if name.startswith("headwater_partition_produced")]
        assert not [
            labels
            for name, labels in m
            if name == "headwater_actor_restarts_total"
            and dict(labels)["path"].startswith("/broker/topics/a/")
        ]
        assert 5.0 == m[("headwater_topic_produced_events_total", (("topic", "a"),))]


async def test_restarts_and_readiness_follow_a_killed_partition(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A killed partition is not serving during its backoff (/readyz 503 names
    it), serves again after (200), and its restart is counted by path."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("orders", partitions=2))
        app = HttpApp(broker)
        ready = await app(Request("GET", "/readyz", {}, {}))
        assert 200 == ready.status
        await broker.kill("/broker/topics/orders/1")
        view = await gather(broker)
        assert {"ready": False, "failed": [], "not_serving": ["orders/1"]} == readiness(view)
        ready = await app(Request("GET", "/readyz", {}, {}))
        assert 503 == ready.status
        await trio.sleep(1.0)
        assert 200 == (await app(Request("GET", "/readyz", {}, {}))).status
        m = await scrape(broker)
        assert 1.0 == m[("headwater_actor_restarts_total", (("path", "/broker/topics/orders/1"),))]
        assert 0.0 == m[("headwater_actor_restarts_total", (("path", "/broker/topics/orders/0"),))]


async def test_mailbox_figures_per_actor_kind(autojump_clock: trio.abc.Clock) -> None:
    """Messages handled and mailbox high-water marks are summed per actor kind
    from the tree snapshot: 5 appends to one partition are 5 handled messages
    (appends taken in the caller's task while the partition is idle count
    too); a topic describe goes through each partition's mailbox (high
    water 1)."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        await broker.handle(CreateTopic("orders", partitions=2))
        await broker.handle(Produce("orders", 0, batch(b"x", 1)))  # opens the partition
        key = ("headwater_messages_handled_total", (("kind", "partition"),))
        await scrape(broker)  # the first scrape opens the untouched partition
        before = (await scrape(broker))[key]
        for _ in range(5):
            await broker.handle(Produce("orders", 0, batch(b"x", 1)))
        await broker.handle(DescribeTopic("orders"))  # asks each partition
        m = await scrape(broker)
        assert before + 5.0 + 2.0 == m[key]  # and one describe per partition
        assert 1.0 == m[("headwater_mailbox_high_water", (("kind", "partition"),))]
        assert 0.0 == m[("headwater_mailbox_depth", (("kind", "partition"),))]
