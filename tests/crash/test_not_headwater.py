"""Connecting to something that is not a Headwater server (or not the way it
expects) says so in one line: an HTTP server, a TLS server reached without
TLS, a plain server reached with TLS, an untrusted certificate. Real sockets
on loopback, real clock."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

import headwater

from .server_proc import hw, server

pytestmark = pytest.mark.crash


async def _http_answer(stream: trio.SocketStream) -> None:
    try:
        await stream.receive_some(1024)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def _tls_answer(stream: trio.SSLStream[trio.SocketStream]) -> None:
    try:
        await stream.do_handshake()
        await stream.receive_some(1024)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # a client without TLS: the handshake fails, as with any TLS server
    finally:
        await trio.aclose_forcefully(stream)


@pytest.fixture
def ca() -> trustme.CA:
    """A private certificate authority."""
    return trustme.CA()


async def test_an_http_server_is_named(nursery: trio.Nursery) -> None:
    """headwater:// to an HTTP server: RemoteProtocolError saying it answered
    in HTTP (not "a frame of 1213486160 bytes")."""
    (listener,) = await nursery.start(partial(trio.serve_tcp, _http_answer, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    with trio.fail_after(20), pytest.raises(headwater.RemoteProtocolError) as info:
        async with headwater.connect(f"headwater://127.0.0.1:{port}", connect_timeout=5):
            pass  # pragma: no cover - must not connect
    assert (
        f"headwater://127.0.0.1:{port} is not a Headwater server: it answered in HTTP; "
        "check the port (Headwater's default is 7700)"
    ) == str(info.value)


async def test_a_tls_server_reached_without_tls_is_named(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    """headwater:// (no TLS) to a TLS server: the error says to use TLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    tls = [trio.SSLListener(listener, context) for listener in listeners]
    await nursery.start(trio.serve_listeners, _tls_answer, tls)
    with trio.fail_after(20), pytest.raises(headwater.ConnectionLostError) as info:
        async with headwater.connect(f"headwater://127.0.0.1:{port}", connect_timeout=5):
            pass  # pragma: no cover - must not connect
    assert "use headwaters:// or --tls" in str(info.value)


async def test_tls_to_a_plain_server_and_an_untrusted_certificate_are_named(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """headwaters:// to a plain Headwater server: "does not speak TLS";
    headwaters:// to a TLS server whose CA is not trusted: "not trusted"."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with server(tmp_path / "data") as plain:
        tls_url = plain.url.replace("headwater://", "headwaters://")
        with trio.fail_after(20), pytest.raises(headwater.RemoteProtocolError) as info:
            async with headwater.connect(tls_url, tls=str(ca_file), connect_timeout=5):
                pass  # pragma: no cover - must not connect
        assert f"TLS handshake with {tls_url} failed (" in str(info.value)
        assert "the server does not speak TLS there" in str(info.value)
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    args = ("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"))
    with server(tmp_path / "data2", *args, log_name="tls.log") as secure:
        tls_url = secure.url.replace("headwater://", "headwaters://")
        with trio.fail_after(20), pytest.raises(headwater.ConnectionLostError) as untrusted:
            async with headwater.connect(tls_url, connect_timeout=5):
                pass  # pragma: no cover - must not connect
        assert f"TLS: the certificate of {tls_url} is not trusted (" in str(untrusted.value)
        with trio.fail_after(20), pytest.raises(headwater.ConnectionLostError) as plain_client:
            async with headwater.connect(secure.url, connect_timeout=5):
                pass  # pragma: no cover - must not connect
        assert "use headwaters:// or --tls" in str(plain_client.value)


class _JoiningHTTPServer(http.server.ThreadingHTTPServer):
    """Closing waits for the request threads: no socket outlives the test."""

    daemon_threads = False
    block_on_close = True


@pytest.fixture
def http_url() -> Iterator[str]:
    """A real HTTP server (http.server) on a free loopback port."""
    httpd = _JoiningHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"headwater://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_cli_says_it_in_one_line(http_url: str) -> None:
    """`headwater topics list` against an HTTP server (Python's http.server,
    which waits for a newline the Headwater hello never sends): exit 3, one
    line saying the server did not answer the Headwater handshake."""
    result = hw(http_url, "topics", "list")
    assert 3 == result.returncode
    expected = (
        f"error: could not connect to {http_url}: it accepted the connection but did not "
        "answer the Headwater handshake within 5.0s; is it a Headwater server (an HTTP "
        "server waits like this)? check the port [timeout]"
    )
    assert [expected] == result.stderr.splitlines()
