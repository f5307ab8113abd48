"""The broker service's share-subscription requests.

Theory of operation
-------------------
:class:`ShareService` answers :class:`~headwater._protocol.ShareSubscribe`,
``ShareFetch``, ``ShareAck``, ``ShareLeave`` and the share side of
``DescribeGroup`` for :class:`~headwater.broker.BrokerService`. A
subscription's settings live in ``meta/shares/<name>/config`` (CBOR,
written atomically); its actors run under ``/broker/shares/<name>`` and are
(re)started on first use. Share names and consumer-group names are one
namespace (DECISIONS #23).

A fetch asks the partitions in turn (starting one further each time, so no
partition starves) for at most the consumer's credit; when none has a ready
event it waits on their ``changed`` signals up to ``max_wait`` seconds.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import cbor2
import trio

from headwater._errors import (
    HeadwaterError,
    InvalidArgument,
    SubscriptionConflictError,
    TopicExistsError,
    UnknownGroupError,
    UnknownMemberError,
)
from headwater._logging import get_logger
from headwater._protocol import (
    CreateTopic,
    Done,
    ShareAck,
    ShareBatch,
    ShareDescription,
    ShareFetch,
    ShareLeave,
    ShareMembership,
    SharePartitionState,
    ShareRecord,
    ShareSubscribe,
)
from headwater.broker._config import validate_group_name
from headwater.broker._share import ShareSettings, check_lock_lost
from headwater.broker._share_actor import (
    Acquire,
    Acquired,
    DescribeShare,
    Join,
    Leave,
    ListMembers,
    Seen,
    Settle,
    dead_letter_topic,
    share_supervisor,
)
from headwater.journal._async import run_blocking
from headwater.journal._files import remove_tree_durably, write_file_atomically

if TYPE_CHECKING:
    from headwater.broker._service import BrokerService

__all__ = ["MAX_SHARE_FETCH", "ShareService"]

MAX_SHARE_FETCH = 10_000
"""The most events one share fetch may ask for."""

_log = get_logger("headwater.broker")


class ShareService:
    """Share-subscription requests of one broker (module docstring)."""

    def __init__(self, broker: BrokerService) -> None:
        self.broker = broker
        self._lock = trio.Lock()
        self._configs: dict[str, ShareSettings] = {}
        self._turn: dict[str, int] = {}

    # ----------------------------------------------------------- storage

    def _dir(self, name: str) -> str:
        return os.path.join(self.broker.settings.data_dir, "meta", "shares", name)

    def exists(self, name: str) -> bool:
        """Whether ``name`` is a share subscription."""
        return name in self._configs or self.broker.settings.fs.exists(f"{self._dir(name)}/config")

    def _load(self, name: str) -> ShareSettings | None:
        if name in self._configs:
            return self._configs[name]
        fs = self.broker.settings.fs
        path = f"{self._dir(name)}/config"
        if not fs.exists(path):
            return None
        handle = fs.open(path)
        try:
            data = fs.pread(handle, fs.size(handle), 0)
        finally:
            fs.close(handle)
        settings = ShareSettings.from_dict(cbor2.loads(data))
        self._configs[name] = settings
        return settings

    async def _save(self, name: str, settings: ShareSettings) -> None:
        fs = self.broker.settings.fs
        directory = self._dir(name)
        data = cbor2.dumps(settings.to_dict())

        def write() -> None:
            fs.makedirs(directory)
            write_file_atomically(fs, f"{directory}/config", [data])
            fs.fsync_dir(directory)

        await run_blocking(fs, write)
        self._configs[name] = settings

    def names(self) -> list[str]:
        """Every share subscription's name."""
        fs = self.broker.settings.fs
        root = os.path.join(self.broker.settings.data_dir, "meta", "shares")
        found = set(self._configs)
        if fs.exists(root):
            found.update(n for n in fs.listdir(root) if fs.exists(f"{root}/{n}/config"))
        return sorted(found)

    async def _running(self, name: str) -> ShareSettings:
        """The subscription's settings, its actors started if they are not."""
        settings = self._load(name)
        if settings is None:
            raise UnknownGroupError(
                f"share subscription {name!r} does not exist; subscribe to create it"
            )
        system = self.broker.system
        path = f"/broker/shares/{name}"
        try:
            system.lookup(f"{path}/members")
            return settings
        except HeadwaterError:
            pass
        async with self._lock:
            try:
                system.lookup(f"{path}/members")
            except HeadwaterError:
                partitions = self.broker._config(settings.topic).partitions
                await system.start_child(
                    share_supervisor(self.broker.settings, name, settings, partitions),
                    parent="/broker/shares",
                )
        return settings

    async def start(self) -> None:
        """Start the actors of every subscription found on disk; remove the
        ones whose topic no longer exists (a topic delete killed after the
        registry recorded it, before their settings were gone)."""
        for name in self.names():
            settings = self._load(name)
            if settings is None:
                continue
            if settings.topic in self.broker._topics:
                await self._running(name)
            else:
                await self._remove(name)
                _log.warning(
                    "share_subscription_removed",
                    subscription=name,
                    topic=settings.topic,
                    reason="its topic was deleted (the delete was interrupted)",
                )

    async def _remove(self, name: str) -> None:
        fs = self.broker.settings.fs
        await run_blocking(fs, remove_tree_durably, fs, self._dir(name))
        self._configs.pop(name, None)

    async def drop_topic(self, topic: str, delete: Callable[[], Awaitable[None]]) -> list[str]:
        """Delete ``topic`` with ``delete`` and every subscription of it;
        returns their names. Their actors stop first (no journal stays open
        on a file the delete removes); their settings go only once the
        delete is recorded, so a kill in between never leaves the topic
        without its subscriptions (:meth:`start` finishes the other case).
        Holds the lock throughout: nothing starts them again meanwhile."""
        dropped = []
        async with self._lock:
            for name in self.names():
                settings = self._load(name)
                if settings is None or settings.topic != topic:
                    continue
                try:
                    await self.broker.system.stop_child(f"/broker/shares/{name}")
                except HeadwaterError:
                    pass  # not running
                dropped.append(name)
            await delete()
            for name in dropped:
                await self._remove(name)
        return dropped

    # ---------------------------------------------------------- requests

    async def subscribe(self, r: ShareSubscribe) -> ShareMembership:
        """Create (first time) or join a share subscription."""
        name = validate_group_name(r.name)
        topic_config = self.broker._config(r.topic)
        try:
            settings = ShareSettings(
                topic=topic_config.name,
                mode=r.mode,
                ack_timeout_ms=r.ack_timeout_ms,
                max_deliveries=r.max_deliveries,
                backoff_ms=tuple(r.backoff_ms),
                backoff_base_ms=r.backoff_base_ms,
                backoff_max_ms=r.backoff_max_ms,
                window=r.window,
                start=r.start,
            )
        except TypeError as exc:
            raise InvalidArgument(f"bad share subscription setting: {exc}") from None
        if not isinstance(r.session_timeout, int | float) or not 0 < r.session_timeout <= 3600:
            raise InvalidArgument(f"session_timeout={r.session_timeout!r}; give 0..3600 seconds")
        async with self._lock:
            if self.broker.is_group(name):
                raise SubscriptionConflictError(
                    f"{name!r} is a consumer group; share subscriptions and groups share "
                    "one namespace, so pick another name"
                )
            existing = self._load(name)
            if existing is None:
                dlq = dead_letter_topic(settings.topic, name)
                if dlq not in self.broker._topics:
                    try:
                        await self.broker._create_topic(CreateTopic(dlq, 1))
                    except TopicExistsError:
                        pass
                await self._save(name, settings)
            elif existing != attrs.evolve(settings, start=existing.start):
                # (``start`` only matters when the subscription is created)
                diff = [
                    f"{k}={v!r} (not {getattr(settings, k)!r})"
                    for k, v in existing.to_dict().items()
                    if v != settings.to_dict()[k] and k != "start"
                ]
                raise SubscriptionConflictError(
                    f"share subscription {name!r} exists with {', '.join(diff)}; its "
                    "topic, mode and settings are fixed when it is created"
                )
        await self._running(name)
        members = self.broker.system.lookup(f"/broker/shares/{name}/members")
        cid = await members.ask(Join(r.consumer_id, float(r.session_timeout), r.client_id))
        return ShareMembership(
            name, settings.topic, cid, settings.mode, self.broker._config(settings.topic).partitions
        )

    def _partitions(self, name: str, settings: ShareSettings) -> list[Any]:
        system = self.broker.system
        count = self.broker._config(settings.topic).partitions
        return [system.lookup(f"/broker/shares/{name}/{p}") for p in range(count)]

    async def fetch(self, r: ShareFetch) -> ShareBatch:
        """Hand out up to ``max_events`` events (long-polling ``max_wait``)."""
        name = validate_group_name(r.name)
        if isinstance(r.max_events, bool) or not isinstance(r.max_events, int):
            raise InvalidArgument(f"max_events={r.max_events!r} is not an int")
        if not 0 <= r.max_events <= MAX_SHARE_FETCH:
            raise InvalidArgument(f"max_events={r.max_events}; give 0..{MAX_SHARE_FETCH}")
        if not isinstance(r.max_wait, int | float) or not 0 <= r.max_wait <= 30:
            raise InvalidArgument(f"max_wait={r.max_wait!r}; give 0..30 seconds")
        settings = await self._running(name)
        members = self.broker.system.lookup(f"/broker/shares/{name}/members")
        active, live = await members.ask(Seen(r.consumer_id))
        if r.max_events == 0:
            return ShareBatch(name, ())
        if not active:  # a failover standby: nothing until it takes over
            await trio.sleep(r.max_wait)
            return ShareBatch(name, ())
        refs = self._partitions(name, settings)
        deadline = trio.current_time() + r.max_wait
        while True:
            turn = self._turn.get(name, 0)
            self._turn[name] = turn + 1
            records: list[ShareRecord] = []
            signals: list[trio.Event] = []
            for i in range(len(refs)):
                want = r.max_events - len(records)
                if want <= 0:
                    break
                reply: Acquired = await refs[(turn + i) % len(refs)].ask(
                    Acquire(r.consumer_id, want, live)
                )
                if reply.durable is not None:
                    # Counted on disk before it leaves the broker.
                    await reply.durable.wait()
                records.extend(reply.records)
                signals.append(reply.signal)
            if records or trio.current_time() >= deadline:
                return ShareBatch(name, tuple(records))
            with trio.move_on_at(deadline):
                await _any(signals)

    async def ack(self, r: ShareAck) -> Done:
        """Apply a consumer's outcomes, partition by partition."""
        name = validate_group_name(r.name)
        settings = await self._running(name)
        try:  # settling is a sign of life too (a consumer busy acking fetches nothing)
            await self.broker.system.lookup(f"/broker/shares/{name}/members").ask(
                Seen(r.consumer_id)
            )
        except UnknownMemberError:
            pass  # its session expired: what it still holds was released
        refs = self._partitions(name, settings)
        by_partition: dict[int, list[tuple[int, str, int | None, str | None]]] = {}
        for o in r.outcomes:
            if isinstance(o.partition, bool) or not isinstance(o.partition, int):
                raise InvalidArgument(f"partition {o.partition!r} is not an int")
            if not 0 <= o.partition < len(refs):
                raise InvalidArgument(
                    f"partition {o.partition} is not in 0..{len(refs) - 1} of {settings.topic!r}"
                )
            by_partition.setdefault(o.partition, []).append(
                (o.offset, o.outcome, o.delay_ms, o.error)
            )
        refused_any: list[tuple[int, list[tuple[int, str]]]] = []
        for p, items in sorted(by_partition.items()):
            refused, durable = await refs[p].ask(Settle(r.consumer_id, items))
            if durable is not None:
                await durable.wait()
            if refused:
                refused_any.append((p, refused))
        for p, refused in refused_any:
            check_lock_lost(refused, settings.topic, p)
        return Done()

    async def leave(self, r: ShareLeave) -> Done:
        """Leave: the consumer's events go back at once."""
        name = validate_group_name(r.name)
        await self._running(name)
        await self.broker.system.lookup(f"/broker/shares/{name}/members").ask(Leave(r.consumer_id))
        return Done()

    async def describe(self, name: str) -> ShareDescription:
        """Backlog, in-flight, redelivered and dead-lettered counts."""
        settings = await self._running(name)
        members = await self.broker.system.lookup(f"/broker/shares/{name}/members").ask(
            ListMembers()
        )
        parts = []
        for p, ref in enumerate(self._partitions(name, settings)):
            state, counts, end = await ref.ask(DescribeShare())
            settled = sum(1 for e in state.entries.values() if e.state in ("acked", "archived"))
            backlog = max(0, end - state.floor - settled)
            parts.append(
                SharePartitionState(
                    p,
                    state.floor,
                    end,
                    backlog,
                    counts["in_flight"],
                    counts["waiting"],
                    state.acked,
                    state.redelivered,
                    state.dead_lettered,
                )
            )
        return ShareDescription(
            name,
            settings.topic,
            settings.mode,
            dead_letter_topic(settings.topic, name),
            tuple(members),
            tuple(parts),
        )


async def _any(signals: list[trio.Event]) -> None:
    """Return when any of ``signals`` is set."""
    if not signals:
        await trio.sleep_forever()
    async with trio.open_nursery() as nursery:

        async def wait(signal: trio.Event) -> None:
            await signal.wait()
            nursery.cancel_scope.cancel()

        for s in signals:
            nursery.start_soon(wait, s)
