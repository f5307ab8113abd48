"""Shared test configuration.

Hypothesis runs the ``ci`` profile by default (bounded examples, no deadline:
the CI machine has 2 shared cores); set ``HYPOTHESIS_PROFILE=dev`` for more.
"""

from __future__ import annotations

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
def _restore_structlog() -> Iterator[None]:
    """Tests that run the CLI configure structlog (level, renderer); put the
    configuration back so later tests' ``capture_logs`` see every event."""
    saved = structlog.get_config()
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)
