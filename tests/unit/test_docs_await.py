"""The docs and examples show coroutine methods with ``await``: a reader who
copies ``system.kill(path)`` without it gets a never-awaited coroutine and
no kill."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_KILL = re.compile(r"(\S*\s*)\b(system|broker)\.kill\(")


def test_kill_is_shown_with_await() -> None:
    """Every ``system.kill(`` / ``broker.kill(`` in README.md, docs/ and
    examples/ is awaited."""
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.py")]
    bare = [
        f"{path.name}: {match.group(0)!r}"
        for path in files
        for match in _KILL.finditer(path.read_text(encoding="utf-8"))
        if not match.group(1).strip().endswith("await")
    ]
    assert [] == bare
