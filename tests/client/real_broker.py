"""The real embedded broker with a test-facing surface: request counts and
injected produce faults in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from headwater import _protocol as p
from headwater._errors import HeadwaterError
from headwater.broker import Broker, open_broker
from headwater.client import LocalChannel
from headwater.journal import SimulatedFileSystem, iter_records
from headwater.journal._batch import decode_record_events


class RealBroker:
    """Counts requests and injects produce faults in front of a real broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.requests: dict[str, int] = {}
        self.produce_faults: list[tuple[HeadwaterError, bool]] = []

    def fail_produces(
        self, n: int, error: Callable[[], HeadwaterError], *, after_store: bool = False
    ) -> None:
        """Fail the next ``n`` produce requests with ``error()``; with
        ``after_store`` the batch is stored first (a lost response)."""
        self.produce_faults.extend((error(), after_store) for _ in range(n))

    def channel(self) -> LocalChannel:
        """A channel to this broker."""
        return LocalChannel(self.handle)

    async def handle(self, request: Any) -> Any:
        """Count the request, apply a pending fault, pass it to the broker."""
        name = type(request).__name__
        self.requests[name] = self.requests.get(name, 0) + 1
        if isinstance(request, p.Produce) and self.produce_faults:
            error, after_store = self.produce_faults.pop(0)
            if after_store:
                await self.broker.handle(request)
            raise error
        return await self.broker.handle(request)

    async def values(self, topic: str, partition: int) -> list[bytes | None]:
        """Raw values of every stored event of a partition, in offset order."""
        result = await self.broker.handle(p.Fetch(topic, partition, 0, 1 << 30, 0))
        out: list[bytes | None] = []
        for header, record in iter_records(result.records):
            events = decode_record_events(header, record, topic=topic, partition=partition)
            out.extend(event.value for event in events)
        return out


@asynccontextmanager
async def open_real_broker() -> AsyncIterator[RealBroker]:
    """A real embedded broker on a simulated disk, wrapped."""
    async with open_broker("/data", fs=SimulatedFileSystem()) as broker:
        yield RealBroker(broker)
