"""The client suites run against the real embedded broker (on a simulated disk).

They used to run against a small fake broker as well; the real broker runs in
tests now, so the fake only risked disagreeing with it (DECISIONS #30)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from headwater.client import Client

from .real_broker import RealBroker, open_real_broker


@pytest.fixture
async def broker() -> AsyncIterator[RealBroker]:
    """A fresh real embedded broker on a simulated disk."""
    async with open_real_broker() as real:
        yield real


@pytest.fixture
async def client(broker: RealBroker) -> AsyncIterator[Client]:
    """A client of the broker with topics ``t1`` (1 partition) and ``t3`` (3)
    (a module may define its own ``client``)."""
    async with Client(broker.channel()) as c:
        await c.create_topic("t1")
        await c.create_topic("t3", partitions=3)
        yield c
