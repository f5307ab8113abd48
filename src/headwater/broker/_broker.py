"""The embedded broker: ``open_broker(data_dir)`` and :class:`Broker`.

The whole broker is one supervision tree::

    /broker                      rest_for_one
      /broker/topics             one supervisor per topic ...
        /broker/topics/<t>         ... one PartitionActor per partition
      /broker/groups             one GroupActor per consumer group (meta/groups/<g>)
      /broker/shares/<name>      one supervisor per share subscription: members and
                                 one SharePartitionActor per partition (meta/shares/<name>)
      /broker/registry           TopicRegistry (persistent: meta/topics)
      /broker/transactions       TransactionActor (meta/__transactions/0)
      /broker/maintenance        retention, every ``retention_check_interval`` s

Clients reach it through :meth:`Broker.connect`, an embedded channel to the
same request handler the TCP server uses. The client sits above the broker
(DESIGN.md's layer order), so the broker does not import it: the package root
(``headwater/__init__.py``) installs the factory that builds the embedded
client with :func:`set_embedded_client_factory`.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from headwater._errors import ConfigError, DataDirError, DataDirLockedError
from headwater._logging import get_logger
from headwater.actors._system import ActorSystem, open_actor_system
from headwater.broker._actors import BrokerSettings, TopicRegistry
from headwater.broker._service import BrokerService
from headwater.broker._txn_actor import TransactionActor
from headwater.journal._async import run_blocking
from headwater.journal._fdcache import DEFAULT_MAX_OPEN_FILES, FileCache, fit_open_files
from headwater.journal._files import FileSystem, LockHeld, RealFileSystem
from headwater.supervision._specs import ActorSnapshot, ChildSpec, SupervisorSpec

__all__ = ["DEFAULT_DATA_DIR", "Broker", "open_broker"]

DEFAULT_DATA_DIR = "./headwater-data"
T = TypeVar("T")
_log = get_logger("headwater.broker")

#: Builds an embedded client from a request handler and client options; it
#: must have ``async aclose()``. Installed by the package root.
EmbeddedClientFactory = Callable[..., Any]
_client_factory: EmbeddedClientFactory | None = None


def set_embedded_client_factory(factory: EmbeddedClientFactory) -> None:
    """Install how :meth:`Broker.connect` builds its client:
    ``factory(handle, **client_options)`` where ``handle`` answers one
    protocol request. ``import headwater`` does this for you."""
    global _client_factory
    _client_factory = factory


class Broker:
    """A running embedded broker (made by :func:`open_broker`)."""

    def __init__(self, system: ActorSystem, service: BrokerService) -> None:
        self.system = system
        self.service = service
        #: The port of the HTTP front end, when ``headwater.open_broker`` (or
        #: :func:`headwater.web.open_http`) opened one on this broker.
        self.http_port: int | None = None

    @property
    def data_dir(self) -> str:
        """Where this broker keeps its data."""
        return self.service.settings.data_dir

    def tree(self) -> ActorSnapshot:
        """The live supervision tree."""
        return self.system.tree()

    async def kill(self, path: str, reason: str = "killed on request") -> None:
        """Crash the actor at ``path`` on purpose; its supervisor restarts it."""
        await self.system.kill(path, reason)

    async def handle(self, request: Any) -> Any:
        """Answer one protocol request (what embedded clients call)."""
        return await self.service.handle(request)

    @asynccontextmanager
    async def connect(self, **client_options: Any) -> AsyncIterator[Any]:
        """An embedded client of this broker (same API as a remote one)."""
        if _client_factory is None:
            raise ConfigError("no embedded client is installed; import headwater first")
        handle: Callable[[Any], Awaitable[Any]] = self.service.handle
        client = _client_factory(handle, **client_options)
        try:
            yield client
        finally:
            await client.aclose()


@asynccontextmanager
async def open_broker(
    data_dir: str = DEFAULT_DATA_DIR,
    *,
    durability: str = "always",
    interval_ms: int = 200,
    segment_bytes: int = 64 * 1024 * 1024,
    max_batch_bytes: int = 16 * 1024 * 1024,
    retention_check_interval: float = 60.0,
    max_open_files: int | None = None,
    fs: FileSystem | None = None,
    clock: Callable[[], int] | None = None,
    reserve_fds: int = 0,
) -> AsyncIterator[Broker]:
    """Open (recovering everything under ``data_dir``) an embedded broker.

    ``durability`` is the default for new topics (``always``, ``interval``,
    ``never``); ``clock`` returns milliseconds for append times and retention
    (wall-clock time by default); ``fs`` replaces the file layer (tests).
    Leaving the block stops every actor in order and closes every journal
    cleanly.

    The broker holds an exclusive lock on ``data_dir`` (``<data_dir>/.lock``,
    an ``flock`` the kernel drops when the process dies, even by ``kill -9``)
    until the block ends: a second broker on the same directory, in this
    process or another, gets :class:`~headwater.DataDirLockedError` naming the
    holder's pid. A directory that cannot be used (a file, a read-only file
    system, no permission) raises :class:`~headwater.DataDirError` before
    anything starts. With a simulated ``fs`` the lock lives in that object's
    memory (one per simulated disk).

    ``max_open_files`` caps the segment files the partitions keep open
    (default :data:`~headwater.journal.DEFAULT_MAX_OPEN_FILES`, 16,384): a
    partition's files open on first use and the least recently used idle
    ones are closed beyond the cap, so any number of partitions fits in a
    modest ``RLIMIT_NOFILE``. When the soft limit is too low for the cap, the
    broker raises it toward the hard limit; if that is too low too, a cap you
    gave raises :class:`~headwater.ConfigError` naming the limit, and the
    default shrinks to fit (with an ``fd_limit_low`` warning below 4,096). ``reserve_fds`` is how
    many descriptors to leave for other uses besides (the server passes its
    ``max_connections``).
    """
    if durability not in ("always", "interval", "never"):
        raise ConfigError(f"durability={durability!r}; use always, interval or never")
    if not isinstance(data_dir, str | os.PathLike):
        raise ConfigError(f"data_dir={data_dir!r} is not a path")
    fs = fs if fs is not None else RealFileSystem()
    path = str(data_dir)
    if isinstance(fs, RealFileSystem):
        path = str(await trio.Path(path).absolute())
        cap = fit_open_files(max_open_files, connections=reserve_fds)
    else:
        cap = max_open_files if max_open_files is not None else DEFAULT_MAX_OPEN_FILES
    settings = BrokerSettings(
        data_dir=path,
        fs=fs,
        clock=clock if clock is not None else (lambda: int(time.time() * 1000)),
        default_durability=durability,
        segment_bytes=segment_bytes,
        max_batch_bytes=max_batch_bytes,
        interval_ms=interval_ms,
        files=FileCache(cap),
    )
    holder: dict[str, BrokerService] = {}

    async def maintenance() -> None:
        while True:
            await trio.sleep(retention_check_interval)
            service = holder.get("service")
            if service is not None:
                await service.retention()

    tree = SupervisorSpec(
        "broker",
        [
            # The registry starts topic supervisors under /broker/topics, so it
            # comes after it; rest_for_one restarts it whenever topics restarts.
            SupervisorSpec("topics", max_restarts=10, within=10.0, shutdown=60.0),
            # Group actors crash on a storage error (to reload from disk);
            # one that crashes 6 times within 10 s of running time (backoff
            # left out) is parked as failed (group_spec), never the broker.
            SupervisorSpec(
                "groups",
                max_restarts=5,
                within=10.0,
                backoff=0.05,
                backoff_max=0.4,
                shutdown=30.0,
            ),
            # Share subscriptions (one supervisor each, started on first use).
            SupervisorSpec(
                "shares",
                max_restarts=10,
                within=10.0,
                backoff=0.05,
                backoff_max=2.0,
                shutdown=30.0,
            ),
            ChildSpec("registry", lambda: TopicRegistry(settings), shutdown=30.0),
            # After the registry (producer ids) and the topics (markers).
            ChildSpec("transactions", lambda: TransactionActor(settings), shutdown=30.0),
            ChildSpec("maintenance", maintenance, shutdown=1.0),
        ],
        strategy="rest_for_one",
        max_restarts=5,
        within=10.0,
        backoff=0.1,
    )
    lock = await _claim_data_dir(fs, path)
    try:
        async with open_actor_system("headwater", children=(tree,)) as system:
            service = BrokerService(system, settings)
            holder["service"] = service
            await service.start()
            _log.info("broker_started", data_dir=path, topics=len(service._topics))
            yield Broker(system, service)
    finally:
        fs.close(lock)


#: The lock file in every data directory (holds the broker's pid).
LOCK_FILE = ".lock"


async def _claim_data_dir(fs: FileSystem, path: str) -> int:
    """Create ``path`` if needed and take its lock (``<path>/.lock``), or
    raise :class:`DataDirLockedError` (another broker has it) or
    :class:`DataDirError` (a file, a read-only file system, no permission).
    Returns the lock's handle: closing it releases the lock."""

    try:
        await run_blocking(fs, fs.makedirs, path)
        handle = await run_blocking(fs, fs.lock, os.path.join(path, LOCK_FILE))
    except LockHeld as exc:
        holder = f"process {exc.pid}" if exc.pid is not None else "another process"
        raise DataDirLockedError(
            f"data directory {path} is in use by another broker ({holder} holds "
            f"{os.path.join(path, LOCK_FILE)}); stop it, or use another data directory",
            path=path,
            pid=exc.pid,
        ) from None
    except OSError as exc:
        raise _unusable(path, exc) from None
    if isinstance(fs, RealFileSystem) and not os.access(path, os.W_OK | os.X_OK):
        fs.close(handle)
        raise _unusable(path, PermissionError(errno.EACCES, os.strerror(errno.EACCES), path))
    return handle


def _unusable(path: str, exc: OSError) -> DataDirError:
    if exc.errno == errno.EEXIST:
        reason = "it is a file, not a directory"
    else:
        name = errno.errorcode.get(exc.errno or 0, "")
        reason = f"{exc.strerror or exc}" + (f" ({name})" if name else "")
        if exc.filename and str(exc.filename) != path:
            reason += f" at {exc.filename}"
    return DataDirError(
        f"cannot use {path} as the data directory: {reason}; "
        "point the broker at a writable directory",
        path=path,
    )
