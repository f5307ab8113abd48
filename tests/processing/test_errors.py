"""Error policies (dead letter, stop), undeserializable events, bad
configurations, and changelog restore, on the TestDriver."""

from __future__ import annotations

from typing import Any

import pytest

from headwater import HeadwaterError, PipelineError, ProcessingError
from headwater.processing import Job, TestDriver, tumbling


def fragile(on_error: Any) -> Job:
    job = Job("f", on_error=on_error)
    job.stream("in", value=int).map(lambda v: 100 // v).to("out")
    return job


async def test_dead_letter_policy_sends_the_event_with_hw_dlq_headers() -> None:
    """The failing event goes to <job>.dlq with its position and the error;
    the job goes on."""
    driver = TestDriver(fragile("dead_letter"))
    await driver.pipe("in", 5, key="a", headers={"trace": b"t1"})
    await driver.pipe("in", 0, key="b", headers={"trace": b"t2"})
    await driver.pipe("in", 50, key="c")
    assert [20, 2] == [v for _k, v in driver.read("out", value=int)]
    (dead,) = driver.dead_letters
    assert (b"b", b"0", "f.dlq") == (dead.key, dead.value, dead.topic)
    assert {
        "trace": b"t2",
        "hw.dlq.topic": b"in",
        "hw.dlq.partition": b"0",
        "hw.dlq.offset": b"1",
        "hw.dlq.delivery_count": b"1",
        "hw.dlq.error": b"ZeroDivisionError: integer division or modulo by zero",
        "hw.dlq.job": b"f",
        "hw.dlq.operator": dead.headers["hw.dlq.operator"],
    } == dict(dead.headers)
    assert dead.headers["hw.dlq.operator"].startswith(b"map(")
    assert "f.dlq" == driver.topology.dead_letter_topic
    (stats,) = driver.statistics().values()
    assert (3, 1, 0, 0) == (stats.processed, stats.dead_letters, stats.late_events, stats.restored)


async def test_stop_policy_raises_processing_error_naming_the_place() -> None:
    """on_error="stop" (the default): ProcessingError with job, operator,
    topic, partition, offset and the cause."""
    driver = TestDriver(fragile("stop"))
    await driver.pipe("in", 5)
    with pytest.raises(ProcessingError) as info:
        await driver.pipe("in", 0)
    err = info.value
    assert ("f", "in", 0, 1) == (err.job, err.topic, err.partition, err.offset)
    assert err.operator.startswith("map(")
    assert isinstance(err.__cause__, ZeroDivisionError)
    assert 'on_error="dead_letter"' in str(err)
    assert isinstance(err, HeadwaterError)


async def test_undeserializable_events_follow_the_policy() -> None:
    """A value the serde cannot read is dead-lettered (or stops the job)."""
    driver = TestDriver(fragile("dead_letter"))
    await driver.pipe("in", b"not a number")
    (dead,) = driver.dead_letters
    assert b"SerializationError" in dead.headers["hw.dlq.error"]
    assert b"stream(in)" == dead.headers["hw.dlq.operator"]
    stop = TestDriver(fragile("stop"))
    with pytest.raises(ProcessingError, match="stream\\(in\\)"):
        await stop.pipe("in", b"\xff")


async def test_an_event_failing_twice_is_dead_lettered_once() -> None:
    """Two failing branches of one event: one dead letter."""
    job = Job("f", on_error="dead_letter")
    s = job.stream("in", value=int)
    s.map(lambda v: 1 // v).to("a")
    s.map(lambda v: 2 // v).to("b")
    driver = TestDriver(job)
    await driver.pipe("in", 0)
    assert 1 == len(driver.dead_letters)


async def test_values_that_cannot_cross_a_repartition_are_dead_lettered() -> None:
    """A value CBOR cannot carry: a dead letter saying what to do."""
    job = Job("f", on_error="dead_letter")
    job.stream("in").map(lambda v: object()).key_by(lambda v: "k").count()
    driver = TestDriver(job)
    await driver.pipe("in", b"x")
    (dead,) = driver.dead_letters
    assert b"CBOR types" in dead.headers["hw.dlq.error"]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Job("bad name"), "job name"),
        (lambda: Job("j", processing="exactly_twice"), "processing must be"),
        (lambda: Job("j", on_error="ignore"), "on_error must be"),
        (lambda: Job("j").stream("in", value=float), "no serde for type float"),
        (lambda: Job("j").stream("in", value="yaml"), "unknown serde"),
        (lambda: Job("j").stream("in").to("bad topic"), "to\\(\\)"),
        (lambda: Job("j").stream("in").map(42), "needs a function"),
        (lambda: Job("j").stream("in").branch(), "at least one"),
        (lambda: Job("j").topology({}), "reads nothing"),
        (lambda: Job("j").stream("in").to("out") or None, None),
    ],
)
def test_bad_configurations_are_refused(build: Any, match: str | None) -> None:
    """Each mistake raises PipelineError (a ConfigError) naming the fix."""
    if match is None:
        build()
        return
    with pytest.raises(PipelineError, match=match):
        build()


