"""The remote client: :func:`connect` and the TCP channel under it.

Theory of operation
-------------------
:class:`TcpChannel` is a :class:`~headwater.client.Channel` that sends each
request message as a ``req`` frame (see :mod:`headwater.transport`) and
waits for its ``res``/``error``. One background task per channel owns the
connection: it connects, does the handshake (and authentication), reads
frames and wakes the request waiting on each correlation id. Many requests
are in flight at once (pipelining), at most ``max_in_flight`` (the server's
limit): a slot is freed only when the answer arrives, so the client never
exceeds it even when a caller times out.

When the connection drops, every request in flight fails with
:class:`~headwater.ConnectionLostError` (retriable: its outcome is unknown)
and the task reconnects with exponential backoff; requests made meanwhile
wait for the new connection, up to their timeout. Producers retry failed
batches with the same producer id and sequence numbers, so a batch whose
answer was lost is stored once. A wrong token or an unsupported version is
not retried: every request then fails with that error. On a protocol v2
connection the reader also hands ``push`` frames (group notices) to the
channel's push listeners.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
import trio.lowlevel

from headwater import _protocol as p
from headwater._aio import unwrapping_groups
from headwater._errors import (
    AuthenticationError,
    ClosedError,
    ConfigError,
    ConnectionLostError,
    HeadwaterError,
    HeadwaterTimeoutError,
    InvalidArgument,
    RemoteProtocolError,
    UnsupportedVersionError,
    WrongListenerError,
)
from headwater._logging import get_logger
from headwater.transport._client import ClientDriver
from headwater.transport._connection import (
    DEFAULT_MAX_IN_FLIGHT,
    ClientConnection,
    ConnectionClosed,
    PushReceived,
)
from headwater.transport._frames import DEFAULT_MAX_FRAME_SIZE
from headwater.transport._messages import PUSH_VERSION, ErrorFrame, error_from_frame
from headwater.transport._operations import decode_response, encode_request

from ._channel import Channel, FetchSubscription, PendingRequest, _timeout_seconds
from ._client import Client

__all__ = [
    "DEFAULT_URL",
    "ReconnectListener",
    "StreamOpener",
    "TcpChannel",
    "connect",
    "connect_channel",
    "parse_url",
]

DEFAULT_URL = "headwater://127.0.0.1:7700"
"""Where :func:`connect` and the CLI look for a server by default."""

StreamOpener = Callable[[], Awaitable[trio.abc.Stream]]
"""Opens a new byte stream to the server (TCP, TLS, or a memory stream in tests)."""
ReconnectListener = Callable[[int, HeadwaterError | None], None]
"""``on_reconnect(attempt, error)``: attempt ``attempt`` (1, 2, ... in each
series) to re-make a lost connection failed with ``error``; or, with
``error=None``, the connection is back after ``attempt`` failed attempts.
Called on the channel's task: it must not block."""

_log = get_logger("headwater.client")


