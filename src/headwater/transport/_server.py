"""The serving half: one driver for every server-side connection, and the
accept loop with connection limits that the front ends share.

Theory of operation
-------------------
:class:`ServerDriver` runs one :class:`~headwater.transport.ServerConnection`
over one ``trio.abc.Stream``. Its *reading task* (the one that calls
:meth:`ServerDriver.run`) receives bytes, feeds the sans-IO core and acts on
its events; it sleeps in ``receive_some`` under one cancel scope whose
deadline is the core's ``next_deadline(now)`` (handshake and idle timeouts),
so there are no timer tasks. Each request goes where the layer above's
``route`` says:

* :data:`TASK` (the default): a task of the connection's nursery awaits
  ``handle(request)`` and sends the answer (requests of one connection run
  concurrently, up to ``max_in_flight``);
* :data:`INLINE`: the reading task awaits ``handle(request)`` itself before
  it reads on (cheap or ordered requests: no task switch, arrival order);
* :data:`DEFERRED`: the layer answers later with :meth:`ServerDriver.answer`
  (from tasks it starts in :attr:`ServerDriver.nursery`).

``handle`` returns the response body; a :class:`~headwater.HeadwaterError`
it raises is answered as that error frame, any other exception is logged
(``request_failed``) and answered as an internal error; the connection goes
on in both cases. Answers and pushes (:meth:`ServerDriver.push`) are queued
in the core; a request's task writes its own answer, a writer task writes
pushes and deferred answers. Writes go through one lock and are bounded by
``send_timeout``: a peer that stops reading is dropped
(``client_not_reading``) when one write waits longer than that. Before each
read the driver awaits ``before_receive`` (the layer's backpressure). A
protocol violation queues an ``error`` frame and closes that connection
only. :meth:`ServerDriver.stop_reading` starts a graceful close: no more
requests are read, those in flight may finish for ``grace`` seconds.

:class:`ConnectionLimit` and :func:`accept_connections` are the accept side:
accept from several listeners (riding out ``EMFILE`` and friends), name the
peer, count connections against a limit, refuse beyond it, and let a drain
wait until the last connection is gone. The Headwater, actors, Kafka and
HTTP listeners all use them; only their framing differs.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import trio

from headwater._errors import (
    ClosedError,
    ConnectionLostError,
    HeadwaterError,
    LocalProtocolError,
)
from headwater._logging import get_logger

from ._connection import (
    ConnectionClosed,
    HandshakeComplete,
    RequestReceived,
    ServerConnection,
)
from ._stream import SendLock

__all__ = [
    "DEFERRED",
    "INLINE",
    "RECEIVE_SIZE",
    "TASK",
    "ConnectionLimit",
    "ServerDriver",
    "accept_connections",
    "peer_name",
]

RECEIVE_SIZE: Final = 256 * 1024
"""Bytes asked of the stream per read."""

TASK: Final = "task"
"""Route: handle the request in a task of its own (the default)."""
INLINE: Final = "inline"
"""Route: handle the request in the reading task, before reading on."""
DEFERRED: Final = "deferred"
"""Route: the layer answers later through :meth:`ServerDriver.answer`."""

_ACCEPT_RETRY = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)
_log = get_logger("headwater.transport")

Handler = Callable[[RequestReceived], Awaitable[Mapping[str, Any]]]


class ServerDriver:
    """Drive one server-side connection (see the module docstring).

    ``handle`` turns a request into its response body; ``route`` (optional)
    picks :data:`TASK`, :data:`INLINE` or :data:`DEFERRED` per request;
    ``on_ready`` hears the finished handshake; ``before_receive`` is awaited
    before each read (backpressure); ``answered(request, error)`` runs once a
    task-routed or inline request's answer was written (or dropped);
    ``busy()`` tells whether the layer runs streams for the connection (then
    it is not idle). ``send_timeout`` bounds one write (``None``: no bound).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: ServerConnection,
        handle: Handler,
        *,
        route: Callable[[RequestReceived], str] | None = None,
        on_ready: Callable[[HandshakeComplete], None] | None = None,
        before_receive: Callable[[], Awaitable[None]] | None = None,
        answered: Callable[[RequestReceived, BaseException | None], None] | None = None,
        busy: Callable[[], bool] | None = None,
        send_timeout: float | None = None,
        log: Any = None,
    ) -> None:
        self.stream = stream
        self.conn = conn
        self._handle = handle
        self._route = route
        self._on_ready = on_ready
        self._before_receive = before_receive
        self._answered = answered
        self._busy = busy
        self._send_timeout = send_timeout
        self.log = log if log is not None else _log
        self._send_lock = SendLock()  # no yield before a send when free
        self._wake = trio.Event()
        self._broken = False
        self._stalled = trio.CancelScope()
        self._receiver = trio.CancelScope()
        self._read_scope: trio.CancelScope | None = None
        self._handlers = 0  # request tasks running
        self._inline = False  # this read answered a request inline
        self._handlers_done = trio.Event()
        self._grace = 0.0
        self._nursery: trio.Nursery | None = None
        self.reason = "closed by the client"
        """Why the connection ended (for the layer's closing log line)."""
        self.ready = False
        self.requests = 0
        self.errors = 0

    @property
    def nursery(self) -> trio.Nursery:
        """The connection's nursery: tasks started here end with it."""
        assert self._nursery is not None, "the driver is not running"
        return self._nursery

    # ---------------------------------------------------------------- output

    def answer(self, request_id: int, result: Mapping[str, Any] | BaseException) -> None:
        """Queue the answer to ``request_id`` (a body or an error) and wake
        the writer; dropped once the connection is closed."""
        if self._queue_answer(request_id, result):
            self._wake.set()

    def push(self, kind: str, body: Mapping[str, Any], sub: int | None = None) -> bool:
        """Queue a pushed frame and wake the writer; ``False`` (dropped) when
        the connection is closed or speaks version 1. Never blocks."""
        try:
            self.conn.send_push(kind, body, sub)
        except HeadwaterError:
            return False
        self._wake.set()
        return True

    async def flush(self) -> None:
        """Write what the core queued (one write at a time, bounded by
        ``send_timeout``). A broken stream, or a peer that read nothing for
        ``send_timeout``, ends the connection; this never raises for it."""
        if not self.conn.data_to_send_pending:
            return  # nothing queued: not even a checkpoint (no extra task step)
        async with self._send_lock:
            data = self.conn.data_to_send()
            if not data or self._broken:
                return
            try:
                if self._send_timeout is None:
                    await self.stream.send_all(data)
                else:
                    with trio.fail_after(self._send_timeout):
                        await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self._broken = True
                self._stop()
            except trio.TooSlowError:
                self._broken = True
                self.reason = f"the client read nothing for {self._send_timeout}s"
                self.log.warning("client_not_reading", seconds=self._send_timeout)
                self._stalled.cancel()

    def stop_reading(self, grace: float) -> None:
        """Begin a graceful close: read no more requests; those in flight
        may finish for ``grace`` seconds, then the connection closes."""
        self._grace = grace
        self._receiver.cancel()

    # ------------------------------------------------------------------ run

    async def run(self, setup: Callable[[trio.Nursery], None] | None = None) -> None:
        """Serve the connection until the peer leaves, breaks the protocol,
        times out, stops reading, or :meth:`stop_reading`; then close the
        stream. Never raises for the peer's faults. ``setup(nursery)`` runs
        first, with the connection's nursery (for the layer's own tasks)."""
        try:
            with self._stalled:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._writer)
                    if setup is not None:
                        setup(nursery)
                    with self._receiver:
                        await self._read()
                    if self._receiver.cancelled_caught:
                        self.reason = "server shutting down"
                        with trio.move_on_after(self._grace):
                            while self._handlers:
                                await self._handlers_done.wait()
                    nursery.cancel_scope.cancel()
                await self.flush()
        finally:
            self.conn.close()
            await trio.aclose_forcefully(self.stream)

    def _stop(self) -> None:
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def _read(self) -> None:
        conn = self.conn
        before = self._before_receive
        while True:
            if before is not None:
                await before()
            data: bytes | None = None
            with trio.move_on_at(self._deadline(trio.current_time())) as scope:
                self._read_scope = scope  # answers move it: the idle clock restarts
                try:
                    data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    data = b""
            self._read_scope = None
            if self._broken:  # a write failed (the reading was cancelled)
                return
            if data is None:
                now = trio.current_time()
                self._deadline(now)  # refresh what counts as busy
                conn.handle_timeout(now)
            else:
                conn.receive_data(data, trio.current_time())
            self._inline = False
            handshaking = not self.ready
            closed = await self._events()
            # Once ready, answers are written by their own tasks, so (unless
            # this loop answered inline) it reads on while a large pushed
            # frame is being sent: credit and commits are not held up behind
            # it. Past max_in_flight requests unanswered it waits as well,
            # which pushes back on a client that does not read.
            if handshaking or closed or self._inline or self._handlers > conn.max_in_flight:
                await self.flush()
            if closed or self._broken:
                return

    def _deadline(self, now: float) -> float:
        if self._busy is not None:
            self.conn.streams_open = 1 if self._busy() else 0
        return self.conn.next_deadline(now)

    async def _events(self) -> bool:
        """Act on the core's events; ``True`` once the connection is closed."""
        conn = self.conn
        while True:
            try:
                event = conn.next_event()
            except HeadwaterError as exc:
                self.reason = f"protocol violation: {exc}"
                self.log.warning("protocol_violation", code=exc.code, error=str(exc))
                return True
            if event is None:
                return False
            if isinstance(event, RequestReceived):
                self.requests += 1
                route = TASK if self._route is None else self._route(event)
                if route == TASK:
                    self._handlers += 1
                    assert self._nursery is not None
                    self._nursery.start_soon(self._answer_task, event)
                elif route == INLINE:
                    self._inline = True
                    await self._answer_inline(event)
            elif isinstance(event, HandshakeComplete):
                self.ready = True
                if self._on_ready is not None:
                    self._on_ready(event)
            elif isinstance(event, ConnectionClosed):
                if event.error is not None:
                    self.reason = str(event.error)
                    if event.error.code == "timeout":
                        self.log.info("connection_timed_out", error=str(event.error))
                return True

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.flush()

    async def _outcome(self, request: RequestReceived) -> Mapping[str, Any] | BaseException:
        try:
            return await self._handle(request)
        except HeadwaterError as exc:
            self.errors += 1
            return exc
        except Exception as exc:  # a bug: answer it, log it, keep serving
            self.errors += 1
            self.log.error("request_failed", op=request.op, exc_info=exc)
            return exc

    async def _answer_inline(self, request: RequestReceived) -> None:
        result = await self._outcome(request)
        self._queue_answer(request.id, result)
        if self._answered is not None:
            self._answered(request, result if isinstance(result, BaseException) else None)

    async def _answer_task(self, request: RequestReceived) -> None:
        error: BaseException | None = None
        try:
            try:  # _outcome() inlined: one coroutine frame less on the hot path
                result: Mapping[str, Any] | BaseException = await self._handle(request)
            except HeadwaterError as exc:
                self.errors += 1
                result = error = exc
            except Exception as exc:  # a bug: answer it, log it, keep serving
                self.errors += 1
                self.log.error("request_failed", op=request.op, exc_info=exc)
                result = error = exc
            self._queue_answer(request.id, result)
            del result  # the answer's frame is queued: hold no other copy while it is sent
            await self.flush()
        finally:
            self._handlers -= 1
            if not self._handlers and self._receiver.cancel_called:  # a drain waits
                self._handlers_done.set()
                self._handlers_done = trio.Event()
            if self._answered is not None:
                self._answered(request, error)

    def _queue_answer(self, request_id: int, result: Mapping[str, Any] | BaseException) -> bool:
        conn = self.conn
        try:
            if isinstance(result, BaseException):
                conn.send_error(request_id, result)
            else:
                try:
                    conn.send_response(request_id, result)
                except LocalProtocolError as exc:  # the answer is too large to send
                    conn.send_error(request_id, exc)
        except (ClosedError, ConnectionLostError, LocalProtocolError):
            return False  # the connection closed meanwhile: nobody is left to answer
        if not conn.in_flight and self._read_scope is not None and conn.idle_timeout is not None:
            now = trio.current_time()
            conn.touch(now)
            self._read_scope.deadline = self._deadline(now)
        return True


