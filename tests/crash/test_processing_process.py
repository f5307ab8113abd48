"""`headwater run` as real processes against a real `headwater serve`.

The issue's test: examples/word_count.py over a stream of lines run as two
copies (`--instance 0` and `--instance 1`); copy 0 is SIGKILLed mid-stream
and restarted at once (refused while the dead copy's session lasts, then it
takes its partitions back in place and restores their counts from the
changelog); the final counts in `word-counts` (read_committed, latest per
key) equal the counts computed directly, exactly. Then a third process with
a live instance's id is refused, and an embedded `run` stops on Ctrl-C with
exit status 130, releasing its data directory.

Reduced size by default (20,000 lines); ``HEADWATER_PROCESSING_EVENTS=100000``
runs the issue's size.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

import headwater

from .server_proc import ROOT, env, server

pytestmark = pytest.mark.crash

EVENTS = int(os.environ.get("HEADWATER_PROCESSING_EVENTS", "20000"))
EXAMPLE = ROOT / "examples" / "word_count.py"
VOCABULARY = [f"w{i:03d}" for i in range(300)]


def make_lines(n: int) -> list[str]:
    """``n`` lines of 1-6 words from a seeded generator."""
    rng = random.Random(13)
    return [" ".join(rng.choices(VOCABULARY, k=rng.randint(1, 6))) for _ in range(n)]


def start_copy(url: str, instance: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """`headwater run examples/word_count.py --url URL --instance N`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headwater",
                "run",
                str(EXAMPLE),
                "--url",
                url,
                "--instance",
                str(instance),
                "--session-timeout",
                "10",
                "--batch",
                "500",
                "--log-format",
                "json",
                *extra,
            ],
            stdout=out,
            stderr=out,
            env=env(),
        )


