"""Open the HTTP front end on a running broker, as a supervised child.

:func:`open_http` binds the listening socket (so a bad address fails at once
with a :class:`~headwater.ConfigError`), then adds an ``/http`` supervisor with
one ``listener`` child to the broker's supervision tree. The listener accepts
connections and serves each in its own task inside its nursery (connections
are short and many, so they are not tree nodes). If the listener crashes its
supervisor restarts it on the same socket. Leaving the block stops ``/http``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from headwater._errors import ConfigError
from headwater._logging import get_logger
from headwater.broker._broker import Broker
from headwater.supervision._specs import ChildSpec, SupervisorSpec
from headwater.transport._server import ConnectionLimit, accept_connections
from headwater.web._app import HttpApp
from headwater.web._http import serve_http_connection

__all__ = ["DEFAULT_HTTP_PORT", "HttpServer", "open_http"]

DEFAULT_HTTP_PORT = 7780
"""The port the docs suggest for ``--http-port``."""

_log = get_logger("headwater.web")


@attrs.define(eq=False)
class HttpServer:
    """A running HTTP front end (made by :func:`open_http`)."""

    host: str
    port: int
    app: HttpApp
    connections: int = 0

    @property
    def url(self) -> str:
        """The console's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Connection: close\r\nRetry-After: 1\r\nContent-Length: 44\r\n\r\n"
    b"too many HTTP connections; close some tabs\r\n"
)


async def _refuse(stream: trio.SocketStream, peer: str, limit: int) -> None:
    _log.warning("http_connection_refused", peer=peer, max_connections=limit)
    with trio.move_on_after(1.0):
        try:
            await stream.send_all(_BUSY)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await trio.aclose_forcefully(stream)


@asynccontextmanager
async def open_http(
    broker: Broker,
    *,
    port: int = DEFAULT_HTTP_PORT,
    host: str = "127.0.0.1",
    token: str | None = None,
    stream_interval: float = 1.0,
    idle_timeout: float = 60.0,
    max_connections: int = 256,
) -> AsyncIterator[HttpServer]:
    """Serve ``/metrics``, ``/healthz``, ``/readyz``, the JSON API and the
    console for ``broker`` on ``host:port`` (``port=0`` picks a free port) for
    the duration of the block. ``token`` (the broker protocol's token) is
    required for everything but the health endpoints. Beyond
    ``max_connections`` open connections (live consoles hold one each), new
    ones get ``503`` and are closed; a connection silent for ``idle_timeout``
    seconds is closed."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"http_port={port!r}; give 0..65535 (0 picks a free port)")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise ConfigError(f"max_connections={max_connections!r}; give an int >= 1")
    if max_connections < 1:
        raise ConfigError(f"max_connections={max_connections}; give an int >= 1")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ConfigError("the HTTP token must be a non-empty string (or None)")
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}; "
            "choose another --http-port or stop the program using it"
        ) from None
    actual = listeners[0].socket.getsockname()[1]
    app = HttpApp(broker, token=token, stream_interval=stream_interval)
    server = HttpServer(host, actual, app)

    limit = ConnectionLimit(max_connections)

    async def serve(stream: trio.SocketStream, peer: str, release: Callable[[], None]) -> None:
        try:
            await serve_http_connection(stream, app, peer=peer, idle_timeout=idle_timeout)
        finally:
            release()
            server.connections = limit.count

    async def listener() -> None:
        async with trio.open_nursery() as nursery:

            async def start(stream: trio.SocketStream, peer: str) -> None:
                if limit.full():
                    nursery.start_soon(_refuse, stream, peer, max_connections)
                    return
                release = limit.opened()
                server.connections = limit.count
                nursery.start_soon(serve, stream, peer, release)

            await accept_connections(listeners, start, log=_log, event="http_accept_failed")

    spec = SupervisorSpec(
        "http",
        [ChildSpec("listener", listener, shutdown=1.0)],
        max_restarts=10,
        within=10.0,
        backoff=0.1,
        shutdown=5.0,
    )
    await broker.system.start_child(spec)
    broker.http_port = actual
    _log.info("http_listening", host=host, port=actual, auth=token is not None)
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            broker.http_port = None
            await broker.system.stop_child("/http")
            for ln in listeners:
                await trio.aclose_forcefully(ln)