# ------------------------------------------------------------------ accepting


def peer_name(stream: trio.abc.Stream) -> str:
    """``host:port`` of a socket stream's peer (``"?"`` when unknown)."""
    socket = getattr(stream, "socket", None)
    try:
        host, port = socket.getpeername()[:2]  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return "?"
    return f"{host}:{port}"


class ConnectionLimit:
    """Counts a listener's open connections against ``limit`` and lets a
    drain wait for the last one (used by every front end)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.draining = False
        self._idle = trio.Event()
        self._idle.set()

    def full(self) -> bool:
        """Whether a new connection must be refused (at the limit, or draining)."""
        return self.draining or self.count >= self.limit

    def opened(self) -> Callable[[], None]:
        """Count one more connection; returns its idempotent ``release``
        (call it before closing the socket, so a client that sees the port
        free again also finds a free slot)."""
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.count -= 1
                if self.count == 0:
                    self._idle.set()

        return release

    async def wait_idle(self) -> None:
        """Wait until no connection is open."""
        await self._idle.wait()


async def accept_connections(
    listeners: Sequence[trio.abc.Listener[Any]],
    start: Callable[[Any, str], Awaitable[None]],
    *,
    log: Any = None,
    event: str = "accept_failed",
    close: bool = False,
) -> None:
    """Accept from every listener for ever and ``await start(stream, peer)``
    for each connection (``start`` should hand it to a task quickly). With
    ``close`` the listeners are closed when this ends (else they stay open
    for a restarted accept loop). When
    the process runs out of descriptors or memory, log ``event`` and retry
    after 0.1 s instead of crashing the listener."""
    logger = log if log is not None else _log

    async def accept(listener: trio.abc.Listener[Any]) -> None:
        try:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno in _ACCEPT_RETRY:
                        logger.error(event, error=str(exc))
                        await trio.sleep(0.1)
                        continue
                    raise
                await start(stream, peer_name(stream))
        finally:
            if close:
                await trio.aclose_forcefully(listener)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept, listener)
