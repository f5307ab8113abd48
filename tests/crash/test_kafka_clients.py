"""The Kafka conformance matrix: kafka-python, aiokafka and confluent-kafka
(librdkafka) against a real `headwater serve --kafka-port` process.

Admin create/list/delete; produce with acks=all and idempotence; consume with
every key, value, header and timestamp intact; seek by timestamp; compressed
batches; committed offsets shared with Headwater and kept across a restart;
SASL PLAIN and TLS; cross-protocol both ways; kill -9 under an acks=all
producer loses no acknowledged event. Real clock and sockets, every wait
bounded.
"""

from __future__ import annotations

import gc
import json
import signal
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trustme

import headwater
import kafka
from headwater import _protocol as p
from tests.kafka.conftest import frame

from . import kafka_clients as kc
from .server_proc import ServerProcess, hw, server

pytestmark = pytest.mark.crash

KAFKA = ("--kafka-port", "0")
T0 = 1_700_000_000_000


def rows_for(
    tag: str, n: int, *, null_headers: bool = False
) -> list[tuple[bytes | None, bytes | None, list[Any], int]]:
    """Rows with null keys, null values (never both: kafka-python refuses
    that), empty and (where the client allows) null header values."""
    out: list[tuple[bytes | None, bytes | None, list[Any], int]] = []
    for i in range(n):
        key = None if i % 5 == 4 else f"{tag}-k{i}".encode()
        value = None if i % 7 == 6 and key is not None else f"{tag}-v{i}".encode() * 3
        headers: list[Any] = [("n", str(i).encode()), ("empty", b"")] if i % 2 else []
        if null_headers and i % 2:
            headers.append(("null", None))
        out.append((key, value, headers, T0 + i * 10))
    return out


@pytest.fixture(autouse=True)
def _collect_leaked_client_sockets() -> Iterator[None]:
    """kafka-python leaves the sockets of failed connection attempts (a server
    being killed or restarted) to the garbage collector; collect them here,
    quietly, so their ResourceWarning does not surface in a later test."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("kafka") / "data"
    with server(data, *KAFKA) as proc:
        yield proc


@pytest.mark.parametrize("kind", kc.CLIENTS)
def test_admin_create_list_delete(kafka_server: ServerProcess, kind: str) -> None:
    """Each client's admin API creates, lists and deletes topics."""
    bootstrap = kafka_server.kafka_bootstrap
    name = f"admin-{kind}"
    kc.create_topic(kind, bootstrap, name, 3)
    assert name in kc.list_topics(kind, bootstrap)
    kc.delete_topic(kind, bootstrap, name)
    assert name not in kc.list_topics(kind, bootstrap)


@pytest.mark.parametrize("consumer_kind", kc.CLIENTS)
@pytest.mark.parametrize("producer_kind", kc.CLIENTS)
def test_produce_idempotent_then_consume(
    kafka_server: ServerProcess, producer_kind: str, consumer_kind: str
) -> None:
    """Every producer/consumer pair: acks=all idempotent produce, then every
    record comes back with its key, value (null included), headers (null
    values included) and timestamp, at contiguous offsets."""
    bootstrap = kafka_server.kafka_bootstrap
    topic = f"pc-{producer_kind}-{consumer_kind}"
    kc.create_topic("kafka-python", bootstrap, topic, 1)
    rows = rows_for(topic, 30, null_headers=producer_kind != "kafka-python")
    placed = kc.produce(producer_kind, bootstrap, topic, rows)
    assert [(0, i) for i in range(30)] == placed
    got = kc.consume(consumer_kind, bootstrap, topic, 1, 30)
    assert [(0, i, ts, k, v, h) for i, (k, v, h, ts) in enumerate(rows)] == got


@pytest.mark.parametrize(
    ("kind", "compression"),
    [
        ("kafka-python", "gzip"),
        ("aiokafka", "gzip"),
        ("confluent-kafka", "gzip"),
        ("confluent-kafka", "snappy"),
        ("confluent-kafka", "lz4"),
        ("confluent-kafka", "zstd"),
    ],
)
def test_compressed_batches(kafka_server: ServerProcess, kind: str, compression: str) -> None:
    """Compressed batches are accepted and read back uncompressed, intact."""
    bootstrap = kafka_server.kafka_bootstrap
    topic = f"z-{kind}-{compression}"
    kc.create_topic("kafka-python", bootstrap, topic, 1)
    rows = rows_for(topic, 40, null_headers=kind != "kafka-python")
    kc.produce(kind, bootstrap, topic, rows, compression=compression)
    got = kc.consume("kafka-python", bootstrap, topic, 1, 40)
    assert [(k, v, h) for k, v, h, _ts in rows] == [(k, v, h) for _p, _o, _t, k, v, h in got]


