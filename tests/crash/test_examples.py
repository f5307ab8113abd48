"""Every file in examples/ runs to completion (exit 0) as a newcomer would run it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .server_proc import ROOT, env

pytestmark = pytest.mark.crash

# A library log line (the consumer still logs through structlog's global
# configuration, to stdout, until it moves to headwater._logging): not output.
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")

EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name: str, tmp_path: Path) -> None:
    """``python examples/NAME`` exits 0 within a minute."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        timeout=60,
    )
    assert 0 == result.returncode, result.stderr.decode()[-3000:]


def test_quickstart_prints_the_same_numbers_and_they_add_up(tmp_path: Path) -> None:
    """Two runs of the quickstart print the same lines (but the temporary data
    directory's name), and its numbers add up: consumed = committed, and the
    lag after the restart is what is left of the 3,000 events."""
    outputs = []
    for run in range(2):
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path / f"d{run}")],
            env=env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert 0 == result.returncode, result.stderr[-3000:]
        outputs.append(
            [
                line
                for line in result.stdout.splitlines()
                if not line.startswith("data directory") and not _LOG_LINE.match(line)
            ]
        )
    assert outputs[0] == outputs[1]
    text = "\n".join(outputs[0])
    assert (
        "group 'billing' (two consumers) consumed 2000 of 3000 events and committed "
        "offsets [600, 720, 680] (sum 2000)"
    ) in text
    assert "group 'billing' resumes with lag [300, 360, 340] (sum 1000 = 3000 - 2000)" in text
    assert "after the restart it read the other 1000: 3000 distinct events, all of them" in text
