"""Real `headwater serve` processes on loopback: pipelining, graceful shutdown
and SIGKILL under load, TLS and token authentication, hostile bytes.

Real clock and real sockets; every wait is bounded by `trio.fail_after`.
"""

from __future__ import annotations

import signal
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trustme

import headwater
from headwater import AuthenticationError, ConnectionLostError, HeadwaterError
from headwater import _protocol as p
from headwater.broker import open_broker
from headwater.client import Event
from headwater.transport import encode_frame

from .server_proc import ServerProcess, server

pytestmark = pytest.mark.crash


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def produce_until_stopped(
    url: str, topic: str, acked: list[Event], stop: trio.Event, *, batch: int = 50
) -> None:
    """Send numbered events until ``stop``; record each acknowledged one.
    Errors from a server going away end the loop."""
    try:
        async with (
            headwater.connect(url, connect_timeout=5) as client,
            client.producer(linger=0.001, request_timeout=5) as producer,
        ):
            i = 0
            while not stop.is_set():
                stored = await producer.send_many(topic, [f"e{i + k}" for k in range(batch)])
                acked.extend(stored)
                i += batch
    except HeadwaterError:
        pass


async def read_all(url: str, topic: str) -> list[Event]:
    async with headwater.connect(url) as client:
        description = await client.describe_topic(topic)
        total = sum(part.next_offset for part in description.partitions)
        out: list[Event] = []
        async with client.consumer(topic) as consumer:
            with trio.fail_after(30):
                while len(out) < total:
                    out.extend(await consumer.getmany(10_000, timeout=1))
        return out


def check_acked_present_once(acked: list[Event], stored: list[Event]) -> None:
    by_position = {(e.partition, e.offset): e.value for e in stored}
    assert len(by_position) == len(stored)
    for event in acked:
        assert event.value == by_position[(event.partition, event.offset)]
    values = [e.value for e in stored]
    assert len(values) == len(set(values)), "an event was stored twice"


async def test_pipelined_requests_over_real_tcp(data_dir: Path) -> None:
    """Hundreds of concurrent requests on one TCP connection all get answers."""
    with server(data_dir) as proc:
        async with headwater.connect(proc.url) as client:
            await client.create_topic("t", partitions=3)
            answers: list[Any] = []
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    for _ in range(300):
                        nursery.start_soon(
                            lambda: _append(answers, client._channel.request(p.ListTopics()))
                        )
            assert 300 == len(answers)
        assert 0 == proc.stop()


async def _append(out: list[Any], awaitable: Any) -> None:
    out.append(await awaitable)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_stop_under_load_loses_no_acknowledged_event(data_dir: Path, how: str) -> None:
    """SIGTERM (graceful: exit 0) or SIGKILL while a producer streams: after a
    restart every acknowledged event is stored exactly once."""
    acked: list[Event] = []
    with server(data_dir) as proc:
        async with headwater.connect(proc.url) as client:
            await client.create_topic("load", partitions=2)
        stop = trio.Event()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce_until_stopped, proc.url, "load", acked, stop)
                while len(acked) < 2000:  # noqa: ASYNC110 - polling a plain list
                    await trio.sleep(0.01)
                if how == "sigterm":
                    code = await trio.to_thread.run_sync(proc.stop, signal.SIGTERM)
                    assert 0 == code
                else:
                    code = await trio.to_thread.run_sync(proc.stop, signal.SIGKILL)
                    assert -signal.SIGKILL == code
                stop.set()
                nursery.cancel_scope.cancel()  # the producer would retry until its timeout
        if how == "sigterm":
            events = [e["event"] for e in proc.events()]
            assert "server_draining" in events
            assert "server_stopped" in events
    with server(data_dir, log_name="restart.log") as proc:
        stored = await read_all(proc.url, "load")
    assert len(acked) >= 2000
    check_acked_present_once(acked, stored)


