"""Hostile clients against a live server process: raw frames, slow readers,
idle crowds, and the server's memory (RSS) while they misbehave.

The server runs in a child process (:func:`config_server_process`, the same
:func:`~headwater.broker.run_server` that ``headwater serve`` runs), so its
RSS is its own. The clients here are plain blocking sockets: they do exactly
what a hostile peer does (send what they like, never read) without any of
the client library's manners. Used by ``tests/crash/test_hostile_clients.py``
and ``benchmarks/bench_faults.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from headwater import _protocol as p
from headwater.transport._frames import encode_frame
from headwater.transport._operations import encode_request

__all__ = [
    "RunningServer",
    "hello_frame",
    "request_frame",
    "rss_kib",
    "config_server_process",
    "slow_readers",
]

_SCRIPT = """
import json, sys
from headwater.broker._server import ServerConfig, run_server
sys.exit(run_server(ServerConfig(**json.loads(sys.argv[1]))))
"""


class RunningServer:
    """A server child process: its pid, port and log."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log
        self.port = 0

    @property
    def url(self) -> str:
        """``headwater://127.0.0.1:<port>``."""
        return f"headwater://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        """The server's JSON log lines so far."""
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def rss_kib(self) -> int:
        """The server process's resident memory now, in KiB."""
        return rss_kib(self.proc.pid)

    def open_fds(self) -> int:
        """How many file descriptors the server process has open now."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def rss_kib(pid: int) -> int:
    """``VmRSS`` of process ``pid`` in KiB (from ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextmanager
def config_server_process(data_dir: Path, **config: Any) -> Iterator[RunningServer]:
    """A server process on a free 127.0.0.1 port with ``config``
    (:class:`~headwater.broker.ServerConfig` fields, including those the
    command line does not offer), killed at the end. For a plain
    ``headwater serve`` use :func:`headwater.testing.server_process`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}-server.log"
    settings = {"data_dir": str(data_dir), "port": 0, "log_format": "json", **config}
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, json.dumps(settings)],
            stdout=out,
            stderr=out,
            env=env,
        )
    running = RunningServer(proc, log)
    try:
        deadline = time.monotonic() + 20
        while not running.port:
            for event in running.events():
                if event.get("event") == "server_listening":
                    running.port = int(event["port"])
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not listen within 20s:\n{log.read_text()}")
            time.sleep(0.02)
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def hello_frame() -> bytes:
    """The client's opening frame (protocol version 1, no token)."""
    return encode_frame({"t": "hello", "versions": [1], "client": "hostile"})


def request_frame(request_id: int, request: Any) -> bytes:
    """A ``req`` frame for a request message (``headwater._protocol``)."""
    op, body = encode_request(request)
    return encode_frame({"t": "req", "id": request_id, "op": op, "body": body})


@contextmanager
def slow_readers(
    port: int, topic: str, *, connections: int, fetches: int, max_bytes: int = 1 << 20
) -> Iterator[list[socket.socket]]:
    """``connections`` raw sockets that each shake hands, send ``fetches``
    fetch requests of ``topic`` partition 0 from offset 0 (``max_bytes``
    each), and never read a byte. Closed at the end."""
    socks: list[socket.socket] = []
    try:
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            socks.append(sock)
            frames = hello_frame() + b"".join(
                request_frame(i + 1, p.Fetch(topic, 0, 0, max_bytes, 0.0)) for i in range(fetches)
            )
            sock.setblocking(False)
            try:
                sock.send(frames)  # as much as fits; the rest is never sent
            except BlockingIOError:
                pass
        yield socks
    finally:
        for sock in socks:
            sock.close()