def parse_url(url: object) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of a ``headwater://host:port`` URL
    (``headwaters://`` means TLS; the port defaults to 7700)."""
    if not isinstance(url, str):
        hint = (
            "; for an embedded broker use `async with broker.connect() as client`"
            if callable(getattr(url, "connect", None))
            else ""
        )
        raise InvalidArgument(f"url must be a str like {DEFAULT_URL!r}, not {url!r:.80}{hint}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("headwater", "headwaters"):
        raise InvalidArgument(
            f"url {url!r} must start with headwater:// (or headwaters:// for TLS), "
            f"e.g. {DEFAULT_URL}"
        )
    try:
        port = parts.port or 7700
    except ValueError:
        raise InvalidArgument(f"url {url!r} has an invalid port") from None
    if not parts.hostname:
        raise InvalidArgument(f"url {url!r} names no host; e.g. {DEFAULT_URL}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidArgument(f"url {url!r} must be just scheme://host:port")
    return parts.hostname, port, parts.scheme == "headwaters"


class _Slot:
    """One request in flight: where its answer goes (a
    :class:`~headwater.transport.Waiter`); the answer frees its slot."""

    __slots__ = ("done", "outcome", "slots")

    def __init__(self, slots: trio.Semaphore) -> None:
        self.done = trio.Event()
        self.outcome: Any = None
        self.slots = slots

    def set(self, value: dict[str, Any] | None, error: HeadwaterError | None) -> None:
        self.slots.release()
        self.outcome = error if error is not None else value
        self.done.set()


class _TcpPending(PendingRequest):
    """A request of :meth:`TcpChannel.submit`: its slot in ``pending`` (the
    driver calls :meth:`set` with the answer) and what its timeout needs."""

    __slots__ = (
        "_deadline",
        "_done",
        "channel",
        "receives_before",
        "request",
        "seconds",
        "session",
        "slots",
    )

    def __init__(self, channel: TcpChannel, request: Any, seconds: float, deadline: float) -> None:
        super().__init__()
        self.channel = channel
        self.request = request
        self.seconds = seconds
        self._deadline = deadline
        self._done = trio.Event()
        self.session: _Session | None = None
        self.slots: trio.Semaphore | None = None
        self.receives_before = -1

    @property
    def deadline(self) -> float:
        """See :attr:`PendingRequest.deadline`."""
        return self._deadline

    def set(self, value: dict[str, Any] | None, error: HeadwaterError | None) -> None:
        """The answer arrived (called by the driver): free the slot, keep it."""
        if self.slots is not None:
            self.slots.release()
        self.settle(error if error is not None else value)

    def settle(self, outcome: Any) -> None:
        """Keep ``outcome`` (an answer body or an error) and wake the waiter."""
        if self._done.is_set():
            return
        self._value = outcome
        self._done.set()
        if self.on_done is not None:
            self.on_done()

    def done(self) -> bool:
        """See :meth:`PendingRequest.done`."""
        return self._done.is_set()

    async def result(self) -> Any:
        """See :meth:`PendingRequest.result` (no task step when the answer
        is in: the caller was just woken by ``on_done``)."""
        if not self._done.is_set():
            with trio.move_on_at(self._deadline):
                await self._done.wait()
            if not self._done.is_set():
                raise await self.channel._timed_out(
                    self.request, self.session, self.receives_before, self.seconds
                )
        outcome = self._value
        if isinstance(outcome, BaseException):
            raise outcome
        return decode_response(outcome)


class _Session:
    """One live connection: the transport's client driver, with the slots
    (never more in flight than the server accepts) and pushed fetches."""

    def __init__(self, driver: ClientDriver) -> None:
        self.driver = driver
        self.stream = driver.stream
        self.conn = driver.conn
        self.address = driver.address
        self.pending = driver.pending
        # Answers free slots: never more in flight than the server accepts.
        self.slots = trio.Semaphore(driver.conn.max_in_flight)
        self.subs: dict[int, _TcpFetchSubscription] = {}  # pushed fetches open on it

    @property
    def lost(self) -> HeadwaterError | None:
        return self.driver.lost

    @lost.setter
    def lost(self, error: HeadwaterError | None) -> None:
        self.driver.lost = error

    @property
    def receives(self) -> int:
        return self.driver.receives

    async def flush(self) -> None:
        await self.driver.flush()


class _TcpFetchSubscription(FetchSubscription):
    """A pushed fetch on one connection (see :class:`FetchSubscription`).
    The channel's reader task delivers results and errors; credit goes back
    in :class:`~headwater._protocol.FetchCredit` requests of at least a
    quarter of the credit, sent without waiting for their answers."""

    def __init__(self, channel: TcpChannel, session: _Session, sub: int, credit: int) -> None:
        self.id = sub
        self._channel = channel
        self._session = session
        self._items: deque[p.FetchResult | HeadwaterError] = deque()
        self._arrived = trio.Event()
        self._owed = 0
        self._threshold = max(1, credit // 4)
        self._closed = False
        self._direct: Callable[[p.FetchResult], bool] | None = None
        self._heard = 0.0  # when a result last arrived (one taken directly too)

    def take_directly(self, hook: Callable[[p.FetchResult], bool] | None) -> None:
        """See :meth:`FetchSubscription.take_directly`."""
        self._direct = hook

    def __repr__(self) -> str:
        return (
            f"<pushed fetch {self.id} items={len(self._items)} owed={self._owed} "
            f"closed={self._closed} live_session={self._channel._usable(self._session)}>"
        )

    def _deliver(self, item: p.FetchResult | HeadwaterError) -> None:
        """(The reader task) one pushed result, or the error that ends it."""
        if self._closed:
            return
        direct = self._direct
        if (
            direct is not None
            and not self._items
            and isinstance(item, p.FetchResult)
            and direct(item)
        ):
            # Taken on this task (one task step fewer to the reader): its
            # credit is owed now; receive() sends it once it is due.
            self._heard = trio.current_time()
            self._owed += len(item.records)
            if self._owed >= self._threshold:
                self._arrived.set()
            return
        self._items.append(item)
        if isinstance(item, HeadwaterError):
            self._closed = True
            self._session.subs.pop(self.id, None)
        self._arrived.set()

    async def receive(self, timeout: float) -> p.FetchResult:
        """See :meth:`FetchSubscription.receive` (results taken directly
        count as arrivals for ``timeout``)."""
        self._heard = trio.current_time()
        while True:
            with trio.move_on_at(self._heard + timeout):
                while not self._items:
                    if self._closed:
                        raise ClosedError("this subscription is closed")
                    if self._owed >= self._threshold:
                        # Owed for results taken directly; shielded: a timeout
                        # never cuts a frame short on the shared connection.
                        with trio.CancelScope(shield=True):
                            await self.consumed(0)
                    await self._arrived.wait()
                    self._arrived = trio.Event()
                item = self._items.popleft()
                if isinstance(item, HeadwaterError):
                    raise item
                return item
            if trio.current_time() >= self._heard + timeout:
                break
        raise ConnectionLostError(
            f"no pushed fetch arrived from {self._channel.address} within {timeout}s "
            "(the server sends one at least every 30 s); subscribe again"
        )

    async def consumed(self, nbytes: int) -> None:
        """See :meth:`FetchSubscription.consumed`."""
        if self._closed:
            return
        self._owed += nbytes
        if self._owed >= self._threshold:
            owed, self._owed = self._owed, 0
            await self._channel._send_nowait(self._session, p.FetchCredit(self.id, owed))

    async def aclose(self) -> None:
        """See :meth:`FetchSubscription.aclose`."""
        if self._closed:
            return
        self._closed = True
        if self._session.subs.pop(self.id, None) is not None:
            await self._channel._send_nowait(self._session, p.FetchUnsubscribe(self.id))


class TcpChannel(Channel):
    """A channel to a remote broker (see the module docstring).

    Run :meth:`run` in a nursery (``await nursery.start(channel.run)``: it
    returns once the first connection is up, or raises why it could not be
    made); :func:`connect` does this for you.
    """

    def __init__(
        self,
        open_stream: StreamOpener,
        *,
        address: str = "server",
        token: str | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        connect_timeout: float = 10.0,
        backoff: float = 0.05,
        backoff_max: float = 2.0,
        on_reconnect: ReconnectListener | None = None,
    ) -> None:
        if token is not None and (not isinstance(token, str) or not token):
            raise InvalidArgument("token must be a non-empty str or None")
        self._open_stream = open_stream
        self.address = address
        self._token = token
        self._max_frame_size = max_frame_size
        self._connect_timeout = _timeout_seconds(connect_timeout)
        self._backoff = (backoff, backoff_max)
        self._max_in_flight = max_in_flight
        self._session: _Session | None = None
        self._connected = trio.Event()
        self._closed = False
        self._fatal: HeadwaterError | None = None
        self._last_error: HeadwaterError | None = None
        self._cancel = trio.CancelScope()
        self._on_reconnect = on_reconnect
        self._subs = 0  # the last pushed-fetch subscription id used
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        """Whether a connection is up right now."""
        return self._session is not None

    # ------------------------------------------------------------ requests

    async def request(self, request: Any, *, timeout: float | None = None) -> Any:
        """See :meth:`Channel.request`."""
        seconds = _timeout_seconds(timeout)
        op, body = encode_request(request)
        session: _Session | None = None
        receives_before = -1
        with trio.move_on_after(seconds):
            session = await self._wait_session()
            try:
                # A free slot is taken without a task switch (the request
                # checkpoints anyway: its write and the wait for its answer);
                # only a full window of requests in flight waits here. A
                # scope cancelled already raises now, before anything is
                # queued: past this point nothing yields until the write, so
                # the write's own check for cancellation cannot drop frames
                # it took from the connection (and their slots with them).
                await trio.lowlevel.checkpoint_if_cancelled()
                session.slots.acquire_nowait()
            except trio.WouldBlock:
                await session.slots.acquire()
            slot = _Slot(session.slots)
            try:
                if session is not self._session or session.lost is not None:
                    raise session.lost or ConnectionLostError(
                        f"connection to {self.address} was lost; retry"
                    )
                request_id = session.conn.send_request(op, body)
                session.pending[request_id] = slot
            except BaseException:
                session.slots.release()
                raise
            receives_before = session.receives
            await session.flush()
            await slot.done.wait()
            outcome = slot.outcome
            if isinstance(outcome, BaseException):
                raise outcome
            return decode_response(outcome)
        raise await self._timed_out(request, session, receives_before, seconds)

    async def _timed_out(
        self, request: Any, session: _Session | None, receives_before: int, seconds: float
    ) -> HeadwaterError:
        """The error of ``request``, which got no answer within ``seconds``
        (``receives_before``: the session's receive count when it was sent,
        -1 if it never was). The slot stays in ``pending``: a late answer
        frees it."""
        dropped = ""
        if (
            session is not None
            and session is self._session
            and session.lost is None
            and session.receives == receives_before
        ):
            # Nothing at all arrived since this request went out: the
            # connection may be dead without a reset (a black hole, a
            # forgotten NAT flow). Drop it so the next request reconnects.
            session.lost = ConnectionLostError(
                f"{self.address} sent nothing for {seconds}s with a request in flight; reconnecting"
            )
            dropped = "; nothing arrived meanwhile, so the connection is re-made"
            await trio.aclose_forcefully(session.stream)
        if receives_before < 0 and self._session is None:
            return ConnectionLostError(
                f"not connected to {self.address} within {seconds}s"
                + (f" (last error: {self._last_error})" if self._last_error else "")
            )
        return HeadwaterTimeoutError(
            f"{type(request).__name__} got no response from {self.address} within {seconds}s"
            + dropped
        )

    async def submit(self, request: Any, *, timeout: float | None = None) -> PendingRequest:
        """See :meth:`Channel.submit`: the request is written (in call order)
        before this returns; its answer is awaited by ``result()``."""
        seconds = _timeout_seconds(timeout)
        pending = _TcpPending(self, request, seconds, trio.current_time() + seconds)
        try:
            op, body = encode_request(request)
            with trio.move_on_at(pending.deadline):
                session = pending.session = await self._wait_session()
                try:  # as in request(): a free slot without a task switch
                    await trio.lowlevel.checkpoint_if_cancelled()
                    session.slots.acquire_nowait()
                except trio.WouldBlock:
                    await session.slots.acquire()
                try:
                    if session is not self._session or session.lost is not None:
                        raise session.lost or ConnectionLostError(
                            f"connection to {self.address} was lost; retry"
                        )
                    request_id = session.conn.send_request(op, body)
                    pending.slots = session.slots  # the answer frees the slot
                    session.pending[request_id] = pending
                except BaseException:
                    session.slots.release()
                    raise
                pending.receives_before = session.receives
                await session.flush()
        except HeadwaterError as exc:
            pending.settle(exc)
        return pending

    async def open_fetch_subscription(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        credit: int,
        max_bytes: int,
        isolation: str,
        timeout: float | None = None,
    ) -> FetchSubscription | None:
        """See :meth:`Channel.open_fetch_subscription` (``None`` while the
        connection speaks protocol version 1, or when ``max_in_flight``
        subscriptions, the server's limit, are open on it already)."""
        session = await self._wait_session()
        if session.conn.version < PUSH_VERSION or len(session.subs) >= session.conn.max_in_flight:
            return None  # a version 1 server, or as many as it allows: pull
        self._subs += 1
        sub = _TcpFetchSubscription(self, session, self._subs, credit)
        session.subs[sub.id] = sub  # before the request: pushes may follow its answer at once
        try:
            await self.request(
                p.FetchSubscribe(sub.id, topic, partition, offset, credit, max_bytes, isolation),
                timeout=timeout,
            )
        except BaseException:
            session.subs.pop(sub.id, None)
            sub._closed = True
            # Cancelled or timed out, the server may have opened it anyway:
            # close it there too (an unknown id is answered all the same).
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await self._send_nowait(session, p.FetchUnsubscribe(sub.id))
                except HeadwaterError:
                    pass  # the connection is going: so is the subscription
            raise
        return sub

    async def _send_nowait(self, session: _Session, request: Any) -> None:
        """Send ``request`` without waiting for its answer (credit returns,
        unsubscribes). Skipped when the connection is gone: so is what it
        was about."""
        if not self._usable(session):
            return
        op, body = encode_request(request)
        await session.slots.acquire()
        if not self._usable(session):
            session.slots.release()
            return
        try:
            request_id = session.conn.send_request(op, body)
        except BaseException:
            session.slots.release()
            raise
        session.pending[request_id] = _Slot(session.slots)  # the answer frees the slot
        try:
            await session.flush()
        except ConnectionLostError:
            pass  # the reader notices and fails what is in flight

    def _usable(self, session: _Session) -> bool:
        return session is self._session and session.lost is None

    async def _wait_session(self) -> _Session:
        while True:
            if self._closed:
                raise ClosedError("this client is closed; open a new one")
            if self._fatal is not None:
                raise self._fatal
            session = self._session
            if session is not None and session.lost is None:
                return session
            await self._connected.wait()
            if self._session is None and not self._closed and self._fatal is None:
                await trio.lowlevel.checkpoint()  # the event was reset for the next connection

    async def aclose(self) -> None:
        """See :meth:`Channel.aclose`."""
        if self._closed:
            return
        self._closed = True
        self._connected.set()
        session = self._session
        if session is not None:
            self._fail_pending(session, ClosedError("the client was closed"))
            await trio.aclose_forcefully(session.stream)
        self._cancel.cancel()

    # ------------------------------------------------------------ connection

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection up until :meth:`aclose` (see the class docstring)."""
        with self._cancel:
            first = True
            failures = 0
            while not self._closed:
                try:
                    session = await self._connect()
                except HeadwaterError as exc:
                    self._last_error = exc
                    if first or isinstance(
                        exc, AuthenticationError | UnsupportedVersionError | WrongListenerError
                    ):
                        if first:
                            raise
                        self._fatal = exc
                        self._connected.set()
                        return
                    failures += 1
                    delay = min(self._backoff[0] * 2 ** (failures - 1), self._backoff[1])
                    _log.info(
                        "reconnect_failed", server=self.address, error=str(exc), retry_in=delay
                    )
                    if self._on_reconnect is not None:
                        self._on_reconnect(failures, exc)
                    await trio.sleep(delay)
                    continue
                try:
                    if not first:
                        self.reconnects += 1
                        _log.info("reconnected", server=self.address, after_failures=failures)
                        if failures and self._on_reconnect is not None:
                            self._on_reconnect(failures, None)
                    failures = 0
                    self._session = session
                    self._connected.set()
                    if first:
                        first = False
                        task_status.started()
                    error = await self._read(session)
                except BaseException:
                    # Cancelled (aclose() closes the session it sees, but one
                    # that ran while this task held a finished handshake saw
                    # none) or a raising listener: close the stream here too,
                    # else the socket leaks.
                    await trio.aclose_forcefully(session.stream)
                    raise
                self._session = None
                self._connected = trio.Event()
                self._last_error = error
                self._fail_pending(session, error)
                await trio.aclose_forcefully(session.stream)
                if isinstance(error, AuthenticationError | UnsupportedVersionError):
                    self._fatal = error
                    self._connected.set()
                    return
                if not self._closed:
                    _log.info("connection_lost", server=self.address, error=str(error))
                    await trio.sleep(self._backoff[0])

    async def _connect(self) -> _Session:
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await self._open_stream()
                conn = ClientConnection(
                    token=self._token,
                    max_in_flight=self._max_in_flight,
                    max_frame_size=self._max_frame_size,
                )
                driver = ClientDriver(stream, conn, address=self.address)
                try:
                    event = await driver.handshake(
                        ClientDriver.no_token(
                            self.address,
                            "pass token=... (or --token / --token-file on the command line)",
                        )
                    )
                except RemoteProtocolError as exc:
                    raise _not_headwater(self.address, driver.first, exc) from None
                if isinstance(event, ConnectionClosed):
                    if event.error is not None and not isinstance(event.error, ConnectionLostError):
                        raise event.error
                    if driver.first:  # it said something, then hung up: whose protocol?
                        raise _not_headwater(self.address, driver.first, event.error)
                    # Name the server: "peer closed ..." alone does not say which.
                    raise ConnectionLostError(
                        f"{self.address} closed the connection during the handshake "
                        "without answering (a server that expects TLS does that: "
                        "then use headwaters:// or --tls)"
                    )
                if event.peer.startswith("headwater-actors"):
                    raise WrongListenerError(
                        f"{self.address} is an application's actors listener "
                        f"({event.peer}), not a broker; for its tree use "
                        "headwater tree --url headwater+actors://"
                        + self.address.split("://", 1)[-1]
                    )
                session = _Session(driver)
                driver.on_push = partial(self._pushed, session)
                return session
        except trio.TooSlowError:
            error: HeadwaterError = HeadwaterTimeoutError(
                f"could not connect to {self.address} within {self._connect_timeout}s"
                if stream is None
                else f"could not connect to {self.address}: it accepted the connection but did "
                f"not answer the Headwater handshake within {self._connect_timeout}s; is it a "
                "Headwater server (an HTTP server waits like this)? check the port"
            )
        except HeadwaterError as exc:
            error = exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            tls_error = _tls_failure(self.address, exc)
            if tls_error is not None:
                error = tls_error
            else:
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                error = ConnectionLostError(
                    f"cannot connect to {self.address}: {reason}; is the server running there?"
                )
        except BaseException:
            # Cancelled (the client closed mid-handshake): do not leak the socket.
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise error

    async def _read(self, session: _Session) -> HeadwaterError:
        """Read answers until the connection ends; return why it ended."""
        return await session.driver.run()

    def _pushed(self, session: _Session, event: PushReceived) -> None:
        """A push frame (protocol v2): records and errors of pushed fetches go
        to their subscription; group notices to their listeners."""
        if event.kind in ("fetch", "fetch_error"):
            sub = session.subs.get(event.sub) if event.sub is not None else None
            if sub is None:
                return  # closed by us meanwhile: drop what was on its way
            try:
                if event.kind == "fetch":
                    result = decode_response(event.body)
                    if not isinstance(result, p.FetchResult):
                        raise RemoteProtocolError(
                            f"a pushed fetch carried {type(result).__name__}, not fetch_result"
                        )
                    sub._deliver(result)
                else:
                    body = event.body
                    details = body.get("details")
                    sub._deliver(
                        error_from_frame(
                            ErrorFrame(
                                None,
                                str(body.get("code", "headwater_error")),
                                str(body.get("message", "")),
                                details if isinstance(details, dict) else {},
                            )
                        )
                    )
            except HeadwaterError as exc:
                sub._deliver(exc)
            return
        if event.kind != "group":
            _log.info("push_ignored", server=self.address, kind=event.kind)
            return
        try:
            message = decode_response(event.body)
        except HeadwaterError as exc:
            _log.warning("push_undecodable", server=self.address, error=str(exc))
            return
        self.deliver_push(message)

    def _fail_pending(self, session: _Session, error: HeadwaterError) -> None:
        session.lost = session.lost or (
            error
            if isinstance(error, ConnectionLostError | ClosedError)
            else ConnectionLostError(f"connection to {self.address} lost: {error}")
        )
        for sub in list(session.subs.values()):
            sub._deliver(
                ConnectionLostError(f"connection to {self.address} lost ({error}); subscribe again")
            )
        session.subs.clear()

        def lost(_request_id: int) -> HeadwaterError:
            if isinstance(error, ClosedError | AuthenticationError):
                return error
            return ConnectionLostError(
                f"connection to {self.address} lost with this request in flight "
                f"({error}); it may or may not have taken effect"
            )

        session.driver.fail_pending(lost)


# --------------------------------------------------------------------- handshake
# Who answered, when the Headwater handshake fails: the first bytes of the
# server's reply say whether it was an HTTP server or a TLS one.


def _not_headwater(
    address: str, first: bytes | bytearray, cause: HeadwaterError | None
) -> HeadwaterError:
    """The error for a server whose handshake reply is not Headwater's,
    named by what its first bytes look like."""
    if isinstance(cause, AuthenticationError | UnsupportedVersionError):
        return cause
    head = bytes(first[:8])
    if head.startswith((b"HTTP/", b"<!DOC", b"<html", b"<HTML")):
        what = "it answered in HTTP; check the port (Headwater's default is 7700)"
    elif len(head) >= 2 and head[0] in (0x15, 0x16) and head[1] == 0x03:
        what = "it speaks TLS; use headwaters:// (or --tls, --tls-ca)"
    else:
        what = f"its reply starts with {head!r}, not a Headwater frame; check the host and port"
    return RemoteProtocolError(f"{address} is not a Headwater server: {what}")


def _tls_failure(address: str, exc: BaseException) -> HeadwaterError | None:
    """The error for a TLS handshake that failed (``None`` if ``exc`` is not
    one): a certificate that is not trusted, or a server without TLS."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ConnectionLostError(
            f"TLS: the certificate of {address} is not trusted "
            f"({cause.verify_message or cause.reason}); pass its CA with --tls-ca (tls=...)"
        )
    reason = cause.reason or type(cause).__name__
    return RemoteProtocolError(
        f"TLS handshake with {address} failed ({reason}): the server does not speak TLS "
        "there; use headwater:// without --tls for a plain server"
    )


def _ssl_context(tls: bool | ssl.SSLContext | str | None, wanted: bool) -> ssl.SSLContext | None:
    if isinstance(tls, ssl.SSLContext):
        return tls
    if isinstance(tls, str):
        try:
            return ssl.create_default_context(cafile=tls)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS CA file {tls!r}: {exc}") from None
    if tls is None:
        tls = wanted
    if not isinstance(tls, bool):
        raise InvalidArgument(f"tls={tls!r}; give True, False, an ssl.SSLContext or a CA file path")
    return ssl.create_default_context() if tls else None


@asynccontextmanager
async def connect(
    url: str = DEFAULT_URL,
    *,
    token: str | None = None,
    tls: bool | ssl.SSLContext | str | None = None,
    connect_timeout: float = 10.0,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    on_reconnect: ReconnectListener | None = None,
    **client_options: Any,
) -> AsyncIterator[Client]:
    """A client of the Headwater server at ``url`` (``headwater://host:port``).

    It has exactly the API of an embedded broker's ``broker.connect()``::

        async with headwater.connect("headwater://127.0.0.1:7700") as client:
            await client.create_topic("orders", partitions=3)

    ``token`` authenticates (servers started with ``--auth-token-file``);
    ``tls`` is ``True`` (verify with the system's CAs), a CA file path, or an
    ``ssl.SSLContext`` (``headwaters://`` turns TLS on too). The connection
    is re-made with backoff when it drops (``on_reconnect``, a
    :data:`ReconnectListener`, hears of each failed attempt and of the
    return). Raises
    :class:`~headwater.ConnectionLostError` if the server cannot be reached,
    :class:`~headwater.AuthenticationError` for a wrong or missing token.
    """
    host, port, wanted = parse_url(url)
    context = _ssl_context(tls, wanted)
    scheme = "headwaters" if context is not None else "headwater"

    async def open_stream() -> trio.abc.Stream:
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        if context is not None:
            tls_stream = trio.SSLStream(stream, context, server_hostname=host)
            try:
                await tls_stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return tls_stream
        return stream

    channel = TcpChannel(
        open_stream,
        address=f"{scheme}://{host}:{port}",
        token=token,
        max_in_flight=max_in_flight,
        connect_timeout=connect_timeout,
        on_reconnect=on_reconnect,
    )
    async with connect_channel(channel, **client_options) as client:
        yield client


@asynccontextmanager
async def connect_channel(channel: TcpChannel, **client_options: Any) -> AsyncIterator[Client]:
    """A :class:`Client` over ``channel``, with its connection task running
    for the duration of the block (what :func:`connect` uses; tests pass a
    channel over memory streams)."""
    with unwrapping_groups():
        async with trio.open_nursery() as nursery:
            await nursery.start(channel.run)
            client = Client(channel, **client_options)
            try:
                yield client
            finally:
                await client.aclose()
