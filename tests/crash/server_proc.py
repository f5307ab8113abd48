"""Real `headwater serve` processes for the crash tests (a thin layer over
:func:`headwater.testing.server_process`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headwater.testing import ServerProcess, server_process, subprocess_env

__all__ = ["ROOT", "ServerProcess", "env", "hw", "server"]

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    """The environment for child processes: this checkout's sources first."""
    return subprocess_env()


@contextmanager
def server(data_dir: Path, *args: str, log_name: str = "server.log") -> Iterator[ServerProcess]:
    """A `headwater serve` process on a free loopback port, killed at the end."""
    with server_process(data_dir, *args, log_path=data_dir.parent / log_name) as proc:
        yield proc


def hw(url: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m headwater ARGS` against ``url`` (as $HEADWATER_URL)."""
    return subprocess.run(
        [sys.executable, "-m", "headwater", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env(), "HEADWATER_URL": url},
    )
