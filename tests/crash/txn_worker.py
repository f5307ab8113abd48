"""A read-process-write worker for tests/crash/test_transactions_process.py:
consume ``in`` in group ``copier``, write each value to ``out-a`` and
``out-b``, send the offsets, commit; forever (the test kills it). Exits 3
when fenced by a newer instance with the same transactional id."""

from __future__ import annotations

import sys

import trio

import headwater
from headwater import ProducerFencedError


async def main(url: str, transactional_id: str) -> None:
    async with (
        headwater.connect(url) as client,
        client.consumer("in", group="copier", session_timeout=1.0, max_wait=0.05) as consumer,
        client.producer(transactional_id=transactional_id, transaction_timeout=5.0) as producer,
    ):
        await producer.partitions_of("out-a")
        await producer.partitions_of("out-b")
        print("worker_ready", flush=True)
        while True:
            events = await consumer.getmany(max_events=200, timeout=0.2)
            if not events:
                continue
            m = consumer.membership
            assert m is not None
            async with producer.transaction():
                for e in events:
                    producer.send_nowait("out-a", e.value, key=e.key)
                    producer.send_nowait("out-b", e.value, key=e.key)
                offsets = {}
                for e in events:
                    offsets[(e.topic, e.partition)] = e.offset + 1
                await producer.send_offsets(
                    "copier", offsets, generation=m.generation, member_id=m.member_id
                )


if __name__ == "__main__":
    try:
        trio.run(main, sys.argv[1], sys.argv[2])
    except ProducerFencedError:
        sys.exit(3)