def test_duplicate_names_and_missing_partition_counts() -> None:
    """Two stores with one name; a topology without a source's count."""
    job = Job("j")
    s = job.stream("in")
    s.count(name="c")
    with pytest.raises(PipelineError, match="already has an operator named 'c'"):
        s.count(name="c")
    with pytest.raises(PipelineError, match="partition count"):
        job.topology({"other": 1})


async def test_changelog_restore_rebuilds_the_same_state() -> None:
    """Drop every task, rebuild from the changelog: tables and open windows
    are the same, and counting goes on from there."""
    job = Job("r")
    s = job.stream("in", key=str)
    counts = s.count(name="c")
    s.window(tumbling(10, grace=10), name="w").count().final().to("final")
    counts.to_stream().to("out")
    driver = TestDriver(job, {"in": 3})
    for i in range(30):
        await driver.pipe("in", b"x", key=f"k{i % 4}", timestamp=float(i % 7))
    before = (driver.table("c"), driver.table("w"))
    await driver.restart()
    assert before == (driver.table("c"), driver.table("w"))
    restored = sum(s.restored for s in driver.statistics().values())
    assert restored == sum(len(driver.output(t)) for t in ("r-c-changelog", "r-w-changelog"))
    for key in ("k0", "k1", "k2", "k3"):
        await driver.pipe("in", b"x", key=key, timestamp=30.0)
    assert 9 == counts["k0"]
    assert [(b"k0", b"8"), (b"k1", b"8"), (b"k2", b"7"), (b"k3", b"7")] == sorted(
        (r.key, r.value) for r in driver.output("final")
    )


async def test_restore_of_a_session_window_and_the_watermark() -> None:
    """Sessions and the watermark come back: a late event stays late."""
    job = Job("r")
    from headwater.processing import session

    job.stream("in", key=str).window(session(5, grace=0), name="s").count().final().to("o")
    driver = TestDriver(job)
    await driver.pipe("in", b"x", key="a", timestamp=1)
    await driver.pipe("in", b"x", key="a", timestamp=3)
    await driver.pipe("in", b"x", key="b", timestamp=20)
    await driver.restart()
    await driver.pipe("in", b"x", key="a", timestamp=2)  # late: 2 < 20
    assert 1 == len(driver.output("r-s-late"))
    await driver.pipe("in", b"x", key="b", timestamp=22)
    await driver.pipe("in", b"x", key="b", timestamp=40)
    assert [(b"a", b"2"), (b"b", b"2")] == [(r.key, r.value) for r in driver.output("o")]


async def test_an_error_message_that_is_not_utf8_still_dead_letters() -> None:
    """A message with a lone surrogate is written backslash-escaped."""
    job = Job("f", on_error="dead_letter")

    def bad(v: bytes) -> bytes:
        raise ValueError(v.decode("utf-8", "surrogateescape"))

    job.stream("in").map(bad).to("out")
    driver = TestDriver(job)
    await driver.pipe("in", b"\xff")
    (dead,) = driver.dead_letters
    assert b"ValueError: \\udcff" == dead.headers["hw.dlq.error"]
