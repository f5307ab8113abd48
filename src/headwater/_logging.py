"""Structured logging helpers shared by every part of Headwater (DECISIONS #17).

Headwater logs through stdlib :mod:`logging` loggers named ``headwater.*``,
with structlog's API and Headwater's own processors (the actor path and
incarnation come from :mod:`structlog.contextvars`, bound once per actor by
the actor runtime). It never touches the global structlog configuration, so
a program that embeds Headwater keeps its own.

By default the ``headwater`` logger has a :class:`logging.NullHandler` and
level ``WARNING``: embedded use prints nothing, and a program that configures
stdlib logging (``logging.basicConfig()``) sees Headwater's warnings and
errors, each rendered as ``event key=value ...``. To see more::

    logging.getLogger("headwater").setLevel(logging.INFO)

or call :func:`configure_logging`, which ``headwater serve`` and the CLI use:
it adds a stderr handler that renders Headwater's events as console lines or
JSON objects. Only the CLI ever calls ``structlog.configure``.

Event names are stable snake_case (``actor_restarted``); events logged inside
an actor carry its path as ``actor``. Tests capture events as dicts with
:func:`headwater.testing.capture_logs`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from types import FrameType
from typing import Any, TextIO

import structlog

from headwater._errors import ConfigError

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ROOT_LOGGER",
    "bind_actor",
    "configure_logging",
    "configure_structlog_for_cli",
    "get_logger",
]

LOG_FORMATS = ("auto", "console", "json")
"""Accepted values of ``--log-format``."""

LOG_LEVELS = ("debug", "info", "warning", "error")
"""Accepted values of ``--log-level``."""

ROOT_LOGGER = "headwater"
"""The stdlib logger every Headwater logger is a child of."""

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_root = logging.getLogger(ROOT_LOGGER)
if not any(isinstance(h, logging.NullHandler) for h in _root.handlers):
    _root.addHandler(logging.NullHandler())
if _root.level == logging.NOTSET:
    _root.setLevel(logging.WARNING)


class _Event(dict[str, Any]):
    """An event dict as a stdlib log message: ``str()`` renders it as
    ``event key=value ...`` for plain :class:`logging.Formatter` handlers,
    while :class:`structlog.stdlib.ProcessorFormatter` reads the dict."""

    def __str__(self) -> str:
        parts = [str(self.get("event", ""))]
        parts += [
            f"{key}={value!r}"
            for key, value in self.items()
            if key not in ("event", "exc_info") and not key.startswith("_")
        ]
        return " ".join(parts)


def _to_stdlib(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: hand the event dict to the stdlib logger as the
    record's message (what ``ProcessorFormatter.wrap_for_formatter`` does),
    with ``exc_info`` passed on so plain formatters print the traceback."""
    kwargs: dict[str, Any] = {"extra": {"_logger": logger, "_name": method_name}}
    exc_info = event_dict.get("exc_info")
    if exc_info:
        kwargs["exc_info"] = exc_info
    stacklevel = _caller_distance()
    if stacklevel:
        kwargs["stacklevel"] = stacklevel
    return (_Event(event_dict),), kwargs


_INTERNAL = (os.path.dirname(structlog.__file__), __file__)


def _caller_distance() -> int:
    """The ``stacklevel`` that makes the record's file, line and function
    those of the code that called the Headwater logger, not structlog's
    (0 if that cannot be told)."""
    frame: FrameType | None = sys._getframe(2)
    # Find structlog's frame that calls the stdlib logger...
    while frame is not None and frame.f_code.co_name != "_proxy_to_logger":
        frame = frame.f_back
    if frame is None:
        return 0
    level = 1
    # ... then count frames up to the first one outside structlog and us.
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 0


_PROCESSORS: list[Any] = [structlog.contextvars.merge_contextvars, _to_stdlib]

_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class _BoundLogger(structlog.stdlib.BoundLogger):
    """structlog's stdlib logger that asks the stdlib logger's level first,
    so an event below it costs one check (no processors, no exception)."""

    def _proxy_to_logger(
        self, method_name: str, event: str | None = None, *event_args: Any, **event_kw: Any
    ) -> Any:
        if not self._logger.isEnabledFor(_METHOD_LEVELS.get(method_name, logging.CRITICAL)):
            return None
        return super()._proxy_to_logger(method_name, event, *event_args, **event_kw)


def get_logger(name: str, **initial: Any) -> Any:
    """Return a structlog logger over the stdlib logger ``name`` (a
    ``headwater.*`` name), with ``initial`` bound.

    It runs Headwater's processors whatever the global structlog
    configuration is; the stdlib logger's level and handlers decide what is
    emitted and where.
    """
    return _BoundLogger(logging.getLogger(name), _PROCESSORS, dict(initial))


def bind_actor(path: str, incarnation: int) -> None:
    """Bind ``actor`` and ``incarnation`` for every event the current task
    (and the tasks it starts) logs: the actor runtime calls it once at the
    start of each incarnation, so no log call passes the path by hand."""
    structlog.contextvars.bind_contextvars(actor=path, incarnation=incarnation)


def _renderer(fmt: str, out: TextIO) -> tuple[list[Any], bool]:
    tty = bool(getattr(out, "isatty", lambda: False)())
    if fmt == "json" or (fmt == "auto" and not tty):
        return [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=repr),
        ], tty
    return [structlog.dev.ConsoleRenderer(colors=tty)], tty


class _HeadwaterHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (found again by type)."""


def _check(fmt: str, level: str) -> None:
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format {fmt!r} is unknown; use one of {', '.join(LOG_FORMATS)}")
    if level not in _LEVELS:
        raise ConfigError(f"log level {level!r} is unknown; use one of {', '.join(_LEVELS)}")


def _formatter(fmt: str, out: TextIO) -> logging.Formatter:
    renderer, _tty = _renderer(fmt, out)
    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderer,
        ],
        foreign_pre_chain=[structlog.contextvars.merge_contextvars],
    )


def configure_logging(
    fmt: str = "auto", *, level: str = "info", stream: TextIO | None = None
) -> None:
    """Send Headwater's log events at ``level`` and up to ``stream`` (stderr
    by default), one per line.

    ``fmt`` is ``"console"`` (aligned, human-readable, coloured on a
    terminal), ``"json"`` (one JSON object per line, for log shippers) or
    ``"auto"`` (console on a terminal, JSON otherwise); ``level`` is
    ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``. It installs one
    handler on the ``headwater`` stdlib logger (replacing the one an earlier
    call installed) and stops its events from also reaching the root
    logger's handlers. It does not touch structlog's global configuration.
    Called by ``headwater serve`` and the CLI; a program embedding Headwater
    may call it too, or configure the ``headwater`` logger itself.
    """
    _check(fmt, level)
    out = stream if stream is not None else sys.stderr
    handler = _HeadwaterHandler(out)
    handler.setFormatter(_formatter(fmt, out))
    for old in [h for h in _root.handlers if isinstance(h, _HeadwaterHandler)]:
        _root.removeHandler(old)
    _root.addHandler(handler)
    _root.setLevel(_LEVELS[level])
    _root.propagate = False


def configure_structlog_for_cli() -> None:
    """The CLI's process-wide setup (only the CLI calls this): structlog
    loggers that follow the global configuration (a user's pipeline under
    ``headwater run``, say) log through stdlib logging too, so their events
    obey the same levels and reach stderr rather than stdout."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            _to_stdlib,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        context_class=dict,
        cache_logger_on_first_use=False,
    )
