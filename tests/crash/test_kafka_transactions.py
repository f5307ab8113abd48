"""Kafka clients' transactional APIs against a real `headwater serve
--kafka-port`: confluent-kafka (librdkafka), aiokafka and kafka-python
transactional producers committing and aborting transactions over two topics
with consumer offsets; read_committed consumers seeing exactly the committed
events; zombie fencing of two producers with one transactional.id; and the
one transactional-id namespace and isolation shared with Headwater's own
producer and `headwater consume`. Real clock and sockets, every wait bounded.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiokafka
import confluent_kafka as ck
import pytest
import trio

import headwater
import kafka

from . import kafka_clients as kc
from .server_proc import ServerProcess, hw, server

pytestmark = pytest.mark.crash


@pytest.fixture(autouse=True)
def _collect_leaked_client_sockets() -> Iterator[None]:
    """kafka-python leaves sockets of failed connects to the garbage collector."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("kafka-txn") / "data"
    with server(data, "--kafka-port", "0") as proc:
        yield proc


def read_values(
    kind: str, bootstrap: str, topic: str, isolation: str, expect: int, *, quiet: float = 1.0
) -> list[bytes]:
    """Every value of partition 0 from the start: read until ``expect``
    values came, then ``quiet`` more seconds to catch any extra one (bounded
    at 20 s)."""
    deadline = time.monotonic() + 20
    out: list[bytes] = []
    if kind == "confluent-kafka":
        consumer = ck.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "reader",
                "enable.auto.commit": False,
                "isolation.level": isolation,
            }
        )
        consumer.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])
        last = time.monotonic()
        try:
            while time.monotonic() < deadline and (
                len(out) < expect or time.monotonic() - last < quiet
            ):
                msg = consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                out.append(msg.value())
                last = time.monotonic()
        finally:
            consumer.close()
        return out
    if kind == "aiokafka":

        async def run() -> list[bytes]:
            consumer = aiokafka.AIOKafkaConsumer(
                bootstrap_servers=bootstrap,
                auto_offset_reset="earliest",
                isolation_level=isolation,
            )
            await consumer.start()
            try:
                consumer.assign([aiokafka.TopicPartition(topic, 0)])
                last = time.monotonic()
                while time.monotonic() < deadline and (
                    len(out) < expect or time.monotonic() - last < quiet
                ):
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        out.extend(r.value for r in records)
                        last = time.monotonic()
            finally:
                await consumer.stop()
            return out

        return asyncio.run(asyncio.wait_for(run(), 40))
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level=isolation
    )
    try:
        consumer.assign([kafka.TopicPartition(topic, 0)])
        last = time.monotonic()
        while time.monotonic() < deadline and (
            len(out) < expect or time.monotonic() - last < quiet
        ):
            for records in consumer.poll(200).values():
                out.extend(r.value for r in records)
                last = time.monotonic()
    finally:
        consumer.close()
    return out


