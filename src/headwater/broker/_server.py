"""The TCP server: clients of other processes reach a broker through it.

Theory of operation
-------------------
:func:`open_server` adds a ``/server`` supervisor to a running broker's actor
system. Its ``listener`` child accepts TCP (optionally TLS) connections; each
accepted connection becomes a ``temporary`` task child
``/server/conn-<n>`` that speaks the protocol of :mod:`headwater.transport`
(the sans-IO :class:`~headwater.transport.ServerConnection` does the
handshake, authentication and pipelining rules) and hands every request to
the broker's one request handler, :class:`BrokerService`, the very one
embedded clients call. Requests of one connection run concurrently (up to
``max_in_flight``), so a long poll never blocks a produce behind it. On a
protocol v2 connection each request carries the connection's push sink
(:data:`~headwater._protocol.PUSH_SINK`): group notices for members that
joined through it are queued as ``push`` frames and sent by a pusher task.

A connection that breaks the protocol gets an ``error`` frame and is closed;
a request that fails gets an ``error`` frame for its id and the connection
goes on; neither touches other connections or stored data. Limits: the
number of connections (``server_busy`` beyond it), requests in flight per
connection, the frame size, the time to finish the handshake and the idle
time (no frame received and nothing in flight).

Graceful shutdown (:meth:`Server.drain`): stop accepting, stop reading new
requests, let the requests in flight finish (up to ``shutdown_timeout``),
close every connection; then the broker closes its journals cleanly.
:func:`run_server` is ``headwater serve``: it does all this on SIGINT/SIGTERM
and returns the exit code.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

from headwater._aio import unwrapping_groups
from headwater._errors import (
    ConfigError,
    HeadwaterError,
    InvalidArgument,
    ServerBusyError,
)
from headwater._logging import LOG_FORMATS, LOG_LEVELS, configure_logging, get_logger
from headwater._protocol import CONNECTION_REQUEST_TYPES, PUSH_SINK, Fetch
from headwater.actors._serve import serve_actors
from headwater.broker._broker import DEFAULT_DATA_DIR, Broker, open_broker
from headwater.broker._config import DURABILITIES
from headwater.broker._order import ProduceTurns, Turn
from headwater.broker._push import PushedFetches
from headwater.broker._service import MAX_FETCH_BYTES
from headwater.supervision._specs import ChildSpec, SupervisorSpec, unwrap_group
from headwater.transport._connection import (
    DEFAULT_MAX_IN_FLIGHT,
    HandshakeComplete,
    RequestReceived,
    ServerConnection,
)
from headwater.transport._frames import DEFAULT_MAX_FRAME_SIZE
from headwater.transport._malloc import tune_allocator
from headwater.transport._messages import MessageRegistry
from headwater.transport._operations import decode_request, encode_response
from headwater.transport._server import (
    TASK,
    ConnectionLimit,
    ServerDriver,
    accept_connections,
)

__all__ = ["DEFAULT_PORT", "Server", "ServerConfig", "open_server", "run_server"]

DEFAULT_PORT = 7700
RECEIVE_SIZE = 256 * 1024
_log = get_logger("headwater.server")


def _at_least(minimum: int, *, integer: bool = True) -> Any:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)

    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:  # type: ignore[operator]
            what = "an int" if integer else "a number of seconds"
            raise ConfigError(f"{attribute.name}={value!r}; give {what} >= {minimum}")

    return check


def _optional_at_least_1(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{attribute.name}={value!r}; give an int >= 1 (or None for the default)")


def _optional_path(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str | os.PathLike):
        raise ConfigError(f"{attribute.name}={value!r} is not a file path")


def _token(_inst: object, _attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError("auth_token must be a non-empty string (or None for no authentication)")


@attrs.frozen
class ServerConfig:
    """Settings of ``headwater serve`` (every one has a command-line option).

    ``port=0`` picks a free port (see :attr:`Server.port`). ``tls_cert`` and
    ``tls_key`` (PEM files) turn on TLS; ``auth_token`` requires every client
    to present that token. ``idle_timeout`` closes connections that send
    nothing and wait for nothing that long; ``handshake_timeout`` bounds the
    time from connect to a finished handshake; ``shutdown_timeout`` bounds
    how long requests in flight may take to finish on shutdown.
    ``log_format`` (``auto``, ``console``, ``json``) and ``log_level``
    (``debug``, ``info``, ``warning``, ``error``) shape the log lines
    ``serve`` writes to stderr. ``max_open_files`` caps the segment files the
    partitions keep open (``None``: 16,384; see
    :func:`~headwater.broker.open_broker`).
    """

    data_dir: str = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    port: int = attrs.field(default=DEFAULT_PORT, validator=_at_least(0))
    durability: str = "always"
    interval_ms: int = attrs.field(default=200, validator=_at_least(1))
    tls_cert: str | None = attrs.field(default=None, validator=_optional_path)
    tls_key: str | None = attrs.field(default=None, validator=_optional_path)
    auth_token: str | None = attrs.field(default=None, validator=_token)
    max_connections: int = attrs.field(default=1024, validator=_at_least(1))
    max_in_flight: int = attrs.field(default=DEFAULT_MAX_IN_FLIGHT, validator=_at_least(1))
    max_frame_size: int = attrs.field(default=DEFAULT_MAX_FRAME_SIZE, validator=_at_least(16))
    max_bytes_in_flight: int = attrs.field(default=16 * 1024 * 1024, validator=_at_least(1))
    send_timeout: float = attrs.field(default=60.0, validator=_at_least(0, integer=False))
    actors_port: int | None = None
    kafka_port: int | None = None
    idle_timeout: float = attrs.field(default=600.0, validator=_at_least(0, integer=False))
    handshake_timeout: float = attrs.field(default=10.0, validator=_at_least(0, integer=False))
    shutdown_timeout: float = attrs.field(default=10.0, validator=_at_least(0, integer=False))
    log_format: str = "auto"
    log_level: str = "info"
    max_open_files: int | None = attrs.field(default=None, validator=_optional_at_least_1)

    def __attrs_post_init__(self) -> None:
        if self.durability not in DURABILITIES:
            raise ConfigError(
                f"durability={self.durability!r}; use one of {', '.join(DURABILITIES)}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both tls_cert and tls_key (PEM files)")
        if self.port > 65535:
            raise ConfigError(f"port={self.port}; give 0..65535 (0 picks a free port)")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host={self.host!r}; give an address such as 127.0.0.1")
        if self.actors_port is not None and (
            type(self.actors_port) is not int or not 0 <= self.actors_port <= 65535
        ):
            raise ConfigError(f"actors_port={self.actors_port!r}; give 0..65535 or None")
        if self.kafka_port is not None and (
            type(self.kafka_port) is not int or not 0 <= self.kafka_port <= 65535
        ):
            raise ConfigError(f"kafka_port={self.kafka_port!r}; give 0..65535 or None")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format={self.log_format!r}; use one of {LOG_FORMATS}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level={self.log_level!r}; use one of {LOG_LEVELS}")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or ``None`` without TLS."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the TLS certificate {self.tls_cert} / key {self.tls_key}: {exc}"
            ) from None
        return context


class _ByteBudget:
    """Bytes one connection holds for requests being handled (see
    ``ServerConfig.max_bytes_in_flight``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = trio.Event()

    def charge(self, n: int) -> None:
        """Count ``n`` bytes already in memory (a produce batch just read)."""
        self.used += n

    async def acquire(self, n: int) -> int:
        """Wait until ``n`` more bytes fit (one request alone always fits)."""
        n = min(n, self.limit)
        while self.used and self.used + n > self.limit:
            await self._changed.wait()
        self.used += n
        return n

    async def wait_below_limit(self) -> None:
        while self.used >= self.limit:
            await self._changed.wait()

    def release(self, n: int) -> None:
        self.used -= n
        self._changed.set()
        self._changed = trio.Event()


class Server:
    """A running TCP server in front of one :class:`Broker` (see the module
    docstring). Made by :func:`open_server`."""

    def __init__(self, broker: Broker, config: ServerConfig) -> None:
        self.broker = broker
        self.config = config
        self.addresses: list[tuple[str, int]] = []
        self.actors_port: int | None = None
        self.kafka_port: int | None = None
        self._ssl = config.ssl_context()
        self._ids = itertools.count(1)
        self._limit = ConnectionLimit(config.max_connections)
        self._drivers: set[ServerDriver] = set()

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when 0 was asked)."""
        return self.addresses[0][1] if self.addresses else 0

    @property
    def connections(self) -> int:
        """How many client connections are open."""
        return self._limit.count

    @property
    def _draining(self) -> bool:
        return self._limit.draining

    async def serve_stream(self, stream: trio.abc.Stream, peer: str = "memory") -> None:
        """Serve one already-open stream as a new connection child (the listener
        calls this for every accepted socket; tests pass memory streams)."""
        if self._limit.full():
            await self._refuse(stream, peer)
            return
        name = f"conn-{next(self._ids)}"
        release = self._limit.opened()

        async def run() -> None:
            try:
                await self._connection(stream, peer, f"/server/{name}", release)
            finally:
                release()

        spec = ChildSpec(name, run, restart="temporary", shutdown=self.config.shutdown_timeout)
        try:
            await self.broker.system.start_child(spec, parent="/server")
        except BaseException:
            release()
            await trio.aclose_forcefully(stream)
            raise

    async def drain(self) -> None:
        """Stop accepting and reading new requests, let the requests in
        flight finish (bounded by ``shutdown_timeout``), close every connection."""
        if not self._limit.draining:
            self._limit.draining = True
            _log.info("server_draining", connections=self._limit.count)
        for driver in list(self._drivers):
            driver.stop_reading(self.config.shutdown_timeout)
        with trio.move_on_after(self.config.shutdown_timeout + 1.0):
            await self._limit.wait_idle()

    # ------------------------------------------------------------ internals

    async def _refuse(self, stream: trio.abc.Stream, peer: str) -> None:
        reason = (
            "the server is shutting down; reconnect later"
            if self._limit.draining
            else f"the server has {self._limit.count} connections, its limit "
            f"(max_connections={self.config.max_connections}); retry later"
        )
        _log.warning("connection_refused", peer=peer, reason=reason)
        conn = ServerConnection(max_frame_size=self.config.max_frame_size)
        conn.fail(ServerBusyError(reason))
        try:
            with trio.move_on_after(1.0):
                await self._wrap(stream).send_all(conn.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            # Also when cancelled (the listener stopped by a drain mid-refusal):
            # an unclosed socket leaks its descriptor until the collector runs.
            await trio.aclose_forcefully(stream)

    def _wrap(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        if self._ssl is None or isinstance(stream, trio.SSLStream):
            return stream
        return trio.SSLStream(stream, self._ssl, server_side=True)

    async def _listener(self, listeners: list[trio.SocketListener]) -> None:
        async def start(stream: trio.SocketStream, peer: str) -> None:
            await self.serve_stream(self._wrap(stream), peer)

        await accept_connections(listeners, start, log=_log, close=True)

    async def _connection(
        self, stream: trio.abc.Stream, peer: str, path: str, release: Callable[[], None]
    ) -> None:
        """One client connection: the transport's server driver, with the
        broker's request handling (:class:`BrokerService`), its pushes and
        its byte budget as the handlers."""
        config = self.config
        conn = ServerConnection(
            token=config.auth_token,
            server="headwater",
            max_in_flight=config.max_in_flight,
            max_frame_size=config.max_frame_size,
            now=trio.current_time(),
            handshake_timeout=config.handshake_timeout or None,
            idle_timeout=config.idle_timeout or None,
        )
        log = _log.bind(actor=path, peer=peer)
        broker_stats = self.broker.service.stats
        entry = broker_stats.connection_opened(path, peer)
        budget = _ByteBudget(config.max_bytes_in_flight)
        service = self.broker.service
        held: dict[int, int] = {}  # request id -> budget bytes it holds
        turns = ProduceTurns()
        pushes: PushedFetches | None = None

        def push(message: object) -> None:
            """The push sink of this connection (protocol v2). Never blocks;
            a closed connection drops the notice."""
            driver.push("group", encode_response(message))

        def push_fetch(kind: str, body: dict[str, Any], sub: int) -> None:
            try:
                conn.send_push(kind, body, sub)  # the subscription's task flushes
            except HeadwaterError:
                pass  # closed meanwhile: nobody is left to read it

        def route(event: RequestReceived) -> str:
            entry.requests += 1
            record = event.body.get("record")
            size = len(record) if isinstance(record, bytes) else 0
            budget.charge(size)
            held[event.id] = size
            if event.op == "produce":
                turns.arrived(event.id, event.body)  # appended in arrival order
            return TASK

        async def handle(event: RequestReceived) -> Mapping[str, Any]:
            turn = turns.take(event.id)
            if turn is None:
                return await handle_request(event, None)
            try:
                return await handle_request(event, turn)
            finally:
                turn.release()  # refused before its append: the next may go

        async def handle_request(event: RequestReceived, turn: Turn | None) -> Mapping[str, Any]:
            if conn.can_push:
                PUSH_SINK.set(push)
            request = decode_request(event.op, event.body)
            if isinstance(request, CONNECTION_REQUEST_TYPES):
                if pushes is None or not conn.can_push:
                    raise InvalidArgument(
                        f"{event.op} needs protocol version 2 (this connection speaks "
                        f"{conn.version}); fetch instead"
                    )
                response = pushes.handle(request)  # answered before any push of it
            else:
                if isinstance(request, Fetch) and type(request.max_bytes) is int:
                    held[event.id] += await budget.acquire(min(request.max_bytes, MAX_FETCH_BYTES))
                response = await (
                    service.handle(request) if turn is None else service.handle(request, turn=turn)
                )
            return encode_response(response)

        def answered(event: RequestReceived, error: BaseException | None) -> None:
            if error is not None:
                entry.errors += 1
            budget.release(held.pop(event.id, 0))

        def on_ready(event: HandshakeComplete) -> None:
            entry.client = event.peer
            entry.authenticated = event.authenticated
            log.info(
                "connection_ready",
                client=event.peer,
                version=event.version,
                authenticated=event.authenticated,
            )

        driver = ServerDriver(
            stream,
            conn,
            handle,
            route=route,
            on_ready=on_ready,
            before_receive=budget.wait_below_limit,
            answered=answered,
            busy=lambda: bool(pushes),
            send_timeout=config.send_timeout,
            log=log,
        )
        self._drivers.add(driver)
        if self._limit.draining:
            driver.stop_reading(config.shutdown_timeout)

        def start_pushes(nursery: trio.Nursery) -> None:
            nonlocal pushes
            pushes = PushedFetches(
                service, push_fetch, driver.flush, nursery, limit=config.max_in_flight, stats=entry
            )

        try:
            await driver.run(setup=start_pushes)
        finally:
            if pushes is not None:
                pushes.close()
            broker_stats.connection_closed(path)
            self._drivers.discard(driver)
            release()
            log.info(
                "connection_closed",
                reason=driver.reason,
                requests=driver.requests,
                errors=driver.errors,
            )


@asynccontextmanager
async def open_server(
    broker: Broker, config: ServerConfig | None = None, *, listen: bool = True
) -> AsyncIterator[Server]:
    """Serve ``broker`` to TCP clients for the duration of the block.

    With ``listen=False`` no socket is opened (connections come only from
    :meth:`Server.serve_stream`, as in tests over memory streams). Raises
    :class:`~headwater.ConfigError` if the address cannot be bound. Leaving
    the block drains the server (see :meth:`Server.drain`).
    """
    config = config if config is not None else ServerConfig()
    if not isinstance(config, ServerConfig):
        raise ConfigError(f"config must be a ServerConfig, not {type(config).__name__}")
    server = Server(broker, config)
    system = broker.system
    listeners: list[trio.SocketListener] = []
    if listen:
        try:
            listeners = await trio.open_tcp_listeners(config.port, host=config.host)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; "
                "choose another --host/--port or stop the program using it"
            ) from None
        server.addresses = [ln.socket.getsockname()[:2] for ln in listeners]
    children: list[ChildSpec | SupervisorSpec] = []
    if listeners:

        async def listener() -> None:
            await server._listener(listeners)

        children.append(ChildSpec("listener", listener, shutdown=1.0))
    kafka_listeners: list[trio.SocketListener] = []
    if listen and config.kafka_port is not None:
        try:
            kafka_listeners = await trio.open_tcp_listeners(config.kafka_port, host=config.host)
        except OSError as exc:
            for ln in listeners:
                await trio.aclose_forcefully(ln)
            raise ConfigError(
                f"cannot listen for Kafka clients on {config.host}:{config.kafka_port}: "
                f"{exc.strerror or exc}; choose another --kafka-port or stop the program using it"
            ) from None
        server.kafka_port = kafka_listeners[0].socket.getsockname()[1]
        # Imported here: the Kafka front end (and its schema library) costs
        # about a quarter of `import headwater`, paid only when it listens.
        from headwater.kafka._server import KafkaServer, kafka_listener_spec

        kafka = KafkaServer(
            system,
            broker.service,
            host=config.host,
            port=server.kafka_port,
            ssl_context=server._ssl,
            auth_token=config.auth_token,
            max_connections=config.max_connections,
            max_frame_size=config.max_frame_size,
            idle_timeout=config.idle_timeout,
            shutdown_timeout=config.shutdown_timeout,
        )
        children.append(kafka_listener_spec(kafka, kafka_listeners))
    await system.start_child(
        SupervisorSpec("server", children, max_restarts=10, within=10.0, shutdown=60.0)
    )
    try:
        with unwrapping_groups():
            async with trio.open_nursery() as nursery:
                if listen and config.actors_port is not None:
                    server.actors_port = await nursery.start(
                        partial(
                            serve_actors,
                            system,
                            MessageRegistry("broker-actors"),
                            host=config.host,
                            port=config.actors_port,
                            token=config.auth_token,
                            ssl_context=server._ssl,
                        )
                    )
                if listeners:
                    _log.info(
                        "server_listening",
                        host=config.host,
                        port=server.port,
                        actors_port=server.actors_port,
                        kafka_port=server.kafka_port,
                        tls=config.tls_cert is not None,
                        auth=config.auth_token is not None,
                        data_dir=broker.data_dir,
                    )
                try:
                    yield server
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            server._limit.draining = True
            if listeners:
                await system.stop_child("/server/listener")
            if kafka_listeners:
                await system.stop_child("/server/kafka")
            await server.drain()
            await system.stop_child("/server")
            for ln in [*listeners, *kafka_listeners]:
                await trio.aclose_forcefully(ln)


REFREEZE_POLL = 1.0
"""Seconds between :func:`refreeze_after_changes`'s looks at the topics."""

