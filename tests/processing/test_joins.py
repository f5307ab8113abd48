"""Stream-table and windowed stream-stream joins on the TestDriver."""

from __future__ import annotations

from typing import Any

import pytest

from headwater import PipelineError
from headwater.processing import Job, TestDriver


def enrichment(left: bool = False) -> Job:
    job = Job("shop")
    customers = job.table("customers", key=str, value="json", name="customers")
    (
        job.stream("orders", value="json")
        .key_by(lambda o: o["customer"])
        .join(customers, lambda o, c: {**o, "name": c["name"] if c else None}, left=left)
        .to("enriched")
    )
    return job


async def test_stream_table_join_uses_the_tables_current_value() -> None:
    """Each order with its customer's latest record; a deleted or unknown
    customer's orders are left out (inner join)."""
    driver = TestDriver(enrichment(), {"customers": 2, "orders": 3})
    await driver.pipe("customers", {"name": "Ada"}, key="c1")
    await driver.pipe("orders", {"id": 1, "customer": "c1"})
    await driver.pipe("customers", {"name": "Ada L."}, key="c1")
    await driver.pipe("orders", {"id": 2, "customer": "c1"})
    await driver.pipe("orders", {"id": 3, "customer": "c2"})
    await driver.pipe("customers", None, key="c1")
    await driver.pipe("orders", {"id": 4, "customer": "c1"})
    assert [
        {"id": 1, "customer": "c1", "name": "Ada"},
        {"id": 2, "customer": "c1", "name": "Ada L."},
    ] == [v for _k, v in driver.read("enriched", value="json")]


async def test_left_join_keeps_events_without_a_table_value() -> None:
    """left=True: the joiner gets None."""
    driver = TestDriver(enrichment(left=True), {"customers": 2, "orders": 2})
    await driver.pipe("orders", {"id": 3, "customer": "c2"})
    assert [{"id": 3, "customer": "c2", "name": None}] == [
        v for _k, v in driver.read("enriched", value="json")
    ]


def test_join_with_differently_partitioned_inputs_is_refused() -> None:
    """A table on 2 partitions joined with a repartition that must follow it
    works; two user topics with different counts cannot be co-partitioned."""
    job = Job("j")
    table = job.table("t")
    job.stream("s").join(table, lambda a, b: a)
    with pytest.raises(PipelineError, match="co-partitioned"):
        job.topology({"t": 2, "s": 3})
    topo = enrichment().topology({"customers": 4, "orders": 3})
    assert 4 == topo.partitions["shop-repartition-0-repartition"]


def clicks_and_views() -> Job:
    job = Job("ads")
    views = job.stream("views", key=str, value=str)
    clicks = job.stream("clicks", key=str, value=str)
    views.join(clicks, lambda v, c: f"{v}+{c}", within=10, grace=5, name="vc").to("matched")
    return job


async def test_windowed_stream_stream_join_pairs_events_within_the_window() -> None:
    """Pairs of one key within 10 s, from either side; late events to the side topic."""
    driver = TestDriver(clicks_and_views(), {"views": 2, "clicks": 2})
    await driver.pipe("views", "v1", key="ad", timestamp=100)
    await driver.pipe("clicks", "c1", key="ad", timestamp=105)  # pairs with v1
    await driver.pipe("clicks", "c2", key="ad", timestamp=111)  # 11 s after v1: no
    await driver.pipe("views", "v2", key="ad", timestamp=112)  # pairs with c1 and c2
    await driver.pipe("views", "v3", key="other", timestamp=112)
    assert ["v1+c1", "v2+c1", "v2+c2"] == [v for _k, v in driver.read("matched", value=str)]
    await driver.pipe("clicks", "c3", key="ad", timestamp=130)
    await driver.pipe("views", "old", key="ad", timestamp=114)  # < 130 - 10 - 5
    assert [(b"ad", b"old")] == [(r.key, r.value) for r in driver.output("ads-vc-late")]
    assert ["v1+c1", "v2+c1", "v2+c2"] == [v for _k, v in driver.read("matched", value=str)]
    assert ("ads-vc-late",) == driver.topology.late_topics
    assert {} == driver.topology.tables


async def test_stream_join_state_survives_a_restart() -> None:
    """Buffered events come back from the changelog."""
    driver = TestDriver(clicks_and_views())
    await driver.pipe("views", "v1", key="ad", timestamp=100)
    await driver.restart()
    await driver.pipe("clicks", "c1", key="ad", timestamp=101)
    assert ["v1+c1"] == [v for _k, v in driver.read("matched", value=str)]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda j, s, t, o: s.join(o, lambda a, b: a, grace=1), "within="),
        (lambda j, s, t, o: s.join(o, lambda a, b: a, within=1), "explicit grace"),
        (lambda j, s, t, o: s.join(o, lambda a, b: a, within=-1, grace=0), "within must"),
        (lambda j, s, t, o: s.join(t, lambda a, b: a, within=1), "no window"),
        (lambda j, s, t, o: s.join(o, lambda a, b: a, within=1, grace=0, left=True), "inner"),
        (lambda j, s, t, o: s.join(Job("x").table("t"), lambda a, b: a), "belongs to job"),
        (lambda j, s, t, o: s.join(o, "nope", within=1, grace=0), "needs a function"),
        (lambda j, s, t, o: s.join(42, lambda a, b: a), "takes a Stream or a Table"),
    ],
)
def test_misconfigured_joins_are_refused_when_built(build: Any, match: str) -> None:
    """Each bad join raises PipelineError naming what to fix."""
    job = Job("j")
    s, t, o = job.stream("s"), job.table("t"), job.stream("o")
    with pytest.raises(PipelineError, match=match):
        build(job, s, t, o)
