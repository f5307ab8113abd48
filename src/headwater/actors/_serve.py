"""Serving an actor system's actors on a stream or a TCP port.

Theory of operation
-------------------
One connection is one :class:`~headwater.transport.ServerConnection` (the
sans-IO handshake, auth and correlation ids) run by the transport's
:class:`~headwater.transport.ServerDriver`; this module supplies only the
handlers. Each request but ``tell`` and ``ask`` runs as its own task in the
connection's nursery (the state machine bounds them by ``max_in_flight``),
performs the local operation through an ordinary
:class:`~headwater.actors.LocalActorRef` and returns its answer.
``tell`` and ``ask`` requests are put into their target's mailbox by one
delivery task per target path, in arrival order, so messages from one
connection to one actor keep their order (Erlang's guarantee); an ask's reply
is awaited in a task of its own. A ``tell`` is answered only after the
message is in the mailbox, so the remote sender feels the backpressure.
``monitor`` is a long poll: its answer is the :class:`~headwater.actors.Down`,
or ``demonitored``. When the connection ends, its nursery is cancelled:
pending asks and monitors on this side are dropped (the client sees the connection lost).

Refs looked up by a connection are remembered for its lifetime, so a ref to
an actor stopped for good raises ``ActorStopped`` remotely as locally (a path
never seen by the connection gives ``ActorNotFound``).
"""

from __future__ import annotations

import math
import ssl
from functools import partial
from typing import Any

import attrs
import trio

from headwater._aio import unwrapping_groups
from headwater._errors import (
    ActorNotFound,
    ClosedError,
    ConfigError,
    HeadwaterError,
    HeadwaterTimeoutError,
    LocalProtocolError,
    RemoteProtocolError,
    UsageError,
)
from headwater._logging import get_logger
from headwater.actors._actor import ActorRef, LocalActorRef, _Ask, _Reply
from headwater.actors._links import EXIT_REASONS, Exit, ExitReason, Proc
from headwater.actors._monitor import Monitor
from headwater.actors._system import ActorSystem
from headwater.actors._wire import (
    ACTOR_OPS,
    encode_reply,
    field,
    normalize_path,
    timeout_field,
)
from headwater.transport._connection import (
    DEFAULT_MAX_IN_FLIGHT,
    RequestReceived,
    ServerConnection,
)
from headwater.transport._messages import MessageRegistry
from headwater.transport._server import DEFERRED, TASK, ServerDriver, accept_connections

__all__ = ["serve_actor_stream", "serve_actors"]

_log = get_logger("headwater.actors.remote")


