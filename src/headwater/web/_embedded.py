"""``headwater.open_broker``: the embedded broker, with its HTTP front end
when asked for one.

The broker layer never imports the front ends above it (DESIGN.md's layer
rule), so the composition lives here: :func:`open_broker` opens
:func:`headwater.broker.open_broker` and, given ``http_port``, opens
:func:`~headwater.web.open_http` on it, inside the broker's supervision tree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from headwater.broker._broker import DEFAULT_DATA_DIR, Broker
from headwater.broker._broker import open_broker as _open_broker
from headwater.web._server import open_http

__all__ = ["open_broker"]


@asynccontextmanager
async def open_broker(
    data_dir: str = DEFAULT_DATA_DIR,
    *,
    http_port: int | None = None,
    http_host: str = "127.0.0.1",
    http_token: str | None = None,
    **options: Any,
) -> AsyncIterator[Broker]:
    """Open (recovering everything under ``data_dir``) an embedded broker.

    ``options`` are those of :func:`headwater.broker.open_broker`
    (``durability``, ``interval_ms``, ``segment_bytes``, ...). With
    ``http_port`` (``0`` picks a free one; see ``broker.http_port``) the
    broker also serves ``/metrics``, ``/healthz``, ``/readyz``, the JSON API
    and the web console on ``http_host`` (loopback by default), requiring
    ``http_token`` for all but the health endpoints when given.
    """
    async with _open_broker(data_dir, **options) as broker:
        if http_port is None:
            yield broker
            return
        async with open_http(broker, port=http_port, host=http_host, token=http_token):
            yield broker