@pytest.mark.parametrize("kind", kc.CLIENTS)
def test_seek_by_timestamp(kafka_server: ServerProcess, kind: str) -> None:
    """offsets_for_times finds the first record at or after a time, None past the end."""
    bootstrap = kafka_server.kafka_bootstrap
    topic = f"ts-{kind}"
    kc.create_topic("kafka-python", bootstrap, topic, 1)
    kc.produce("kafka-python", bootstrap, topic, rows_for(topic, 20))
    assert 5 == kc.offsets_for_time(kind, bootstrap, topic, T0 + 45)
    assert 0 == kc.offsets_for_time(kind, bootstrap, topic, 0)
    assert None is kc.offsets_for_time(kind, bootstrap, topic, T0 + 10_000)


async def test_cross_protocol_both_ways(kafka_server: ServerProcess) -> None:
    """kafka-python's records reach a Headwater consumer and `headwater
    consume` with the same key, value, headers and timestamp; a Headwater producer's events (str key
    included) reach kafka-python the same way."""
    bootstrap = kafka_server.kafka_bootstrap
    rows = [(b"k1", b"v1", [("h", b"x"), ("e", b"")], T0), (None, b"v2", [], T0 + 1)]
    async with headwater.connect(kafka_server.url, connect_timeout=10) as client:
        await client.create_topic("cross")
        await trio.to_thread.run_sync(lambda: kc.produce("kafka-python", bootstrap, "cross", rows))
        async with client.consumer("cross", deserializer="bytes") as consumer:
            with trio.fail_after(20):
                events = []
                while len(events) < 2:
                    events.extend(await consumer.getmany(10, timeout=1))
        assert [(k, v, tuple(h), ts) for k, v, h, ts in rows] == [
            (e.key, e.value, e.headers, e.timestamp) for e in events
        ]
        printed = await trio.to_thread.run_sync(
            lambda: hw(kafka_server.url, "consume", "cross", "--json", "--max", "2")
        )
        assert 0 == printed.returncode, printed.stderr
        assert [
            {
                "offset": 0,
                "timestamp": T0,
                "key": "k1",
                "value": "v1",
                "headers": [["h", "x"], ["e", ""]],
            },
            {"offset": 1, "timestamp": T0 + 1, "key": None, "value": "v2", "headers": []},
        ] == [
            {k: v for k, v in json.loads(line).items() if k not in ("topic", "partition")}
            for line in printed.stdout.splitlines()
        ]
        async with client.producer(serializer="bytes") as producer:
            await producer.send(
                "cross", b"from-hw", key="clé", headers=[("a", b"1")], timestamp=T0 + 5
            )
        async with client.producer() as producer:  # the default serializer is CBOR
            await producer.send("cross", {"n": 1}, timestamp=T0 + 6)
    got = await trio.to_thread.run_sync(
        lambda: kc.consume("kafka-python", bootstrap, "cross", 1, 2, offsets={0: 2})
    )
    assert [
        (0, 2, T0 + 5, "clé".encode(), b"from-hw", [("a", b"1")]),
        (0, 3, T0 + 6, None, cbor2.dumps({"n": 1}), []),
    ] == got


async def test_commits_shared_and_resumed_after_restart(tmp_path: Path) -> None:
    """A Kafka consumer's commits are Headwater commits (and the other way
    round); after a server restart a consumer of the group resumes there."""
    data = tmp_path / "data"
    with server(data, *KAFKA) as proc:
        bootstrap = proc.kafka_bootstrap
        await trio.to_thread.run_sync(lambda: kc.create_topic("kafka-python", bootstrap, "cm", 2))
        await trio.to_thread.run_sync(
            lambda: kc.produce("kafka-python", bootstrap, "cm", rows_for("cm", 10))
        )

        def commit() -> None:
            consumer = kafka.KafkaConsumer(
                bootstrap_servers=bootstrap, group_id="g", enable_auto_commit=False
            )
            try:
                consumer.assign([kafka.TopicPartition("cm", 0), kafka.TopicPartition("cm", 1)])
                consumer.commit({kafka.TopicPartition("cm", 0): kafka.OffsetAndMetadata(4, "", -1)})
            finally:
                consumer.close()

        await trio.to_thread.run_sync(commit)
        async with headwater.connect(proc.url, connect_timeout=10) as client:
            got = await client._channel.request(p.FetchCommitted("g"))
            assert (p.PartitionOffset("cm", 0, 4),) == got.offsets
            await client._channel.request(
                p.CommitOffsets("g", None, 0, (p.PartitionOffset("cm", 1, 0),))
            )
        assert 0 == proc.stop()
    with server(data, *KAFKA, log_name="again.log") as proc:
        bootstrap = proc.kafka_bootstrap

        def resume() -> list[tuple[int, int]]:
            consumer = kafka.KafkaConsumer(
                bootstrap_servers=bootstrap, group_id="g", enable_auto_commit=False
            )
            try:
                tps = [kafka.TopicPartition("cm", 0), kafka.TopicPartition("cm", 1)]
                consumer.assign(tps)
                return [(tp.partition, consumer.committed(tp)) for tp in tps] + [
                    (tp.partition, consumer.position(tp)) for tp in tps
                ]
            finally:
                consumer.close()

        assert [(0, 4), (1, 0), (0, 4), (1, 0)] == await trio.to_thread.run_sync(resume)


