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
    """Return a lazy structlog logger with ``logger_name=name`` and ``initial`` bound.

    Lazy: it takes structlog's configuration at first use, so a program may
    configure structlog after importing Headwater.
    """
    return structlog.get_logger(logger_name=name, **initial)
