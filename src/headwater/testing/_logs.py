"""Capture Headwater's log events as dicts, for tests (yours and ours)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from headwater._logging import ROOT_LOGGER

__all__ = ["capture_logs"]


class _Capture(logging.Handler):
    def __init__(self, entries: list[dict[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.entries = entries

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg
        entry = dict(msg) if isinstance(msg, dict) else {"event": record.getMessage()}
        entry["log_level"] = record.levelname.lower()
        self.entries.append(entry)


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Collect every event Headwater logs in the block, at any level, as a
    list of dicts (``event``, ``log_level``, the bound ``actor`` and
    ``incarnation`` where an actor logged it, and the event's own keys) —
    the shape of :func:`structlog.testing.capture_logs`, which cannot see
    Headwater's events because Headwater does not use structlog's global
    configuration::

        with capture_logs() as logs:
            ...
        assert any(e["event"] == "actor_restarted" for e in logs)

    Events still reach the handlers configured outside the block, filtered
    by their own levels.
    """
    entries: list[dict[str, Any]] = []
    logger = logging.getLogger(ROOT_LOGGER)
    handler = _Capture(entries)
    level = logger.level
    others = [(h, h.level) for h in logger.handlers]
    for h, old in others:
        # Only the capture sees the events below the usual level.
        h.setLevel(max(old, level))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield entries
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        for h, old in others:
            h.setLevel(old)
