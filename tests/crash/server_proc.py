"""Start and stop real `headwater serve` processes for the crash tests.

The server runs with ``--port 0`` and JSON logs to a file; the port is read
from its ``server_listening`` line. Every server is killed when the block
ends, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    """The environment for child processes: this checkout's sources first."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), out.get("PYTHONPATH", "")])
    return out


class ServerProcess:
    """A running server: its process, port and log file."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log
        self.port = 0

    @property
    def url(self) -> str:
        return f"headwater://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, object]]:
        """The server's log lines so far, parsed."""
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == "server_listening":
                    port = event["port"]
                    assert isinstance(port, int)
                    self.port = port
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()}")
            time.sleep(0.02)
        raise AssertionError(f"server did not listen within {timeout}s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@contextmanager
def server(data_dir: Path, *args: str, log_name: str = "server.log") -> Iterator[ServerProcess]:
    """A `headwater serve` process on a free loopback port, killed at the end."""
    log = data_dir.parent / log_name
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headwater",
                "serve",
                "--data-dir",
                str(data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--log-format",
                "json",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env(),
        )
    running = ServerProcess(proc, log)
    try:
        running.wait_listening()
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
