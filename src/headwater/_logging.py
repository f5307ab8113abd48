"""Structured logging helpers shared by every part of Headwater.

Headwater logs with structlog and never configures it on import: a program that
embeds Headwater keeps its own structlog configuration. ``headwater serve``
configures it (see :mod:`headwater.cli`). Event names are stable snake_case
(``actor_restarted``) and carry the actor path as ``actor``.
"""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["get_logger"]


def get_logger(name: str, **initial: Any) -> Any:
    """Return a structlog logger bound with ``logger=name`` and ``initial``."""
    return structlog.get_logger(name).bind(**initial)
