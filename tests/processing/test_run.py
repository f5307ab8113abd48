"""The runner against an embedded broker (MockClock, simulated disk): a word
count runs exactly once, through a worker crash, a restart that restores
state from the changelog, two copies sharing partitions, a refused twin,
and a missing changelog."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from headwater import ChangelogMissingError, MemberInstanceInUseError
from headwater.broker import Broker, open_broker
from headwater.client import Client
from headwater.journal import SimulatedFileSystem
from headwater.processing import Job
from headwater.processing._runner import JobRunner, RunConfig, open_job_runner

WORDS = ["apple", "pear", "fig", "plum", "kiwi", "lime", "date", "lemon", "melon", "grape"]


def word_count(processing: str = "exactly_once") -> Job:
    """examples/word_count.py's job: lines of `text` -> running counts in
    `word-counts` (key = word, value = decimal text)."""
    job = Job("word-count", processing=processing)  # type: ignore[arg-type]
    (
        job.stream("text", value=str)
        .flat_map(str.split)
        .group_by(lambda word: word)
        .count(name="counts")
        .to_stream()
        .to("word-counts", value=lambda n: str(n).encode())
    )
    return job


def lines(start: int, stop: int) -> list[tuple[str, str]]:
    """(value, key) pairs: line i holds 1 + i % 4 words."""
    return [
        (" ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 4)), f"k{i}")
        for i in range(start, stop)
    ]


def expected_counts(stop: int) -> dict[str, int]:
    """Word counts of lines(0, stop), computed directly."""
    return dict(Counter(w for value, _ in lines(0, stop) for w in value.split()))


@asynccontextmanager
async def broker_and_client() -> AsyncIterator[tuple[Broker, Client]]:
    """An embedded broker on a simulated disk with topic `text` (3 partitions)."""
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        broker.connect() as client,
    ):
        await client.create_topic("text", partitions=3)
        yield broker, client


async def produce(client: Client, start: int, stop: int) -> None:
    async with client.producer(serializer="str") as producer:
        await producer.send_many("text", lines(start, stop))


async def latest_counts(client: Client) -> dict[str, int]:
    """`word-counts` read_committed to its last stable offsets, latest per key."""
    description = await client.describe_topic("word-counts")
    ends = {p.partition: p.last_stable_offset for p in description.partitions}
    latest: dict[str, int] = {}
    async with client.consumer("word-counts", deserializer="bytes", max_wait=0.05) as consumer:
        with trio.fail_after(60):
            while any((consumer.position("word-counts", p) or 0) < e for p, e in ends.items()):
                for event in await consumer.getmany(timeout=0.5):
                    key = event.key.decode() if isinstance(event.key, bytes) else event.key
                    latest[key] = int(event.value)
    return latest


async def caught_up(client: Client, runners: list[JobRunner], group: str = "word-count") -> None:
    """Wait until every runner is ready and the group committed every input
    (source and repartition partitions) to its end."""
    with trio.fail_after(120):
        for runner in runners:
            await runner.ready.wait()
        while True:
            description = await client.describe_group(group)
            parts = [p for p in description.partitions if p.topic != "word-counts"]
            if len(parts) == 6 and all(p.committed == p.end_offset for p in parts):
                return
            await trio.sleep(0.2)


def config(**changes: Any) -> RunConfig:
    """Short timeouts for virtual time."""
    settings: dict[str, Any] = {"session_timeout": 2.0, "poll_timeout": 0.05, "batch_events": 200}
    settings.update(changes)
    return RunConfig(**settings)


async def test_word_count_is_exact_and_state_survives_a_restart(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Counts in `word-counts` equal the direct computation; a second run
    restores the counts from the changelog (restored_records > 0, the
    restore counters move) and keeps counting from there."""
    async with broker_and_client() as (_broker, client):
        await produce(client, 0, 300)
        async with open_job_runner(word_count(), client, config()) as runner:
            await caught_up(client, [runner])
            first = runner.statistics()
        assert expected_counts(300) == await latest_counts(client)
        assert 0 == first.restored_records
        assert 300 <= first.processed
        await produce(client, 300, 500)
        async with open_job_runner(word_count(), client, config()) as runner:
            await caught_up(client, [runner])
            again = runner.statistics()
        assert expected_counts(500) == await latest_counts(client)
        assert len(expected_counts(300)) <= again.restored_records
        assert 3 == again.restores


