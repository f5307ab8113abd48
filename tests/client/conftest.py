"""The client suites run against the real embedded broker (on a simulated disk).

They used to run against a small fake broker as well; the real broker runs in
tests now, so the fake only risked disagreeing with it (DECISIONS #30)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .real_broker import RealBroker, open_real_broker


@pytest.fixture
async def broker() -> AsyncIterator[RealBroker]:
    """A fresh real embedded broker on a simulated disk."""
    async with open_real_broker() as real:
        yield real
