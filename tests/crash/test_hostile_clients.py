"""Hostile clients against a live server process (issue 7, item 4): a
protocol fuzzer, readers that never read, thousands of idle connections and
clients that vanish mid-frame. Throughout, a well-behaved client keeps
working and no stored data changes.

Real sockets, a real server process (its RSS is measured from /proc), the
real clock; every wait is bounded.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

import attrs
import cbor2
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headwater
from headwater import _protocol as p
from headwater.client import Event
from headwater.journal._batch import encode_events
from headwater.journal._record import encode_record
from headwater.testing._hostile import (
    RunningServer,
    config_server_process,
    count_busy,
    hello_frame,
    idle_crowd,
    raise_fd_limit,
    request_frame,
    slow_readers,
)
from headwater.transport import OP_NAMES, encode_frame

pytestmark = pytest.mark.crash

PRECIOUS = "precious"


async def _fill(url: str, values: list[bytes], partitions: int = 2) -> None:
    async with headwater.connect(url, request_timeout=10) as client:
        await client.create_topic(PRECIOUS, partitions=partitions)
        await client.create_topic("scratch")
        async with client.producer(serializer="bytes") as producer:
            await producer.send_many(PRECIOUS, values)


async def _snapshot(url: str) -> tuple[list[Any], list[tuple[int, int, Any]]]:
    """The precious topic's description and every stored event, read by a
    fresh well-behaved client."""
    async with headwater.connect(url, request_timeout=10, connect_timeout=5) as client:
        description = await client.describe_topic(PRECIOUS)
        total = sum(part.next_offset for part in description.partitions)
        got: list[Event] = []
        async with client.consumer(PRECIOUS, deserializer="bytes") as consumer:
            with trio.fail_after(20):
                while len(got) < total:
                    got.extend(await consumer.getmany(10_000, timeout=0.5))
        return list(description.partitions), sorted((e.partition, e.offset, e.value) for e in got)


def snapshot(server: RunningServer) -> tuple[list[Any], list[tuple[int, int, Any]]]:
    """:func:`_snapshot` from synchronous code."""
    return trio.run(_snapshot, server.url)


async def _good_client_works(url: str) -> list[str]:
    with trio.fail_after(20):
        return await _good_client_steps(url)


async def _good_client_steps(url: str) -> list[str]:
    async with headwater.connect(url, request_timeout=5, connect_timeout=5) as client:
        async with client.producer() as producer:
            stored = await producer.send("scratch", "still here")
        async with client.consumer("scratch", start=stored.offset) as consumer:
            event = await consumer.__anext__()
        assert "still here" == event.value
        return [t.name for t in await client.list_topics()]


def good_client_works(server: RunningServer) -> list[str]:
    """A well-behaved client can produce and consume; returns the topic names."""
    return trio.run(_good_client_works, server.url)


def _frames(data: bytes) -> list[dict[str, Any]]:
    """Decode the whole frames in ``data`` (a trailing partial one is ignored)."""
    frames = []
    while len(data) >= 4:
        (length,) = struct.unpack(">I", data[:4])
        if len(data) < 4 + length:
            break
        frames.append(cbor2.loads(data[4 : 4 + length]))
        data = data[4 + length :]
    return frames


def _exchange(port: int, data: bytes, ending: str, wait: float = 3.0) -> bytes:
    """Send ``data`` raw, end as told (``shutdown``: FIN, ``close``, ``reset``:
    RST), and return what the server sent back before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(data)
        except OSError:
            return b""
        if ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return b""
        if ending == "close":
            return b""
        sock.shutdown(socket.SHUT_WR)
        received = b""
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline and (chunk := sock.recv(65536)):
                received += chunk
        except OSError:
            pass
        return received


# ---------------------------------------------------------------- the fuzzer

