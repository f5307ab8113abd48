"""Connection state machines, sans-IO, in the style of h11.

Theory of operation
-------------------
A connection object never touches a socket. The owner feeds it received
bytes (``receive_data``; ``b""`` means end of stream), pulls events
(``next_event`` returns one event, or ``None`` when it needs more bytes),
calls ``send_*`` methods, and writes whatever ``data_to_send()`` returns.

Client                                   Server
------                                   ------
(constructor queues ``hello``)  ------>  AWAIT_HELLO
HELLO_SENT                               picks the highest common version
            <------  ``hello_ok``        (or ``error`` unsupported_version + close)
  if ``auth_required``: AUTH_REQUIRED     AWAIT_AUTH (token required, none given)
  send_auth(token) ---- ``auth`` ---->    checks it (``error`` + close if wrong)
AUTH_SENT   <------  ``auth_ok``
READY       ``req`` (id, op, body) ->    READY
            <- ``res`` / ``error`` (id)
            <- ``push`` (kind, body)      (version 2 only: ``send_push``)

Both sides count the correlation ids in flight: the client refuses to send
more than ``max_in_flight`` (``LocalProtocolError``: wait for a response),
the server refuses a peer that sends more, or reuses an id in flight
(``RemoteProtocolError``). A response or error for an id that is not in
flight is a ``RemoteProtocolError``. Responses may come in any order.

From version 2 the server may also *push* frames the client did not ask for
(:meth:`ServerConnection.send_push`; the client sees :class:`PushReceived`).
A push never answers a request and takes no correlation id; on a version 1
connection ``send_push`` is a ``LocalProtocolError`` and a received push a
``RemoteProtocolError``.

Legal moves are the ``_CLIENT`` and ``_SERVER`` transition tables below;
anything else is refused with ``LocalProtocolError`` if *we* tried it (a
``send_*`` call) or ``RemoteProtocolError`` (or ``AuthenticationError``
before authentication) if the *peer* did. A peer's violation moves the
connection to CLOSED; the server first queues an ``error`` frame with no id
describing it, so the owner should flush ``data_to_send()`` and close the
stream. In CLOSED, ``next_event`` returns :class:`ConnectionClosed` forever
and ``send_*`` raise :class:`~headwater.ClosedError`.

Deadlines
---------
Time enters only as ``now`` arguments, so the drivers in :mod:`._client` and
:mod:`._server` sleep until ``next_deadline(now)`` and then call
``handle_timeout(now)``; no timer tasks. The deadlines a connection keeps:

* ``handshake_timeout``: from construction (``now=``) until the handshake
  completes. Expired, the server fails the connection with a ``timeout``
  error frame; the client closes with :class:`~headwater.HeadwaterTimeoutError`.
* ``idle_timeout`` (server): nothing received and nothing in flight (and no
  ``streams_open``) for that long; the connection is failed with a
  ``timeout`` error frame.
* ``keepalive`` (client): after that many seconds without a byte from the
  peer (``receive_data(data, now)``) a ``ping`` request is queued (its
  answer is swallowed); after three times that the connection is closed as
  lost (:class:`~headwater.ConnectionLostError`).
* request deadlines (client): ``send_request(..., deadline=t)``. Expired,
  ``next_event`` returns :class:`RequestExpired` for it once; the id stays in
  flight until its answer arrives (the peer may still be working on it).
"""

from __future__ import annotations

import hmac
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from headwater._errors import (
    AuthenticationError,
    ClosedError,
    ConnectionLostError,
    HeadwaterError,
    HeadwaterTimeoutError,
    InvalidArgument,
    LocalProtocolError,
    RemoteProtocolError,
    UnsupportedVersionError,
)

from ._frames import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from ._messages import (
    ENVELOPE,
    PROTOCOL_VERSIONS,
    PUSH_VERSION,
    Auth,
    AuthOk,
    ErrorFrame,
    Hello,
    HelloOk,
    Push,
    Request,
    Response,
    error_from_frame,
    error_to_frame,
)

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "AuthRequired",
    "ClientConnection",
    "ConnectionClosed",
    "ErrorReceived",
    "Event",
    "HandshakeComplete",
    "PushReceived",
    "RequestExpired",
    "RequestReceived",
    "ResponseReceived",
    "ServerConnection",
]

