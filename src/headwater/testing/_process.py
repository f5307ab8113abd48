"""Run ``headwater serve`` as a real process, for tests, benchmarks and examples.

:func:`server_process` starts ``python -m headwater serve`` on a free
loopback port (``--port 0``) with JSON logs written to a file, waits for its
``server_listening`` line to learn the port, and kills the process when the
block ends, whatever happens. It uses the same interpreter as the caller, and
puts this copy of Headwater's sources first on ``PYTHONPATH``, so it works
from a checkout without installing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ServerProcess", "server_process", "subprocess_env"]

_SRC = Path(__file__).resolve().parents[2]


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with Headwater's sources first on ``PYTHONPATH``."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SRC), out.get("PYTHONPATH", "")) if p)
    out.update(extra or {})
    return out


class ServerProcess:
    """A running server: its process, port and log file."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log
        self.port = 0

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    @property
    def url(self) -> str:
        """``headwater://127.0.0.1:PORT``."""
        return f"headwater://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        """The server's JSON log lines so far, parsed (other lines skipped)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Wait for the ``server_listening`` line; learn the port from it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == "server_listening" and isinstance(event.get("port"), int):
                    self.port = event["port"]
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log.read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"the server did not listen within {timeout}s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` (SIGTERM: a graceful shutdown) and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@contextmanager
def server_process(
    data_dir: str | os.PathLike[str],
    *args: str,
    log_path: str | os.PathLike[str] | None = None,
    port: int = 0,
    extra_env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """``headwater serve --data-dir DATA_DIR ARGS`` on 127.0.0.1, ready to use.

    The log goes to ``log_path`` (default: ``DATA_DIR.log`` beside the data
    directory). The process is killed when the block ends if it still runs.
    """
    data = Path(data_dir)
    log = Path(log_path) if log_path is not None else data.with_name(data.name + ".log")
    command: Sequence[str] = [
        sys.executable,
        "-m",
        "headwater",
        "serve",
        "--data-dir",
        str(data),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-format",
        "json",
        *args,
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=out, env=subprocess_env(extra_env)
        )
    running = ServerProcess(proc, log)
    try:
        running.wait_listening()
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
