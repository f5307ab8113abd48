"""Headwater's logging (DECISIONS #17): stdlib loggers ``headwater.*`` with
Headwater's own processors, the actor path bound once per actor, quiet by
default, and a capture helper for tests."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import structlog
import trio

from headwater import ConfigError, configure_logging
from headwater._logging import get_logger
from headwater.actors import Actor, open_actor_system
from headwater.broker import open_broker
from headwater.journal import SimulatedFileSystem
from headwater.supervision import ChildSpec
from headwater.testing import capture_logs

_log = get_logger("headwater.tests")


class Chatty(Actor):
    """Logs on every message without naming itself; crashes on "crash"."""

    async def handle(self, message: Any) -> Any:
        _log.info("chatty_heard", message=message)
        if message == "crash":
            raise ValueError("asked to crash")
        return message


async def test_events_logged_in_an_actor_carry_its_path_and_incarnation(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The runtime binds ``actor`` and ``incarnation`` once per incarnation:
    a log call inside the actor names neither, and its events carry both
    (the new incarnation's number after a restart)."""
    with capture_logs() as logs:
        async with open_actor_system() as system:
            ref = await system.start_child(ChildSpec("chatty", Chatty))
            await ref.ask("hello")
            with pytest.raises(Exception, match="asked to crash"):
                await ref.ask("crash")
            await ref.ask("again")
    heard = [
        (e["message"], e["actor"], e["incarnation"], e["log_level"])
        for e in logs
        if e["event"] == "chatty_heard"
    ]
    assert [
        ("hello", "/chatty", 1, "info"),
        ("crash", "/chatty", 1, "info"),
        ("again", "/chatty", 2, "info"),
    ] == heard


async def test_broker_events_carry_the_actor_that_logged_them(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``topic_created`` is logged by the registry actor without passing its
    path; the captured event names it."""
    with capture_logs() as logs:
        async with (
            open_broker("/data", fs=SimulatedFileSystem()) as broker,
            broker.connect() as client,
        ):
            await client.create_topic("orders")
    created = [e for e in logs if e["event"] == "topic_created"]
    assert [("/broker/registry", 1, "orders")] == [
        (e["actor"], e["incarnation"], e["topic"]) for e in created
    ]


def test_library_defaults_are_quiet_and_ignore_structlogs_global_configuration() -> None:
    """The ``headwater`` logger has a NullHandler and level WARNING; a
    program's global structlog configuration never sees Headwater's events,
    and ``capture_logs`` still sees them (at every level) and restores the
    level after."""
    logger = logging.getLogger("headwater")
    assert logging.WARNING == logger.level
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    seen: list[Any] = []

    def spy(_logger: Any, _method: str, event: Any) -> Any:
        seen.append(event)
        raise structlog.DropEvent

    structlog.configure(processors=[spy])
    with capture_logs() as logs:
        _log.debug("quiet_detail", n=1)
        _log.warning("loud_problem", n=2)
    assert [] == seen
    assert [
        {"event": "quiet_detail", "n": 1, "log_level": "debug"},
        {"event": "loud_problem", "n": 2, "log_level": "warning"},
    ] == logs
    assert logging.WARNING == logger.level


def test_configure_logging_renders_json_lines_at_the_chosen_level() -> None:
    """``configure_logging("json", level=...)`` writes one JSON object per
    event at that level and up to the given stream (stderr by default), and
    a second call replaces the first handler instead of adding one."""
    first, stream = io.StringIO(), io.StringIO()
    configure_logging("json", level="info", stream=first)
    configure_logging("json", level="warning", stream=stream)
    _log.info("routine", n=1)
    _log.warning("unusual", n=2)
    try:
        raise KeyError("why")
    except KeyError:
        _log.exception("failed", n=3)
    assert "" == first.getvalue()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [("unusual", "warning"), ("failed", "error")] == [
        (e["event"], e["level"]) for e in lines
    ]
    assert "headwater.tests" == lines[0]["logger"]
    assert "KeyError" in lines[1]["exception"]
    with pytest.raises(ConfigError, match="log level 'chatty'"):
        configure_logging("json", level="chatty")


def test_a_plain_stdlib_handler_gets_readable_lines() -> None:
    """A program that only uses ``logging`` (no structlog) sees
    ``event key=value`` messages, attributed to the code that logged them
    (not to structlog's internals)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s %(filename)s:%(funcName)s %(message)s")
    )
    logger = logging.getLogger("headwater")
    logger.addHandler(handler)
    try:
        _log.warning("disk_slow", path="/data", ms=250)
    finally:
        logger.removeHandler(handler)
    assert (
        "WARNING headwater.tests test_logs.py:test_a_plain_stdlib_handler_gets_readable_lines "
        "disk_slow path='/data' ms=250\n"
    ) == stream.getvalue()
