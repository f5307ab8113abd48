"""Client-side cost per event: Producer.send_many and Consumer.getmany against a
minimal in-process handler that stores records and answers fetches (no broker,
no journal), so the figures are the client's own work (serialize, partition,
accumulate, encode; fetch, split, decode, deserialize)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import trio

from headwater import _protocol as p
from headwater.client import Client, LocalChannel
from headwater.journal._record import patch_record


class _Sink:
    """Stores produced records per partition; serves them to fetches."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.records: dict[int, list[bytes]] = {i: [] for i in range(partitions)}
        self.next: dict[int, int] = dict.fromkeys(range(partitions), 0)
        self.starts: dict[int, list[int]] = {i: [] for i in range(partitions)}

    async def handle(self, r: Any) -> Any:
        if isinstance(r, p.DescribeTopic):
            info = p.TopicInfo(r.name, self.partitions, None, None, False, "never")
            return p.TopicDescription(info, ())
        if isinstance(r, p.InitProducer):
            return p.ProducerIdentity(1, 0)
        if isinstance(r, p.Produce):
            base = self.next[r.partition]
            count = int.from_bytes(r.record[20:24], "big")
            self.records[r.partition].append(bytes(patch_record(r.record, base, 0)))
            self.starts[r.partition].append(base)
            self.next[r.partition] = base + count
            return p.ProduceResult(r.topic, r.partition, base, 0)
        if isinstance(r, p.ListOffset):
            return p.OffsetResult(r.topic, r.partition, 0)
        if isinstance(r, p.Fetch):
            starts = self.starts[r.partition]
            recs = self.records[r.partition]
            i = 0
            while i + 1 < len(starts) and starts[i + 1] <= r.offset:
                i += 1
            out = bytearray()
            for rec in recs[i:]:
                if out and len(out) + len(rec) > r.max_bytes:
                    break
                out += rec
            if not out or r.offset >= self.next[r.partition]:
                await trio.sleep(r.max_wait)
                out = bytearray()
            return p.FetchResult(r.topic, r.partition, bytes(out), self.next[r.partition], 0)
        raise AssertionError(r)


def _case(n: int, size: int, serializer: str) -> list[dict[str, Any]]:
    sink = _Sink(3)
    if serializer == "bytes":
        values: list[Any] = [b"x" * size for _ in range(n)]
    else:
        values = [{"id": i, "pad": "x" * (size - 20)} for i in range(n)]
    items = [(v, f"user-{i % 1000}") for i, v in enumerate(values)]
    figures: dict[str, float] = {}

    async def main() -> None:
        async with Client(LocalChannel(sink.handle)) as client:
            async with client.producer(serializer=serializer) as producer:
                t0 = time.perf_counter()
                await producer.send_many("bench", items)
                figures["produce"] = n / (time.perf_counter() - t0)
            async with client.consumer("bench", deserializer=serializer, max_wait=0.01) as c:
                got = 0
                t0 = time.perf_counter()
                while got < n:
                    got += len(await c.getmany(10_000, timeout=1))
                figures["consume"] = n / (time.perf_counter() - t0)

    trio.run(main)
    case = f"{size}B_{serializer}"
    return [
        {
            "bench": "client",
            "case": case,
            "metric": f"{k}_events_per_s",
            "value": round(v),
            "unit": "events/s",
        }
        for k, v in figures.items()
    ]


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Producer and consumer events/s for 100 B and 1 KiB events, raw bytes and CBOR."""
    n = 20_000 if quick else 100_000
    for size in (100, 1024):
        for serializer in ("bytes", "cbor"):
            yield from _case(n, size, serializer)