class _LinkPoll:
    """A far ``link`` request waiting for its target incarnation to end."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.event = trio.Event()
        self.result: dict[str, Any] = {"reason": "demonitored", "detail": ""}
        proc.watchers.add(self)

    def __call__(self, reason: ExitReason, detail: str) -> None:
        if not self.event.is_set():
            self.result = {"reason": reason, "detail": detail}
            self.event.set()

    def cancel(self) -> None:
        self.proc.watchers.discard(self)
        self.event.set()


@attrs.frozen
class _Delivery:
    """A decoded ``tell`` or ``ask`` waiting for its turn at the mailbox."""

    request: RequestReceived
    ref: ActorRef
    message: Any
    timeout: float | None


class _Session:
    """Server-side state of one connection."""

    def __init__(self, system: ActorSystem, registry: MessageRegistry) -> None:
        self.system = system
        self.registry = registry
        self.driver: ServerDriver | None = None
        self.refs: dict[str, ActorRef] = {}
        self.monitors: dict[int, Monitor | _LinkPoll] = {}
        self.demonitored: set[int] = set()  # ids demonitored before they registered
        self.queues: dict[str, trio.MemorySendChannel[_Delivery]] = {}

    def resolve(self, body: dict[str, Any], op: str) -> ActorRef:
        path = normalize_path(field(body, "path", str, op))
        ref = self.refs.get(path)
        if ref is None:
            ref = self.system.lookup(path)
            self.refs[path] = ref
        return ref

    def answer(self, request_id: int, result: dict[str, Any] | Exception) -> None:
        """Queue the answer to ``request_id`` for the driver's writer
        (answers after the connection ended are dropped)."""
        assert self.driver is not None
        self.driver.answer(request_id, result)

    def route(self, request: RequestReceived) -> str:
        """Route one request: ``tell`` and ``ask`` go, in arrival order, to
        the delivery queue of their target (answered later); the rest run as
        their own task (:meth:`perform`)."""
        if request.op not in ("tell", "ask"):
            return TASK
        assert self.driver is not None
        nursery = self.driver.nursery
        try:
            ref = self.resolve(request.body, request.op)
            message = self.registry.decode(field(request.body, "msg", dict, request.op))
            timeout = timeout_field(request.body, request.op)
        except Exception as exc:
            self.answer(request.id, exc)
            return DEFERRED
        queue = self.queues.get(ref.path)
        if queue is None:
            queue, receive = trio.open_memory_channel[_Delivery](math.inf)
            self.queues[ref.path] = queue
            nursery.start_soon(self.deliver, receive, nursery)
        queue.send_nowait(_Delivery(request, ref, message, timeout))
        return DEFERRED

    async def deliver(
        self, receive: trio.MemoryReceiveChannel[_Delivery], nursery: trio.Nursery
    ) -> None:
        """Put one target's tells and asks into its mailbox in arrival order
        (Erlang's per-pair ordering); an ask's reply is awaited aside."""
        async for item in receive:
            request, ref = item.request, item.ref
            if request.op == "tell":
                try:
                    if request.body.get("nowait") is True:
                        ref.tell_nowait(item.message)
                    else:
                        await ref.tell(item.message, timeout=item.timeout)
                except Exception as exc:
                    self.answer(request.id, exc)
                else:
                    self.answer(request.id, {})
                continue
            seconds = math.inf if item.timeout is None else item.timeout
            deadline = trio.current_time() + seconds
            reply = _Reply()
            try:
                with trio.move_on_at(deadline) as scope:
                    await self._put(ref, _Ask(item.message, reply))
                if scope.cancelled_caught:
                    raise HeadwaterTimeoutError(
                        f"ask {type(item.message).__name__} to {ref.path} could not be "
                        f"delivered within {seconds}s (mailbox full or actor restarting)"
                    )
            except Exception as exc:
                self.answer(request.id, exc)
            else:
                nursery.start_soon(self.await_reply, item, reply, deadline)

    @staticmethod
    async def _put(ref: ActorRef, item: _Ask) -> None:
        if not isinstance(ref, LocalActorRef):  # pragma: no cover - lookup gives local refs
            raise UsageError(f"{ref!r} is not local")
        mailbox = ref._cell.mailbox
        if mailbox is not None:  # fast path: room in the mailbox right now
            try:
                mailbox.send_nowait(item)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            else:
                await trio.lowlevel.checkpoint()
                return
        await ref._deliver(item)

    async def await_reply(self, item: _Delivery, reply: _Reply, deadline: float) -> None:
        """Wait for an ask's reply and send it (or its error) back."""
        result: dict[str, Any] | Exception = {}
        got = False
        try:
            with trio.move_on_at(deadline):
                value = await reply.wait()
                got = True
                try:
                    result = encode_reply(self.registry, value)
                except LocalProtocolError as exc:  # the far actor's fault, seen from the caller
                    raise RemoteProtocolError(
                        f"the actor at {item.ref.path} replied badly: {exc}"
                    ) from None
            if not got:
                raise HeadwaterTimeoutError(
                    f"ask {type(item.message).__name__} to {item.ref.path} got no reply "
                    f"within {item.timeout}s"
                )
        except Exception as exc:
            result = exc
        self.answer(item.request.id, result)

    async def perform(self, request: RequestReceived) -> dict[str, Any]:
        """Run a ``lookup``, ``ping``, ``monitor``, ``link``, ... request."""
        op, body = request.op, request.body
        if op == "lookup":
            ref = self.resolve(body, op)
            found: dict[str, Any] = {"path": ref.path}
            if isinstance(ref, LocalActorRef):
                found["incarnation"] = ref._cell.incarnation
                found["state"] = ref._cell.state
            return found
        if op == "ping":
            return {}
        if op == "get_tree":
            return {"tree": self.system.tree().as_dict()}
        if op == "inspect":
            ref = self.resolve(body, op)
            value = await ref.inspect(timeout=timeout_field(body, op))
            try:
                return encode_reply(self.registry, value)
            except LocalProtocolError as exc:
                raise RemoteProtocolError(
                    f"the actor at {ref.path} inspected badly: {exc}"
                ) from None
        if op == "kill":
            path = normalize_path(field(body, "path", str, op))
            reason = body.get("reason", "killed on request over the actors listener")
            if not isinstance(reason, str):
                raise RemoteProtocolError("kill: field 'reason' must be text")
            await self.system.kill(path, reason)
            return {}
        if op == "link":
            ref = self.resolve(body, op)
            if not isinstance(ref, LocalActorRef):  # pragma: no cover - lookup gives local refs
                raise UsageError(f"{ref!r} is not local")
            seen = body.get("incarnation")
            cell = ref._cell
            if type(seen) is int and (
                cell.incarnation > seen or cell.proc is None or not cell.proc.alive
            ):
                # The incarnation the caller saw has ended already.
                last = cell.last_exit
                if last is not None and last[0] >= seen:
                    return {"reason": last[1], "detail": last[2]}
            poll = _LinkPoll(await ref._proc())
            self.monitors[request.id] = poll
            if request.id in self.demonitored:  # cancelled while it was being set up
                poll.cancel()
            try:
                await poll.event.wait()
            finally:
                self.monitors.pop(request.id, None)
                self.demonitored.discard(request.id)
                poll.proc.watchers.discard(poll)
            return poll.result
        if op == "exit":
            ref = self.resolve(body, op)
            origin = field(body, "from", str, op)
            reason = field(body, "reason", str, op)
            if reason not in EXIT_REASONS:
                raise RemoteProtocolError(f"exit: unknown reason {reason!r}")
            detail = body.get("detail", "")
            assert isinstance(ref, LocalActorRef)
            proc = ref._cell.proc
            if proc is not None:
                proc.signal(Exit(None, origin, reason, str(detail)))
            return {}
        if op == "monitor":
            try:
                ref = self.resolve(body, op)
            except ActorNotFound as exc:
                return {"reason": "not_found", "detail": str(exc)}
            monitor = await ref.monitor()
            self.monitors[request.id] = monitor
            if request.id in self.demonitored:  # cancelled while it was being set up
                monitor.cancel()
            try:
                down = await monitor.wait()
            except ClosedError:
                return {"reason": "demonitored", "detail": ""}
            finally:
                self.monitors.pop(request.id, None)
                self.demonitored.discard(request.id)
            return {"reason": down.reason, "detail": down.detail}
        assert op == "demonitor", op  # ServerConnection refuses unknown ops
        target = field(body, "monitor", int, op)
        watch = self.monitors.pop(target, None)
        if watch is not None:
            watch.cancel()
        elif self.driver is not None and target in self.driver.conn.in_flight:
            # Its monitor/link task has not registered yet (both requests came
            # in one read): it cancels itself when it does.
            self.demonitored.add(target)
        return {}


async def serve_actor_stream(
    system: ActorSystem,
    registry: MessageRegistry,
    stream: trio.abc.Stream,
    *,
    token: str | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    handshake_timeout: float | None = 10.0,
    idle_timeout: float | None = None,
) -> None:
    """Serve ``system``'s actors to the client on one open ``stream``.

    Runs the handshake (and token check, if ``token`` is set), then answers
    the requests of ``docs/protocol.md`` section 11 (``lookup``, ``tell``,
    ``ask``, ``monitor``, ``inspect``, ``get_tree``, ``kill``, ``link``, ...) until the
    client closes the stream or breaks the protocol (it then gets an error
    frame and the stream is closed). Never raises for the peer's faults; the
    stream is closed on return. ``registry`` decodes user messages.
    A client that has not completed the handshake within
    ``handshake_timeout`` seconds, or (with ``idle_timeout`` set) sends
    nothing for that long, gets a ``timeout`` error frame and is closed;
    clients with ``keepalive`` ping after that many idle seconds, so give
    ``idle_timeout`` at least twice their ``keepalive``.
    """
    conn = ServerConnection(
        token=token,
        server=f"headwater-actors/{system.name}",
        operations=ACTOR_OPS,
        max_in_flight=max_in_flight,
        now=trio.current_time(),
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
    )
    session = _Session(system, registry)
    log = _log.bind(system=system.name)
    driver = session.driver = ServerDriver(
        stream,
        conn,
        session.perform,
        route=session.route,
        on_ready=lambda event: log.info("actor_peer_connected", peer=event.peer),
        log=log,
    )
    try:
        await driver.run()
    finally:
        for monitor in list(session.monitors.values()):
            monitor.cancel()
        log.info("actor_peer_closed", reason=driver.reason)


async def serve_actors(
    system: ActorSystem,
    registry: MessageRegistry,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    handshake_timeout: float | None = 10.0,
    idle_timeout: float | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and serve ``system``'s actors to every client.

    Use as ``port = await nursery.start(serve_actors, system, registry)``:
    the bound port (useful with ``port=0``) is reported through
    ``task_status``. Each connection is served by :func:`serve_actor_stream`
    in a task of this one's nursery; cancel the surrounding scope to stop.
    With ``ssl_context`` every connection is wrapped in ``trio.SSLStream``;
    with ``token`` clients must present it. Binds loopback by default.
    ``handshake_timeout`` and ``idle_timeout``: see :func:`serve_actor_stream`.
    Raises :class:`~headwater.ConfigError` if the address cannot be bound.

    The listener's URL is ``headwater+actors://HOST:PORT``: give it to
    ``headwater tree --url ...`` to draw this system's tree, and to
    ``headwater actors kill|inspect PATH --url ...``; refs to its actors are
    ``headwater://HOST:PORT/PATH`` (or ``headwater+actors://HOST:PORT/PATH``).
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve actors on {host}:{port}: {exc.strerror or exc}; "
            "choose another host/port or stop the program using it"
        ) from None
    bound: int = listeners[0].socket.getsockname()[1]
    served: list[trio.abc.Listener[Any]] = list(listeners)
    if ssl_context is not None:
        served = [trio.SSLListener(lst, ssl_context, https_compatible=False) for lst in listeners]
    options: dict[str, Any] = {
        "token": token,
        "max_in_flight": max_in_flight,
        "handshake_timeout": handshake_timeout,
        "idle_timeout": idle_timeout,
    }
    _log.info("actors_listening", system=system.name, host=host, port=bound)
    with unwrapping_groups():
        async with trio.open_nursery() as nursery:

            async def start(stream: trio.abc.Stream, peer: str) -> None:
                nursery.start_soon(partial(_serve_one, system, registry, stream, **options))

            nursery.start_soon(partial(accept_connections, served, start, log=_log, close=True))
            task_status.started(bound)


async def _serve_one(
    system: ActorSystem, registry: MessageRegistry, stream: trio.abc.Stream, **options: Any
) -> None:
    """One connection of :func:`serve_actors`: its I/O failures end it alone."""
    try:
        await serve_actor_stream(system, registry, stream, **options)
    except (HeadwaterError, trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
        _log.info("actor_peer_lost", system=system.name, error=str(exc))
