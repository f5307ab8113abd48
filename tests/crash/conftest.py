"""Configuration of the real-process, real-socket tests."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Run the garbage collector after each test, so a socket the test left
    unclosed in a reference cycle (its ResourceWarning is an error here)
    fails *this* test, not whichever later test happens to be running when
    the collector next runs. Only here: a full collection costs about 0.1 s
    in this process, and these are the tests with real sockets."""
    yield
    gc.collect()
