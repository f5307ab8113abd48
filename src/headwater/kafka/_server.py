"""The Kafka listener: a supervised actor beside the Headwater listener.

Theory of operation
-------------------
:func:`kafka_listener_spec` is a child of the server's ``/server`` supervisor
(``headwater serve --kafka-port``). It accepts TCP (optionally TLS)
connections; each becomes a ``temporary`` child ``/server/kafka-<n>`` that
runs :meth:`KafkaServer.serve_stream`: bytes go into the sans-IO
:class:`~headwater.kafka._wire.KafkaConnection`, each whole request is
answered by :class:`~headwater.kafka._handler.KafkaHandler` (which calls the
broker's one :class:`~headwater.broker.BrokerService`), and the answer is
written before the next request is read from the buffer. So a connection
answers strictly in the order the client sent (DECISIONS #24), as a Kafka
broker does, and a partition's produces on one connection are applied in
order. Clients pipeline by keeping several connections or several requests
in the socket buffer.

With an ``auth_token`` a client must authenticate with SASL PLAIN (any user
name, the token as the password) before anything but ApiVersions and the
SASL requests; anything else, or a wrong password, closes the connection.
A protocol violation closes only that connection; stored data and other
connections are untouched.
"""

from __future__ import annotations

import hmac
import itertools
import ssl
from typing import Any

import trio
from kio.schema.errors import ErrorCode

from headwater._errors import HeadwaterError
from headwater._logging import get_logger
from headwater.supervision._specs import ChildSpec
from headwater.transport._server import ConnectionLimit, accept_connections, peer_name

from ._groups import KafkaGroups
from ._handler import KafkaHandler, error_code
from ._wire import API_NAMES, KafkaConnection, KafkaProtocolViolation, build, response_class

__all__ = ["KafkaServer", "kafka_listener_spec"]

RECEIVE_SIZE = 256 * 1024
_SASL_HANDSHAKE = 17
_API_VERSIONS = 18
_SASL_AUTHENTICATE = 36
_WILDCARDS = {"", "0.0.0.0", "::"}

_log = get_logger("headwater.kafka")