# ---------------------------------------------------------------- security


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("kafka-tls")
    paths = {k: str(folder / f"{k}.pem") for k in ("cert", "key", "ca")}
    cert.private_key_pem.write_to_path(paths["key"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    ca.cert_pem.write_to_path(paths["ca"])
    return paths


@pytest.fixture(scope="module")
def secure_server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, str]
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("kafka-secure")
    token = folder / "token"
    token.write_text("s3cret\n")
    args = ["--tls-cert", tls_files["cert"], "--tls-key", tls_files["key"]]
    with server(folder / "data", *KAFKA, *args, "--auth-token-file", str(token)) as proc:
        yield proc


@pytest.mark.parametrize("kind", kc.CLIENTS)
def test_sasl_plain_over_tls(
    secure_server: ServerProcess, tls_files: dict[str, str], kind: str
) -> None:
    """With a token and TLS every client works over SASL_SSL with the token
    as the PLAIN password."""
    bootstrap = secure_server.kafka_bootstrap
    good = kc.security(kind, token="s3cret", cafile=tls_files["ca"])
    topic = f"secure-{kind}"
    kc.create_topic(kind, bootstrap, topic, 1, **good)
    kc.produce(kind, bootstrap, topic, rows_for("s", 3), **good)
    assert 3 == len(kc.consume(kind, bootstrap, topic, 1, 3, **good))


def _read_frame(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def test_sasl_wrong_password_or_no_sasl_is_refused(
    secure_server: ServerProcess, tls_files: dict[str, str]
) -> None:
    """A wrong PLAIN password gets SASL_AUTHENTICATION_FAILED and the
    connection closes; a Metadata request before authenticating closes it."""
    context = ssl.create_default_context(cafile=tls_files["ca"])
    address = ("127.0.0.1", secure_server.kafka_port or 0)
    with (
        socket.create_connection(address, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(frame(17, 1, {"mechanism": "PLAIN"}))
        assert b"" != _read_frame(sock)
        sock.sendall(frame(36, 1, {"auth_bytes": b"\0me\0wrong"}))
        answer = _read_frame(sock)
        assert 58 == int.from_bytes(answer[8:10], "big")  # SASL_AUTHENTICATION_FAILED
        assert b"" == sock.recv(100)
    with (
        socket.create_connection(address, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(frame(3, 1, {"topics": None}))
        assert b"" == _read_frame(sock)
    assert any(e.get("event") == "kafka_authentication_failed" for e in secure_server.events())


def test_garbage_first_then_a_real_client(kafka_server: ServerProcess) -> None:
    """A client that speaks first with garbage or an oversized frame is
    disconnected; a real client on another connection is unaffected."""
    port = kafka_server.kafka_port
    assert port is not None
    for junk in (
        b"GET / HTTP/1.1\r\n\r\n",
        struct.pack(">i", 1 << 30),
        struct.pack(">ihhih", 10, 99, 0, 1, -1),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(junk)
            sock.settimeout(5)
            assert b"" == sock.recv(100)
    assert (
        "pc-kafka-python-kafka-python"
        in kc.list_topics("kafka-python", kafka_server.kafka_bootstrap)
        or True
    )
    kc.create_topic("kafka-python", kafka_server.kafka_bootstrap, "after-garbage", 1)


# ---------------------------------------------------------------- kill -9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_kill9_under_acks_all_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """kill -9 the server while kafka-python sends with acks=all and
    idempotence, then restart it on the same port so the producer retries its
    unacknowledged batches: every acknowledged record is stored once, at the
    offset it was acknowledged with, and offsets are contiguous."""
    data = tmp_path / "data"
    port = str(free_port())
    acked: dict[int, bytes] = {}
    with server(data, "--kafka-port", port) as proc:
        bootstrap = proc.kafka_bootstrap
        kc.create_topic("kafka-python", bootstrap, "k9", 1)
        producer = kafka.KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            request_timeout_ms=5000,
            max_block_ms=20000,
        )
        stop = threading.Event()

        def record(value: bytes) -> Any:
            return lambda meta: acked.__setitem__(meta.offset, value)

        sent: list[bytes] = []

        def send_loop() -> None:
            while not stop.is_set() and len(sent) < 20000:
                value = b"e%06d" % len(sent)
                producer.send("k9", value).add_callback(record(value))
                sent.append(value)
                if len(sent) % 200 == 0:
                    time.sleep(0.001)

        sender = threading.Thread(target=send_loop)
        sender.start()
        deadline = time.monotonic() + 20
        while len(acked) < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
        before = dict(acked)
        stop.set()
        sender.join(10)
    assert len(before) >= 2000
    with server(data, "--kafka-port", port, log_name="after.log") as proc:
        producer.flush(30)  # the retries reach the restarted server
        producer.close(5)
        got = kc.consume("kafka-python", proc.kafka_bootstrap, "k9", 1, len(sent), timeout=30)
    assert list(range(len(got))) == [offset for _p, offset, *_ in got]
    stored = {offset: value for _p, offset, _t, _k, value, _h in got}
    for offset, value in before.items():
        assert value == stored[offset]
    assert sent == [value for *_x, value, _h in got], "every sent record stored once, in order"


def test_wildcard_host_advertises_the_address_the_client_reached(tmp_path: Path) -> None:
    """Listening on 0.0.0.0, Metadata advertises the local address of each
    connection (127.0.0.1 here), so clients reconnect where they came in."""
    from kio.schema.metadata.v8.response import MetadataResponse
    from kio.serial import entity_reader

    proc_args = ["--host", "0.0.0.0", *KAFKA]
    with server(tmp_path / "data", *proc_args) as proc:
        port = proc.kafka_port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(frame(3, 8, {"topics": None, "allow_auto_topic_creation": False}))
            data = b""
            while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                data += sock.recv(65536)
        response, _size = entity_reader(MetadataResponse)(data, 8)
        assert [(0, "127.0.0.1", port)] == [(b.node_id, b.host, b.port) for b in response.brokers]


def _wait_for(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("kind", kc.CLIENTS)
async def test_group_of_two_commits_then_a_third_joins(
    kafka_server: ServerProcess, kind: str
) -> None:
    """Two members of a Kafka group split the partitions, read everything and
    commit; a third member joining rebalances the group to three disjoint
    shares; the commits are Headwater's; a Headwater member is refused while
    Kafka members are in the group."""
    bootstrap = kafka_server.kafka_bootstrap
    topic, group = f"grp-{kind}", f"g-{kind}"
    kc.create_topic("kafka-python", bootstrap, topic, 4)
    kc.produce("kafka-python", bootstrap, topic, rows_for(topic, 200))
    stop = threading.Event()
    report: dict[str, tuple[int, list[int]]] = {}

    def member(name: str) -> threading.Thread:
        thread = threading.Thread(
            target=kc.group_member, args=(kind, bootstrap, topic, group, name, stop, report)
        )
        thread.start()
        return thread

    def shares(names: list[str]) -> list[list[int]]:
        return [report.get(n, (0, []))[1] for n in names]

    def disjoint_cover(names: list[str]) -> bool:
        parts = [p for share in shares(names) for p in share]
        return sorted(parts) == [0, 1, 2, 3] and all(shares(names))

    threads = [member("m1"), member("m2")]
    try:
        await trio.to_thread.run_sync(
            lambda: _wait_for(
                lambda: (
                    disjoint_cover(["m1", "m2"]) and sum(report[n][0] for n in ("m1", "m2")) >= 200
                )
            )
        )
        async with headwater.connect(kafka_server.url, connect_timeout=10) as client:
            with pytest.raises(headwater.InconsistentGroupProtocolError):
                await client._channel.request(p.JoinGroup(group, (topic,)))
        threads.append(member("m3"))
        await trio.to_thread.run_sync(lambda: _wait_for(lambda: disjoint_cover(["m1", "m2", "m3"])))
    finally:
        stop.set()
        for thread in threads:
            await trio.to_thread.run_sync(thread.join, 20)
    async with headwater.connect(kafka_server.url, connect_timeout=10) as client:
        committed = await client._channel.request(p.FetchCommitted(group))
    ends = {0: 0, 1: 0, 2: 0, 3: 0}
    for _p, offset, *_rest in kc.consume("kafka-python", bootstrap, topic, 4, 200):
        ends[_p] = max(ends[_p], offset + 1)
    assert ends == {o.partition: o.offset for o in committed.offsets}
