"""A real server with more partitions than its file-descriptor limit allows
open at once: it serves them all (closing idle segment files beyond its cap,
which it fitted to ``RLIMIT_NOFILE`` and said so), and after ``kill -9`` it
recovers every acknowledged event, partitions with closed files included.

Before segment files were capped, every partition held two descriptors
(its active segment and its checkpoint) for good: 400 partitions under a
limit of 300 ran out of descriptors."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

import headwater
from headwater.testing import server_process

pytestmark = pytest.mark.crash

LIMIT = 300
TOPICS = 4
PER_TOPIC = 100  # a consumer holds one subscription per partition, 128 at most
EVENTS = 2
WRAPPER = ["prlimit", f"--nofile={LIMIT}:{LIMIT}"]


async def produce(url: str, first: int) -> None:
    async with headwater.connect(url) as client:
        if first == 0:
            for t in range(TOPICS):
                await client.create_topic(f"wide{t}", partitions=PER_TOPIC)
        async with client.producer(serializer="bytes") as producer:
            for t in range(TOPICS):
                await producer.partitions_of(f"wide{t}")
            for i in range(first, first + EVENTS):
                for t in range(TOPICS):
                    for p in range(PER_TOPIC):
                        producer.send_nowait(f"wide{t}", b"%d-%d-%d" % (t, p, i), partition=p)
            await producer.flush()


async def read_all(url: str, per_partition: int) -> dict[tuple[int, int], list[bytes]]:
    got: dict[tuple[int, int], list[bytes]] = {}
    async with headwater.connect(url) as client:
        for t in range(TOPICS):
            desc = await client.describe_topic(f"wide{t}")
            assert [per_partition] * PER_TOPIC == [p.next_offset for p in desc.partitions]
            async with client.consumer(f"wide{t}", deserializer="bytes") as consumer:
                count = 0
                while count < PER_TOPIC * per_partition:
                    for event in await consumer.getmany(10_000, timeout=5):
                        got.setdefault((t, event.partition), []).append(event.value)
                        count += 1
    return got


def run(fn: Any, *args: Any) -> Any:
    """``trio.run(fn, *args)`` bounded by 120 s of real time."""

    async def bounded() -> Any:
        with trio.fail_after(120):
            return await fn(*args)

    return trio.run(bounded)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_400_partitions_under_a_limit_of_300_descriptors_survive_kill_9(tmp_path: Path) -> None:
    """Serve 400 partitions with RLIMIT_NOFILE=300, kill -9, recover, read
    back every event, write again to partitions whose files were closed."""
    data = tmp_path / "data"
    args = ("--max-connections", "16")
    with server_process(data, *args, log_path=tmp_path / "a.log", wrapper=WRAPPER) as proc:
        run(produce, proc.url, 0)
        assert proc.open_fds() < LIMIT
        low = [e for e in proc.events() if e.get("event") == "fd_limit_low"]
        assert 1 == len(low)
        assert LIMIT == low[0]["rlimit_nofile"]
        assert low[0]["max_open_files"] < LIMIT
        proc.stop(signal.SIGKILL)
    with server_process(data, *args, log_path=tmp_path / "b.log", wrapper=WRAPPER) as proc:
        got = run(read_all, proc.url, EVENTS)
        expected = {
            (t, p): [b"%d-%d-%d" % (t, p, i) for i in range(EVENTS)]
            for t in range(TOPICS)
            for p in range(PER_TOPIC)
        }
        assert expected == got
        run(produce, proc.url, EVENTS)
        got = run(read_all, proc.url, 2 * EVENTS)
        assert [b"3-99-%d" % i for i in range(2 * EVENTS)] == got[(3, 99)]
        assert proc.open_fds() < LIMIT


async def test_writer_thread_and_rolls_under_a_cap_of_one_file(tmp_path: Path) -> None:
    """Real files, durability ``always`` (the journal writer thread): two
    logs share a cap of one open segment file and roll every few records,
    so each append may find its segment closed by the other's. Every record
    is stored once, in order, and reads back after a reopen."""
    from headwater.journal import FileCache, LogConfig, encode_record, iter_records, open_log

    def value(i: int) -> bytes:
        return b"%05d" % i * 20

    config = LogConfig(segment_bytes=2048)
    files = FileCache(1)
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    with trio.fail_after(60):
        async with (
            open_log(paths[0], config=config, files=files) as a,
            open_log(paths[1], config=config, files=files) as b,
        ):
            for i in range(150):
                for log in (a, b):
                    header = await log.append(encode_record(value(i), count=1))
                    assert i == header.base_offset
            assert len(a.log.segments) > 10
            for log in (a, b):
                got = iter_records(await log.read(0, 1 << 30))
                assert [value(i) for i in range(150)] == [bytes(r[62:]) for _, r in got]
            assert files.open_count <= 2
            assert files.evicted > 100
            assert a._threaded  # the writer thread wrote them
        for path in paths:
            async with open_log(path, config=config, files=files) as log:
                got = iter_records(await log.read(0, 1 << 30))
                assert list(range(150)) == [h.base_offset for h, _ in got]