FULL_REFREEZE_EVERY = 16
"""Every this many refreezes after additions only, :func:`refreeze_after_changes`
runs a full one anyway."""

GROWTH_FREEZE_OBJECTS = 100_000
"""Unfrozen objects in the oldest generation after one of its collections
from which :func:`refreeze_after_changes` freezes them (a partial refreeze)."""

PERIODIC_FULL_MAX_OBJECTS = 250_000
"""The periodic full refreeze (:data:`FULL_REFREEZE_EVERY`) runs only while
the frozen heap holds fewer objects than this: its pause walks the whole
heap (9 s for 980,000 objects at 10,000 partitions on a loaded machine).
Above, only deletions and restarts make a refreeze full."""

BATCH_FREEZE_OBJECTS = 50_000
"""Unfrozen objects (every generation) from which :func:`refreeze_after_changes`
freezes a burst of topic creations that is still under way (a partial
refreeze): the pause stays proportional to this many objects, not to the
whole burst's (2.8 s for 860,000 objects at 10,000 partitions on a loaded
machine; ~0.15 s for 50,000 there)."""


YOUNG_COLLECTION_THRESHOLD = 10_000
"""Allocations between the serving broker's youngest-generation collections
(CPython's default is 700; see :func:`collector_thresholds`)."""


