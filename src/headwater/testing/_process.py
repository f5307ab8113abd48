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

__all__ = [
    "ServerProcess",
    "config_server_process",
    "rss_kib",
    "server_process",
    "subprocess_env",
]

_SRC = Path(__file__).resolve().parents[2]


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with Headwater's sources first on ``PYTHONPATH``."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SRC), out.get("PYTHONPATH", "")) if p)
    out.update(extra or {})
    return out


class ServerProcess:
    """A running server: its process, port and log file. ``log_start`` is
    where this process's lines begin in the log (an earlier server of the
    same data directory may have written before it)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, log_start: int = 0) -> None:
        self.proc = proc
        self.log = log
        self.log_start = log_start
        self.port = 0
        self.kafka_port: int | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    @property
    def kafka_bootstrap(self) -> str:
        """``127.0.0.1:KAFKA_PORT`` for Kafka clients (serve with ``--kafka-port``)."""
        if self.kafka_port is None:
            raise RuntimeError("this server has no Kafka listener; start it with --kafka-port")
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def url(self) -> str:
        """``headwater://127.0.0.1:PORT``."""
        return f"headwater://127.0.0.1:{self.port}"

    def events(self, *, own: bool = False) -> list[dict[str, Any]]:
        """The server's JSON log lines so far, parsed (other lines skipped);
        ``own``: only this process's (from :attr:`log_start`)."""
        out = []
        with self.log.open("rb") as f:
            f.seek(self.log_start if own else 0)
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
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
            for event in self.events(own=True):  # not an earlier server's port
                if event.get("event") == "server_listening" and isinstance(event.get("port"), int):
                    self.port = event["port"]
                    kafka = event.get("kafka_port")
                    self.kafka_port = kafka if isinstance(kafka, int) else None
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log.read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"the server did not listen within {timeout}s:\n{self.log.read_text()}")

    def rss_kib(self) -> int:
        """The server process's resident memory now, in KiB."""
        return rss_kib(self.proc.pid)

    def open_fds(self) -> int:
        """How many file descriptors the server process has open now."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` (SIGTERM: a graceful shutdown) and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def rss_kib(pid: int) -> int:
    """``VmRSS`` of process ``pid`` in KiB (from ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextmanager
def _spawn(
    command: Sequence[str],
    log: Path,
    extra_env: dict[str, str] | None,
    start_timeout: float = 20.0,
) -> Iterator[ServerProcess]:
    """Start ``command`` logging to ``log``; wait until it listens; kill it at the end."""
    with log.open("ab") as out:
        start = out.tell()
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=out, env=subprocess_env(extra_env)
        )
    running = ServerProcess(proc, log, start)
    try:
        running.wait_listening(start_timeout)
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


_CONFIG_SCRIPT = """
import json, sys
from headwater.broker._server import ServerConfig, run_server
sys.exit(run_server(ServerConfig(**json.loads(sys.argv[1]))))
"""


@contextmanager
def config_server_process(
    data_dir: str | os.PathLike[str], **config: Any
) -> Iterator[ServerProcess]:
    """A server process on a free 127.0.0.1 port built from
    :class:`~headwater.broker.ServerConfig` fields (including those the
    command line does not offer), killed at the end. For a plain
    ``headwater serve`` use :func:`server_process`."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    log = data.parent / f"{data.name}-server.log"
    settings = {"data_dir": str(data), "port": 0, "log_format": "json", **config}
    command = [sys.executable, "-c", _CONFIG_SCRIPT, json.dumps(settings)]
    with _spawn(command, log, None) as running:
        yield running


@contextmanager
def server_process(
    data_dir: str | os.PathLike[str],
    *args: str,
    log_path: str | os.PathLike[str] | None = None,
    port: int = 0,
    extra_env: dict[str, str] | None = None,
    wrapper: Sequence[str] = (),
    start_timeout: float = 20.0,
) -> Iterator[ServerProcess]:
    """``headwater serve --data-dir DATA_DIR ARGS`` on 127.0.0.1, ready to use.

    The log goes to ``log_path`` (default: ``DATA_DIR.log`` beside the data
    directory). The process is killed when the block ends if it still runs.
    ``wrapper`` goes before the command (``["prlimit", "--nofile=400"]`` runs
    the server under a lower file-descriptor limit). ``start_timeout`` bounds
    the wait for it to listen (seconds).
    """
    data = Path(data_dir)
    log = Path(log_path) if log_path is not None else data.with_name(data.name + ".log")
    command: Sequence[str] = [
        *wrapper,
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
    with _spawn(command, log, extra_env, start_timeout) as running:
        yield running
