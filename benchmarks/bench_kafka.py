"""Kafka clients against Headwater's Kafka port, beside Headwater's own client.

One real ``headwater serve --kafka-port`` process (durability ``always``).
In each round, interleaved: Headwater's TCP client (``send_many``, then one
consumer), then kafka-python, aiokafka and confluent-kafka (librdkafka), each
producing N events of 100 B with ``acks=all`` and idempotence (timed until
every event is acknowledged) and consuming them back from the start with a
hand-assigned consumer. Figures are medians over rounds;
``ratio_vs_headwater_protocol`` is each Kafka client's rate over the
Headwater client's rate in the same round.

Transactions: librdkafka producing the same N events idempotently and
transactionally (1,000 and 100 events per transaction), alternated per round
on the same server; ``ratio_vs_idempotent`` is the transactional rate over
the idempotent one in the same round, with ``commit_transaction`` latency
p50/p99.

It also measures the edge translation (DECISIONS #14) in process: µs per
event to turn a Kafka RecordBatch v2 into the stored CBOR batch (produce
path) and a stored batch back into a RecordBatch v2 (fetch path), for
1,000-event batches.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import trio

from headwater.bench._local import throughput
from headwater.client._tcp import connect
from headwater.testing._process import server_process

HERE = pathlib.Path(__file__).resolve().parent
CLIENTS = ["kafka-python", "aiokafka", "confluent-kafka"]


def _fig(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"bench": "kafka", "case": case, "metric": metric, "value": value, "unit": unit}


def _create(bootstrap: str, topic: str) -> None:
    from kafka.admin import NewTopic

    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()


def kafka_python(bootstrap: str, topic: str, values: list[bytes]) -> tuple[float, float]:
    """(produce seconds, consume seconds) with kafka-python."""
    import kafka

    producer = kafka.KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    start = time.perf_counter()
    for v in values:
        producer.send(topic, v)
    producer.flush()
    produce = time.perf_counter() - start
    producer.close()
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    consumer.assign([kafka.TopicPartition(topic, 0)])
    got = 0
    start = time.perf_counter()
    while got < len(values):
        got += sum(len(r) for r in consumer.poll(1000, max_records=100_000).values())
    consume = time.perf_counter() - start
    consumer.close()
    return produce, consume


def aiokafka_client(bootstrap: str, topic: str, values: list[bytes]) -> tuple[float, float]:
    """(produce seconds, consume seconds) with aiokafka."""
    import aiokafka

    async def run() -> tuple[float, float]:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        start = time.perf_counter()
        futures = [await producer.send(topic, v) for v in values]
        await asyncio.gather(*futures)
        produce = time.perf_counter() - start
        await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        consumer.assign([aiokafka.TopicPartition(topic, 0)])
        consumer.seek(aiokafka.TopicPartition(topic, 0), 0)
        got = 0
        start = time.perf_counter()
        while got < len(values):
            batch = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            got += sum(len(r) for r in batch.values())
        consume = time.perf_counter() - start
        await consumer.stop()
        return produce, consume

    return asyncio.run(run())


def confluent(bootstrap: str, topic: str, values: list[bytes]) -> tuple[float, float]:
    """(produce seconds, consume seconds) with confluent-kafka (librdkafka)."""
    import confluent_kafka as ck

    producer = ck.Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    start = time.perf_counter()
    for v in values:
        producer.produce(topic, v)
        producer.poll(0)
    producer.flush(60)
    produce = time.perf_counter() - start
    consumer = ck.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False}
    )
    consumer.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])
    got = 0
    start = time.perf_counter()
    while got < len(values):
        got += len(consumer.consume(10_000, 1.0))
    consume = time.perf_counter() - start
    consumer.close()
    return produce, consume


DRIVERS = {"kafka-python": kafka_python, "aiokafka": aiokafka_client, "confluent-kafka": confluent}


def confluent_produce(
    bootstrap: str, topic: str, values: list[bytes], per_txn: int = 0
) -> tuple[float, list[float]]:
    """(seconds until every event is acknowledged, commit latencies) for a
    librdkafka producer: idempotent (``per_txn=0``) or transactional with
    ``per_txn`` events per transaction (each ``commit_transaction`` waits
    for its events and the commit; its latency is timed)."""
    import confluent_kafka as ck

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "queue.buffering.max.messages": 1_000_000,
    }
    if per_txn:
        conf["transactional.id"] = f"bench-{topic}"
    producer = ck.Producer(conf)
    commits: list[float] = []
    # Warm up (connections, metadata, producer id) outside the timed part:
    # one event, acknowledged (in a transaction of its own when transactional).
    if per_txn:
        producer.init_transactions(30)
        producer.begin_transaction()
    producer.produce(topic, b"warm-up", partition=0)
    if per_txn:
        producer.commit_transaction(30)
    producer.flush(30)
    start = time.perf_counter()
    if not per_txn:
        for v in values:
            producer.produce(topic, v, partition=0)
            producer.poll(0)
        producer.flush(60)
    else:
        for first in range(0, len(values), per_txn):
            producer.begin_transaction()
            for v in values[first : first + per_txn]:
                producer.produce(topic, v, partition=0)
                producer.poll(0)
            began = time.perf_counter()
            producer.commit_transaction(60)
            commits.append(time.perf_counter() - began)
    return time.perf_counter() - start, commits


def transactions(bootstrap: str, rounds: int, count: int) -> Iterator[dict[str, Any]]:
    """Transactional vs idempotent librdkafka produce in the same server,
    alternated per round; ratio = transactional rate / idempotent rate."""
    plain: list[float] = []
    txn: dict[int, list[float]] = {100: [], 1000: []}
    commits: dict[int, list[float]] = {100: [], 1000: []}
    for n in range(1, rounds + 1):
        values = [os.urandom(100) for _ in range(count)]
        order = [0, 1000, 100] if n % 2 else [100, 1000, 0]  # alternated
        for per_txn in order:
            topic = f"txn{per_txn}-{n}"
            _create(bootstrap, topic)
            seconds, latencies = confluent_produce(bootstrap, topic, values, per_txn)
            if per_txn:
                txn[per_txn].append(seconds)
                commits[per_txn].extend(latencies)
            else:
                plain.append(seconds)
    case = "produce/100B/always/confluent-kafka"
    # Warmed up, unlike the client matrix's figure of the same client.
    rate = statistics.median(count / s for s in plain)
    yield _fig(f"{case}/idempotent", "events_per_s", rate, "events/s")
    for per_txn, runs in txn.items():
        tcase = f"{case}/txn{per_txn}"
        yield _fig(tcase, "events_per_s", statistics.median(count / s for s in runs), "events/s")
        ratio = statistics.median(p / t for p, t in zip(plain, runs, strict=True))
        yield _fig(tcase, "ratio_vs_idempotent", ratio, "x")
        ordered = sorted(commits[per_txn])
        for q in (50, 99):
            at = ordered[min(len(ordered) - 1, len(ordered) * q // 100)]
            yield _fig(tcase, f"commit_p{q}_ms", at * 1000, "ms")


def translation(count: int = 1000, size: int = 100) -> tuple[float, float]:
    """µs per event (best of 30: the machine is shared) to turn a Kafka batch
    into a stored record, and a stored record into a Kafka batch."""
    from headwater.journal._record import patch_record
    from headwater.kafka import batch_to_record, decode_batches, encode_batch, records_to_kafka

    rows = [(1_700_000_000_000 + i, None, os.urandom(size), ()) for i in range(count)]
    wire = encode_batch(0, rows)
    stored = bytes(patch_record(batch_to_record(decode_batches(wire)[0]), 0, 0))

    def best(step: Any) -> float:
        times = []
        for _ in range(30):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return min(times) / count * 1e6

    inbound = best(lambda: batch_to_record(decode_batches(wire)[0]))
    outbound = best(lambda: records_to_kafka(stored, topic="t", partition=0))
    return inbound, outbound


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield events/s per client and the ratios to Headwater's own client."""
    import logging

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    inbound, outbound = translation()
    yield _fig("translate/100B/kafka_to_stored", "us_per_event", inbound, "us")
    yield _fig("translate/100B/stored_to_kafka", "us_per_event", outbound, "us")
    rounds = 2 if quick else 5
    count = 20_000 if quick else 200_000
    base = tempfile.mkdtemp(prefix="hw-bench-kafka-", dir=str(HERE.parent))
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in ["headwater", *CLIENTS]}
    try:
        with server_process(os.path.join(base, "data"), "--kafka-port", "0") as proc:
            bootstrap = f"127.0.0.1:{proc.kafka_port}"
            for n in range(1, rounds + 1):
                values = [os.urandom(100) for _ in range(count)]
                results["headwater"].append(
                    trio.run(throughput, lambda: connect(proc.url), values, f"hw{n}")
                )
                for kind in CLIENTS:
                    topic = f"{kind}-{n}"
                    _create(bootstrap, topic)
                    results[kind].append(DRIVERS[kind](bootstrap, topic, values))
            figures = list(transactions(bootstrap, rounds, count))
            try:
                proc.stop(signal.SIGTERM)
            except subprocess.TimeoutExpired:
                proc.proc.kill()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for kind, runs in results.items():
        for i, phase in enumerate(("produce", "consume")):
            rate = statistics.median(count / r[i] for r in runs)
            case = f"{phase}/100B/{'always/' if phase == 'produce' else ''}{kind}"
            yield _fig(case, "events_per_s", rate, "events/s")
            if kind != "headwater":
                ratio = statistics.median(
                    hw[i] / r[i] for r, hw in zip(runs, results["headwater"], strict=True)
                )
                yield _fig(case, "ratio_vs_headwater_protocol", ratio, "x")
    yield from figures


if __name__ == "__main__":
    import json

    for figure in run(quick="--quick" in sys.argv):
        print(json.dumps(figure))