def collector_thresholds(young: int = YOUNG_COLLECTION_THRESHOLD) -> tuple[int, int, int]:
    """The collector thresholds ``serve`` runs with: the youngest
    generation's raised to ``young`` allocations, the others as they are.

    The oldest generation's collections come every hundred of the
    youngest's, and each walks every object not frozen yet: in a produce
    spread over 10,000 partitions, the state each partition makes when
    first touched (idempotence entries, counters, open segments) until
    :func:`refreeze_after_changes` freezes it. With the default 700 they
    ran every ~70,000 allocations: 16% of the server's CPU against 5% in a
    produce to 100 warm partitions of the same server. At 10,000 the
    collector runs 14 times less often; a young collection still finds
    cyclic garbage within 10,000 allocations (a few MiB at most)."""
    _young, middle, oldest = gc.get_threshold()
    return young, middle, oldest


def _shape(broker: Broker) -> tuple[int, int, int, int]:
    """Topics, partitions, actor restarts and topics deleted so far."""
    counts = broker.service._counts()
    return (
        len(counts),
        sum(counts.values()),
        broker.system.restarts,
        broker.service.topics_deleted,
    )


def unfrozen_objects() -> int:
    """Objects the cyclic collector tracks and no freeze took yet (walks
    only those, never the frozen ones)."""
    return sum(len(gc.get_objects(generation=g)) for g in range(3))


