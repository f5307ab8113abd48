"""DECISIONS #17 as a check on the sources: Headwater's modules log through
``headwater._logging.get_logger`` (stdlib loggers with Headwater's own
processors), never through structlog's global configuration, and only the
CLI configures structlog."""

from __future__ import annotations

import pathlib
import re

import headwater

SRC = pathlib.Path(headwater.__file__).resolve().parent

# The consumer is being rewritten on the consumer-groups branch (issue 11,
# point 8), which owns the file; it switches to get_logger there.
PENDING: set[str] = set()


def _sources() -> dict[str, str]:
    return {
        path.relative_to(SRC).as_posix(): path.read_text()
        for path in SRC.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_no_module_logs_through_structlogs_global_configuration() -> None:
    """No ``structlog.get_logger``/``structlog.configure`` outside
    ``_logging.py``: a program's own structlog setup never sees, styles or
    silences Headwater's events."""
    offenders = sorted(
        name
        for name, text in _sources().items()
        if name != "_logging.py"
        and name not in PENDING
        and re.search(r"structlog\.(get_logger|configure|getLogger)\(", text)
    )
    assert [] == offenders


def test_only_the_cli_configures_structlog() -> None:
    """``configure_structlog_for_cli`` is called from the command-line
    programs (``headwater``, ``python -m headwater.testing.soak``) and
    nowhere else."""
    callers = sorted(
        name
        for name, text in _sources().items()
        if name != "_logging.py" and "configure_structlog_for_cli(" in text
    )
    assert ["cli.py", "testing/soak.py"] == callers
