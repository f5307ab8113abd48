"""The client half: one driver for every client-side connection.

Theory of operation
-------------------
:class:`ClientDriver` runs one :class:`~headwater.transport.ClientConnection`
over one ``trio.abc.Stream``: :meth:`~ClientDriver.handshake` (hello, the
token when the server asks, the peer's name), then :meth:`~ClientDriver.run`,
the *reading task*, until the connection ends. The reading task sleeps in
``receive_some`` under one cancel scope whose deadline is the core's
``next_deadline(now)`` (keepalive pings, a silent peer declared lost,
request deadlines), so there are no timer tasks; it hands each answer to the
:class:`Waiter` registered for its correlation id, pushes to ``on_push``, and
returns the error that ended the connection.

Sending has two ways, both through one lock so frames never interleave:
:meth:`~ClientDriver.flush` from the caller's own task (the short path: the
broker client's produce round trip has no extra task switch), or
:meth:`~ClientDriver.wake`, which lets the driver's writer task send (for
callers that must never be cancelled halfway through a write, such as the
remote-actor refs). Over plain TCP a caller cancelled inside
:meth:`~ClientDriver.flush` never leaves a frame half written nor drops the
frames it took (its own and other tasks'): the bytes not yet written are
kept and the writer task sends them first. Over TLS a write cancelled
midway breaks the stream (``trio.SSLStream`` refuses every later
operation), so no partial frame reaches the server: the connection fails
at its next write (requests waiting on it end then, or at their timeout).
Over an in-memory stream (tests) a partial frame may stay. (Shielding
those writes, or marking the connection lost on any cancelled write, each
broke callers' timeouts in tests.) A failed write marks the connection
lost (:attr:`~ClientDriver.lost`), wakes nobody by itself and ends the
reading task through the stream being closed;
:meth:`~ClientDriver.fail_pending` then settles every waiter with the
error the layer above chooses.

The layers above (the broker client in ``client/_tcp.py``, remote actor refs
in ``actors/_remote.py``) keep their own request semantics: how many
requests a caller may start, reconnects, what an answer means.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, Protocol

import trio

from headwater._errors import (
    AuthenticationError,
    ConnectionLostError,
    HeadwaterError,
)

from ._connection import (
    AuthRequired,
    ClientConnection,
    ConnectionClosed,
    ErrorReceived,
    HandshakeComplete,
    PushReceived,
    RequestExpired,
    ResponseReceived,
)
from ._stream import SendLock

__all__ = ["RECEIVE_SIZE", "ClientDriver", "Waiter"]

RECEIVE_SIZE: Final = 256 * 1024
"""Bytes asked of the stream per read."""


class Waiter(Protocol):
    """Where the driver puts the outcome of one request."""

    def set(self, value: dict[str, Any] | None, error: HeadwaterError | None) -> None:
        """The answer ``value`` arrived, or the request failed with ``error``."""


class ClientDriver:
    """Drive one client-side connection (see the module docstring).

    ``address`` names the peer in errors; ``on_push(event)`` hears pushed
    frames (protocol v2) on the reading task and must not block;
    ``on_expired(request_id)`` hears a request that passed the deadline it
    was sent with (it stays in flight until answered); ``after_answer()``
    runs after each answer was handed out (the layer's backlog).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: ClientConnection,
        *,
        address: str,
        on_push: Callable[[PushReceived], None] | None = None,
        on_expired: Callable[[int], None] | None = None,
        after_answer: Callable[[], None] | None = None,
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.address = address
        self.pending: dict[int, Waiter] = {}
        """Waiters by correlation id (the layer adds, the reader settles)."""
        self.lost: HeadwaterError | None = None
        """Why the connection can no longer be used (``None`` while it can)."""
        self.receives = 0
        """How many times bytes arrived."""
        self.first = bytearray()
        """The peer's first bytes (up to 8): who answered a failed handshake?"""
        self.on_push = on_push
        """Hears pushed frames on the reading task (may be set after the handshake)."""
        self._on_expired = on_expired
        self._after_answer = after_answer
        self._send_lock = SendLock()  # no yield before a send when free
        self._wake = trio.Event()
        # Bytes a cancelled flush took but did not write (sent before anything else).
        self._carry = b""
        # The socket of a plain TCP stream (writes whose progress we can see).
        self._socket: Any = stream.socket if isinstance(stream, trio.SocketStream) else None

    # ------------------------------------------------------------------ sending

    async def flush(self) -> None:
        """Send what the core queued, from the calling task. Raises
        :class:`~headwater.ConnectionLostError` (and marks the connection
        lost) if the stream broke, or the error it was lost with."""
        if not self.conn.data_to_send_pending and not self._carry:
            return  # nothing queued: not even a checkpoint (no extra task step)
        try:
            async with self._send_lock:
                data = self.conn.data_to_send()
                if self._carry:
                    data, self._carry = self._carry + data, b""
                if not data:
                    return
                if self.lost is not None:
                    raise self.lost
                try:
                    await self._send(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.lost = ConnectionLostError(
                        f"connection to {self.address} lost while sending: {exc}"
                    )
                    raise self.lost from None
        except trio.Cancelled:
            if self._carry or self.conn.data_to_send_pending:
                self.wake()  # the writer task sends what this task could not
            raise

    async def _send(self, data: bytes | bytearray) -> None:
        """Write ``data`` whole. Cancelled midway over TCP, the unwritten
        rest goes to ``_carry`` (see the module docstring for other streams)."""
        sock = self._socket
        if sock is None:
            # TLS (a cancelled write breaks the stream: the connection
            # fails at its next write), in-memory (tests): see the module docstring.
            await self.stream.send_all(data)
            return
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                sent += await sock.send(view[sent:])
        except trio.Cancelled:
            self._carry = bytes(view[sent:])
            raise

    def wake(self) -> None:
        """Let the writer task send what the core queued (never blocks)."""
        self._wake.set()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.flush()
            except HeadwaterError:
                await trio.aclose_forcefully(self.stream)  # the reader ends with it
                return

    # ---------------------------------------------------------------- handshake

    async def _receive(self, deadline: float) -> bytes | None:
        """Bytes from the peer (``b""`` at the end), ``None`` at ``deadline``."""
        with trio.move_on_at(deadline):
            try:
                data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if len(self.first) < 8:
                self.first += data[: 8 - len(self.first)]
            return data
        return None

    async def handshake(
        self, token: Callable[[AuthRequired], str]
    ) -> HandshakeComplete | ConnectionClosed:
        """Send the hello and read until the handshake finished (or the
        connection closed: the layer says why in its own words). ``token``
        gives the token when the server asks for one (or raises).

        Raises the error of an ``error`` frame the server sent, and
        :class:`~headwater.RemoteProtocolError` for a reply that is not the
        protocol's (see :attr:`first`)."""
        conn = self.conn
        try:
            await self.flush()
        except ConnectionLostError:
            pass  # a refusing server may have said why: read it below
        while True:
            event = conn.next_event()
            if event is None:
                now = trio.current_time()
                data = await self._receive(conn.next_deadline(now))
                if data is None:
                    conn.handle_timeout(trio.current_time())
                else:
                    conn.receive_data(data, trio.current_time())
                continue
            if isinstance(event, HandshakeComplete | ConnectionClosed):
                return event
            if isinstance(event, AuthRequired):
                conn.send_auth(token(event))
                await self.flush()
            elif isinstance(event, ErrorReceived):
                raise event.error

    # ------------------------------------------------------------------ reading

    async def run(self) -> HeadwaterError:
        """Read answers until the connection ends; return why it ended.
        Runs the writer task (see :meth:`wake`) beside the reading."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            error = await self._read()
            nursery.cancel_scope.cancel()
        return error

    async def _read(self) -> HeadwaterError:
        conn = self.conn
        stream = self.stream
        now = trio.current_time()
        while True:
            deadline = conn.next_deadline(now)  # nothing below awaits: ``now`` holds
            data: bytes | None = None
            try:
                if deadline == math.inf:  # the common case: no cancel scope to set up
                    data = bytes(await stream.receive_some(RECEIVE_SIZE))
                else:
                    with trio.move_on_at(deadline):
                        data = bytes(await stream.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                return self.lost or ConnectionLostError(
                    f"connection to {self.address} lost: {exc or type(exc).__name__}"
                )
            now = trio.current_time()
            if data is None:
                conn.handle_timeout(now)
            else:
                self.receives += 1
                conn.receive_data(data, now)
                del data
            while True:
                try:
                    event = conn.next_event()
                except HeadwaterError as exc:
                    return exc
                if event is None:
                    break
                if isinstance(event, ResponseReceived):
                    self._settle(event.id, event.body, None)
                elif isinstance(event, ErrorReceived):
                    if event.id is None:
                        return event.error
                    self._settle(event.id, None, event.error)
                elif isinstance(event, PushReceived):
                    if self.on_push is not None:
                        self.on_push(event)
                elif isinstance(event, RequestExpired):
                    if self._on_expired is not None:
                        self._on_expired(event.id)
                elif isinstance(event, ConnectionClosed):
                    return event.error or ConnectionLostError(
                        f"{self.address} closed the connection"
                    )
            if conn.data_to_send_pending:
                self.wake()  # a keepalive ping

    def _settle(
        self, request_id: int, value: dict[str, Any] | None, error: HeadwaterError | None
    ) -> None:
        waiter = self.pending.pop(request_id, None)
        if waiter is not None:
            waiter.set(value, error)
        if self._after_answer is not None:
            self._after_answer()

    def fail_pending(self, error_for: Callable[[int], HeadwaterError]) -> None:
        """Settle every waiter with ``error_for(request_id)`` (the connection
        ended; the layer words what that means for a request in flight)."""
        pending = list(self.pending.items())
        self.pending.clear()
        for request_id, waiter in pending:
            waiter.set(None, error_for(request_id))

    @staticmethod
    def no_token(address: str, hint: str) -> Callable[[AuthRequired], str]:
        """A ``token`` callback for a client without one: raises
        :class:`~headwater.AuthenticationError` naming ``address`` and
        ``hint`` (how to give a token)."""

        def refuse(_event: AuthRequired) -> str:
            raise AuthenticationError(f"{address} requires a token; {hint}")

        return refuse
