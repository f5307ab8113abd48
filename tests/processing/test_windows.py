"""Event-time windows on the TestDriver: every kind, grace, late events,
session merging, final vs current, wall-clock close."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from headwater import PipelineError
from headwater.processing import Job, TestDriver, Windowed, hopping, session, sliding, tumbling


def windowed_count(windows: Any, *, final: bool = True) -> tuple[Job, Any]:
    job = Job("w")
    table = job.stream("in", key=str).window(windows, name="win").count()
    out = table.final() if final else table.current()
    out.map(lambda n: n).foreach(lambda k, v: None, with_key=True)
    out.to("out")
    return job, table


def results(driver: TestDriver) -> list[tuple[str, float, float, int]]:
    return [
        (
            r.key.decode() if r.key else "",
            float(r.headers["hw.window.start"]),
            float(r.headers["hw.window.end"]),
            int(r.value or b"0") if r.value is not None else -1,
        )
        for r in driver.output("out")
    ]


async def pipe(driver: TestDriver, events: list[tuple[str, float]]) -> None:
    for key, t in events:
        await driver.pipe("in", b"x", key=key, timestamp=t)


async def test_tumbling_final_emits_once_per_window_when_it_closes() -> None:
    """[0,60) closes when event time reaches 60; one result per key."""
    job, _ = windowed_count(tumbling(60, grace=0))
    driver = TestDriver(job)
    await pipe(driver, [("a", 1), ("a", 30), ("b", 59)])
    assert [] == results(driver)
    await pipe(driver, [("a", 60)])
    assert [("a", 0, 60, 2), ("b", 0, 60, 1)] == results(driver)
    assert {Windowed("a", 60.0, 120.0): 1} == driver.table("win")


async def test_tumbling_current_emits_every_update() -> None:
    """.current(): each update of each window."""
    job, _ = windowed_count(tumbling(10, grace=0), final=False)
    driver = TestDriver(job)
    await pipe(driver, [("a", 1), ("a", 2), ("a", 11)])
    assert [("a", 0, 10, 1), ("a", 0, 10, 2), ("a", 10, 20, 1)] == results(driver)


async def test_grace_counts_late_arrivals_then_late_events_go_to_the_side_topic() -> None:
    """An event within grace still counts; one beyond it goes to
    <job>-<name>-late with its source position, never silently dropped."""
    job, _ = windowed_count(tumbling(10, grace=5))
    driver = TestDriver(job)
    await pipe(driver, [("a", 1), ("a", 12), ("a", 8)])  # 8 >= 12 - 5: on time
    assert [] == results(driver)
    await pipe(driver, [("a", 15)])  # watermark 15 = 10 + 5: [0,10) closes
    assert [("a", 0, 10, 2)] == results(driver)
    await pipe(driver, [("a", 9)])  # 9 < 15 - 5: late
    (late,) = driver.output("w-win-late")
    assert (b"a", b"x") == (late.key, late.value)
    assert b"in" == late.headers["hw.late.topic"]
    assert b"4" == late.headers["hw.late.offset"]
    assert b"15.0" == late.headers["hw.late.watermark"]
    assert ("w-win-late",) == driver.topology.late_topics
    assert [("a", 0, 10, 2)] == results(driver)


async def test_hopping_windows_overlap() -> None:
    """size 10 every 5: an event at 7 is in [0,10) and [5,15)."""
    job, _ = windowed_count(hopping(10, 5, grace=0), final=False)
    driver = TestDriver(job)
    await pipe(driver, [("a", 7), ("a", 12)])
    assert [("a", 0, 10, 1), ("a", 5, 15, 1), ("a", 5, 15, 2), ("a", 10, 20, 1)] == results(driver)


async def test_sliding_windows_one_per_event_time() -> None:
    """sliding(10): window [t-10, t] per event, holding all events in it;
    an out-of-order event updates the later windows it falls in."""
    job, _ = windowed_count(sliding(10, grace=10), final=False)
    driver = TestDriver(job)
    await pipe(driver, [("a", 1), ("a", 5), ("a", 12), ("a", 4)])
    assert [
        ("a", -9, 1, 1),
        ("a", -5, 5, 2),
        ("a", 2, 12, 2),
        ("a", -5, 5, 3),  # 4 falls in [-5, 5] and [2, 12]
        ("a", 2, 12, 3),
        ("a", -6, 4, 2),  # its own window: events 1 and 4
    ] == results(driver)


async def test_sliding_final_after_grace() -> None:
    """A sliding window [t-size, t] closes once the watermark passes t + grace."""
    job, _ = windowed_count(sliding(10, grace=0))
    driver = TestDriver(job)
    await pipe(driver, [("a", 1), ("a", 5), ("a", 5), ("a", 20)])
    assert [("a", -9, 1, 1), ("a", -5, 5, 3)] == results(driver)


async def test_session_windows_merge_when_an_event_bridges_them() -> None:
    """gap 5: [1,1] and [10,10], then 5 bridges both into [1,10] with
    count 3; .current() reports the merged-away sessions with None."""
    job, _ = windowed_count(session(5, grace=10), final=False)
    driver = TestDriver(job)
    await pipe(driver, [("a", 1), ("a", 10), ("a", 5)])
    out = [
        (r.key, r.headers["hw.window.start"], r.headers["hw.window.end"], r.value)
        for r in driver.output("out")
    ]
    assert [
        (b"a", b"1.0", b"1.0", b"1"),
        (b"a", b"10.0", b"10.0", b"1"),
        (b"a", b"1.0", b"1.0", None),
        (b"a", b"10.0", b"10.0", None),
        (b"a", b"1.0", b"10.0", b"3"),
    ] == out
    assert {Windowed("a", 1.0, 10.0): 3} == driver.table("win")


async def test_session_final_closes_after_gap_and_grace() -> None:
    """A session [1,3] with gap 5, grace 2 closes when the watermark passes 10."""
    job, _ = windowed_count(session(5, grace=2))
    driver = TestDriver(job)
    await pipe(driver, [("a", 1), ("a", 3), ("b", 10)])
    assert [] == results(driver)
    await pipe(driver, [("b", 10.5)])
    assert [("a", 1, 3, 2)] == results(driver)


async def test_session_aggregate_needs_merge() -> None:
    """aggregate over session windows without merge= is refused when built."""
    job = Job("w")
    with pytest.raises(PipelineError, match="merge="):
        job.stream("in").window(session(5, grace=0)).aggregate(0, lambda a, v: a + 1)
    table = (
        job.stream("in2")
        .window(session(5, grace=0))
        .aggregate(0, lambda a, v: a + len(v), merge=lambda a, b: a + b)
    )
    assert table.name == "session-aggregate-0"


async def test_wall_clock_close_of_an_idle_partition(autojump_clock: trio.abc.Clock) -> None:
    """With wall_clock=True a window closes as wall time passes with no
    further events; without it, it waits for event time."""
    results_by: dict[bool, list[Any]] = {}
    for wall in (True, False):
        job, _ = windowed_count(tumbling(60, grace=5, wall_clock=wall))
        driver = TestDriver(job)
        start = trio.current_time()
        await driver.pipe("in", b"x", key="a", timestamp=start)
        window_end = (start // 60 + 1) * 60
        await driver.advance(window_end + 5 - start - 1)
        before = list(driver.output("out"))
        await driver.advance(2)
        results_by[wall] = [before, driver.output("out")]
    assert [] == results_by[True][0]
    assert [b"1"] == [r.value for r in results_by[True][1]]
    assert [[], []] == results_by[False]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: tumbling(0, grace=0), "size must be a finite number"),
        (lambda: tumbling(10), "explicit grace"),
        (lambda: tumbling(10, grace=-1), "grace must be"),
        (lambda: hopping(10, 20, grace=0), "advance must be <= size"),
        (lambda: hopping(10, 3, grace=0), "whole multiple"),
        (lambda: sliding(float("inf"), grace=0), "finite"),
        (lambda: session(-1, grace=0), "gap must be"),
        (lambda: Job("w").stream("in").window("1m"), "window\\(\\) takes"),  # type: ignore[arg-type]
    ],
)
def test_misconfigured_windows_are_refused_when_built(make: Any, match: str) -> None:
    """Each bad window raises PipelineError naming what to fix."""
    with pytest.raises(PipelineError, match=match):
        make()


async def test_out_of_order_events_in_an_open_window_count_even_without_grace() -> None:
    """grace=0 still counts an earlier event whose window is open (5, 7,
    then 3 all in [0,10)); only events whose windows have closed are late."""
    job, _ = windowed_count(tumbling(10, grace=0))
    driver = TestDriver(job)
    await pipe(driver, [("a", 5), ("a", 7), ("a", 3), ("a", 10), ("a", 4)])
    assert [("a", 0, 10, 3)] == results(driver)
    assert 1 == len(driver.output("w-win-late"))


async def test_hopping_counts_a_late_event_in_its_windows_still_open() -> None:
    """size 10 every 5, grace 0: at watermark 12 an event at 8 misses the
    closed [0,10) but counts in the open [5,15); at 16 an event at 9 has no
    open window left and is late."""
    job, _ = windowed_count(hopping(10, 5, grace=0))
    driver = TestDriver(job)
    await pipe(driver, [("a", 7), ("a", 12), ("a", 8), ("a", 16), ("a", 9)])
    assert [("a", 0, 10, 1), ("a", 5, 15, 3)] == results(driver)
    assert 1 == len(driver.output("w-win-late"))


@given(
    evs=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 60)), max_size=50),
    hop=st.booleans(),
    grace=st.integers(0, 8),
)
def test_tumbling_and_hopping_finals_equal_a_direct_computation(
    evs: list[tuple[str, int]], hop: bool, grace: int
) -> None:
    """For random out-of-order events, the final counts and the late events
    are what the rules compute directly."""
    spec = hopping(10, 5, grace=grace) if hop else tumbling(10, grace=grace)
    wm = -float("inf")
    counts: dict[tuple[str, float, float], int] = {}
    late = 0
    for key, t in evs:
        open_windows = [w for w in spec.windows_for(t) if w[1] + grace > wm]
        if not open_windows:
            late += 1
        for start, end in open_windows:
            counts[(key, start, end)] = counts.get((key, start, end), 0) + 1
        wm = max(wm, t)

    async def run() -> tuple[list[tuple[str, float, float, int]], int]:
        job, _ = windowed_count(spec)
        driver = TestDriver(job)
        await pipe(driver, [*evs, ("flush", 1000)])
        got = [r for r in results(driver) if r[0] != "flush"]
        return sorted(got), len(driver.output("w-win-late"))

    expected = sorted((k, s, e, n) for (k, s, e), n in counts.items())
    assert (expected, late) == trio.run(run)