async def test_client_reconnects_after_a_server_restart(data_dir: Path) -> None:
    """A client keeps working across a server restart on the same port."""
    with server(data_dir) as first:
        port = first.port
        async with headwater.connect(first.url) as client:
            await client.create_topic("t")
            first.stop()
            with server_on(data_dir, port) as _second, trio.fail_after(30):
                while True:
                    try:
                        await client.create_topic("after-restart")
                        break
                    except ConnectionLostError:
                        await trio.sleep(0.05)
            assert client._channel.reconnects >= 1  # type: ignore[attr-defined]


def server_on(data_dir: Path, port: int) -> Any:
    """A server on a given port (the port the previous one used)."""
    from contextlib import contextmanager

    from .server_proc import server as start

    @contextmanager
    def run() -> Iterator[ServerProcess]:
        with start(data_dir, "--port", str(port), log_name="second.log") as proc:
            yield proc

    return run()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    paths = {"cert": folder / "cert.pem", "key": folder / "key.pem", "ca": folder / "ca.pem"}
    cert.private_key_pem.write_to_path(str(paths["key"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other = trustme.CA()
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    paths["other_ca"] = folder / "other-ca.pem"
    return paths


async def test_tls_and_token(data_dir: Path, certificates: dict[str, Path]) -> None:
    """TLS with the right CA and token works; a wrong CA, a wrong token, no
    token, or plain TCP are refused."""
    token_file = data_dir.parent / "token"
    token_file.write_text("correct horse\n")
    tls_args = ["--tls-cert", str(certificates["cert"]), "--tls-key", str(certificates["key"])]
    with server(data_dir, *tls_args, "--auth-token-file", str(token_file)) as proc:
        url = f"headwaters://127.0.0.1:{proc.port}"
        ca = str(certificates["ca"])
        with trio.fail_after(30):
            async with headwater.connect(url, tls=ca, token="correct horse") as client:
                await client.create_topic("secure")
                assert ["secure"] == [t.name for t in await client.list_topics()]
            with pytest.raises(AuthenticationError, match="wrong"):
                async with headwater.connect(url, tls=ca, token="battery staple"):
                    pass
            with pytest.raises(AuthenticationError, match="requires a token"):
                async with headwater.connect(url, tls=ca):
                    pass
            with pytest.raises(ConnectionLostError):
                async with headwater.connect(
                    url, tls=str(certificates["other_ca"]), token="correct horse"
                ):
                    pass
            with pytest.raises(HeadwaterError):
                async with headwater.connect(proc.url, token="correct horse", connect_timeout=3):
                    pass
            # The server still serves the right client after all that.
            async with headwater.connect(url, tls=ca, token="correct horse") as client:
                assert ["secure"] == [t.name for t in await client.list_topics()]


CORPUS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\xff\xff\xff\xff" + b"x" * 100,
    b"\x00\x00\x00\x10\xa1\x61",
    struct.pack(">I", 5) + b"\x9f\x9f\x9f\x9f\x9f",
    encode_frame({"t": "hello", "versions": [1], "token": 5}),
    encode_frame({"t": "hello", "versions": [1]})
    + encode_frame({"t": "req", "id": 1, "op": "produce", "body": {"topic": "t", "record": 5}})
    + encode_frame({"t": "req", "id": 1, "op": "list_topics", "body": {}}),
    encode_frame({"t": "hello", "versions": [1]})
    + encode_frame(
        {
            "t": "req",
            "id": 2,
            "op": "produce",
            "body": {"topic": "t", "partition": 0, "record": b"\0" * 80},
        }
    ),
    b"",  # connects and never speaks (closed by the handshake timeout)
]


def _poke(port: int, data: bytes, wait: float) -> bytes:
    """Send ``data`` on a raw socket; return what the server sent before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        if data:
            try:
                sock.sendall(data)
            except OSError:
                pass
        if data:
            sock.shutdown(socket.SHUT_WR)  # then EOF (a truncated frame stays truncated)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
        return received


async def test_hostile_bytes_against_a_live_server(data_dir: Path) -> None:
    """Every corpus entry gets an error frame or a closed connection; the server
    keeps serving a well-behaved client and its stored data does not change."""
    took: dict[int, float] = {}
    with server(data_dir, "--handshake-timeout", "1") as proc:
        async with headwater.connect(proc.url) as client:
            await client.create_topic("t")
            async with client.producer() as producer:
                await producer.send_many("t", [f"v{i}" for i in range(100)])
            before = await client.describe_topic("t")
            for index, data in enumerate(CORPUS):
                started = trio.current_time()
                received = await trio.to_thread.run_sync(_poke, proc.port, data, 10.0)
                took[index] = trio.current_time() - started
                frames = _frames(received)
                assert all(f["t"] in ("hello_ok", "res", "error") for f in frames), frames
                if index in (0, 1, 3, 4):  # refused at the handshake (2: EOF mid-frame, a close)
                    assert "error" == frames[-1]["t"], frames
                    assert frames[-1]["id"] is None
                assert before == await client.describe_topic("t")
                assert ["t"] == [t.name for t in await client.list_topics()]
        stored = await read_all(proc.url, "t")
        assert [f"v{i}" for i in range(100)] == [e.value for e in stored]
        assert 0 == proc.stop()


def _frames(data: bytes) -> list[dict[str, Any]]:
    frames = []
    while len(data) >= 4:
        (length,) = struct.unpack(">I", data[:4])
        frames.append(cbor2.loads(data[4 : 4 + length]))
        data = data[4 + length :]
    return frames


async def test_embedded_and_remote_clients_see_the_same_data(tmp_path: Path) -> None:
    """Data written through a server is what the embedded broker reads after."""
    data_dir = tmp_path / "data"
    with server(data_dir) as proc:
        async with headwater.connect(proc.url) as client:
            await client.create_topic("shared", partitions=2)
            async with client.producer() as producer:
                sent = await producer.send_many("shared", [(i, f"k{i}") for i in range(50)])
        assert 0 == proc.stop()
    async with open_broker(str(data_dir)) as broker, broker.connect() as client:
        got: list[Event] = []
        async with client.consumer("shared") as consumer:
            with trio.fail_after(30):
                while len(got) < len(sent):
                    got.extend(await consumer.getmany(1000, timeout=1))
    assert sorted((e.partition, e.offset, e.value) for e in sent) == sorted(
        (e.partition, e.offset, e.value) for e in got
    )


_ = ssl  # TLS contexts are built from CA paths above


async def test_actors_port_lets_another_process_watch_broker_actors(tmp_path: Path) -> None:
    """With actors_port, a remote actor client can look up a partition actor
    and monitor it: deleting the topic stops it for good and the monitor fires."""
    from headwater.actors import open_actor_client
    from headwater.broker import ServerConfig, open_server
    from headwater.transport import MessageRegistry

    config = ServerConfig(port=0, actors_port=0)
    with trio.fail_after(30):
        async with (
            open_broker(str(tmp_path / "data")) as broker,
            open_server(broker, config) as server,
            headwater.connect(f"headwater://127.0.0.1:{server.port}") as client,
        ):
            assert server.actors_port
            await client.create_topic("watched")
            async with open_actor_client(MessageRegistry("none")) as actors:
                url = f"headwater://127.0.0.1:{server.actors_port}/broker/topics/watched/0"
                ref = await actors.lookup(url)
                monitor = await ref.monitor()
                await client.delete_topic("watched")
                down = await monitor.wait()
            assert "/broker/topics/watched/0" == down.path
            assert "stopped" == down.reason


async def test_a_restart_on_the_same_log_learns_its_own_port(tmp_path: Path) -> None:
    """``headwater.testing.server_process`` appends to the log of the data
    directory; a second server started on it must be reached at its own port,
    not at the first one's (found writing a user's program: the helper read
    the first ``server_listening`` line of the file)."""
    data = tmp_path / "data"
    with server(data) as first:
        old = first.port
        assert 0 == first.stop()
    with server(data) as second:
        listened = [e["port"] for e in second.events(own=True) if e["event"] == "server_listening"]
        assert [second.port] == listened
        assert second.port != old or [old, old] == [
            e["port"] for e in second.events() if e["event"] == "server_listening"
        ]
        async with headwater.connect(second.url) as client:
            await client.create_topic("t")
            assert ["t"] == [t.name for t in await client.list_topics()]
