"""Each stateless operator and the tables on the TestDriver."""

from __future__ import annotations

import pytest

from headwater import NotFoundError
from headwater.processing import Job, TestDriver


async def test_map_filter_flat_map_with_sync_and_async_functions() -> None:
    """map/filter/flat_map keep keys; async functions are awaited."""
    job = Job("j")

    async def double(v: int) -> int:
        return v * 2

    (
        job.stream("in", value=int)
        .map(double)
        .filter(lambda v: v > 2)
        .flat_map(lambda v: [v, v + 1])
        .to("out")
    )
    driver = TestDriver(job)
    for i in range(4):
        await driver.pipe("in", i, key=f"k{i}")
    assert [(b"k2", 4), (b"k2", 5), (b"k3", 6), (b"k3", 7)] == driver.read("out", value=int)


async def test_with_key_functions_see_the_key() -> None:
    """with_key=True passes (key, value)."""
    job = Job("j")
    job.stream("in", key=str, value=str).map(lambda k, v: f"{k}={v}", with_key=True).filter(
        lambda k, _v: k != "skip", with_key=True
    ).to("out")
    driver = TestDriver(job)
    await driver.pipe("in", "1", key="a")
    await driver.pipe("in", "2", key="skip")
    assert [("a", "a=1")] == driver.read("out", key=str, value=str)


async def test_foreach_runs_for_effect() -> None:
    """foreach calls the function once per event (sync and async)."""
    seen: list[tuple[str, str]] = []
    job = Job("j")
    s = job.stream("in", key=str, value=str)
    s.foreach(lambda k, v: seen.append((k, v)), with_key=True)

    async def later(v: str) -> None:
        seen.append(("async", v))

    s.foreach(later)
    driver = TestDriver(job)
    await driver.pipe("in", "x", key="a")
    assert [("a", "x"), ("async", "x")] == seen


async def test_branch_sends_each_event_to_the_first_true_branch() -> None:
    """branch: first matching predicate wins; no match goes nowhere."""
    job = Job("j")
    small, big = job.stream("in", value=int).branch(lambda v: v < 10, lambda v: v < 100)
    small.to("small")
    big.to("big")
    driver = TestDriver(job)
    for v in (1, 50, 500, 9):
        await driver.pipe("in", v)
    assert [1, 9] == [v for _k, v in driver.read("small", value=int)]
    assert [50] == [v for _k, v in driver.read("big", value=int)]


async def test_merge_joins_two_streams_into_one() -> None:
    """merge: events of both inputs, in arrival order."""
    job = Job("j")
    a = job.stream("a", value=str)
    b = job.stream("b", value=str).map(str.upper)
    a.merge(b).to("out", value=str)
    driver = TestDriver(job)
    await driver.pipe("a", "x")
    await driver.pipe("b", "y")
    await driver.pipe("a", "z")
    assert ["x", "Y", "z"] == [v for _k, v in driver.read("out", value=str)]


async def test_key_by_repartitions_so_each_key_meets_in_one_task() -> None:
    """key_by writes the repartition topic (key by the new key) and counts
    per key come out right over 4 source partitions."""
    job = Job("j")
    job.stream("in", value="json").key_by(lambda v: v["user"]).count(name="c")
    driver = TestDriver(job, {"in": 4})
    for i in range(40):
        await driver.pipe("in", {"user": f"u{i % 3}"}, partition=i % 4)
    assert {"u0": 14, "u1": 13, "u2": 13} == driver.table("c")
    rep = driver.output("j-repartition-0-repartition")
    assert 40 == len(rep)
    assert {b"s"} == {r.headers["hw.key"] for r in rep}


