"""The `headwater` command as users run it: real processes, a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .server_proc import env, hw, server

pytestmark = pytest.mark.crash


def test_cli_round_trip_of_ten_thousand_lines(tmp_path: Path) -> None:
    """Create a topic, produce 10,000 stdin lines, consume them back in order;
    groups, tree and an error case on the way."""
    with server(tmp_path / "data") as proc:
        url = proc.url
        created = hw(url, "topics", "create", "lines", "--partitions", "1")
        assert 0 == created.returncode, created.stderr
        lines = [f"line {i:05d}" for i in range(10_000)]
        produced = hw(url, "produce", "lines", input="\n".join(lines) + "\n")
        assert 0 == produced.returncode, produced.stderr
        assert "produced 10,000 event(s)" in produced.stdout
        consumed = hw(url, "consume", "lines", "--group", "readers", "--max", "10000")
        assert 0 == consumed.returncode, consumed.stderr
        assert lines == consumed.stdout.splitlines()
        lag = json.loads(hw(url, "groups", "describe", "readers", "--json").stdout)
        assert 0 == lag["total_lag"]
        drawn = hw(url, "tree").stdout
        assert "conn-" in drawn
        assert "└── server [supervisor] running" in drawn
        missing = hw(url, "consume", "nope")
        assert 1 == missing.returncode
        assert "" == missing.stdout
        assert missing.stderr.startswith("error: topic 'nope' does not exist")
        assert 1 == len(missing.stderr.strip().splitlines())
        assert 0 == proc.stop()
    down = hw(proc.url, "topics", "list")
    assert 3 == down.returncode
    assert down.stderr.startswith("error: cannot connect")


def test_serve_refuses_a_bad_configuration_in_one_line(tmp_path: Path) -> None:
    """A port already in use: one error line and exit 2, no traceback."""
    with server(tmp_path / "data") as proc:
        clash = subprocess.run(
            [
                sys.executable,
                "-m",
                "headwater",
                "serve",
                "--data-dir",
                str(tmp_path / "other"),
                "--port",
                str(proc.port),
                "--log-format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=env(),
        )
        assert 2 == clash.returncode
        assert "Traceback" not in clash.stderr
        failure = [json.loads(line) for line in clash.stderr.splitlines() if line.startswith("{")]
        assert "cannot listen" in failure[-1]["error"]