def refreeze(*, full: bool = True) -> tuple[int, float]:
    """Collect and freeze what survives; returns (objects this call froze,
    seconds spent).

    ``full`` collects the frozen objects too (unfreezing them first): what
    died since the last freeze (a deleted topic, a restarted actor) goes.
    Otherwise only the objects made since the last freeze are collected and
    frozen: the pause is proportional to them, not to the whole heap. (So
    the count is taken from the oldest generation before the freeze, never
    with ``gc.get_freeze_count()``, which walks every frozen object: 0.26 s
    at 10,000 partitions on a loaded machine, most of a partial pause.)"""
    began = time.perf_counter()
    if full:
        gc.unfreeze()
    gc.collect()  # the survivors are all in the oldest generation now
    objects = len(gc.get_objects(generation=2))
    gc.freeze()
    return objects, time.perf_counter() - began


async def refreeze_after_changes(
    broker: Broker, poll: float = REFREEZE_POLL, *, backoff: float = 9.0
) -> None:
    """Run :func:`refreeze` once the broker's shape (topics, partitions, actor
    restarts, deleted topics) changed and then held still for ``poll``
    seconds; forever.

    A partition keeps ~100 long-lived objects (its actor, log, index,
    segments): at 10,000 partitions the collector's full collections walked
    a million of them while a produce ran (1.6-1.8 s of 7 s CPU in one
    process, and 0.73 of the 100-partition throughput against 0.60 with
    the topics frozen). Frozen objects are never collected, so after a
    topic was deleted or an actor restarted (their objects died while
    frozen) the refreeze is full: unfreeze, collect everything, freeze
    (0.8 s with the loop paused at 10,000 partitions; a full refreeze then
    waits ``backoff`` (nine) times as long before the next). After topics or partitions
    were only added, nothing frozen died: only the new objects are collected
    and frozen, a pause proportional to the burst (``full=False``); every
    :data:`FULL_REFREEZE_EVERY`-th refreeze is full all the same, so what a
    freeze caught alive and later died (requests in flight) is not kept for
    ever.

    Objects made while the shape holds still are frozen too once they are
    many: partitions touched for the first time since start (a spread
    produce over 10,000 of them) make long-lived state (idempotence entries,
    statistics, open segments) that the oldest generation's collections
    walked again and again. When such a collection ran since the last look
    and left at least :data:`GROWTH_FREEZE_OBJECTS` unfrozen objects there,
    a partial refreeze freezes them.

    A long burst of creations (10,000 partitions made 100 at a time) does not
    hold still for ``poll`` seconds until it ends: its objects are frozen in
    batches while it runs, once :data:`BATCH_FREEZE_OBJECTS` of them wait
    unfrozen (partial refreezes, only after additions), so that no pause
    walks the whole burst at once. Those batches do not count towards
    :data:`FULL_REFREEZE_EVERY`; the refreeze once the burst held still
    does.

    What a partial freeze caught alive and later died in a reference cycle
    (anything else goes with its last reference, frozen or not) stays until
    the next full refreeze; with a frozen heap of
    :data:`PERIODIC_FULL_MAX_OBJECTS` or more (a few thousand partitions)
    that is the next deletion or restart, the periodic full refreeze is off
    there. The ``backoff`` after a full refreeze delays only the next full
    one: partial ones (batches, growth) go on meanwhile."""
    frozen = _shape(broker)
    last = frozen
    partial_ones = 0
    heap = 0  # objects frozen by the last full refreeze and the partial ones since
    full_after = trio.current_time()
    oldest = gc.get_stats()[-1]["collections"]
    while True:
        await trio.sleep(poll)
        now = _shape(broker)
        collected = gc.get_stats()[-1]["collections"]
        grown = collected != oldest and len(gc.get_objects(generation=2)) >= GROWTH_FREEZE_OBJECTS
        # Additions still under way (no restart or deletion since the last freeze).
        batch = now != last and unfrozen_objects() >= BATCH_FREEZE_OBJECTS
        settled = now != frozen and now == last
        # Restarts or deletions: frozen objects died.
        died = now[2:] != frozen[2:]
        periodic = partial_ones + 1 >= FULL_REFREEZE_EVERY and heap < PERIODIC_FULL_MAX_OBJECTS
        full = (settled and died) or ((settled or grown) and periodic)
        if full and trio.current_time() < full_after:
            full = False  # backing off: partial ones only, if any
            settled = settled and not died
        if settled or grown or batch:
            reason = "shape" if settled else "growth" if grown else "batch"
            if settled or grown:
                partial_ones = 0 if full else partial_ones + 1
            objects, seconds = refreeze(full=full)
            heap = objects if full else heap + objects
            if settled:
                frozen = now
            _log.info(
                "gc_refrozen",
                objects=objects,
                seconds=round(seconds, 3),
                full=full,
                reason=reason,
            )
            if full:
                # A partition restarting in a loop must not pause the loop for
                # collections back to back: at most ~10% of the time goes here.
                full_after = trio.current_time() + backoff * seconds
            collected = gc.get_stats()[-1]["collections"]
        oldest = collected
        last = now


