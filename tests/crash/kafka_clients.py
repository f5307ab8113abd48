"""Thin drivers over the three real Kafka client libraries, so the Kafka
conformance tests run the same scenario with each (blocking calls; the
aiokafka ones run their own asyncio loop)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiokafka
import aiokafka.errors
import confluent_kafka as ck
import kafka.errors
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin import NewTopic as CNewTopic
from kafka.admin import NewTopic

import kafka

CLIENTS = ["kafka-python", "aiokafka", "confluent-kafka"]

#: (partition, offset, timestamp, key, value, headers) of one consumed record.
Row = tuple[int, int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def security(kind: str, *, token: str | None = None, cafile: str | None = None) -> dict[str, Any]:
    """Client settings for SASL PLAIN (any user, the token as the password) and TLS."""
    if token is None and cafile is None:
        return {}
    protocol = {(True, False): "SASL_PLAINTEXT", (False, True): "SSL", (True, True): "SASL_SSL"}[
        (token is not None, cafile is not None)
    ]
    if kind == "confluent-kafka":
        out: dict[str, Any] = {"security.protocol": protocol}
        if token is not None:
            out |= {"sasl.mechanism": "PLAIN", "sasl.username": "me", "sasl.password": token}
        if cafile is not None:
            out |= {"ssl.ca.location": cafile}
        return out
    out = {"security_protocol": protocol}
    if token is not None:
        out |= {
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "me",
            "sasl_plain_password": token,
        }
    if cafile is not None:
        if kind == "aiokafka":
            from aiokafka.helpers import create_ssl_context

            out["ssl_context"] = create_ssl_context(cafile=cafile)
        else:
            out["ssl_cafile"] = cafile
    return out


def create_topic(kind: str, bootstrap: str, name: str, partitions: int, **sec: Any) -> None:
    if kind == "confluent-kafka":
        admin = AdminClient({"bootstrap.servers": bootstrap, **sec})
        for future in admin.create_topics([CNewTopic(name, partitions, 1)]).values():
            future.result(timeout=20)
        return
    if kind == "aiokafka":

        async def run() -> None:
            from aiokafka.admin import AIOKafkaAdminClient
            from aiokafka.admin import NewTopic as ANewTopic

            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **sec)
            await admin.start()
            try:
                await admin.create_topics([ANewTopic(name, partitions, 1)])
            finally:
                await admin.close()

        asyncio.run(run())
        return
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap, **sec)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def list_topics(kind: str, bootstrap: str, **sec: Any) -> set[str]:
    if kind == "confluent-kafka":
        return set(
            AdminClient({"bootstrap.servers": bootstrap, **sec}).list_topics(timeout=10).topics
        )
    if kind == "aiokafka":

        async def run() -> set[str]:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **sec)
            await admin.start()
            try:
                return set(await admin.list_topics())
            finally:
                await admin.close()

        return asyncio.run(run())
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap, **sec)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def delete_topic(kind: str, bootstrap: str, name: str) -> None:
    if kind == "confluent-kafka":
        admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive for the futures
        for future in admin.delete_topics([name]).values():
            future.result(timeout=20)
        return
    if kind == "aiokafka":

        async def run() -> None:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([name])
            finally:
                await admin.close()

        asyncio.run(run())
        return
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([name])
    finally:
        admin.close()


def produce(
    kind: str,
    bootstrap: str,
    topic: str,
    rows: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]],
    *,
    compression: str | None = None,
    **sec: Any,
) -> list[tuple[int, int]]:
    """Send (key, value, headers, timestamp) rows with acks=all and idempotence;
    return each row's (partition, offset) in order."""
    if kind == "confluent-kafka":
        conf = {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": compression or "none",
            **sec,
        }
        producer = ck.Producer(conf)
        out: dict[int, tuple[int, int]] = {}
        for i, (key, value, headers, ts) in enumerate(rows):

            def done(err: Any, msg: Any, i: int = i) -> None:
                assert err is None, err
                out[i] = (msg.partition(), msg.offset())

            producer.produce(topic, value, key, headers=headers, timestamp=ts, on_delivery=done)
        assert 0 == producer.flush(30)
        return [out[i] for i in range(len(rows))]
    if kind == "aiokafka":

        async def run() -> list[tuple[int, int]]:
            producer = aiokafka.AIOKafkaProducer(
                bootstrap_servers=bootstrap,
                acks="all",
                enable_idempotence=True,
                compression_type=compression,
                **sec,
            )
            await producer.start()
            try:
                futures = [
                    await producer.send(topic, value, key=key, headers=headers, timestamp_ms=ts)
                    for key, value, headers, ts in rows
                ]
                metas = [await f for f in futures]
            finally:
                await producer.stop()
            return [(m.partition, m.offset) for m in metas]

        return asyncio.run(run())
    producer = kafka.KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=compression,
        **sec,
    )
    try:
        futures = [
            producer.send(topic, value, key=key, headers=headers, timestamp_ms=ts)
            for key, value, headers, ts in rows
        ]
        producer.flush(30)
        metas = [f.get(30) for f in futures]
    finally:
        producer.close(5)
    return [(m.partition, m.offset) for m in metas]