class KafkaServer:
    """Serves Kafka clients for one broker (see the module docstring).

    ``system`` is the broker's actor system, ``service`` its
    :class:`~headwater.broker.BrokerService`; ``host`` is the configured
    listen address (a wildcard advertises each connection's local address).
    """

    def __init__(
        self,
        system: Any,
        service: Any,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        auth_token: str | None = None,
        max_connections: int = 1024,
        max_frame_size: int = 100 * 1024 * 1024,
        idle_timeout: float = 600.0,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.system = system
        self.service = service
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.auth_token = auth_token
        self.max_connections = max_connections
        self.max_frame_size = max_frame_size
        self.idle_timeout = idle_timeout
        self.shutdown_timeout = shutdown_timeout
        self._limit = ConnectionLimit(max_connections)
        self.groups = KafkaGroups()
        self._ids = itertools.count(1)

    async def accept_loop(self, listeners: list[trio.SocketListener]) -> None:
        """Accept connections for ever; each becomes a temporary child."""

        async def start(stream: trio.SocketStream, peer: str) -> None:
            await self.start_connection(stream)

        await accept_connections(listeners, start, log=_log, event="kafka_accept_failed")

    @property
    def connections(self) -> int:
        """How many Kafka connections are open."""
        return self._limit.count

    async def start_connection(self, stream: trio.SocketStream) -> None:
        """Start a connection child for an accepted socket (refused over the limit)."""
        peer = peer_name(stream)
        try:
            local = str(stream.socket.getsockname()[0])
        except OSError:
            local = self.host
        if self._limit.full():
            _log.warning("kafka_connection_refused", peer=peer, connections=self._limit.count)
            await trio.aclose_forcefully(stream)
            return
        advertised = local if self.host in _WILDCARDS else self.host
        wrapped: trio.abc.Stream = stream
        if self.ssl_context is not None:
            wrapped = trio.SSLStream(stream, self.ssl_context, server_side=True)
        name = f"kafka-{next(self._ids)}"
        release = self._limit.opened()

        async def run() -> None:
            try:
                await self.serve_stream(wrapped, peer=peer, advertised=advertised)
            finally:
                release()

        spec = ChildSpec(name, run, restart="temporary", shutdown=self.shutdown_timeout)
        try:
            await self.system.start_child(spec, parent="/server")
        except BaseException:
            release()
            await trio.aclose_forcefully(wrapped)
            raise

    async def serve_stream(self, stream: trio.abc.Stream, *, peer: str, advertised: str) -> None:
        """Serve one Kafka connection until the client leaves or breaks the
        protocol (then the stream is closed)."""
        conn = KafkaConnection(max_frame_size=self.max_frame_size)
        handler = KafkaHandler(self.service, host=advertised, port=self.port, groups=self.groups)
        log = _log.bind(peer=peer)
        authenticated = self.auth_token is None
        handshaken = False
        requests = 0
        reason = "closed by the client"
        try:
            while True:
                data: bytes | None = None
                with trio.move_on_after(self.idle_timeout):
                    try:
                        data = bytes(await stream.receive_some(RECEIVE_SIZE))
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        data = b""
                if data is None:
                    reason = f"idle for {self.idle_timeout}s"
                    break
                if not data:
                    break
                conn.receive_data(data)
                while True:
                    request = conn.next_request()
                    if request is None:
                        break
                    requests += 1
                    key = request.api_key
                    if not authenticated and key not in (
                        _API_VERSIONS,
                        _SASL_HANDSHAKE,
                        _SASL_AUTHENTICATE,
                    ):
                        raise KafkaProtocolViolation(
                            f"{API_NAMES.get(key, key)} before SASL authentication; "
                            "configure the client with SASL PLAIN and the server's token"
                        )
                    if key == _SASL_AUTHENTICATE:
                        if not handshaken:
                            raise KafkaProtocolViolation("SaslAuthenticate before SaslHandshake")
                        ok, body = self._authenticate(request)
                        await stream.send_all(conn.encode_response(request, body))
                        if not ok:
                            reason = "SASL authentication failed"
                            log.warning("kafka_authentication_failed")
                            return
                        authenticated = True
                        continue
                    try:
                        body = await handler.handle(request)
                        frame = None if body is None else conn.encode_response(request, body)
                    except HeadwaterError as exc:
                        # A request-level failure no API field can carry.
                        log.warning(
                            "kafka_request_failed",
                            api=API_NAMES.get(key),
                            code=error_code(exc).name,
                            error=str(exc),
                        )
                        raise KafkaProtocolViolation(str(exc)) from None
                    except Exception as exc:  # a bug: log it, close only this connection
                        log.error("kafka_request_failed", api=API_NAMES.get(key), exc_info=exc)
                        reason = f"internal error answering {API_NAMES.get(key, key)}"
                        return
                    if key == _SASL_HANDSHAKE:
                        handshaken = body.error_code == ErrorCode.none
                    if frame is not None:
                        await stream.send_all(frame)
        except KafkaProtocolViolation as exc:
            reason = f"protocol violation: {exc}"
            log.warning("kafka_protocol_violation", error=str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"connection lost: {exc}"
        finally:
            await trio.aclose_forcefully(stream)
            log.info("kafka_connection_closed", reason=reason, requests=requests)

    def _authenticate(self, request: Any) -> tuple[bool, Any]:
        parts = bytes(request.body.auth_bytes).split(b"\0")
        token = (self.auth_token or "").encode("utf-8")
        ok = len(parts) == 3 and hmac.compare_digest(parts[2], token)
        values = {
            "error_code": ErrorCode.none if ok else ErrorCode.sasl_authentication_failed,
            "error_message": None if ok else "wrong SASL PLAIN password: use the server's token",
            "auth_bytes": b"",
            "session_lifetime": 0,
        }
        return ok, build(response_class(_SASL_AUTHENTICATE, request.api_version), values)


def kafka_listener_spec(server: KafkaServer, listeners: list[trio.SocketListener]) -> ChildSpec:
    """The supervised child that accepts Kafka connections (``/server/kafka``)."""

    async def listener() -> None:
        await server.accept_loop(listeners)

    return ChildSpec("kafka", listener, shutdown=1.0)