def committed_offset(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offset of ``topic``/0, asked as a read_committed
    librdkafka consumer does (OffsetFetch v7 with require_stable)."""
    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        (tp,) = consumer.committed([ck.TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def confluent_read_process_write(bootstrap: str, tag: str) -> None:
    """Consume 4 events of ``<tag>-in`` in group ``<tag>-g``; per event, one
    transaction writes it to ``<tag>-out1`` and ``<tag>-out2`` with the
    consumer's position; odd events' transactions abort (after their events
    are stored), and the loop moves on without redoing them."""
    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{tag}-g",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    producer = ck.Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"{tag}-tx", "linger.ms": 5}
    )
    try:
        producer.init_transactions(20)
        consumer.subscribe([f"{tag}-in"])
        seen = 0
        deadline = time.monotonic() + 30
        while seen < 4 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            producer.begin_transaction()
            producer.produce(f"{tag}-out1", msg.value(), partition=0)
            producer.produce(f"{tag}-out2", msg.value(), partition=0)
            producer.send_offsets_to_transaction(
                [ck.TopicPartition(f"{tag}-in", 0, msg.offset() + 1)],
                consumer.consumer_group_metadata(),
                10,
            )
            if seen % 2:
                assert 0 == producer.flush(10)  # stored, then aborted
                producer.abort_transaction(10)
            else:
                producer.commit_transaction(10)
            seen += 1
        assert 4 == seen
    finally:
        consumer.close()


def test_confluent_transactions_commit_and_abort_with_offsets(
    kafka_server: ServerProcess,
) -> None:
    """librdkafka's read-process-write loop: two committed transactions (two
    topics and the group's offset each) and two aborted ones. read_committed
    consumers of every client see exactly the committed events in both
    topics; read_uncommitted sees the aborted ones too; the group's committed
    offset is the last committed transaction's."""
    bootstrap = kafka_server.kafka_bootstrap
    for name in ("c-in", "c-out1", "c-out2"):
        kc.create_topic("kafka-python", bootstrap, name, 1)
    kc.produce("kafka-python", bootstrap, "c-in", [(None, b"e%d" % i, [], 0) for i in range(4)])
    confluent_read_process_write(bootstrap, "c")
    for kind in kc.CLIENTS:
        for topic in ("c-out1", "c-out2"):
            got = read_values(kind, bootstrap, topic, "read_committed", 2)
            assert [b"e0", b"e2"] == got, kind
    assert [b"e0", b"e1", b"e2", b"e3"] == read_values(
        "confluent-kafka", bootstrap, "c-out1", "read_uncommitted", 4
    )
    assert 3 == committed_offset(bootstrap, "c-g", "c-in")


def test_aiokafka_transactions_commit_and_abort_with_offsets(
    kafka_server: ServerProcess,
) -> None:
    """aiokafka's consume-transform-produce loop (v0 of every transactional
    API, so TxnOffsetCommit carries no membership): a consumer in group
    ``a-g`` reads two events; a committed transaction writes the first to
    two topics with the group's offset, an aborted one the second. A
    read_committed consumer sees only the committed events; the group's
    offset is the committed transaction's."""
    bootstrap = kafka_server.kafka_bootstrap
    for name in ("a-in", "a-out1", "a-out2"):
        kc.create_topic("kafka-python", bootstrap, name, 1)
    kc.produce("kafka-python", bootstrap, "a-in", [(None, b"kept", [], 0), (None, b"drop", [], 0)])

    async def run() -> None:
        consumer = aiokafka.AIOKafkaConsumer(
            "a-in",
            bootstrap_servers=bootstrap,
            group_id="a-g",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="a-tx")
        await consumer.start()
        await producer.start()
        try:
            msgs: list[Any] = []
            while len(msgs) < 2:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    msgs.extend(records)
            tp = aiokafka.TopicPartition("a-in", 0)
            async with producer.transaction():
                await producer.send("a-out1", msgs[0].value, partition=0)
                await producer.send("a-out2", msgs[0].value, partition=0)
                await producer.send_offsets_to_transaction({tp: msgs[0].offset + 1}, "a-g")
            await producer.begin_transaction()
            await producer.send("a-out1", msgs[1].value, partition=0)
            await producer.send("a-out2", msgs[1].value, partition=0)
            await producer.send_offsets_to_transaction({tp: msgs[1].offset + 1}, "a-g")
            await producer.abort_transaction()
        finally:
            await producer.stop()
            await consumer.stop()

    asyncio.run(asyncio.wait_for(run(), 60))
    for topic in ("a-out1", "a-out2"):
        assert [b"kept"] == read_values("aiokafka", bootstrap, topic, "read_committed", 1)
    assert [b"kept", b"drop"] == read_values("aiokafka", bootstrap, "a-out1", "read_uncommitted", 2)
    assert 1 == committed_offset(bootstrap, "a-g", "a-in")


def test_kafka_python_transactions_commit_and_abort_with_offsets(
    kafka_server: ServerProcess,
) -> None:
    """kafka-python's transactional producer: commit with the group's
    offsets, then abort; read_committed sees only the committed events."""
    bootstrap = kafka_server.kafka_bootstrap
    for name in ("k-in", "k-out1", "k-out2"):
        kc.create_topic("kafka-python", bootstrap, name, 1)
    producer = kafka.KafkaProducer(
        bootstrap_servers=bootstrap, transactional_id="k-tx", max_block_ms=20_000
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send("k-out1", b"kept", partition=0)
        producer.send("k-out2", b"kept", partition=0)
        producer.send_offsets_to_transaction(
            {kafka.TopicPartition("k-in", 0): kafka.OffsetAndMetadata(5, "", -1)}, "k-g"
        )
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send("k-out1", b"dropped", partition=0)
        producer.flush(10)
        producer.abort_transaction()
    finally:
        producer.close(5)
    for topic in ("k-out1", "k-out2"):
        assert [b"kept"] == read_values("kafka-python", bootstrap, topic, "read_committed", 1)
    assert [b"kept", b"dropped"] == read_values(
        "kafka-python", bootstrap, "k-out1", "read_uncommitted", 2
    )
    assert 5 == committed_offset(bootstrap, "k-g", "k-in")


def test_zombie_producer_is_fenced(kafka_server: ServerProcess) -> None:
    """Two librdkafka producers with one transactional.id at once: the
    second's init_transactions aborts what the first left open and fences
    it; the first's commit fails as fenced (fatal); the second commits and
    read_committed sees only its events."""
    bootstrap = kafka_server.kafka_bootstrap
    kc.create_topic("kafka-python", bootstrap, "zombie", 1)
    conf = {"bootstrap.servers": bootstrap, "transactional.id": "zombie-tx"}
    old = ck.Producer(conf)
    old.init_transactions(20)
    old.begin_transaction()
    old.produce("zombie", b"from-old", partition=0)
    assert 0 == old.flush(10)
    new = ck.Producer(conf)
    new.init_transactions(20)
    new.begin_transaction()
    new.produce("zombie", b"from-new", partition=0)
    new.commit_transaction(10)
    with pytest.raises(ck.KafkaException) as info:
        old.commit_transaction(10)
    error = info.value.args[0]
    assert error.fatal(), error
    assert error.code() in (ck.KafkaError._FENCED, ck.KafkaError.PRODUCER_FENCED), error
    assert [b"from-new"] == read_values("confluent-kafka", bootstrap, "zombie", "read_committed", 1)


async def test_one_transactional_id_namespace_across_protocols(
    kafka_server: ServerProcess,
) -> None:
    """A Headwater transactional producer and a Kafka one with the same id
    fence each other, whichever starts second."""
    bootstrap = kafka_server.kafka_bootstrap
    async with headwater.connect(kafka_server.url, connect_timeout=10) as client:
        await client.create_topic("shared-ns")
        async with client.producer(transactional_id="shared-tx", serializer="bytes") as hwp:
            async with hwp.transaction():
                await hwp.send("shared-ns", b"hw-1", partition=0)

            def kafka_takes_over() -> None:
                producer = ck.Producer(
                    {"bootstrap.servers": bootstrap, "transactional.id": "shared-tx"}
                )
                producer.init_transactions(20)
                producer.begin_transaction()
                producer.produce("shared-ns", b"kafka-1", partition=0)
                producer.commit_transaction(10)

            await trio.to_thread.run_sync(kafka_takes_over)
            with pytest.raises(headwater.ProducerFencedError):
                async with hwp.transaction():
                    await hwp.send("shared-ns", b"hw-zombie", partition=0)
        desc = await client.describe_transaction("shared-tx")
        assert "complete_commit" == desc.state
    assert [b"hw-1", b"kafka-1"] == await trio.to_thread.run_sync(
        lambda: read_values("confluent-kafka", bootstrap, "shared-ns", "read_committed", 2)
    )


async def test_cross_protocol_isolation(kafka_server: ServerProcess) -> None:
    """A Kafka transaction's committed events reach `headwater consume`
    (read_committed by default) and its aborted ones do not; a Headwater
    transaction's aborted events are invisible to Kafka read_committed
    consumers of every client (visible to read_uncommitted)."""
    bootstrap = kafka_server.kafka_bootstrap

    def kafka_side() -> None:
        kc.create_topic("kafka-python", bootstrap, "x-kafka", 1)
        producer = ck.Producer({"bootstrap.servers": bootstrap, "transactional.id": "x-tx"})
        producer.init_transactions(20)
        for value, commit in [(b"k-commit-1", True), (b"k-abort", False), (b"k-commit-2", True)]:
            producer.begin_transaction()
            producer.produce("x-kafka", value, partition=0)
            if commit:
                producer.commit_transaction(10)
            else:
                assert 0 == producer.flush(10)
                producer.abort_transaction(10)

    await trio.to_thread.run_sync(kafka_side)
    printed = await trio.to_thread.run_sync(
        lambda: hw(kafka_server.url, "consume", "x-kafka", "--json", "--max", "2")
    )
    assert 0 == printed.returncode, printed.stderr
    assert ["k-commit-1", "k-commit-2"] == [
        json.loads(line)["value"] for line in printed.stdout.splitlines()
    ]
    async with headwater.connect(kafka_server.url, connect_timeout=10) as client:
        await client.create_topic("x-hw")
        async with client.producer(transactional_id="x-hw-tx", serializer="bytes") as producer:
            async with producer.transaction():
                await producer.send("x-hw", b"h-commit-1", partition=0)
            with pytest.raises(KeyError):
                async with producer.transaction():
                    await producer.send("x-hw", b"h-abort", partition=0)
                    raise KeyError("abort")
            async with producer.transaction():
                await producer.send("x-hw", b"h-commit-2", partition=0)
    for kind in kc.CLIENTS:
        got = await trio.to_thread.run_sync(
            lambda kind=kind: read_values(kind, bootstrap, "x-hw", "read_committed", 2)
        )
        assert [b"h-commit-1", b"h-commit-2"] == got, kind
    everything = await trio.to_thread.run_sync(
        lambda: read_values("confluent-kafka", bootstrap, "x-hw", "read_uncommitted", 3)
    )
    assert [b"h-commit-1", b"h-abort", b"h-commit-2"] == everything


async def test_read_committed_consumer_waits_for_pending_transactional_offsets(
    kafka_server: ServerProcess,
) -> None:
    """KIP-447: while a transaction holds a group's offset, a librdkafka
    read_committed consumer joining the group hears UNSTABLE_OFFSET_COMMIT
    (OffsetFetch v7, require_stable) and retries; it starts at the offset
    the transaction committed, never before the commit."""
    bootstrap = kafka_server.kafka_bootstrap
    async with headwater.connect(kafka_server.url, connect_timeout=10) as client:
        await client.create_topic("u-in")
        async with client.producer(serializer="bytes") as plain:
            for i in range(4):
                await plain.send("u-in", b"u%d" % i, partition=0)

        def first_offset() -> tuple[int, float]:
            consumer = ck.Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": "u-g",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                }
            )
            consumer.subscribe(["u-in"])
            deadline = time.monotonic() + 25
            try:
                while time.monotonic() < deadline:
                    msg = consumer.poll(0.2)
                    if msg is not None and msg.error() is None:
                        return msg.offset(), time.monotonic()
            finally:
                consumer.close()
            raise AssertionError("no message within 25 s")

        got: list[tuple[int, float]] = []
        async with (
            client.producer(transactional_id="u-tx") as producer,
            trio.open_nursery() as n,
            producer.transaction(),
        ):
            await producer.send_offsets("u-g", {("u-in", 0): 2})

            async def consume() -> None:
                got.append(await trio.to_thread.run_sync(first_offset))

            n.start_soon(consume)
            await trio.sleep(3)  # the consumer joins and asks meanwhile
            committed_at = time.monotonic()
    ((offset, at),) = got
    assert 2 == offset
    assert at >= committed_at


def test_kill9_with_a_kafka_transaction_open(tmp_path: Path) -> None:
    """kill -9 the server while a librdkafka transaction is open (its events
    stored); after the restart, read_committed readers still see only the
    committed transaction (the open one's batches kept their transactional
    bit through recovery, so they hold the last stable offset), and a new
    instance with the same transactional.id aborts it and commits its own."""
    data = tmp_path / "data"
    with server(data, "--kafka-port", "0") as proc:
        bootstrap = proc.kafka_bootstrap
        kc.create_topic("kafka-python", bootstrap, "k9t", 1)
        conf = {"bootstrap.servers": bootstrap, "transactional.id": "k9-tx"}
        producer = ck.Producer(conf)
        producer.init_transactions(20)
        producer.begin_transaction()
        producer.produce("k9t", b"a1", partition=0)
        producer.produce("k9t", b"a2", partition=0)
        producer.commit_transaction(10)
        producer.begin_transaction()
        producer.produce("k9t", b"open", partition=0)
        assert 0 == producer.flush(10)
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
    with server(data, "--kafka-port", "0", log_name="after.log") as proc:
        bootstrap = proc.kafka_bootstrap
        assert [b"a1", b"a2"] == read_values(
            "confluent-kafka", bootstrap, "k9t", "read_committed", 2
        )
        fresh = ck.Producer({"bootstrap.servers": bootstrap, "transactional.id": "k9-tx"})
        fresh.init_transactions(20)
        fresh.begin_transaction()
        fresh.produce("k9t", b"c1", partition=0)
        fresh.commit_transaction(10)
        assert [b"a1", b"a2", b"c1"] == read_values(
            "confluent-kafka", bootstrap, "k9t", "read_committed", 3
        )
        assert [b"a1", b"a2", b"open", b"c1"] == read_values(
            "confluent-kafka", bootstrap, "k9t", "read_uncommitted", 4
        )