def consume(
    kind: str,
    bootstrap: str,
    topic: str,
    partitions: int,
    count: int,
    *,
    offsets: dict[int, int] | None = None,
    timeout: float = 20.0,
    **sec: Any,
) -> list[Row]:
    """Read ``count`` records from the partitions (assigned by hand, from the
    given offsets or the earliest)."""
    offsets = offsets or {}
    deadline = time.monotonic() + timeout
    rows: list[Row] = []
    if kind == "confluent-kafka":
        consumer = ck.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "unused",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **sec,
            }
        )
        consumer.assign(
            [
                ck.TopicPartition(topic, p, offsets.get(p, ck.OFFSET_BEGINNING))
                for p in range(partitions)
            ]
        )
        try:
            while len(rows) < count and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                assert msg.error() is None, msg.error()
                rows.append(
                    (
                        msg.partition(),
                        msg.offset(),
                        msg.timestamp()[1],
                        msg.key(),
                        msg.value(),
                        list(msg.headers() or []),
                    )
                )
        finally:
            consumer.close()
        return rows
    if kind == "aiokafka":

        async def run() -> list[Row]:
            consumer = aiokafka.AIOKafkaConsumer(
                bootstrap_servers=bootstrap, auto_offset_reset="earliest", **sec
            )
            await consumer.start()
            try:
                tps = [aiokafka.TopicPartition(topic, p) for p in range(partitions)]
                consumer.assign(tps)
                for tp in tps:
                    if tp.partition in offsets:
                        consumer.seek(tp, offsets[tp.partition])
                while len(rows) < count and time.monotonic() < deadline:
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        rows.extend(
                            (r.partition, r.offset, r.timestamp, r.key, r.value, list(r.headers))
                            for r in records
                        )
            finally:
                await consumer.stop()
            return rows

        return asyncio.run(run())
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", **sec)
    try:
        tps = [kafka.TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            if tp.partition in offsets:
                consumer.seek(tp, offsets[tp.partition])
        while len(rows) < count and time.monotonic() < deadline:
            for records in consumer.poll(500).values():
                rows.extend(
                    (r.partition, r.offset, r.timestamp, r.key, r.value, list(r.headers))
                    for r in records
                )
    finally:
        consumer.close()
    return rows


def offsets_for_time(kind: str, bootstrap: str, topic: str, ts: int) -> int | None:
    """The first offset of partition 0 at or after ``ts`` (None: none is)."""
    if kind == "confluent-kafka":
        consumer = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
        try:
            (tp,) = consumer.offsets_for_times([ck.TopicPartition(topic, 0, ts)], timeout=10)
        finally:
            consumer.close()
        return None if tp.offset < 0 else tp.offset
    if kind == "aiokafka":

        async def run() -> int | None:
            consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap)
            await consumer.start()
            try:
                tp = aiokafka.TopicPartition(topic, 0)
                found = await consumer.offsets_for_times({tp: ts})
            finally:
                await consumer.stop()
            return None if found[tp] is None else found[tp].offset

        return asyncio.run(run())
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tp = kafka.TopicPartition(topic, 0)
        found = consumer.offsets_for_times({tp: ts})
    finally:
        consumer.close()
    return None if found[tp] is None else found[tp].offset


def group_member(
    kind: str,
    bootstrap: str,
    topic: str,
    group: str,
    name: str,
    stop: Any,
    report: dict[str, tuple[int, list[int]]],
) -> None:
    """Consume ``topic`` as a member of ``group`` until ``stop`` is set,
    committing after each batch; ``report[name]`` is (records read, the
    partitions assigned now). Short heartbeats keep rebalances quick."""
    if kind == "confluent-kafka":
        consumer = ck.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 300,
            }
        )
        consumer.subscribe([topic])
        n = 0
        try:
            while not stop.is_set():
                msg = consumer.poll(0.2)
                if msg is not None and msg.error() is None:
                    n += 1
                    try:
                        consumer.commit(msg, asynchronous=False)
                    except ck.KafkaException:
                        pass  # a rebalance took the partition: its new owner commits
                report[name] = (n, sorted(tp.partition for tp in consumer.assignment()))
        finally:
            consumer.close()
        return
    if kind == "aiokafka":

        async def run() -> None:
            consumer = aiokafka.AIOKafkaConsumer(
                topic,
                bootstrap_servers=bootstrap,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                session_timeout_ms=6000,
                heartbeat_interval_ms=300,
            )
            await consumer.start()
            n = 0
            try:
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=200)
                    n += sum(len(r) for r in batch.values())
                    if batch:
                        try:
                            await consumer.commit()
                        except aiokafka.errors.CommitFailedError:
                            pass  # a rebalance took the partition: its new owner commits
                    report[name] = (n, sorted(tp.partition for tp in consumer.assignment()))
            finally:
                await consumer.stop()

        asyncio.run(run())
        return
    consumer = kafka.KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=300,
    )
    # Learn the topic's partitions before the first poll joins the group.
    # kafka-python 3.0.12 otherwise may elect a leader that has no metadata
    # for the topic yet, which assigns nothing and rejoins once the metadata
    # arrives; if that rejoin completes after a poll's timeout, the client
    # never applies it (its "need rejoin" turns false while the join is in
    # flight) and the member stays without partitions until the coordinator
    # drops it. Seen in CI; the broker answered every request correctly.
    consumer.partitions_for_topic(topic)
    n = 0
    try:
        while not stop.is_set():
            batch = consumer.poll(200)
            n += sum(len(r) for r in batch.values())
            if batch:
                try:
                    consumer.commit()
                except kafka.errors.CommitFailedError:
                    pass  # a rebalance took the partition: its new owner commits
            report[name] = (n, sorted(tp.partition for tp in consumer.assignment()))
    finally:
        consumer.close()
