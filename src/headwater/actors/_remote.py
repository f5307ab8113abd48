"""Refs to actors in other processes: :class:`RemoteActorRef` and its client.

Theory of operation
-------------------
An :class:`ActorClient` (from :func:`open_actor_client`, which owns its
nursery) keeps one connection per ``(host, port)``, shared by every ref to
that peer. A connection is a sans-IO
:class:`~headwater.transport.ClientConnection` run by the transport's
:class:`~headwater.transport.ClientDriver`: a *reader* task that turns
responses into outcomes for the waiting callers, and a *writer* task that
sends whatever the state machine queued. Callers never do I/O
themselves, so cancelling a ``tell`` or ``ask`` (or its timeout) never
leaves half a frame on the wire; the late answer is simply dropped.

Requests in flight are bounded by a semaphore of ``max_in_flight - 1``
slots (backpressure: a caller waits for a slot); a monitor holds its slot
until it fires or is cancelled. The last slot is kept for ``demonitor``
requests, so a cancel never waits behind the monitors it would free.
``tell`` completes when the message is in the far mailbox.

When the connection is lost (EOF, reset, protocol violation), every caller
waiting gets :class:`~headwater.ConnectionLostError`, every monitor fires
with reason ``"unreachable"``, every link delivers an exit with reason
``"unreachable"``, and the connection leaves the pool. A ref whose
connection was lost *reconnects on its next use*: one attempt at once, then
(while attempts fail) at most one per backoff delay, ``min(base * 2 ** (n -
1), max)`` seconds after the n-th failed attempt (``reconnect_backoff``,
``reconnect_backoff_max``); a use inside the delay raises
``ConnectionLostError`` saying when the next attempt is due. A monitor made
with ``reconnect=True`` keeps trying in the background after its
``"unreachable"`` and reports the actor's return (:class:`Up`).

The client checks during the handshake that the far side is an actors
listener (``server: "headwater-actors/..."``); a broker's client port gives
:class:`~headwater.WrongListenerError`.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import outcome
import trio

from headwater._errors import (
    ActorNotFound,
    ActorStopped,
    ClosedError,
    ConnectionLostError,
    HeadwaterError,
    HeadwaterTimeoutError,
    InvalidArgument,
    MailboxFull,
    RemoteProtocolError,
    WrongListenerError,
)
from headwater._logging import get_logger
from headwater.actors._actor import ActorRef, _check_timeout
from headwater.actors._links import EXIT_REASONS, Exit, ExitReason, Proc
from headwater.actors._monitor import DOWN_REASONS, Monitor, Up
from headwater.actors._wire import (
    ActorAddress,
    decode_reply,
    parse_actor_url,
    parse_listener_url,
)
from headwater.supervision._policy import Backoff
from headwater.supervision._specs import ActorSnapshot, unwrapping_groups
from headwater.transport._client import ClientDriver
from headwater.transport._connection import (
    DEFAULT_MAX_IN_FLIGHT,
    ClientConnection,
    ConnectionClosed,
)
from headwater.transport._messages import MessageRegistry

__all__ = ["ActorClient", "RemoteActorRef", "connect_actor", "open_actor_client"]

_log = get_logger("headwater.actors.remote")

Opener = Callable[[str, int], Awaitable[trio.abc.Stream]]


class _Slot:
    """Where the reader puts the outcome of one request (a
    :class:`~headwater.transport.Waiter`)."""

    __slots__ = ("event", "result")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: outcome.Outcome[dict[str, Any]] | None = None

    def set(self, value: dict[str, Any] | None, error: HeadwaterError | None) -> None:
        if self.result is None:
            self.result = outcome.Error(error) if error is not None else outcome.Value(value or {})
            self.event.set()

    async def wait(self) -> dict[str, Any]:
        await self.event.wait()
        assert self.result is not None
        return self.result.unwrap()


class _MonitorSlot:
    """The answer to a ``monitor`` long poll fires its :class:`Monitor`."""

    __slots__ = ("channel", "monitor", "request_id")

    def __init__(self, channel: _Channel, monitor: Monitor, request_id: int) -> None:
        self.channel = channel
        self.monitor = monitor
        self.request_id = request_id

    def set(self, value: dict[str, Any] | None, error: HeadwaterError | None) -> None:
        if self.channel.monitors.pop(self.request_id, None) is None:
            return
        self.channel.slots.release()
        self.channel._fire_from(
            self.monitor, outcome.Error(error) if error is not None else outcome.Value(value or {})
        )


class _Channel:
    """One client connection to one peer, shared by refs (private): the
    transport's :class:`~headwater.transport.ClientDriver` (its writer task
    sends, so a cancelled caller never leaves half a frame; the core's
    keepalive pings a silent peer and declares it lost after 3 x keepalive),
    plus this layer's request slots, monitors and links."""

    def __init__(
        self, client: ActorClient, key: tuple[str, int], stream: trio.abc.Stream, token: str | None
    ) -> None:
        self.client = client
        self.key = key
        keepalive = client.keepalive
        self.conn = ClientConnection(
            token=token,
            client="headwater-actors",
            max_in_flight=client.max_in_flight,
            now=trio.current_time(),
            handshake_timeout=None if keepalive is None else 3 * keepalive,
            keepalive=keepalive,
        )
        self.driver = ClientDriver(
            stream, self.conn, address=self.where, after_answer=self._drain_backlog
        )
        self.token = token
        # One connection slot is kept for demonitor requests, so cancelling a
        # monitor never waits behind the monitors that fill the connection.
        self.slots = trio.Semaphore(client.max_in_flight - 1)
        self.pending = self.driver.pending
        self.monitors: dict[int, Monitor] = {}
        self.demonitor_backlog: list[int] = []
        self.lost: HeadwaterError | None = None
        self._scope = trio.CancelScope()

    @property
    def where(self) -> str:
        return f"headwater://{self.key[0]}:{self.key[1]}"

    @property
    def last_heard(self) -> float:
        return self.conn.last_heard

    # -- lifecycle -------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            try:
                await self._handshake()
            except BaseException:
                self.client._channels.pop(self.key, None)
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self.driver.stream)
                raise
            task_status.started()
            try:
                error = await self.driver.run()
                self._lose(error)
            finally:
                self._lose(self.lost or ClosedError("the actor client was closed"))
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self.driver.stream)

    async def _handshake(self) -> None:
        event = await self.driver.handshake(
            ClientDriver.no_token(self.where, "pass token=... to open_actor_client")
        )
        if isinstance(event, ConnectionClosed):
            if isinstance(event.error, HeadwaterTimeoutError):
                raise ConnectionLostError(
                    f"{self.where} did not complete the handshake within "
                    f"{3 * (self.client.keepalive or 0)}s (3 x keepalive): the peer is "
                    "unreachable or not a Headwater actors listener"
                )
            raise event.error or ConnectionLostError(
                f"{self.where} closed the connection during the handshake"
            )
        if not event.peer.startswith("headwater-actors"):
            raise WrongListenerError(
                f"{self.where} is not an actors listener (it says it is "
                f"{event.peer!r}: a broker's client port?); give the port the "
                "application passed to serve_actors (--actors-port), like "
                "headwater+actors://127.0.0.1:7701"
            )

    def _lose(self, error: HeadwaterError) -> None:
        if self.lost is None:
            if isinstance(error, ClosedError) and not isinstance(error, ConnectionLostError):
                self.lost = error
            elif isinstance(error, ConnectionLostError) and self.where in str(error):
                self.lost = error  # the driver's own words already name the peer
            else:
                self.lost = ConnectionLostError(f"connection to {self.where} lost: {error}")
            _log.info("actor_connection_lost", peer=self.where, error=str(error))
        if self.client._channels.get(self.key) is self:
            del self.client._channels[self.key]
        monitors, self.monitors = self.monitors, {}
        for request_id in monitors:
            self.pending.pop(request_id, None)
        lost = self.lost
        assert lost is not None
        self.driver.fail_pending(lambda _request_id: lost)
        for monitor in monitors.values():
            monitor._fire("unreachable", str(self.lost))
            self.client._watch_for_return(monitor)
        self._scope.cancel()

    def _drain_backlog(self) -> None:
        """After each answer: send the demonitors that waited for room."""
        while self.demonitor_backlog and len(self.conn.in_flight) < self.conn.max_in_flight:
            self._send_demonitor(self.demonitor_backlog.pop())

    @staticmethod
    def _fire_from(monitor: Monitor, result: outcome.Outcome[dict[str, Any]]) -> None:
        if isinstance(result, outcome.Error):
            error = result.error
            monitor._fire(
                "not_found" if isinstance(error, ActorNotFound) else "unreachable", str(error)
            )
            return
        assert isinstance(result, outcome.Value)
        body = result.value
        for reason in DOWN_REASONS:
            if body.get("reason") == reason:
                monitor._fire(reason, str(body.get("detail", "")))
        # "demonitored": the monitor was cancelled on our side already

    # -- requests ----------------------------------------------------------------

    def _is_lost(self) -> bool:
        return self.lost is not None  # re-read after an await (mypy narrows too eagerly)

    def _check(self) -> None:
        if self.lost is not None:
            raise self.lost

    async def poll(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """Like :meth:`request` for a long poll (``link``): when cancelled
        before the answer, the far side is told to drop it (``demonitor``)."""
        self._check()
        async with self.slots:
            self._check()
            request_id = self.conn.send_request(op, body)
            slot = _Slot()
            self.pending[request_id] = slot
            self.driver.wake()
            try:
                return await slot.wait()
            finally:
                if self.pending.pop(request_id, None) is not None and self.lost is None:
                    self._send_demonitor(request_id)

    async def request(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its answer (cancellation-safe)."""
        self._check()
        async with self.slots:
            self._check()
            request_id = self.conn.send_request(op, body)
            slot = _Slot()
            self.pending[request_id] = slot
            self.driver.wake()
            try:
                return await slot.wait()
            finally:
                self.pending.pop(request_id, None)

    def send_nowait(self, op: str, body: dict[str, Any]) -> None:
        """Send one request without waiting for its answer (a slot is taken
        until it comes), or raise ``MailboxFull`` when no slot is free."""
        self._check()
        try:
            self.slots.acquire_nowait()
        except trio.WouldBlock:
            raise MailboxFull(
                f"{self.client.max_in_flight - 1} requests in flight to {self.where}; "
                "use await tell() to wait"
            ) from None
        try:
            request_id = self.conn.send_request(op, body)
        except BaseException:
            self.slots.release()
            raise
        slot = _Slot()
        self.pending[request_id] = slot
        self.driver.wake()
        self.client._nursery.start_soon(self._settle_nowait, request_id, slot, body)

    async def _settle_nowait(self, request_id: int, slot: _Slot, body: dict[str, Any]) -> None:
        try:
            await slot.wait()
        except HeadwaterError as exc:
            _log.warning(
                "remote_tell_nowait_failed", peer=self.where, path=body.get("path"), error=str(exc)
            )
        finally:
            self.pending.pop(request_id, None)
            self.slots.release()

    async def monitor(self, ref: RemoteActorRef, *, reconnect: bool = False) -> Monitor:
        """Set up a monitor on ``ref`` (a long-poll ``monitor`` request)."""
        monitor = Monitor(ref, self._cancel_monitor, reconnect=reconnect)
        if self.lost is not None:
            monitor._fire("unreachable", str(self.lost))
            self.client._watch_for_return(monitor)
            return monitor
        await self.slots.acquire()
        if self._is_lost():
            self.slots.release()
            monitor._fire("unreachable", str(self.lost))
            self.client._watch_for_return(monitor)
            return monitor
        try:
            request_id = self.conn.send_request("monitor", {"path": ref.path})
        except BaseException:
            self.slots.release()
            raise
        self.monitors[request_id] = monitor
        self.pending[request_id] = _MonitorSlot(self, monitor, request_id)
        self.driver.wake()
        return monitor

    def _cancel_monitor(self, monitor: Monitor) -> None:
        ids = [rid for rid, known in self.monitors.items() if known is monitor]
        if not ids:
            return
        request_id = ids[0]
        if self.lost is not None:
            return
        if len(self.conn.in_flight) < self.conn.max_in_flight:
            self._send_demonitor(request_id)
        else:
            self.demonitor_backlog.append(request_id)

    def _send_demonitor(self, monitor_id: int) -> None:
        try:
            self.conn.send_request("demonitor", {"monitor": monitor_id})
        except HeadwaterError:
            return  # closed meanwhile: the server drops its monitors itself
        self.driver.wake()


class _RemoteLink:
    """A link from a local incarnation to a remote actor (see ``_links``):
    a ``link`` long poll brings the far exit here; our exit goes there as an
    ``exit`` request."""

    def __init__(self, ref: RemoteActorRef, proc: Proc) -> None:
        self.ref = ref
        self.proc = proc
        self.scope = trio.CancelScope()
        self.channel: _Channel | None = None

    async def run(self, channel: _Channel, incarnation: object) -> None:
        self.channel = channel
        ref, proc = self.ref, self.proc
        reason: ExitReason
        body: dict[str, Any] = {"path": ref.path}
        if type(incarnation) is int:
            body["incarnation"] = incarnation  # the one we link to, even if it ends meanwhile
        with self.scope:
            try:
                answer = await channel.poll("link", body)
            except ConnectionLostError as exc:
                reason, detail = "unreachable", str(exc)
            except ActorNotFound as exc:  # gone between the check and the poll
                reason, detail = "normal", str(exc)
            except ClosedError:
                return  # our client closed: we are ending too
            else:
                found = answer.get("reason")
                if found not in EXIT_REASONS:
                    return  # "demonitored": unlinked
                reason, detail = found, str(answer.get("detail", ""))
            proc.watchers.discard(self)
            proc.signal(Exit(ref, ref.url, reason, detail))

    def cancel(self) -> None:
        self.proc.watchers.discard(self)
        self.scope.cancel()

    def __call__(self, reason: ExitReason, detail: str) -> None:
        """Our incarnation ended: stop polling, tell the far actor."""
        self.scope.cancel()
        channel = self.channel
        if channel is None or channel.lost is not None:
            return
        try:
            channel.send_nowait(
                "exit",
                {"path": self.ref.path, "from": self.proc.path, "reason": reason, "detail": detail},
            )
        except HeadwaterError as exc:
            _log.warning("remote_exit_not_sent", peer=channel.where, error=str(exc))


class RemoteActorRef(ActorRef):
    """A ref to an actor in another process, reached over a connection.

    Made by :meth:`ActorClient.lookup` or :func:`connect_actor`. ``tell``,
    ``ask``, ``monitor``, ``inspect`` and links behave as on a
    :class:`~headwater.actors.LocalActorRef` (same blocking, same errors),
    plus :class:`~headwater.ConnectionLostError` when the peer is gone and
    :class:`~headwater.LocalProtocolError` for a message whose class is not
    in the registry. After a lost connection the next use reconnects (with
    backoff; see the module docstring). ``tell_nowait`` raises
    ``MailboxFull`` when the connection has no free request slot and
    ``ConnectionLostError`` while it is lost (it never reconnects: it cannot
    wait); otherwise it sends without waiting, and far-side refusals are
    only logged.
    """

    __slots__ = ("_address", "_channel", "_client", "_registry")

    def __init__(self, channel: _Channel, address: ActorAddress, registry: MessageRegistry) -> None:
        self._channel = channel
        self._client = channel.client
        self._address = address
        self._registry = registry

    def __repr__(self) -> str:
        return f"<RemoteActorRef {self.url}>"

    @property
    def path(self) -> str:
        """The actor's path in its own system."""
        return self._address.path

    @property
    def url(self) -> str:
        """The full ``headwater://host:port/path`` address."""
        return self._address.url

    async def _live(self, *, wait: bool = False) -> _Channel:
        """The connection to use: the current one, or a new one if it was lost."""
        channel = self._channel
        if channel.lost is None:
            return channel
        channel = await self._client._reconnect(self._address, channel.lost, wait=wait)
        self._channel = channel
        return channel

    def _body(self, message: Any, timeout: float | None) -> dict[str, Any]:
        return {
            "path": self._address.path,
            "msg": self._registry.encode(message),
            "timeout": timeout,
        }

    async def tell(self, message: Any, *, timeout: float | None = None) -> None:
        """See :meth:`ActorRef.tell`; returns once the message is in the
        far mailbox."""
        seconds = _check_timeout(timeout)
        if math.isinf(seconds):  # fast path: no cancel scope
            channel = self._channel if self._channel.lost is None else await self._live()
            await channel.request("tell", self._body(message, None))
            return
        body = self._body(message, seconds)
        with trio.move_on_after(seconds) as scope:
            await (await self._live()).request("tell", body)
        if scope.cancelled_caught:
            raise HeadwaterTimeoutError(
                f"tell to {self.url} could not deliver within {seconds}s "
                "(far mailbox full, actor restarting, or too many requests in flight)"
            )

    def tell_nowait(self, message: Any) -> None:
        """See :meth:`ActorRef.tell_nowait` and the class docstring."""
        body = self._body(message, None)
        body["nowait"] = True
        self._channel.send_nowait("tell", body)

    async def ask(self, message: Any, *, timeout: float | None = 5.0) -> Any:
        """See :meth:`ActorRef.ask`; the reply must be a registered message
        or a plain CBOR value."""
        seconds = _check_timeout(timeout)
        body = self._body(message, None if math.isinf(seconds) else seconds)
        with trio.move_on_after(seconds):
            answer = await (await self._live()).request("ask", body)
            return decode_reply(self._registry, answer)
        raise HeadwaterTimeoutError(
            f"ask {type(message).__name__} to {self.url} got no reply within {seconds}s"
        )

    async def inspect(self, *, timeout: float | None = 5.0) -> Any:
        """See :meth:`ActorRef.inspect` (the far actor's ``inspect()``
        must return a plain CBOR value or a registered message)."""
        seconds = _check_timeout(timeout)
        body = {"path": self.path, "timeout": None if math.isinf(seconds) else seconds}
        with trio.move_on_after(seconds):
            answer = await (await self._live()).request("inspect", body)
            return decode_reply(self._registry, answer)
        raise HeadwaterTimeoutError(f"inspect of {self.url} got no answer within {seconds}s")

    async def monitor(self, *, reconnect: bool = False) -> Monitor:
        """See :meth:`ActorRef.monitor`; also fires with ``"unreachable"``
        when the connection to the actor's process is lost. With
        ``reconnect=True`` it then keeps trying and reports the actor's
        return through :meth:`Monitor.wait_up`."""
        await trio.lowlevel.checkpoint()
        try:
            channel = await self._live()
        except ConnectionLostError as exc:
            monitor = Monitor(self, reconnect=reconnect)
            monitor._fire("unreachable", str(exc))
            self._client._watch_for_return(monitor)
            return monitor
        return await channel.monitor(self, reconnect=reconnect)

    async def _link_from(self, proc: Proc, nursery: trio.Nursery) -> None:
        channel = await self._live()
        found = await channel.request("lookup", {"path": self.path})  # ActorNotFound: no link
        if found.get("state") in ("stopped", "failed", "stopping"):
            raise ActorStopped(
                f"cannot link to {self.url}: it is {found['state']} (Erlang would say "
                "noproc); monitor it instead to learn that it is gone"
            )
        link = _RemoteLink(self, proc)
        proc.watchers.add(link)
        nursery.start_soon(link.run, channel, found.get("incarnation"))

    def _unlink_from(self, proc: Proc) -> None:
        for watcher in list(proc.watchers):
            if isinstance(watcher, _RemoteLink) and watcher.ref is self:
                watcher.cancel()


async def _open_tcp(host: str, port: int, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise ConnectionLostError(f"cannot connect to headwater://{host}:{port}: {exc}") from None
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_hostname=host)
    return stream


def _check_max_in_flight(max_in_flight: int) -> None:
    if type(max_in_flight) is not int or max_in_flight < 2:
        raise InvalidArgument(f"max_in_flight={max_in_flight!r} must be an int >= 2")


class ActorClient:
    """Refs to actors served by other processes; made by :func:`open_actor_client`.

    One connection per ``(host, port)`` is shared by all refs to that peer.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        registry: MessageRegistry,
        *,
        token: str | None,
        ssl_context: ssl.SSLContext | None,
        max_in_flight: int,
        opener: Opener | None,
        keepalive: float | None = None,
        reconnect_backoff: Backoff | None = None,
    ) -> None:
        _check_max_in_flight(max_in_flight)
        self._nursery = nursery
        self.registry = registry
        self.max_in_flight = max_in_flight
        self.keepalive = keepalive
        self._token = token
        self._ssl_context = ssl_context
        self._opener = opener
        self._channels: dict[tuple[str, int], _Channel] = {}
        self._connecting: dict[tuple[str, int], trio.Lock] = {}
        self._closed = False
        self.reconnect_backoff = reconnect_backoff or Backoff(0.1, 5.0)
        # (failed attempts in a row, earliest time of the next) per peer
        self._retry: dict[tuple[str, int], tuple[int, float]] = {}

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this actor client was closed")

    async def _channel(self, host: str, port: int) -> _Channel:
        self._check_open()
        key = (host, port)
        lock = self._connecting.setdefault(key, trio.Lock())
        async with lock:
            channel = self._channels.get(key)
            if channel is not None and channel.lost is None:
                return channel
            if self._opener is not None:
                stream = await self._opener(host, port)
            else:
                stream = await _open_tcp(host, port, self._ssl_context)
            try:
                self._check_open()  # closed while connecting: its nursery may be gone
            except ClosedError:
                await trio.aclose_forcefully(stream)
                raise
            channel = _Channel(self, key, stream, self._token)
            self._channels[key] = channel
            await self._nursery.start(channel.run)  # run() closes the stream if it fails
            return channel

    async def _reconnect(
        self, address: ActorAddress, cause: HeadwaterError, *, wait: bool = False
    ) -> _Channel:
        """A live connection to ``address``'s peer for a ref whose connection
        was lost (``cause``), honouring the reconnect backoff: inside the
        delay, raise ``ConnectionLostError`` (or sleep, with ``wait``)."""
        if self._closed or (
            isinstance(cause, ClosedError) and not isinstance(cause, ConnectionLostError)
        ):
            raise ClosedError("this actor client was closed") from None
        key = (address.host, address.port)
        live = self._channels.get(key)
        if live is not None and live.lost is None:
            return live
        failures, next_at = self._retry.get(key, (0, -math.inf))
        now = trio.current_time()
        if now < next_at:
            if not wait:
                raise ConnectionLostError(
                    f"connection to {address.url} lost ({cause}); the next reconnect "
                    f"attempt is due in {next_at - now:.3f}s"
                )
            await trio.sleep_until(next_at)
        try:
            channel = await self._channel(address.host, address.port)
        except ConnectionLostError as exc:
            failures += 1
            delay = self.reconnect_backoff.delay(failures)
            self._retry[key] = (failures, trio.current_time() + delay)
            raise ConnectionLostError(
                f"cannot reconnect to {address.url} ({exc}); next attempt in {delay:.3f}s"
            ) from None
        self._retry.pop(key, None)
        _log.info("actor_reconnected", peer=channel.where, after_failures=failures)
        return channel

    def _watch_for_return(self, monitor: Monitor) -> None:
        """For a ``reconnect=True`` monitor that fired ``"unreachable"``:
        keep reconnecting in the background and fire its ``Up``."""
        if monitor.reconnect and not self._closed and isinstance(monitor.ref, RemoteActorRef):
            self._nursery.start_soon(self._await_return, monitor.ref, monitor)

    async def _await_return(self, ref: RemoteActorRef, monitor: Monitor) -> None:
        missing = 0
        while monitor.up is None and not monitor._is_cancelled():
            try:
                channel = await ref._live(wait=True)  # waits out the reconnect backoff
                await channel.request("lookup", {"path": ref.path})
                fresh = await channel.monitor(ref, reconnect=True)
            except ConnectionLostError:
                # Not back yet: the next _live waits for the next attempt (and
                # if the connection was made but dropped at once, back off here).
                missing += 1
                if (ref._address.host, ref._address.port) not in self._retry:
                    await trio.sleep(self.reconnect_backoff.delay(missing))
                continue
            except ActorNotFound:
                # Its process is back but the actor is not (yet): back off too.
                missing += 1
                await trio.sleep(self.reconnect_backoff.delay(missing))
                continue
            except ClosedError:
                return
            if monitor._is_cancelled():
                fresh.cancel()
                return
            _log.info("actor_reachable_again", actor=ref.url)
            monitor._fire_up(Up(ref, ref.path, fresh))

    async def tree(self, url: str) -> ActorSnapshot:
        """The supervision tree of the system served at ``url``
        (``headwater+actors://host:port``), as ``headwater tree`` shows it.

        Raises :class:`~headwater.WrongListenerError` if ``url`` is a
        broker's port, :class:`~headwater.ConnectionLostError` if nothing
        answers there."""
        host, port = parse_listener_url(url)
        channel = await self._channel(host, port)
        answer = await channel.request("get_tree", {})
        tree = answer.get("tree")
        if not isinstance(tree, dict):
            raise RemoteProtocolError("get_tree: the answer has no 'tree' map")
        try:
            return ActorSnapshot.from_dict(tree)
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"get_tree: the tree cannot be read ({exc})") from None

    async def kill(self, url: str, reason: str = "killed on request") -> None:
        """Crash the actor at ``url`` (``headwater://host:port/path``) on
        purpose, as ``system.kill`` does there (an experiment hook); returns
        once its incarnation ended. Raises :class:`~headwater.ActorNotFound`
        for an unknown path."""
        address = parse_actor_url(url)
        channel = await self._channel(address.host, address.port)
        await channel.request("kill", {"path": address.path, "reason": reason})

    async def lookup(self, url: str) -> RemoteActorRef:
        """Return a ref to the actor at ``url`` (``headwater://host:port/path``).

        Connects (or reuses the connection to that peer) and checks the actor
        exists: raises :class:`~headwater.ActorNotFound` if not,
        :class:`~headwater.ConnectionLostError` if the peer cannot be reached,
        :class:`~headwater.AuthenticationError` for a refused token,
        :class:`~headwater.ClosedError` once the client is closed.
        """
        address = parse_actor_url(url)
        channel = await self._channel(address.host, address.port)
        answer = await channel.request("lookup", {"path": address.path})
        path = answer.get("path")
        if isinstance(path, str) and path != address.path:
            address = ActorAddress(address.host, address.port, path)
        return RemoteActorRef(channel, address, self.registry)

    async def aclose(self) -> None:
        """Close every connection (idempotent): refs then raise
        :class:`~headwater.ClosedError`, monitors fire ``"unreachable"``."""
        self._closed = True
        for channel in list(self._channels.values()):
            channel._lose(ClosedError("the actor client was closed"))
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def open_actor_client(
    registry: MessageRegistry,
    *,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    opener: Opener | None = None,
    keepalive: float | None = 5.0,
    reconnect_backoff: float = 0.1,
    reconnect_backoff_max: float = 5.0,
) -> AsyncIterator[ActorClient]:
    """Open an :class:`ActorClient`, owning its connections' tasks.

    ``registry`` encodes the messages sent and decodes replies; ``token`` and
    ``ssl_context`` apply to every connection; ``max_in_flight`` (at most
    the server's, at least 2) bounds requests in flight per connection. ``opener``
    replaces TCP: an async ``(host, port) -> trio.abc.Stream`` (tests use
    ``trio.testing.memory_stream_pair``). ``keepalive`` (seconds, or
    ``None`` for never): a connection silent that long sends a ``ping``, and
    one silent for three times that is declared lost (its monitors fire
    ``"unreachable"``): this catches a peer whose machine or network vanished
    without closing the socket. ``reconnect_backoff`` and
    ``reconnect_backoff_max`` (seconds) pace the reconnects of refs whose
    connection was lost (see the module docstring). Leaving the block
    closes all.
    """
    _check_max_in_flight(max_in_flight)
    if keepalive is not None and (
        isinstance(keepalive, bool) or not isinstance(keepalive, int | float) or not keepalive > 0
    ):
        raise InvalidArgument(f"keepalive={keepalive!r} must be seconds > 0 or None")
    with unwrapping_groups():
        async with trio.open_nursery() as nursery:
            client = ActorClient(
                nursery,
                registry,
                token=token,
                ssl_context=ssl_context,
                max_in_flight=max_in_flight,
                opener=opener,
                keepalive=keepalive,
                reconnect_backoff=Backoff(reconnect_backoff, reconnect_backoff_max),
            )
            try:
                yield client
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect_actor(
    url: str,
    registry: MessageRegistry,
    *,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    keepalive: float | None = 5.0,
) -> AsyncIterator[RemoteActorRef]:
    """A ref to the one actor at ``url``, with its own connection::

        async with connect_actor("headwater://127.0.0.1:7701/echo", registry) as ref:
            print(await ref.ask(Ping()))

    For several refs, share connections with :func:`open_actor_client`.
    """
    async with open_actor_client(
        registry,
        token=token,
        ssl_context=ssl_context,
        max_in_flight=max_in_flight,
        keepalive=keepalive,
    ) as client:
        yield await client.lookup(url)
