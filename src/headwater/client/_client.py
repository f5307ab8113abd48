"""The :class:`Client`: admin calls, producers and consumers over one Channel.

The same code runs embedded (:class:`~headwater.client.LocalChannel`) and over
TCP: everything here is request messages from :mod:`headwater._protocol`.
Arguments are checked here, before anything is sent, so bad input raises a
typed :class:`~headwater.HeadwaterError` naming the value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

from headwater import _protocol as p
from headwater._errors import ConfigError, InvalidArgument
from headwater.broker._config import (
    DURABILITIES,
    MAX_PARTITIONS,
    validate_group_name,
    validate_topic_name,
)

from ._channel import Channel
from ._consumer import Consumer, ConsumerConfig, PartitionsCallback, Start
from ._producer import Producer, ProducerConfig, open_producer
from ._share import ExponentialBackoff, Subscription, build_request, open_subscription

__all__ = ["Client"]


def _optional_limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ConfigError(f"{name} must be an int >= 0 or None, not {value!r}")
    return value


class Client:
    """A connection to one broker: admin calls, :meth:`producer` and
    :meth:`consumer`. Use as ``async with broker.connect() as client``."""

    def __init__(self, channel: Channel, *, request_timeout: float = 30.0) -> None:
        if not isinstance(channel, Channel):
            raise InvalidArgument(f"channel must be a Channel, not {type(channel).__qualname__}")
        self._channel = channel
        self._timeout = request_timeout

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel; producers and consumers still open fail with
        :class:`~headwater.ClosedError`."""
        await self._channel.aclose()

    async def _ask(self, request: Any) -> Any:
        return await self._channel.request(request, timeout=self._timeout)

    # ------------------------------------------------------------ admin

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        retention: dt.timedelta | None = None,
        compacted: bool = False,
        durability: str | None = None,
    ) -> p.TopicInfo:
        """Create a topic; return its settings. ``retention`` (a timedelta)
        is a friendlier ``retention_ms``; ``None`` limits take the broker's
        defaults. ``durability`` is ``"always"``, ``"interval"`` or ``"never"``."""
        validate_topic_name(name)
        if type(partitions) is not int or not 1 <= partitions <= MAX_PARTITIONS:
            raise InvalidArgument(
                f"partitions must be an int in 1..{MAX_PARTITIONS}, not {partitions!r}"
            )
        if retention is not None:
            if not isinstance(retention, dt.timedelta) or retention_ms is not None:
                raise InvalidArgument(
                    f"retention must be a timedelta (and not given with retention_ms), "
                    f"not {retention!r}"
                )
            retention_ms = int(retention.total_seconds() * 1000)
        _optional_limit("retention_ms", retention_ms)
        _optional_limit("retention_bytes", retention_bytes)
        if not isinstance(compacted, bool):
            raise InvalidArgument(f"compacted must be a bool, not {compacted!r}")
        if durability is not None and durability not in DURABILITIES:
            raise ConfigError(f"durability must be one of {DURABILITIES}, not {durability!r}")
        info: p.TopicInfo = await self._ask(
            p.CreateTopic(name, partitions, retention_ms, retention_bytes, compacted, durability)
        )
        return info

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and all its events."""
        validate_topic_name(name)
        await self._ask(p.DeleteTopic(name))

    async def add_partitions(self, name: str, partitions: int) -> p.TopicInfo:
        """Grow topic ``name`` to ``partitions`` partitions (a topic never
        shrinks). Keyed events may map to a new partition afterwards."""
        validate_topic_name(name)
        info: p.TopicInfo = await self._ask(p.AddPartitions(name, partitions))
        return info

    async def list_topics(self) -> list[p.TopicInfo]:
        """Every topic's settings, by name."""
        result: p.TopicList = await self._ask(p.ListTopics())
        return sorted(result.topics, key=lambda t: t.name)

    async def describe_topic(self, name: str) -> p.TopicDescription:
        """A topic's settings and each partition's offsets and size on disk."""
        validate_topic_name(name)
        description: p.TopicDescription = await self._ask(p.DescribeTopic(name))
        return description

    async def list_groups(self) -> list[str]:
        """Every consumer group's name."""
        result: p.GroupList = await self._ask(p.ListGroups())
        return list(result.groups)

    async def describe_group(self, group: str) -> p.GroupDescription:
        """A group's members, assignment, committed offsets and lag."""
        description: p.GroupDescription = await self._ask(
            p.DescribeGroup(validate_group_name(group))
        )
        return description

    async def list_transactions(self) -> list[p.TransactionDescription]:
        """Every transactional id the broker knows, with its producer
        identity and the state of its last transaction."""
        result: p.TransactionList = await self._ask(p.ListTransactions())
        return list(result.transactions)

    async def describe_transaction(self, transactional_id: str) -> p.TransactionDescription:
        """One transactional id's producer identity, state, timeout and the
        partitions and groups of its transaction; an unknown id raises
        :class:`~headwater.UnknownTransactionalIdError`."""
        if not isinstance(transactional_id, str) or not transactional_id:
            raise InvalidArgument(
                f"transactional id must be a non-empty str, not {transactional_id!r}"
            )
        description: p.TransactionDescription = await self._ask(
            p.DescribeTransaction(transactional_id)
        )
        return description

    async def tree(self) -> dict[str, Any]:
        """The broker's live supervision tree, as nested maps (the shape of
        :meth:`~headwater.supervision.ActorSnapshot.as_dict`)."""
        result: p.TreeSnapshot = await self._ask(p.GetTree())
        return result.root

    # ------------------------------------------------------------ clients

    def producer(self, **config: Any) -> AbstractAsyncContextManager[Producer]:
        """A :class:`~headwater.client.Producer`, as ``async with
        client.producer() as producer`` (the block owns its tasks; leaving it
        flushes). ``config`` are :class:`~headwater.client.ProducerConfig`
        fields, checked here: a bad one raises
        :class:`~headwater.ConfigError` before anything is sent."""
        try:
            settings = ProducerConfig(**config)
        except TypeError as exc:
            raise ConfigError(f"unknown producer setting: {exc}") from None
        return open_producer(self._channel, settings)

    def consumer(
        self,
        topics: Iterable[str] | str,
        *,
        group: str | None = None,
        start: Start = "earliest",
        on_assigned: PartitionsCallback | None = None,
        on_revoked: PartitionsCallback | None = None,
        **config: Any,
    ) -> AbstractAsyncContextManager[Consumer]:
        """A :class:`~headwater.client.Consumer` of ``topics``, as an async
        context manager (``async with client.consumer(...) as consumer``)
        that owns its tasks and raises failures as the typed
        :class:`~headwater.HeadwaterError` itself. With ``group`` it joins
        that consumer group and reads its assigned partitions; without, it
        reads every partition (narrow with :meth:`Consumer.assign`).
        ``start`` (``"earliest"``, ``"latest"``, an offset, an aware datetime
        or :class:`~headwater.client.Timestamp`) applies only where the group
        has no committed offset. ``on_assigned`` / ``on_revoked`` (sync or
        async, called with a list of (topic, partition)) run at a poll when
        the group gives or takes partitions: flush state in ``on_revoked``
        (a ``commit()`` there still goes through). ``config`` are
        :class:`~headwater.client.ConsumerConfig` fields. Bad arguments
        raise here, before anything is sent."""
        if isinstance(topics, str):
            topics = [topics]
        topic_list = tuple(topics)
        if not topic_list:
            raise InvalidArgument("consumer needs at least one topic")
        for t in topic_list:
            validate_topic_name(t)
        if group is not None:
            validate_group_name(group)
        try:
            settings = ConsumerConfig(**config)
        except TypeError as exc:
            raise ConfigError(f"unknown consumer setting: {exc}") from None
        consumer = Consumer(
            self._channel,
            topic_list,
            group,
            start,
            settings,
            on_assigned=on_assigned,
            on_revoked=on_revoked,
        )
        return consumer.open()

    def subscribe(
        self,
        topic: str,
        name: str,
        *,
        mode: str = "shared",
        start: str = "earliest",
        max_unacked: int = 100,
        ack_timeout: float = 30.0,
        max_deliveries: int = 5,
        backoff: Sequence[float] | ExponentialBackoff = (),
        window: int = 1000,
        session_timeout: float = 10.0,
        max_wait: float = 0.5,
        deserializer: Any = None,
        client_id: str = "",
    ) -> AbstractAsyncContextManager[Subscription]:
        """Join the share subscription ``name`` of ``topic`` (created on first
        use), as ``async with client.subscribe(...) as subscription``.

        The broker deals events to every consumer of ``name`` one by one;
        settle each with ``ack`` / ``nack`` / ``reject``. ``mode`` is
        ``"shared"``, ``"exclusive"`` (one live consumer), ``"failover"``
        (one active consumer, the next takes over) or ``"key_shared"`` (a
        key's events go to one consumer, in order); ``start`` where a
        new subscription begins; ``max_unacked`` how many events this
        consumer holds at most; ``ack_timeout`` (s) the lock of a delivery;
        ``max_deliveries`` before the dead-letter topic
        ``<topic>.<name>.dlq``; ``backoff`` before a redelivery (a list of
        seconds, or :class:`~headwater.client.ExponentialBackoff`);
        ``window`` how many offsets past the ack floor may be in play. The
        subscription's settings are fixed by its first subscriber; a
        different one raises :class:`~headwater.SubscriptionConflictError`."""
        validate_topic_name(topic)
        validate_group_name(name)
        request = build_request(
            topic,
            name,
            mode=mode,
            start=start,
            ack_timeout=ack_timeout,
            max_deliveries=max_deliveries,
            backoff=backoff,
            window=window,
            session_timeout=session_timeout,
            client_id=client_id,
        )
        return open_subscription(
            self._channel,
            request,
            max_unacked=max_unacked,
            max_wait=max_wait,
            deserializer=deserializer,
            request_timeout=self._timeout,
        )
