"""Shared test configuration.

Hypothesis runs the ``ci`` profile by default (bounded examples, no deadline:
the CI machine has 2 shared cores); set ``HYPOTHESIS_PROFILE=dev`` for more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Tests that run the CLI configure structlog and the ``headwater``
    stdlib logger (handler, level); put both back so later tests start from
    the library defaults (a NullHandler, level WARNING)."""
    saved = structlog.get_config()
    logger = logging.getLogger("headwater")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def quiet_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that compare what the CLI prints (click's ``Result.output``
    holds stderr too): an embedded broker's loop watchdog stays quiet unless
    a step holds the loop for a minute, so a ``loop_blocked`` warning logged
    on a loaded machine does not land among the lines compared."""
    from headwater.actors import _system

    monkeypatch.setattr(_system, "DEFAULT_WATCHDOG_THRESHOLD", 60.0)