async def test_reduce_and_aggregate_tables_and_reading_them() -> None:
    """reduce/aggregate per key; table[key], get, in, len, iteration."""
    job = Job("j")
    s = job.stream("in", key=str, value=int)
    total = s.reduce(lambda a, b: a + b, name="total")
    stats = s.aggregate(
        {"n": 0, "max": None},
        lambda acc, v: {"n": acc["n"] + 1, "max": v if acc["max"] is None else max(acc["max"], v)},
        name="stats",
    )
    total.to_stream().to("totals")
    driver = TestDriver(job, {"in": 3})
    for k, v in [("a", 1), ("b", 5), ("a", 3)]:
        await driver.pipe("in", v, key=k)
    assert 4 == total["a"]
    assert 5 == total.get("b")
    assert total.get("zzz") is None
    assert "a" in total
    assert 2 == len(total)
    assert {"a", "b"} == set(total)
    assert {"n": 2, "max": 3} == stats["a"]
    assert {"n": 1, "max": 5} == stats["b"]
    with pytest.raises(KeyError):
        total["zzz"]
    assert [("a", 1), ("b", 5), ("a", 4)] == driver.read("totals", key=str, value=int)


def test_reading_a_table_that_is_not_running_is_a_typed_error() -> None:
    """A table read before any topology exists says where to read it."""
    job = Job("j")
    table = job.stream("in").count()
    with pytest.raises(NotFoundError, match="not running"):
        table["x"]


async def test_sink_serdes_and_auto_encoding() -> None:
    """to(): auto writes str/ints/JSON; a function or a serde name may be given."""
    job = Job("j")
    s = job.stream("in", value="json")
    s.to("auto")
    s.to("fn", value=lambda v: repr(v).encode())
    s.to("cbor", value="cbor")
    driver = TestDriver(job)
    await driver.pipe("in", {"a": 1})
    assert b'{"a":1}' == driver.output("auto")[0].value
    assert b"{'a': 1}" == driver.output("fn")[0].value
    assert [(None, {"a": 1})] == driver.read("cbor", value="cbor")


async def test_timestamp_extractor_sets_event_time() -> None:
    """stream(timestamp=fn) gives the event time sinks carry."""
    job = Job("j")
    job.stream("in", value="json", timestamp=lambda v: v["t"]).to("out")
    driver = TestDriver(job)
    await driver.pipe("in", {"t": 42.5}, timestamp=1.0)
    assert 42.5 == driver.output("out")[0].timestamp


async def test_a_topic_read_twice_feeds_both_pipelines() -> None:
    """Two job.stream() of one topic (different serdes) both see each event."""
    job = Job("j")
    job.stream("in", value=str).map(str.upper).to("upper")
    job.stream("in", value=int).count(name="n")
    driver = TestDriver(job, {"in": 2})
    await driver.pipe("in", "7", key="k")
    assert [(b"k", b"7")] == [(r.key, r.value) for r in driver.output("upper")]
    assert {b"k": 1} == driver.table("n")
    assert 1 == len(driver.topology.subtopologies)


async def test_async_reduce_and_async_joiner() -> None:
    """Aggregations and joiners may be async def too."""
    job = Job("j")

    async def add(a: int, b: int) -> int:
        return a + b

    async def pair(v: int, total: int) -> str:
        return f"{v}/{total}"

    s = job.stream("in", key=str, value=int)
    totals = s.reduce(add, name="t")
    job.stream("q", key=str, value=int).join(totals, pair).to("out", value=str)
    driver = TestDriver(job)
    await driver.pipe("in", 2, key="a")
    await driver.pipe("in", 3, key="a")
    await driver.pipe("q", 1, key="a")
    assert [("a", "1/5")] == driver.read("out", key=str, value=str)


def test_window_arithmetic_with_fractional_sizes() -> None:
    """Windows start at or before t and an event is in size/advance
    hopping windows, also where t / size rounds."""
    from headwater.processing import hopping, tumbling

    for i in range(1000):
        t = i * 0.1
        ((start, end),) = tumbling(0.1, grace=0).windows_for(t)
        assert start <= t < end
        windows = hopping(0.3, 0.1, grace=0).windows_for(t)
        assert 3 == len(windows)
        assert all(start <= t for start, _end in windows)