DEFAULT_MAX_IN_FLIGHT: Final = 128
"""Default limit of requests in flight on one connection."""


# ---- events ---------------------------------------------------------------


@attrs.frozen
class HandshakeComplete:
    """The handshake (and authentication, if any) finished: requests may flow.
    ``peer`` is the other side's free-form description."""

    version: int
    peer: str
    authenticated: bool


@attrs.frozen
class AuthRequired:
    """(Client) the server wants a token: call ``send_auth(token)``."""

    version: int
    peer: str


@attrs.frozen
class RequestReceived:
    """(Server) request ``id`` for operation ``op`` arrived; answer it with
    ``send_response`` or ``send_error``."""

    id: int
    op: str
    body: dict[str, Any]


@attrs.frozen
class ResponseReceived:
    """(Client) request ``id`` succeeded with ``body``."""

    id: int
    body: dict[str, Any]


@attrs.frozen
class ErrorReceived:
    """(Client) request ``id`` failed with ``error`` (rebuilt from the error
    frame's code). ``id`` is ``None`` for a connection-level error, after
    which the connection is closed."""

    id: int | None
    code: str
    message: str
    error: HeadwaterError


@attrs.frozen
class PushReceived:
    """(Client, protocol v2) the server pushed ``body`` of ``kind`` (for
    subscription ``sub``, if any)."""

    kind: str
    body: dict[str, Any]
    sub: int | None = None


@attrs.frozen
class ConnectionClosed:
    """The connection is closed. ``error`` is ``None`` for a clean close;
    ``unanswered`` lists request ids that were still in flight (their outcome
    is unknown)."""

    error: HeadwaterError | None = None
    unanswered: tuple[int, ...] = ()


@attrs.frozen
class RequestExpired:
    """(Client) request ``id`` passed the deadline given to ``send_request``.
    It stays in flight (its slot is taken) until the peer answers; the
    answer then arrives as usual."""

    id: int


Event = (
    HandshakeComplete
    | RequestExpired
    | AuthRequired
    | RequestReceived
    | ResponseReceived
    | ErrorReceived
    | PushReceived
    | ConnectionClosed
)


# ---- transition tables ----------------------------------------------------

HELLO_SENT: Final = "HELLO_SENT"
AUTH_REQUIRED: Final = "AUTH_REQUIRED"
AUTH_SENT: Final = "AUTH_SENT"
AWAIT_HELLO: Final = "AWAIT_HELLO"
AWAIT_AUTH: Final = "AWAIT_AUTH"
READY: Final = "READY"
CLOSED: Final = "CLOSED"

# (state, input) -> next state. Inputs starting "recv_" are the peer's moves.
_CLIENT: Final[dict[tuple[str, str], str]] = {
    (HELLO_SENT, "recv_hello_ok"): READY,
    (HELLO_SENT, "recv_hello_ok_auth"): AUTH_REQUIRED,
    (AUTH_REQUIRED, "send_auth"): AUTH_SENT,
    (AUTH_SENT, "recv_auth_ok"): READY,
    (READY, "send_request"): READY,
    (READY, "recv_res"): READY,
    (READY, "recv_error"): READY,
    (READY, "recv_push"): READY,
}
_SERVER: Final[dict[tuple[str, str], str]] = {
    (AWAIT_HELLO, "recv_hello"): READY,
    (AWAIT_HELLO, "recv_hello_auth"): AWAIT_AUTH,
    (AWAIT_AUTH, "recv_auth"): READY,
    (READY, "recv_req"): READY,
    (READY, "send_response"): READY,
    (READY, "send_error"): READY,
    (READY, "send_push"): READY,
}
# From any state: "recv_error_conn", "eof", "close", a violation -> CLOSED.


def _check_versions(versions: Iterable[int]) -> tuple[int, ...]:
    out = tuple(versions)
    if not out or any(type(v) is not int or v < 1 for v in out):
        raise InvalidArgument(f"versions={out!r} must be a non-empty list of positive ints")
    return tuple(sorted(set(out)))


