"""Every file in examples/ runs to completion (exit 0) as a newcomer would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .server_proc import ROOT, env

pytestmark = pytest.mark.crash

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
