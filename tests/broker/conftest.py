"""One fixture runs the broker's end-to-end tests with the embedded client and
with the remote (TCP protocol) client, so both stay the same.

The remote variant runs the real server connection code and the real TCP
channel over memory streams under MockClock (DECISIONS #1); real sockets are
covered by tests/crash/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from headwater.broker import Broker, open_server
from headwater.client import Client
from headwater.testing import connect_in_memory

Connect = Callable[..., AbstractAsyncContextManager[Client]]


@asynccontextmanager
async def _remote(broker: Broker, **options: Any) -> AsyncIterator[Client]:
    async with (
        open_server(broker, listen=False) as server,
        connect_in_memory(server, **options) as client,
    ):
        yield client


@pytest.fixture(params=["embedded", "tcp"])
def connect(request: pytest.FixtureRequest) -> Connect:
    """``connect(broker, **client_options)``: an embedded or a remote client."""
    if request.param == "embedded":
        return lambda broker, **options: broker.connect(**options)
    return _remote