FIELDS = sorted({f.name for cls in p.REQUEST_TYPES for f in attrs.fields(cls)})
SAFE_OPS = sorted(op for op in OP_NAMES if not op.startswith("delete"))

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=48),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), cbor_values, max_size=6)
messages = st.fixed_dictionaries(
    {"t": st.sampled_from(["hello", "auth", "req", "req", "req", "res", "hello_ok", "zz"])},
    optional={
        "id": st.integers(-3, 2**64) | cbor_values,
        "op": st.sampled_from(SAFE_OPS) | cbor_values,
        "body": bodies | cbor_values,
        "versions": st.lists(st.integers(-1, 3), max_size=3) | cbor_values,
        "token": cbor_values,
        "client": cbor_values,
    },
)


def _frame_of(message: dict[str, Any]) -> bytes:
    try:
        return encode_frame(message)
    except Exception:  # a value cbor2 cannot encode: send it as raw bytes instead
        return struct.pack(">I", 3) + b"\xa1\x61t"


frames = st.one_of(
    messages.map(_frame_of),
    st.binary(max_size=40),
    st.builds(
        lambda n, tail: struct.pack(">I", n) + tail,
        st.integers(0, 2**32 - 1),
        st.binary(max_size=16),
    ),
)
sequences = st.tuples(
    st.booleans(),  # start with a valid hello
    st.lists(frames, max_size=6),
    st.sampled_from(["shutdown", "shutdown", "close", "reset"]),
)


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server process for every fuzz example, with precious data in it."""
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    rng = random.Random(4)
    with config_server_process(data_dir, handshake_timeout=2.0, idle_timeout=5.0) as server:
        trio.run(_fill, server.url, [rng.randbytes(rng.randrange(1, 300)) for _ in range(300)])
        yield server, snapshot(server)


@settings(
    max_examples=int(os.environ.get("HEADWATER_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sequence=sequences)
def test_fuzzed_frames_never_break_the_server(fuzz_target: Any, sequence: Any) -> None:
    """Generated frame sequences (valid and broken CBOR, wrong types, unknown
    ops, bad lengths, truncated frames, FIN/close/RST endings) over real TCP:
    the server answers only with well-formed frames, stays up, a good client
    still works, and the precious topic is unchanged."""
    server, before = fuzz_target
    hello, body, ending = sequence
    data = (hello_frame() if hello else b"") + b"".join(body)
    received = _exchange(server.port, data, ending)
    for frame in _frames(received):
        assert frame.get("t") in ("hello_ok", "res", "error"), frame
    assert server.proc.poll() is None, "the server died"
    assert PRECIOUS in good_client_works(server)
    description = trio.run(_describe, server.url)
    assert before[0] == description


async def _describe(url: str) -> list[Any]:
    async with headwater.connect(url, request_timeout=5) as client:
        return list((await client.describe_topic(PRECIOUS)).partitions)


def test_fuzzing_left_the_stored_data_intact(fuzz_target: Any) -> None:
    """After the fuzzer (run just before in this module), every stored event
    of the precious topic is still there, byte for byte."""
    server, before = fuzz_target
    assert before == snapshot(server)


# ---------------------------------------------------------------- mid-frame


def test_clients_that_vanish_mid_frame_store_nothing(tmp_path: Path) -> None:
    """A produce frame cut at every kind of point (in the length prefix, the
    envelope, the record header, the payload), ended by FIN, close or RST,
    never stores anything; the server keeps serving."""
    rng = random.Random(11)
    with config_server_process(tmp_path / "data", handshake_timeout=2.0) as server:
        trio.run(_fill, server.url, [b"v%d" % i for i in range(50)])
        before = snapshot(server)
        payload = encode_events([(1, None, rng.randbytes(2000), ())])
        record = encode_record(payload, count=1, first_timestamp=1, max_timestamp=1)
        whole = hello_frame() + request_frame(1, p.Produce(PRECIOUS, 0, record))
        hello = len(hello_frame())
        cuts = sorted({*range(1, hello + 12), *rng.sample(range(hello + 12, len(whole) - 1), 40)})
        for index, cut in enumerate(cuts):
            ending = ("shutdown", "close", "reset")[index % 3]
            received = _exchange(server.port, whole[:cut], ending, wait=3.0)
            for frame in _frames(received):
                assert frame.get("t") in ("hello_ok", "error"), frame
        assert server.proc.poll() is None
        assert PRECIOUS in good_client_works(server)
        assert before == snapshot(server)


# ---------------------------------------------------------------- slow readers


def test_readers_that_never_read_keep_server_memory_bounded(tmp_path: Path) -> None:
    """Eight connections each pipeline 128 fetches of 1 MiB and never read a
    byte: the server's RSS grows by at most about the configured per-connection
    budget (8 MiB here) times the connections, a good client keeps working
    meanwhile, and the readers are dropped after the send timeout."""
    connections, budget = 8, 8 << 20
    rng = random.Random(5)
    with config_server_process(
        tmp_path / "data", max_bytes_in_flight=budget, send_timeout=2.0
    ) as server:
        trio.run(_fill, server.url, [rng.randbytes(8192) for _ in range(3200)], 1)
        before = snapshot(server)
        base = server.rss_kib()
        fds_before = server.open_fds()
        with slow_readers(server.port, PRECIOUS, connections=connections, fetches=128):
            peak = base
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                peak = max(peak, server.rss_kib())
                time.sleep(0.05)
            assert PRECIOUS in good_client_works(server)
            peak = max(peak, server.rss_kib())
            dropped = 0
            deadline = time.monotonic() + 10
            while dropped < connections and time.monotonic() < deadline:
                dropped = sum(1 for e in server.events() if e.get("event") == "client_not_reading")
                time.sleep(0.05)
        growth_mib = (peak - base) / 1024
        print(f"slow readers: RSS {base} KiB -> peak {peak} KiB (+{growth_mib:.1f} MiB)")
        assert connections == dropped
        deadline = time.monotonic() + 10
        while server.open_fds() > fds_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fds_before >= server.open_fds()
        assert growth_mib < 2 * connections * budget / (1 << 20) + 48, growth_mib
        assert before == snapshot(server)


# ---------------------------------------------------------------- idle crowds


def test_thousands_of_idle_connections(tmp_path: Path) -> None:
    """2,000 idle connections (half finished the handshake, half never said a
    word) while a good client keeps working; beyond ``max_connections`` new
    connections get a ``server_busy`` error frame."""
    idle, limit, extra = 2000, 2050, 150
    if not raise_fd_limit(idle + extra + 500):
        pytest.skip(f"needs {idle + extra + 500} file descriptors; the hard limit is lower")
    with config_server_process(
        tmp_path / "data", max_connections=limit, handshake_timeout=60.0, idle_timeout=60.0
    ) as server:
        trio.run(_fill, server.url, [b"v%d" % i for i in range(20)])
        before = snapshot(server)
        fds = server.open_fds()
        socks: list[socket.socket] = []
        try:
            socks = idle_crowd(server.port, idle)
            deadline = time.monotonic() + 30
            ready = 0
            while ready < idle // 2 and time.monotonic() < deadline:
                ready = sum(1 for e in server.events() if e.get("event") == "connection_ready")
                time.sleep(0.1)
            assert ready >= idle // 2
            rss = server.rss_kib()
            assert PRECIOUS in good_client_works(server)
            extras: list[socket.socket] = []
            for _ in range(extra):  # each one is in socks at once: closed even if the next fails
                extras.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
                socks.append(extras[-1])
            busy = count_busy(extras, wait=5.0)
            print(f"idle crowd: {idle} connections, server RSS {rss} KiB, {busy} refused busy")
            assert extra - (limit - idle) <= busy <= extra
        finally:
            for sock in socks:
                sock.close()
        # Every connection's file descriptor is released once its peer left (I5).
        deadline = time.monotonic() + 20
        while server.open_fds() > fds and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fds >= server.open_fds()
        assert PRECIOUS in good_client_works(server)
        assert before == snapshot(server)
