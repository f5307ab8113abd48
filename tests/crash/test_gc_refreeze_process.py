"""``headwater serve`` refreezes the heap after topics are created at runtime
(not only what start-up built), logging ``gc_refrozen``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

import headwater
from headwater.testing import server_process

pytestmark = pytest.mark.crash


async def _create(url: str) -> None:
    with trio.fail_after(30):
        async with headwater.connect(url) as client:
            await client.create_topic("orders", partitions=8)


def test_serve_refreezes_after_a_topic_is_created(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with server_process(tmp_path / "data", log_path=log) as proc:
        trio.run(_create, proc.url)
        deadline = time.monotonic() + 30
        while "gc_refrozen" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "gc_refrozen" in log.read_text()
