"""Structured logging helpers shared by every part of Headwater.

Headwater logs with structlog and never configures it on import: a program that
embeds Headwater keeps its own structlog configuration. ``headwater serve``
configures it (see :mod:`headwater.cli`). Event names are stable snake_case
(``actor_restarted``) and carry the actor path as ``actor``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from headwater._errors import ConfigError

__all__ = ["LOG_FORMATS", "configure_logging", "get_logger"]

LOG_FORMATS = ("auto", "console", "json")
"""Accepted values of ``--log-format``."""

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def get_logger(name: str, **initial: Any) -> Any:
    """Return a lazy structlog logger with ``logger_name=name`` and ``initial`` bound.

    Lazy: it takes structlog's configuration at first use, so a program may
    configure structlog after importing Headwater.
    """
    return structlog.get_logger(logger_name=name, **initial)


def configure_logging(
    fmt: str = "auto", *, level: str = "info", stream: TextIO | None = None
) -> None:
    """Send structlog events to ``stream`` (stderr by default), one per line.

    ``fmt`` is ``"console"`` (aligned, human-readable, coloured on a
    terminal), ``"json"`` (one JSON object per line, for log shippers) or
    ``"auto"`` (console on a terminal, JSON otherwise). Called by
    ``headwater serve``; a program embedding Headwater configures structlog
    itself instead.
    """
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format {fmt!r} is unknown; use one of {', '.join(LOG_FORMATS)}")
    if level not in _LEVELS:
        raise ConfigError(f"log level {level!r} is unknown; use one of {', '.join(_LEVELS)}")
    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    renderer: Any
    if fmt == "json" or (fmt == "auto" and not tty):
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
