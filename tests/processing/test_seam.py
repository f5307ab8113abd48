"""The seam: a word count through map/filter/flat_map/group_by/count/to on
the TestDriver, and the Topology the runner sees."""

from __future__ import annotations

import pytest

from headwater import InvalidArgument, NotFoundError, ProcessingError
from headwater.processing import (
    InRecord,
    InternalTopic,
    Job,
    OutRecord,
    TaskId,
    TestDriver,
    tumbling,
)


def word_count() -> Job:
    job = Job("wc")
    (
        job.stream("text", value=str)
        .map(str.lower)
        .flat_map(str.split)
        .filter(lambda w: w != "the")
        .group_by(lambda w: w)
        .count(name="counts")
        .to_stream()
        .to("word-counts")
    )
    return job


async def test_word_count_on_the_driver() -> None:
    """Counts per word, as decimal text keyed by the word; 'the' filtered."""
    driver = TestDriver(word_count(), {"text": 2})
    await driver.pipe("text", "The cat sat", key="a")
    await driver.pipe("text", "the CAT ran", key="b")
    assert [("cat", 1), ("sat", 1), ("cat", 2), ("ran", 1)] == driver.read(
        "word-counts", key=str, value=int
    )
    assert {"cat": 2, "sat": 1, "ran": 1} == driver.table("counts")


def test_topology_names_the_topics_and_tasks() -> None:
    """Sources, internal topics (repartition, compacted changelog), sinks,
    tasks per (sub-topology, partition)."""
    job = word_count()
    assert ("text",) == job.source_topics
    topo = job.topology({"text": 3})
    assert ("text",) == topo.source_topics
    assert (
        InternalTopic("wc-repartition-0-repartition", 3, "repartition", False),
        InternalTopic("wc-counts-changelog", 3, "changelog", True),
    ) == topo.internal_topics
    assert ("text", "wc-repartition-0-repartition") == topo.input_topics
    assert ("word-counts",) == topo.sink_topics
    assert topo.dead_letter_topic is None
    assert TaskId(1, 2) == topo.task_id("wc-repartition-0-repartition", 2)
    assert 6 == len(topo.task_ids())
    assert "wc-counts-changelog" == topo.tables["counts"].changelog_topic


async def test_a_task_by_hand_gives_sink_and_changelog_records() -> None:
    """What the runner does: process, take_output, restore a fresh task."""
    topo = word_count().topology({"text": 1})
    task = topo.task(TaskId(1, 0))
    assert {"wc-counts-changelog": 0} == task.changelog_partitions
    rec = InRecord("wc-repartition-0-repartition", 0, 0, b"cat", b"\x63cat", {"hw.key": b"s"}, 5.0)
    await task.process(rec)
    await task.process(rec)
    out = task.take_output()
    assert [
        OutRecord("word-counts", b"cat", b"1", {}, 5.0, None),
        OutRecord("word-counts", b"cat", b"2", {}, 5.0, None),
    ] == out[:2]
    (changelog,) = out[2:]
    assert ("wc-counts-changelog", 0) == (changelog.topic, changelog.partition)
    fresh = topo.task(TaskId(1, 0))
    fresh.restore("wc-counts-changelog", changelog.key, changelog.value)
    await fresh.process(rec)
    assert b"3" == fresh.take_output()[0].value


async def test_the_seam_refuses_what_a_task_does_not_own() -> None:
    """Unknown topics, partitions and changelogs are typed errors."""
    topo = word_count().topology({"text": 2})
    with pytest.raises(InvalidArgument, match="does not read topic 'nope'"):
        topo.task_id("nope", 0)
    with pytest.raises(InvalidArgument, match="not partition 2"):
        topo.task_id("text", 2)
    task = topo.task(TaskId(0, 0))
    with pytest.raises(InvalidArgument, match="does not read topic"):
        await task.process(InRecord("other", 0, 0, None, b"x"))
    with pytest.raises(InvalidArgument, match="no changelog"):
        task.restore("wc-counts-changelog", b"k", b"v")


async def test_a_failure_during_a_wall_clock_close_stops_the_job(autojump_clock: object) -> None:
    """A function failing on a result emitted by punctuate: ProcessingError
    that says it happened at a wall-clock window close."""
    job = Job("p")
    (
        job.stream("in", key=str)
        .window(tumbling(10, grace=0, wall_clock=True))
        .count()
        .final()
        .map(lambda n: n // 0)
        .to("out")
    )
    driver = TestDriver(job)
    await driver.pipe("in", b"x", key="a", timestamp=1)
    with pytest.raises(ProcessingError, match="wall-clock window close") as info:
        await driver.advance(20)
    assert ("p", "", -1) == (info.value.job, info.value.topic, info.value.offset)


async def test_a_closed_task_no_longer_answers_table_reads() -> None:
    """After close() (partitions moved away), table[key] says the partition
    is held elsewhere; a new task for it answers again."""
    job = Job("c")
    counts = job.stream("in", key=str).count(name="n")
    topo = job.topology({"in": 1})
    task = topo.task(TaskId(0, 0))
    await task.process(InRecord("in", 0, 0, b"k", b"x"))
    assert 1 == counts["k"]
    newer = topo.task(TaskId(0, 0))
    task.close()  # the older task's close leaves the newer task's store
    assert 0 == counts.get("k", 0)
    newer.close()
    newer.close()
    with pytest.raises(NotFoundError, match="held by another copy"):
        counts["k"]
