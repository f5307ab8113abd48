"""`headwater serve --http-port` as a real process: the HTTP front end answers
beside the TCP listener, health without the token, everything else with it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .server_proc import server

pytestmark = pytest.mark.crash

TOKEN = "http-process-token"


def http_port(events: list[dict[str, object]]) -> int | None:
    for event in events:
        if event.get("event") == "http_listening" and isinstance(event.get("port"), int):
            return int(event["port"])  # type: ignore[call-overload]
    return None


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_serve_http_port_with_a_token(tmp_path: Path) -> None:
    """Health and readiness answer without the token; /metrics is 401 without
    it and 200 with it; an unknown path is 404; SIGTERM still exits 0."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with server(
        tmp_path / "data", "--http-port", "0", "--auth-token-file", str(token_file)
    ) as proc:
        deadline = time.monotonic() + 20
        port = None
        while port is None and time.monotonic() < deadline:
            port = http_port(proc.events())
            time.sleep(0.05)
        assert port is not None, proc.log.read_text()
        base = f"http://127.0.0.1:{port}"
        assert (200, b"ok\n") == get(base + "/healthz")
        status, body = get(base + "/readyz")
        assert (200, {"ready": True, "failed": [], "not_serving": []}) == (status, json.loads(body))
        assert 401 == get(base + "/metrics")[0]
        assert 401 == get(base + "/metrics", "wrong")[0]
        status, body = get(base + "/metrics", TOKEN)
        assert 200 == status
        assert b"headwater_partitions 0.0" in body
        assert 404 == get(base + "/nope", TOKEN)[0]
        assert 0 == proc.stop()


async def test_bad_http_ports_are_config_errors(tmp_path: Path) -> None:
    """An out-of-range port and a port in use are ConfigErrors that say what to do."""
    import socket

    import trio

    import headwater
    from headwater import ConfigError

    with trio.fail_after(20):
        with pytest.raises(ConfigError, match="http_port=70000"):
            async with headwater.open_broker(str(tmp_path / "a"), http_port=70000):
                pass
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(ConfigError, match="choose another --http-port"):
                async with headwater.open_broker(str(tmp_path / "b"), http_port=port):
                    pass


async def test_connections_beyond_the_limit_get_503(tmp_path: Path) -> None:
    """With max_connections=1, a second connection gets 503 and is closed,
    while the first keeps being served; once it closes, new ones are served."""
    import trio

    from headwater.broker import open_broker
    from headwater.web import open_http

    async def read_all(stream: trio.SocketStream) -> bytes:
        got = b""
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return got
            got += data

    async def read_one(stream: trio.SocketStream) -> bytes:
        """One whole response (headers and a Content-Length body)."""
        got = b""
        while b"\r\n\r\n" not in got or not got.endswith(b"ok\n"):
            got += await stream.receive_some(4096)
        return got

    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    with trio.fail_after(20):
        async with (
            open_broker(str(tmp_path / "d")) as broker,
            open_http(broker, port=0, max_connections=1) as http,
        ):
            first = await trio.open_tcp_stream("127.0.0.1", http.port)
            await first.send_all(request)
            assert (await read_one(first)).startswith(b"HTTP/1.1 200 ")
            second = await trio.open_tcp_stream("127.0.0.1", http.port)
            async with second:
                assert (await read_all(second)).startswith(b"HTTP/1.1 503 ")
            await first.send_all(request)
            assert (await read_one(first)).startswith(b"HTTP/1.1 200 ")
            await first.aclose()
            while http.connections:  # noqa: ASYNC110 -- real sockets: the server sees the close later
                await trio.sleep(0.01)
            third = await trio.open_tcp_stream("127.0.0.1", http.port)
            async with third:
                await third.send_all(request[:-2] + b"Connection: close\r\n\r\n")
                assert (await read_all(third)).startswith(b"HTTP/1.1 200 ")
