"""Exactly-once read-process-write against a real server, with SIGKILL.

A worker process (tests/crash/txn_worker.py) consumes ``in`` in a group,
writes every value to ``out-a`` and ``out-b`` and commits its input offsets
in the same transaction. Round after round the worker is killed with
SIGKILL at a random moment (mid-transaction, mid-commit or idle), every
other round the server too, and a new worker with the same transactional id
takes over (fencing the dead one's transaction); one round runs two workers
at once (the older one is fenced when it next writes; whether it gets work
before the round ends depends on the group's assignment, so fencing itself
is asserted in tests/broker/test_transactions*.py). At the end the
read_committed outputs hold every input exactly once, nothing missing,
nothing duplicated.

Reduced size by default; ``HEADWATER_TXN_EVENTS`` and ``HEADWATER_TXN_ROUNDS``
set the issue's soak (100000 events, 20 rounds).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio

import headwater

from .server_proc import env, server

pytestmark = pytest.mark.crash

EVENTS = int(os.environ.get("HEADWATER_TXN_EVENTS", "3000"))
ROUNDS = int(os.environ.get("HEADWATER_TXN_ROUNDS", "4"))
EXTRA = 200
WORKER = Path(__file__).with_name("txn_worker.py")


def start_worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(WORKER), url, "copier-0"], stdout=out, stderr=out, env=env()
        )


async def wait_ready(log: Path, count: int) -> None:
    """Wait (at most 20 s) until ``count`` workers in all have said
    ``worker_ready``, so that a kill lands while a worker works rather than
    while it is still importing (on a loaded machine that takes seconds)."""
    with trio.move_on_after(20):
        # Polling another process's output: no event to wait on.
        while (await trio.Path(log).read_text()).count("worker_ready") < count:  # noqa: ASYNC110
            await trio.sleep(0.05)


async def input_done(url: str) -> bool:
    async with headwater.connect(url) as client:
        ends = {p.partition: p.next_offset for p in (await client.describe_topic("in")).partitions}
        try:
            desc = await client.describe_group("copier")
        except headwater.UnknownGroupError:
            return False
        done = {p.partition: p.committed for p in desc.partitions if p.topic == "in"}
        return all(done.get(p) == end for p, end in ends.items())


async def read_committed(url: str, topic: str) -> Counter[int]:
    seen: Counter[int] = Counter()
    async with headwater.connect(url) as client:
        ends = {
            p.partition: p.last_stable_offset
            for p in (await client.describe_topic(topic)).partitions
        }
        async with client.consumer(topic, max_wait=0.05) as consumer:
            while any((consumer.position(topic, p) or 0) < end for p, end in ends.items()):
                for e in await consumer.getmany(timeout=1.0):
                    seen[e.value] += 1
    return seen


async def test_read_process_write_is_exactly_once_through_sigkills(tmp_path: Path) -> None:
    """Inputs' effects in both outputs exactly once after kill -9 of workers
    and server, and with two live workers sharing one transactional id."""
    rng = random.Random(12)
    data = tmp_path / "data"
    log = tmp_path / "workers.log"
    log.write_text("")
    with trio.fail_after(90 + EVENTS / 500 + ROUNDS * 30):
        proc_cm = server(data)
        proc = proc_cm.__enter__()
        try:
            async with headwater.connect(proc.url) as admin:
                await admin.create_topic("in", partitions=2)
                await admin.create_topic("out-a", partitions=2)
                await admin.create_topic("out-b", partitions=1)
                async with admin.producer() as producer:
                    for start in range(0, EVENTS, 1000):
                        await producer.send_many(
                            "in", [(i, str(i)) for i in range(start, min(EVENTS, start + 1000))]
                        )
            started = 0
            for round_ in range(ROUNDS):
                worker = start_worker(proc.url, log)
                started += 1
                await wait_ready(log, started)
                if round_ == 1:
                    # A second live instance: the first one is a zombie now,
                    # fenced at its next transaction (more input makes one).
                    await trio.sleep(1.0)
                    second = start_worker(proc.url, log)
                    started += 1
                    await wait_ready(log, started)
                    await trio.sleep(2.0)
                    async with (
                        headwater.connect(proc.url) as client,
                        client.producer() as producer,
                    ):
                        await producer.send_many(
                            "in", [(i, str(i)) for i in range(EVENTS, EVENTS + EXTRA)]
                        )
                    for _ in range(200):
                        if worker.poll() is not None:
                            break
                        await trio.sleep(0.1)
                    worker.kill()
                    worker.wait()
                    worker = second
                await trio.sleep(rng.uniform(0.5, 2.0))
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                if round_ % 2 == 1:
                    proc.stop(signal.SIGKILL)
                    proc_cm.__exit__(None, None, None)
                    proc_cm = server(data, log_name=f"server{round_}.log")
                    proc = proc_cm.__enter__()
            worker = start_worker(proc.url, log)
            try:
                # Polling another process's progress: no event to wait on.
                while not await input_done(proc.url):  # noqa: ASYNC110
                    await trio.sleep(0.2)
            finally:
                worker.send_signal(signal.SIGKILL)
                worker.wait()
            a = await read_committed(proc.url, "out-a")
            b = await read_committed(proc.url, "out-b")
        finally:
            proc_cm.__exit__(None, None, None)
    expected = Counter(range(EVENTS + EXTRA))
    assert [] == sorted(v for v, n in (a - expected).items())  # nothing duplicated
    assert [] == sorted(expected - a)  # nothing missing
    assert expected == b