async def test_a_worker_killed_mid_stream_is_restarted_and_counts_stay_exact(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The job supervisor restarts a crashed worker; its batch in flight is
    aborted, its tasks are rebuilt from the changelog, and the counts are
    exactly the direct ones (no lost or doubled batch)."""
    async with broker_and_client() as (_broker, client):
        await produce(client, 0, 1000)
        async with open_job_runner(word_count(), client, config(batch_events=50)) as runner:
            await runner.ready.wait()
            with trio.fail_after(60):
                while True:  # some counts are committed, and more work is left
                    d = await client.describe_topic("word-count-counts-changelog")
                    if sum(p.last_stable_offset for p in d.partitions) > 100:
                        break
                    await trio.lowlevel.checkpoint()  # sleeping, virtual time lets it finish
            description = await client.describe_group("word-count")
            assert any(p.lag > 0 for p in description.partitions)  # mid-stream
            assert runner.system is not None
            await runner.system.kill("/job/worker")
            await produce(client, 1000, 1200)
            await caught_up(client, [runner])
            stats = runner.statistics()
        assert expected_counts(1200) == await latest_counts(client)
        assert 1 == stats.restarts
        assert 0 < stats.restored_records


async def test_two_copies_share_partitions_and_one_takes_over_when_the_other_leaves(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Instances 0 and 1 split the tasks (each task whole on one copy: the
    range assignor); when instance 1 stops, instance 0 takes over its
    partitions and restores their state; the counts stay exact."""
    async with broker_and_client() as (_broker, client):
        await produce(client, 0, 600)
        async with open_job_runner(word_count(), client, config(instance=0)) as zero:
            async with open_job_runner(word_count(), client, config(instance=1)) as one:
                await caught_up(client, [zero, one])
                await produce(client, 600, 900)
                await caught_up(client, [zero, one])
                a, b = zero.statistics(), one.statistics()
                assert a.tasks
                assert b.tasks
                assert not set(a.tasks) & set(b.tasks)
                assert 6 == len(a.tasks) + len(b.tasks)
                assert not set(a.partitions) & set(b.partitions)
            await produce(client, 900, 1200)
            await caught_up(client, [zero])
            assert 6 == len(zero.statistics().tasks)
            assert a.restored_records < zero.statistics().restored_records
        assert expected_counts(1200) == await latest_counts(client)


async def test_a_second_copy_with_the_same_instance_is_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    """While instance 0 runs, another copy as instance 0 keeps being refused
    and gives up after instance_wait with MemberInstanceInUseError."""
    async with broker_and_client() as (_broker, client):
        await produce(client, 0, 10)
        async with open_job_runner(word_count(), client, config()) as first:
            await first.ready.wait()
            start = trio.current_time()
            with pytest.raises(MemberInstanceInUseError, match=r"instance '0'.*still held"):
                async with open_job_runner(word_count(), client, config(instance_wait=3.0)):
                    await trio.sleep_forever()
            assert 3.0 <= trio.current_time() - start < 4.0
            assert 0 == first.statistics().restarts


async def test_a_lost_changelog_with_committed_offsets_is_a_typed_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Never a silent wipe: the changelog topic deleted after the group
    committed offsets stops the job with ChangelogMissingError."""
    async with broker_and_client() as (_broker, client):
        await produce(client, 0, 50)
        async with open_job_runner(word_count(), client, config()) as runner:
            await caught_up(client, [runner])
        await client.delete_topic("word-count-counts-changelog")
        with pytest.raises(ChangelogMissingError, match="word-count-counts-changelog"):
            async with open_job_runner(word_count(), client, config()):
                await trio.sleep_forever()


async def test_at_least_once_counts_without_failures_are_exact(
    autojump_clock: trio.abc.Clock,
) -> None:
    """at_least_once: plain producer, flush, commit; exact when nothing fails."""
    async with broker_and_client() as (_broker, client):
        await produce(client, 0, 400)
        job = word_count("at_least_once")
        async with open_job_runner(job, client, config()) as runner:
            await caught_up(client, [runner])
        assert expected_counts(400) == await latest_counts(client)
        assert [] == await client.list_transactions()


async def test_an_error_with_on_error_stop_ends_the_job(autojump_clock: trio.abc.Clock) -> None:
    """A function raising with on_error="stop" ends the job with
    ProcessingError naming the event; nothing of its batch is committed."""
    from headwater import ProcessingError

    def explode(line: str) -> list[str]:
        if "boom" in line:
            raise ValueError("no booms")
        return line.split()

    job = Job("boomer")
    job.stream("text", value=str).flat_map(explode).to("words")
    async with broker_and_client() as (_broker, client):
        async with client.producer(serializer="str") as producer:
            await producer.send("text", "fine line", partition=0)
            await producer.send("text", "boom", partition=0)
        with pytest.raises(ProcessingError, match="no booms") as info:
            async with open_job_runner(job, client, config()):
                await trio.sleep_forever()
        assert ("text", 0, 1) == (info.value.topic, info.value.partition, info.value.offset)
        description = await client.describe_group("boomer")
        assert [] == [p for p in description.partitions if p.committed is not None]
        words = await client.describe_topic("words")
        assert {0} == {p.next_offset for p in words.partitions}


async def test_idle_windows_close_on_the_wall_clock(autojump_clock: trio.abc.Clock) -> None:
    """A tumbling count with wall_clock=True: its window closes (final) as
    wall time passes, with no further event on the partition."""
    from headwater.processing import tumbling

    base = 1_000_000.0
    job = Job("pageviews")
    (
        job.stream("text", value=str)
        .group_by(lambda page: page)
        .window(tumbling(10.0, grace=1.0, wall_clock=True))
        .count()
        .final()
        .to("views")
    )
    async with broker_and_client() as (_broker, client):
        async with client.producer(serializer="str", clock=lambda: int(base * 1000)) as producer:
            await producer.send_many("text", [("home", "a"), ("home", "b"), ("cart", "c")])
        wall = config(wall_clock=lambda: base + trio.current_time())
        async with open_job_runner(job, client, wall) as runner:
            await runner.ready.wait()
            got = {}
            async with client.consumer("views", deserializer="bytes") as consumer:
                with trio.fail_after(60):
                    while len(got) < 2:
                        for event in await consumer.getmany(timeout=1.0):
                            got[event.key] = event.value
            assert 1 <= runner.statistics().punctuations
            assert 10.0 <= trio.current_time()  # closed by wall time, not by events
        assert {b"home": b"2", b"cart": b"1"} == got


async def test_tables_get_reads_the_committed_changelog(autojump_clock: trio.abc.Clock) -> None:
    """`headwater tables get`'s reader: the latest committed count of a
    word, from its changelog partition; an unknown key is NotFoundError."""
    from headwater import NotFoundError
    from headwater.processing._cli import table_get

    async with broker_and_client() as (_broker, client):
        await produce(client, 0, 200)
        async with open_job_runner(word_count(), client, config()) as runner:
            await caught_up(client, [runner])
        result = await table_get(client, "word-count", "counts", "apple")
        assert expected_counts(200)["apple"] == result["value"]
        with pytest.raises(NotFoundError, match="banana"):
            await table_get(client, "word-count", "counts", "banana")


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    "name", ["word_count", "page_views", "threshold_alert", "order_enrichment"]
)
async def test_every_example_runs_under_the_runner(
    autojump_clock: trio.abc.Clock, name: str
) -> None:
    """`headwater run examples/NAME.py` finds the module's one Job, and the
    runner starts it: its internal topics exist and it owns every input
    partition."""
    from headwater.processing._cli import load_job

    job = load_job(str(EXAMPLES / f"{name}.py"))
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        broker.connect() as client,
    ):
        for topic in job.source_topics:
            await client.create_topic(topic, partitions=2)
        async with open_job_runner(job, client, config()) as runner:
            with trio.fail_after(30):
                await runner.ready.wait()
            assert runner.topology is not None
            names = {t.name for t in await client.list_topics()}
            assert {t.name for t in runner.topology.internal_topics} <= names
            inputs = set(runner.topology.input_topics)
            assert 2 * len(inputs) == len(runner.statistics().partitions)


async def test_order_enrichment_with_two_copies_joins_on_the_right_copy(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The stream-table join's inputs are co-partitioned (the range assignor
    gives partition p of the table topic and of the re-keyed orders to one
    copy), so every order meets its customer whichever copy holds it."""
    import json

    from headwater.processing._cli import load_job

    async with broker_and_client() as (_broker, client):
        for topic in ("customers", "orders"):
            await client.create_topic(topic, partitions=4)
        customers = {f"c{i}": {"name": f"N{i}", "tier": "gold"} for i in range(20)}
        jobs = [load_job(str(EXAMPLES / "order_enrichment.py")) for _ in range(2)]
        async with (
            open_job_runner(jobs[0], client, config(instance=0)) as zero,
            open_job_runner(jobs[1], client, config(instance=1)) as one,
        ):
            with trio.fail_after(60):
                await zero.ready.wait()
                await one.ready.wait()
                while len(zero.statistics().partitions) != 6:  # noqa: ASYNC110  # rebalance settled
                    await trio.sleep(0.2)
                async with client.producer(serializer="json") as producer:
                    for key, value in customers.items():
                        await producer.send("customers", value, key=key)
                while True:  # both copies hold their share and read the customers
                    d = await client.describe_group("order-enrichment")
                    table = [p for p in d.partitions if p.topic == "customers"]
                    if (
                        zero.statistics().tasks
                        and one.statistics().tasks
                        and len(table) == 4
                        and all(p.lag == 0 for p in table)
                    ):
                        break
                    await trio.sleep(0.2)
            async with client.producer(serializer="json") as producer:
                for i in range(40):
                    await producer.send("orders", {"order": i, "customer": f"c{i % 20}"})
            got: dict[int, Any] = {}
            async with client.consumer("orders-enriched", deserializer="bytes") as consumer:
                with trio.fail_after(60):
                    while len(got) < 40:
                        for event in await consumer.getmany(timeout=1.0):
                            value = json.loads(event.value)
                            got[value["order"]] = value["customer_name"]
        assert {i: f"N{i % 20}" for i in range(40)} == got


async def test_tables_get_reads_a_windowed_table_per_window(
    autojump_clock: trio.abc.Clock,
) -> None:
    """examples/page_views.py's windowed count read from outside: one
    (start, end, count) per open window of the page (the minute that closed
    when event time passed its end + grace is gone from the table)."""
    from headwater.processing._cli import load_job, table_get

    job = load_job(str(EXAMPLES / "page_views.py"))
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        broker.connect() as client,
    ):
        await client.create_topic("page-views", partitions=2)
        async with client.producer(serializer="json") as producer:
            for t, page in [(0, "/home"), (10, "/home"), (30, "/about"), (70, "/home")]:
                await producer.send("page-views", {"page": page}, timestamp=1_000_000 + t * 1000)
        async with open_job_runner(job, client, config()) as runner:
            await runner.ready.wait()
            with trio.fail_after(60):
                while True:
                    d = await client.describe_group("page-views")
                    inputs = [p for p in d.partitions if p.topic != "page-views-per-minute"]
                    if len(inputs) == 4 and all(p.lag == 0 for p in inputs):
                        break
                    await trio.sleep(0.2)
        result = await table_get(client, "page-views", "views", "/home")
    assert [[1020.0, 1080.0, 1]] == result["windows"]