def _check_seconds(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise InvalidArgument(f"timeout={seconds!r} must be seconds > 0 (or None for none)")
    return float(seconds)


def _check_limit(max_in_flight: int) -> int:
    if type(max_in_flight) is not int or max_in_flight < 1:
        raise InvalidArgument(f"max_in_flight={max_in_flight!r} must be a positive int")
    return max_in_flight


class _Connection:
    _table: dict[tuple[str, str], str]

    def __init__(
        self,
        state: str,
        max_frame_size: int,
        max_in_flight: int,
        *,
        now: float = 0.0,
        handshake_timeout: float | None = None,
    ) -> None:
        self._state = state
        self._decoder = FrameDecoder(max_frame_size=max_frame_size)
        self._max_frame_size = max_frame_size
        self._max_in_flight = _check_limit(max_in_flight)
        self._out: list[bytes] = []  # encoded frames waiting to be sent
        self._in_flight: set[int] = set()
        self._closed_event: ConnectionClosed | None = None
        self._closed_by_us = False
        self._version = 0
        self._peer = ""
        self._events: deque[Event] = deque()  # made by handle_timeout, before any frame
        self._handshake_deadline = (
            math.inf if handshake_timeout is None else now + _check_seconds(handshake_timeout)
        )
        self._handshake_timeout = handshake_timeout
        self._last_heard = now

    # -- public surface shared by both sides --

    @property
    def last_heard(self) -> float:
        """When bytes last arrived (the ``now`` given to ``receive_data``)."""
        return self._last_heard

    def next_deadline(self, now: float) -> float:
        """The earliest time at which :meth:`handle_timeout` has work to do
        (``math.inf`` for none; a time at or before ``now`` means at once)."""
        if self._state == CLOSED:
            return math.inf
        if self._state != READY:
            return self._handshake_deadline
        return self._ready_deadline(now)

    def handle_timeout(self, now: float) -> None:
        """Apply the deadlines due at ``now`` (see the module docs): the
        events they cause come out of :meth:`next_event`, the frames out of
        :meth:`data_to_send`."""
        if self._state == CLOSED:
            return
        if self._state != READY:
            if now >= self._handshake_deadline:
                self._expire(
                    HeadwaterTimeoutError(
                        f"the handshake did not finish within {self._handshake_timeout}s "
                        f"(state {self._state}); reconnect"
                    )
                )
            return
        self._ready_timeout(now)

    def _ready_deadline(self, now: float) -> float:
        return math.inf

    def _ready_timeout(self, now: float) -> None:
        return

    def _expire(self, error: HeadwaterError) -> None:
        """A deadline closed the connection with ``error``."""
        self._closed_by_us = True
        self._enter_closed(ConnectionClosed(error, tuple(sorted(self._in_flight))))

    @property
    def state(self) -> str:
        """The current state name (see the module's transition tables)."""
        return self._state

    @property
    def version(self) -> int:
        """The negotiated protocol version (0 before the handshake)."""
        return self._version

    @property
    def in_flight(self) -> frozenset[int]:
        """Correlation ids of requests sent/received but not yet answered."""
        return frozenset(self._in_flight)

    @property
    def max_in_flight(self) -> int:
        """The most requests allowed in flight at once."""
        return self._max_in_flight

    @property
    def data_to_send_pending(self) -> bool:
        """Whether :meth:`data_to_send` has bytes to give."""
        return bool(self._out)

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes queued for the peer."""
        # One frame (the common case) is returned as is: no copy of a large batch.
        data = b"".join(self._out)
        self._out.clear()
        return data

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Feed bytes received from the peer; ``b""`` means end of stream.
        ``now`` (the time they arrived) restarts the keepalive and idle clocks."""
        if self._state == CLOSED:
            return
        if now is not None:
            self._last_heard = now
        if not data:
            unanswered = tuple(sorted(self._in_flight))
            error: HeadwaterError | None = None
            if not self._decoder.at_boundary:
                error = ConnectionLostError(
                    f"peer closed the connection in the middle of a frame "
                    f"({self._decoder.buffered} bytes buffered)"
                )
            elif unanswered:
                error = ConnectionLostError(
                    f"peer closed the connection with {len(unanswered)} request(s) in flight"
                )
            elif self._state not in (READY,):
                error = ConnectionLostError(f"peer closed the connection in state {self._state}")
            self._pending_eof = ConnectionClosed(error, unanswered)
            return
        self._decoder.feed(data)

    def close(self) -> None:
        """Close from our side: later ``send_*`` raise ``ClosedError``."""
        if self._state != CLOSED:
            self._closed_by_us = True
            self._enter_closed(ConnectionClosed(None, tuple(sorted(self._in_flight))))

    _pending_eof: ConnectionClosed | None = None

    def next_event(self) -> Event | None:
        """Return the next event, or ``None`` if more bytes are needed.

        Raises :class:`~headwater.RemoteProtocolError` (or a subclass, or
        ``AuthenticationError``) if the peer broke the protocol; the
        connection is then closed.
        """
        while True:
            if self._events:
                return self._events.popleft()
            if self._closed_event is not None:
                return self._closed_event
            try:
                frame = self._decoder.next_frame()
            except RemoteProtocolError as exc:
                raise self._violation(exc) from None
            if frame is None:
                if self._pending_eof is not None:
                    self._enter_closed(self._pending_eof)
                    return self._pending_eof
                return None
            try:
                message = ENVELOPE.decode(frame)
            except RemoteProtocolError as exc:
                raise self._violation(exc) from None
            event = self._handle(message)
            if event is not None:
                return event

    # -- internals --

    def _handle(self, message: object) -> Event | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _enter_closed(self, event: ConnectionClosed) -> None:
        self._state = CLOSED
        self._closed_event = event
        self._in_flight.clear()

    def _violation(self, exc: HeadwaterError) -> HeadwaterError:
        """The peer broke the protocol: close, and return the error to raise."""
        if self._state != CLOSED:
            self._enter_closed(ConnectionClosed(exc, tuple(sorted(self._in_flight))))
        return exc

    def _remote(self, event: str) -> None:
        """Apply the peer's move ``event`` or raise (peer at fault)."""
        new = self._table.get((self._state, event))
        if new is None:
            raise self._violation(
                RemoteProtocolError(
                    f"peer sent {event.removeprefix('recv_')!r} in state {self._state}, "
                    "which the protocol does not allow"
                )
            )
        self._state = new

    def _local(self, event: str) -> None:
        """Apply our own move ``event`` or raise (we are at fault)."""
        if self._state == CLOSED:
            if self._closed_by_us:
                raise ClosedError(f"cannot {event}: this connection was closed")
            raise ConnectionLostError(
                f"cannot {event}: the connection is closed ({self._closed_event})"
            )
        new = self._table.get((self._state, event))
        if new is None:
            raise LocalProtocolError(
                f"cannot {event} in state {self._state}; "
                f"legal here: {sorted(e for s, e in self._table if s == self._state)}"
            ) from None
        self._state = new

    def _queue(self, message: object) -> None:
        self._out.append(
            encode_frame(ENVELOPE.encode(message), max_frame_size=self._max_frame_size)
        )


class ClientConnection(_Connection):
    """The client side of a Headwater connection (sans-IO).

    The constructor queues the ``hello`` frame offering ``versions`` (and the
    token, if given): flush ``data_to_send()`` first. Then feed bytes and read
    events; once :class:`HandshakeComplete` arrives, ``send_request`` returns
    a fresh correlation id per request.
    """

    _table = _CLIENT

    def __init__(
        self,
        *,
        versions: Iterable[int] = PROTOCOL_VERSIONS,
        token: str | None = None,
        client: str = "headwater-python",
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        now: float = 0.0,
        handshake_timeout: float | None = None,
        keepalive: float | None = None,
        ping: str = "ping",
    ) -> None:
        super().__init__(
            HELLO_SENT, max_frame_size, max_in_flight, now=now, handshake_timeout=handshake_timeout
        )
        self._versions = _check_versions(versions)
        self._next_id = 1
        self._keepalive = None if keepalive is None else _check_seconds(keepalive)
        self._ping_op = ping
        self._pinged = False  # a ping went out since we last heard from the peer
        self._pings: set[int] = set()  # our keepalive pings in flight (answers swallowed)
        self._deadlines: dict[int, float] = {}  # request id -> deadline, not yet expired
        self._queue(Hello(list(self._versions), token, client))

    def _ready_deadline(self, now: float) -> float:
        deadline = min(self._deadlines.values(), default=math.inf)
        if self._keepalive is not None:
            if self._pinged or len(self._in_flight) >= self._max_in_flight:
                deadline = min(deadline, self._last_heard + 3 * self._keepalive)
            else:
                deadline = min(deadline, self._last_heard + self._keepalive)
        return deadline

    def _ready_timeout(self, now: float) -> None:
        if self._deadlines:
            for request_id, deadline in sorted(self._deadlines.items(), key=lambda kv: kv[1]):
                if deadline <= now:
                    del self._deadlines[request_id]
                    self._events.append(RequestExpired(request_id))
        keepalive = self._keepalive
        if keepalive is None:
            return
        silent = now - self._last_heard
        if silent >= 3 * keepalive:
            self._expire(
                ConnectionLostError(
                    f"nothing heard from the peer for {silent:.1f}s (keepalive={keepalive}s): "
                    "it is unreachable"
                )
            )
        elif (
            silent >= keepalive and not self._pinged and len(self._in_flight) < self._max_in_flight
        ):
            self._pings.add(self.send_request(self._ping_op, {}))
            self._pinged = True

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Feed bytes received from the peer; ``b""`` means end of stream.
        ``now`` (the time they arrived) restarts the keepalive clock."""
        if now is not None:
            self._pinged = False
        super().receive_data(data, now)

    def send_request(
        self, op: str, body: Mapping[str, Any] | None = None, *, deadline: float | None = None
    ) -> int:
        """Queue request ``op`` with ``body``; return its correlation id.
        With ``deadline`` (a time on the ``now`` clock), :class:`RequestExpired`
        reports it once that time passed without an answer.

        Raises :class:`~headwater.LocalProtocolError` before the handshake
        completes or when ``max_in_flight`` requests are already in flight
        (wait for a response first), or if the frame is too large.
        """
        if self._state == READY and len(self._in_flight) >= self._max_in_flight:
            raise LocalProtocolError(
                f"{len(self._in_flight)} requests already in flight (max_in_flight="
                f"{self._max_in_flight}); wait for a response before sending more"
            )
        request_id = self._next_id
        frame = encode_frame(
            ENVELOPE.encode(Request(request_id, op, dict(body or {}))),
            max_frame_size=self._max_frame_size,
        )
        self._local("send_request")
        self._next_id += 1
        self._in_flight.add(request_id)
        if deadline is not None:
            self._deadlines[request_id] = deadline
        self._out.append(frame)
        return request_id

    def _answered(self, request_id: int) -> bool:
        """Forget ``request_id`` (answered); ``False`` for our own ping."""
        self._in_flight.discard(request_id)
        if self._deadlines:
            self._deadlines.pop(request_id, None)
        if self._pings and request_id in self._pings:
            self._pings.discard(request_id)
            return False
        return True

    def send_auth(self, token: str) -> None:
        """Answer :class:`AuthRequired` with ``token``."""
        self._local("send_auth")
        self._queue(Auth(token))

    def _handle(self, message: object) -> Event | None:
        if isinstance(message, ErrorFrame):
            error = error_from_frame(message)
            if message.id is None:
                self._violation(error)
                return ErrorReceived(None, message.code, message.message, error)
            self._remote("recv_error")
            if message.id not in self._in_flight:
                raise self._violation(
                    RemoteProtocolError(
                        f"peer sent an error for request id {message.id}, not in flight"
                    )
                )
            if not self._answered(message.id):
                return None
            return ErrorReceived(message.id, message.code, message.message, error)
        if isinstance(message, Response):
            self._remote("recv_res")
            if message.id not in self._in_flight:
                raise self._violation(
                    RemoteProtocolError(
                        f"peer sent a response for request id {message.id}, not in flight"
                    )
                )
            if not self._answered(message.id):
                return None
            return ResponseReceived(message.id, message.body)
        if isinstance(message, Push):
            self._remote("recv_push")
            if self._version < PUSH_VERSION:
                raise self._violation(
                    RemoteProtocolError(
                        f"peer pushed a {message.kind!r} frame on a protocol version "
                        f"{self._version} connection (pushes need version {PUSH_VERSION})"
                    )
                )
            return PushReceived(message.kind, message.body, message.sub)
        if isinstance(message, HelloOk):
            self._remote("recv_hello_ok_auth" if message.auth_required else "recv_hello_ok")
            if message.version not in self._versions:
                raise self._violation(
                    RemoteProtocolError(
                        f"server chose version {message.version}, which we did not offer "
                        f"({list(self._versions)})"
                    )
                )
            self._version = message.version
            self._peer = message.server
            if message.max_in_flight is not None and message.max_in_flight >= 1:
                self._max_in_flight = min(self._max_in_flight, message.max_in_flight)
            if message.auth_required:
                return AuthRequired(message.version, message.server)
            return HandshakeComplete(message.version, message.server, False)
        if isinstance(message, AuthOk):
            self._remote("recv_auth_ok")
            return HandshakeComplete(self._version, self._peer, True)
        self._remote("recv_" + ENVELOPE.tag_of(type(message)))
        return None  # pragma: no cover - _remote raised


class ServerConnection(_Connection):
    """The server side of a Headwater connection (sans-IO).

    Answers ``hello`` (and ``auth``) itself, queuing the reply; the owner sees
    :class:`HandshakeComplete`, then :class:`RequestReceived` events, and
    answers each with ``send_response`` or ``send_error`` in any order. With
    ``token`` set, nothing but the handshake is accepted until the client
    proves it knows the token. ``operations``, if given, is the set of known
    ``op`` names; a request for another is a protocol violation.
    """

    _table = _SERVER

    def __init__(
        self,
        *,
        versions: Iterable[int] = PROTOCOL_VERSIONS,
        token: str | None = None,
        server: str = "headwater",
        operations: Iterable[str] | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        now: float = 0.0,
        handshake_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        super().__init__(
            AWAIT_HELLO, max_frame_size, max_in_flight, now=now, handshake_timeout=handshake_timeout
        )
        self._idle_timeout = None if idle_timeout is None else _check_seconds(idle_timeout)
        self._busy_since = now  # when the connection last had work (a request, a stream)
        self.streams_open = 0
        """Subscriptions the owner runs for this connection (pushed fetches):
        while above 0 the connection is not idle."""
        self._versions = _check_versions(versions)
        self._token = token
        self._server = server
        self._operations = None if operations is None else frozenset(operations)

    def send_response(self, request_id: int, body: Mapping[str, Any] | None = None) -> None:
        """Queue the successful answer to request ``request_id``."""
        self._answer("send_response", request_id, Response(request_id, dict(body or {})))

    def send_error(self, request_id: int, error: BaseException) -> None:
        """Queue the failure of request ``request_id`` as an error frame (see
        :func:`error_to_frame` for how ``error`` is described)."""
        self._answer("send_error", request_id, error_to_frame(request_id, error))

    @property
    def can_push(self) -> bool:
        """Whether the negotiated version lets the server push (version 2+)."""
        return self._state == READY and self._version >= PUSH_VERSION

    def send_push(
        self, kind: str, body: Mapping[str, Any] | None = None, sub: int | None = None
    ) -> None:
        """Queue a pushed frame (protocol version 2 and later; see the module docs).

        Raises :class:`~headwater.LocalProtocolError` on a version 1
        connection or before the handshake, :class:`~headwater.ClosedError`
        once closed."""
        if self._state == READY and self._version < PUSH_VERSION:
            raise LocalProtocolError(
                f"cannot push on a protocol version {self._version} connection "
                f"(pushes need version {PUSH_VERSION})"
            )
        frame = encode_frame(
            ENVELOPE.encode(Push(kind, dict(body or {}), sub)),
            max_frame_size=self._max_frame_size,
        )
        self._local("send_push")
        self._out.append(frame)

    @property
    def idle_timeout(self) -> float | None:
        """Seconds of idleness after which the connection is closed (``None``: never)."""
        return self._idle_timeout

    def touch(self, now: float) -> None:
        """The owner finished work for this connection at ``now`` (its last
        answer went out): the idle clock restarts."""
        self._busy_since = max(self._busy_since, now)

    def _ready_deadline(self, now: float) -> float:
        if self._idle_timeout is None:
            return math.inf
        if self._in_flight or self.streams_open:
            self._busy_since = now
            return math.inf
        return max(self._busy_since, self._last_heard) + self._idle_timeout

    def _ready_timeout(self, now: float) -> None:
        if now >= self._ready_deadline(now):
            self.fail(
                HeadwaterTimeoutError(
                    f"connection timed out: did not send anything within {self._idle_timeout}s; "
                    "reconnect"
                )
            )

    def _expire(self, error: HeadwaterError) -> None:
        self.fail(error)

    def fail(self, error: HeadwaterError) -> None:
        """Queue a connection-level error frame (no id) and close."""
        if self._state == CLOSED:
            return
        self._queue(error_to_frame(None, error))
        self._closed_by_us = True
        self._enter_closed(ConnectionClosed(error, tuple(sorted(self._in_flight))))

    def _answer(self, event: str, request_id: int, message: object) -> None:
        if self._state == READY and request_id not in self._in_flight:
            raise LocalProtocolError(
                f"request id {request_id!r} is not in flight; cannot answer it"
            )
        frame = encode_frame(ENVELOPE.encode(message), max_frame_size=self._max_frame_size)
        self._local(event)
        self._in_flight.discard(request_id)
        self._out.append(frame)

    def _violation(self, exc: HeadwaterError) -> HeadwaterError:
        if self._state != CLOSED:
            self._queue(error_to_frame(None, exc))
        return super()._violation(exc)

    def _token_ok(self, token: str | None) -> bool:
        assert self._token is not None
        return token is not None and hmac.compare_digest(token.encode(), self._token.encode())

    def _handle(self, message: object) -> Event | None:
        if self._state == AWAIT_AUTH and not isinstance(message, Auth):
            raise self._violation(
                AuthenticationError(
                    f"got {ENVELOPE.tag_of(type(message))!r} before authentication; "
                    "send 'auth' with the token first"
                )
            )
        if isinstance(message, Request):
            self._remote("recv_req")
            if message.id in self._in_flight:
                raise self._violation(
                    RemoteProtocolError(f"request id {message.id} is already in flight")
                )
            if len(self._in_flight) >= self._max_in_flight:
                raise self._violation(
                    RemoteProtocolError(
                        f"more than max_in_flight={self._max_in_flight} requests in flight"
                    )
                )
            if self._operations is not None and message.op not in self._operations:
                raise self._violation(
                    RemoteProtocolError(
                        f"unknown operation {message.op!r}; known: {sorted(self._operations)}"
                    )
                )
            self._in_flight.add(message.id)
            return RequestReceived(message.id, message.op, message.body)
        if isinstance(message, Hello):
            common = set(self._versions) & {v for v in message.versions if v > 0}
            if not common:
                self._remote("recv_hello")  # only legal in AWAIT_HELLO
                raise self._violation(
                    UnsupportedVersionError(
                        f"no common protocol version: client offered {message.versions}, "
                        f"server supports {list(self._versions)}",
                        supported=self._versions,
                    )
                )
            needs_auth = self._token is not None
            if needs_auth and message.token is not None:
                self._remote("recv_hello")
                if not self._token_ok(message.token):
                    raise self._violation(AuthenticationError("the token is wrong"))
                needs_auth = False
                authenticated = True
            else:
                self._remote("recv_hello_auth" if needs_auth else "recv_hello")
                authenticated = False
            self._version = max(common)
            self._peer = message.client
            self._queue(HelloOk(self._version, self._server, needs_auth, self._max_in_flight))
            if needs_auth:
                return None
            return HandshakeComplete(self._version, message.client, authenticated)
        if isinstance(message, Auth):
            self._remote("recv_auth")
            if not self._token_ok(message.token):
                raise self._violation(AuthenticationError("the token is wrong"))
            self._queue(AuthOk())
            return HandshakeComplete(self._version, self._peer, True)
        self._remote("recv_" + ENVELOPE.tag_of(type(message)))
        return None  # pragma: no cover - _remote raised
