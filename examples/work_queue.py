"""Work queue: a share subscription dealing jobs to a pool of workers.

Run it with ``python examples/work_queue.py [DATA_DIR]`` (default: a fresh
temporary directory). It

1. opens a broker and creates the topic ``jobs`` with 2 partitions,
2. produces 400 jobs; every 50th is "poison" (it always fails),
3. runs 4 workers on the share subscription ``resize`` (more workers than
   partitions: each job goes to whichever worker is free),
4. each worker acks a job it finished and nacks one that failed; the broker
   redelivers a nacked job after the backoff (0.05 s, then 0.1 s) and, after
   ``max_deliveries=3`` tries, moves it to the dead-letter topic
   ``jobs.resize.dlq`` with ``hw.dlq.*`` headers saying where it came from,
5. prints what each worker did, the dead letters, and the subscription's
   counts (what ``headwater groups describe resize`` shows).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
from collections import Counter
from typing import Any

import trio

try:
    import headwater
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    import headwater

from headwater.broker import open_broker

JOBS = 400


async def main(data_dir: str) -> None:
    async with open_broker(data_dir) as broker, broker.connect() as client:
        await client.create_topic("jobs", partitions=2)
        async with client.producer() as producer:
            await producer.send_many(
                "jobs", [({"job": i, "poison": i % 50 == 7}, f"job-{i}") for i in range(JOBS)]
            )

        done: Counter[str] = Counter()
        finished = trio.Event()

        async def worker(name: str) -> None:
            async with client.subscribe(
                "jobs", "resize", max_unacked=10, max_deliveries=3, backoff=[0.05, 0.1]
            ) as jobs:
                while not finished.is_set():
                    for job in await jobs.getmany(10, timeout=0.2):
                        if job.value["poison"]:
                            await jobs.nack(job, error=f"cannot resize job {job.value['job']}")
                        else:
                            await trio.sleep(0.001)  # the work
                            await jobs.ack(job)
                            done[name] += 1

        async def watch() -> None:
            while True:
                await trio.sleep(0.2)
                d = await client.describe_group("resize")
                settled = sum(p.acked + p.dead_lettered for p in d.partitions)
                if settled == JOBS:
                    finished.set()
                    return

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for n in ("w1", "w2", "w3", "w4"):
                    nursery.start_soon(worker, n)
                nursery.start_soon(watch)

        print("jobs done per worker:", dict(sorted(done.items())))
        async with client.consumer("jobs.resize.dlq") as dlq:
            dead: list[Any] = await dlq.getmany(100, timeout=1.0)
        for event in dead:
            h = {k: v.decode() for k, v in event.headers}
            print(
                f"dead letter: job {event.value['job']} from {h['hw.dlq.topic']}/"
                f"{h['hw.dlq.partition']}@{h['hw.dlq.offset']} after "
                f"{h['hw.dlq.delivery_count']} deliveries: {h['hw.dlq.error']}"
            )
        d = await client.describe_group("resize")
        print(
            f"subscription {d.name} ({d.mode}) of {d.topic}: "
            f"acked {sum(p.acked for p in d.partitions)}, "
            f"redelivered {sum(p.redelivered for p in d.partitions)}, "
            f"dead-lettered {sum(p.dead_lettered for p in d.partitions)}, "
            f"backlog {sum(p.backlog for p in d.partitions)}"
        )
        assert sum(done.values()) == JOBS - len(dead) == JOBS - JOBS // 50


if __name__ == "__main__":
    if len(sys.argv) > 1:
        trio.run(main, sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            trio.run(main, str(pathlib.Path(tmp) / "data"))
    print("headwater", headwater.__version__, "- work queue done")
