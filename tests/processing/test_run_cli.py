"""`headwater run`'s job loading and its one-line errors (no broker needed:
the job is loaded before anything connects)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from headwater import ConfigError, cli
from headwater.processing._cli import load_job

ONE = """
from headwater.processing import Job
job = Job("one")
job.stream("a").to("b")
"""

TWO = (
    ONE
    + """
other = Job("two")
other.stream("a").to("c")
"""
)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.py"
    path.write_text(text)
    return str(path)


def test_load_job_finds_the_one_job_or_the_named_one(tmp_path: Path) -> None:
    """One Job: found; several: --job by name or variable; none or a wrong
    name: ConfigError saying what to do."""
    assert "one" == load_job(write(tmp_path, ONE)).name
    path = write(tmp_path, TWO)
    assert "two" == load_job(path, "two").name
    assert "two" == load_job(path, "other").name
    with pytest.raises(ConfigError, match=r"exactly one Job.*one, two.*--job NAME"):
        load_job(path)
    with pytest.raises(ConfigError, match=r"no job named 'three' \(jobs: one, two\)"):
        load_job(path, "three")
    with pytest.raises(ConfigError, match="found: none"):
        load_job(write(tmp_path, "x = 1\n"))
    with pytest.raises(ConfigError, match="ZeroDivisionError"):
        load_job(write(tmp_path, "1 / 0\n"))
    with pytest.raises(ConfigError, match="no job file"):
        load_job(str(tmp_path / "missing.py"))


def test_run_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    """A module without a Job, or a bad --instance: one `error:` line, exit 2,
    before any broker is opened (no data directory appears)."""
    runner = CliRunner()
    data = tmp_path / "data"
    result = runner.invoke(cli.main, ["run", write(tmp_path, "x = 1\n"), "--data-dir", str(data)])
    assert 2 == result.exit_code
    assert result.output.startswith("error: ")
    assert "[config_error]" in result.output
    assert not data.exists()
    result = runner.invoke(cli.main, ["run", write(tmp_path, ONE), "--instance", "-1"])
    assert 2 == result.exit_code


def test_run_config_rejects_bad_values() -> None:
    """RunConfig fields are checked where they are made: ConfigError names them."""
    from headwater.processing import RunConfig

    for field, bad in [
        ("instance", -1),
        ("instance", True),
        ("session_timeout", 0),
        ("batch_events", float("inf")),
        ("batch_events", 2.5),
        ("restore_timeout", "soon"),
    ]:
        with pytest.raises(ConfigError, match=field):
            RunConfig(**{field: bad})