FrontEnd = Callable[[Broker], AbstractAsyncContextManager[Any]]
"""Opens one more front end (such as :func:`headwater.web.open_http`) on a
running broker, for as long as its block lasts."""


def run_server(config: ServerConfig, front_ends: Sequence[FrontEnd] = ()) -> int:
    """``headwater serve``: open the broker and serve it until SIGINT or SIGTERM,
    then shut down gracefully; returns the process exit code (0 after a clean
    shutdown). A second signal during shutdown stops at once.

    ``front_ends`` open beside the TCP server, after it, and close before it
    (the CLI passes the HTTP front end here: the broker layer never imports
    the front ends above it).

    The cyclic garbage collector is paused while the broker starts and its
    long-lived objects (actors, logs, indexes) are then frozen out of later
    collections (``gc.freeze``): with 10,000 partitions, full collections
    over a heap that grows during start-up took over half of it (18 s
    against 6-9 s with the collector paused, measured in one process).
    Topics created later are frozen by :func:`refreeze_after_changes`, and
    the collector runs less often (:func:`collector_thresholds`)."""
    configure_logging(config.log_format, level=config.log_level)
    tune_allocator()  # ~1 MB fetch and produce buffers reused, not faulted in anew

    collecting = gc.isenabled()
    thresholds = gc.get_threshold()

    async def main() -> None:
        gc.disable()
        gc.set_threshold(*collector_thresholds())
        try:
            await serve()
        finally:
            gc.set_threshold(*thresholds)
            if collecting:
                gc.enable()

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with (
                open_broker(
                    config.data_dir,
                    durability=config.durability,
                    interval_ms=config.interval_ms,
                    max_open_files=config.max_open_files,
                    reserve_fds=config.max_connections,
                ) as broker,
                open_server(broker, config) as server,
                AsyncExitStack() as stack,
            ):
                gc.freeze()  # what start-up built lives as long as the server
                if collecting:
                    gc.enable()
                    refreezing = await stack.enter_async_context(trio.open_nursery())
                    refreezing.start_soon(refreeze_after_changes, broker)
                    stack.callback(refreezing.cancel_scope.cancel)
                for front_end in front_ends:
                    await stack.enter_async_context(front_end(broker))
                async for signum in signals:
                    _log.info(
                        "shutdown_requested",
                        signal=signal.Signals(signum).name,
                        connections=server.connections,
                    )
                    break
                async with trio.open_nursery() as nursery:

                    async def second_signal() -> None:
                        async for _ in signals:
                            _log.warning("shutdown_forced")
                            nursery.cancel_scope.cancel()

                    nursery.start_soon(second_signal)
                    await server.drain()
                    nursery.cancel_scope.cancel()
        _log.info("server_stopped")

    try:
        trio.run(main)
    except BaseException as exc:
        error = unwrap_group(exc)
        if isinstance(error, HeadwaterError):
            _log.error("server_failed", code=error.code, error=str(error))
            return 2 if isinstance(error, ConfigError) else 1
        if isinstance(error, KeyboardInterrupt):
            return 130
        _log.error("server_failed", exc_info=error)
        return 1
    return 0