def log_events(log: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a copy."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


async def committed_inputs(client: headwater.Client) -> tuple[int, int, bool]:
    """(committed, end) summed over every input partition (source and
    repartition), and whether each is committed to its end."""
    try:
        description = await client.describe_group("word-count")
    except headwater.UnknownGroupError:
        return 0, 1, False
    inputs = [p for p in description.partitions if p.topic != "word-counts"]
    done = len(inputs) == 8 and all(p.committed == p.end_offset for p in inputs)
    return sum(p.committed or 0 for p in inputs), sum(p.end_offset for p in inputs), done


async def changelog_size(client: headwater.Client) -> int:
    """Committed records in the count table's changelog (0 before it exists)."""
    try:
        description = await client.describe_topic("word-count-counts-changelog")
    except headwater.UnknownTopicError:
        return 0
    return sum(p.last_stable_offset for p in description.partitions)


async def latest_counts(client: headwater.Client) -> dict[str, int]:
    """`word-counts` read_committed to its last stable offsets, latest per key."""
    description = await client.describe_topic("word-counts")
    ends = {p.partition: p.last_stable_offset for p in description.partitions}
    latest: dict[str, int] = {}
    async with client.consumer("word-counts", deserializer="bytes", max_wait=0.05) as consumer:
        while any((consumer.position("word-counts", p) or 0) < e for p, e in ends.items()):
            for event in await consumer.getmany(max_events=5000, timeout=1.0):
                latest[event.key.decode()] = int(event.value)
    return latest


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


async def test_word_count_two_copies_one_sigkilled_and_restarted_is_exact(
    tmp_path: Path,
) -> None:
    """The issue's test (see the module docs), plus a refused twin."""
    lines = make_lines(EVENTS)
    expected = dict(Counter(w for line in lines for w in line.split()))
    copies: list[subprocess.Popen[bytes]] = []
    with trio.fail_after(150 + EVENTS / 200), server(tmp_path / "data") as proc:
        try:
            async with headwater.connect(proc.url) as client:
                await client.create_topic("text", partitions=4)
                async with client.producer(serializer="str") as producer:
                    for start in range(0, EVENTS, 5000):
                        await producer.send_many("text", lines[start : start + 5000])
                zero = start_copy(proc.url, 0, tmp_path / "copy0-first.log")
                one = start_copy(proc.url, 1, tmp_path / "copy1.log")
                copies += [zero, one]
                # Polling other processes' progress: no event to wait on.
                # Kill once some counts are committed (so the restarted copy
                # has state to restore) and input is left.
                while await changelog_size(client) < EVENTS // 10:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                zero.send_signal(signal.SIGKILL)
                zero.wait()
                killed_at = time.time()
                at_kill, end, _ = await committed_inputs(client)
                assert at_kill < end  # mid-stream
                zero = start_copy(proc.url, 0, tmp_path / "copy0-restarted.log")
                copies.append(zero)
                while not (await committed_inputs(client))[2]:
                    assert zero.poll() is None, (tmp_path / "copy0-restarted.log").read_text()
                    assert one.poll() is None, (tmp_path / "copy1.log").read_text()
                    await trio.sleep(0.2)
                got = await latest_counts(client)
                description = await client.describe_group("word-count")
                instances = sorted(m.instance_id or "" for m in description.members)

                # A third copy claiming a live instance is refused.
                twin_log = tmp_path / "twin.log"
                twin = start_copy(proc.url, 1, twin_log, "--session-timeout", "1")
                copies.append(twin)
                with trio.fail_after(30):
                    while twin.poll() is None:  # noqa: ASYNC110
                        await trio.sleep(0.1)
        finally:
            for copy in copies:
                stop(copy)
    assert len(expected) == len(got)
    assert expected == got
    assert ["0", "1"] == instances
    restarted = log_events(tmp_path / "copy0-restarted.log")
    restored = [e for e in restarted if e.get("event") == "restore_done"]
    assert sum(e["restored"] for e in restored) > 0  # its counts came back from the changelog
    assert 1 == twin.returncode
    assert "member_instance_in_use" in twin_log.read_text()
    # Restarted well within the dead copy's 10 s session, copy 0 was refused,
    # then took the dead copy's place: no member expired, no rebalance.
    assert any(e.get("event") == "job_instance_in_use" for e in restarted)
    after = [
        e
        for e in log_events(tmp_path / "server.log")
        if e.get("event") in ("group_members_expired", "group_rebalanced")
        and dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp() > killed_at
    ]
    assert [] == after


async def test_embedded_run_says_its_mode_and_ctrl_c_exits_130(tmp_path: Path) -> None:
    """With no URL, `run` opens an embedded broker on --data-dir (locked),
    serves the client protocol on --port, says so; SIGINT stops it with
    status 130 and the directory can be opened again."""
    data = tmp_path / "data"
    log = tmp_path / "run.log"

    def run_embedded(*extra: str) -> subprocess.Popen[bytes]:
        clean = {k: v for k, v in env().items() if k != "HEADWATER_URL"}
        with log.open("ab") as out:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "headwater",
                    "run",
                    str(EXAMPLE),
                    "--data-dir",
                    str(data),
                    "--log-format",
                    "json",
                    *extra,
                ],
                stdout=out,
                stderr=out,
                env=clean,
            )

    job = run_embedded("--port", "0")
    try:
        with trio.fail_after(30):
            while "running job 'word-count'" not in log.read_text():
                assert job.poll() is None, log.read_text()
                await trio.sleep(0.1)
        text = log.read_text()
        assert f"embedded broker on {data}, serving the client protocol on headwater://" in text
        url = text.split("client protocol on ", 1)[1].split()[0]
        async with headwater.connect(url) as client:
            await client.create_topic("text", partitions=2)
            async with client.producer(serializer="str") as producer:
                await producer.send_many("text", ["a b a", "b a"])
            with trio.fail_after(30):
                while True:
                    try:
                        counts = await latest_counts(client)
                    except headwater.UnknownTopicError:
                        counts = {}
                    if counts == {"a": 3, "b": 2}:
                        break
                    await trio.sleep(0.2)
        job.send_signal(signal.SIGINT)
        assert 130 == job.wait(30)
        assert "stopped by SIGINT" in log.read_text()
        again = run_embedded()
        try:
            with trio.fail_after(30):
                while log.read_text().count("running job 'word-count'") < 2:
                    assert again.poll() is None, log.read_text()
                    await trio.sleep(0.1)
            assert 2 == log.read_text().count(f"headwater run: embedded broker on {data}")
            again.send_signal(signal.SIGTERM)
            assert 143 == again.wait(30)
        finally:
            stop(again)
    finally:
        stop(job)
