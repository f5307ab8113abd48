"""The client suites run against the small fake broker and the real embedded one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .fake_broker import FakeBroker
from .real_broker import RealBroker, open_real_broker


@pytest.fixture(params=["fake", "real"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[FakeBroker | RealBroker]:
    """A fresh fake broker, or a real embedded one on a simulated disk."""
    if request.param == "fake":
        yield FakeBroker()
        return
    async with open_real_broker() as real:
        yield real
