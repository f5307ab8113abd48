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

import resource
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from headwater import _protocol as p
from headwater._errors import HeadwaterError
from headwater.testing._process import ServerProcess, config_server_process, rss_kib
from headwater.transport._frames import FrameDecoder, encode_frame
from headwater.transport._operations import encode_request

__all__ = [
    "RunningServer",
    "hello_frame",
    "request_frame",
    "rss_kib",
    "config_server_process",
    "slow_readers",
    "count_busy",
    "idle_crowd",
    "raise_fd_limit",
    "read_until_closed",
]

RunningServer = ServerProcess
"""The server child process type (an alias of :class:`ServerProcess`)."""


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


def read_until_closed(socks: list[socket.socket], wait: float) -> dict[int, bytes]:
    """Everything each socket receives until it closes or ``wait`` seconds
    pass, by file descriptor (one ``poll`` loop for thousands of sockets)."""
    by_fd = {s.fileno(): s for s in socks}
    received = dict.fromkeys(by_fd, b"")
    open_fds = set(by_fd)
    poller = select.poll()
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + wait
    while open_fds and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            try:
                chunk = by_fd[fd].recv(65536)
            except OSError:
                chunk = b""
            received[fd] += chunk
            if not chunk:
                open_fds.discard(fd)
                poller.unregister(fd)
    return received


def count_busy(socks: list[socket.socket], wait: float) -> int:
    """How many of ``socks`` were refused with a ``server_busy`` error frame."""
    busy = 0
    for data in read_until_closed(socks, wait).values():
        decoder = FrameDecoder(max_frame_size=1 << 20)
        decoder.feed(data)
        try:
            frames = list(decoder.frames())
        except HeadwaterError:
            continue
        if any(f.get("t") == "error" and f.get("code") == "server_busy" for f in frames):
            busy += 1
    return busy


def raise_fd_limit(wanted: int) -> bool:
    """Raise this process's open-file soft limit to ``wanted`` if the hard
    limit allows; return whether ``wanted`` descriptors are now available."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return True
    if hard != resource.RLIM_INFINITY and hard < wanted:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return True


def idle_crowd(port: int, n: int) -> list[socket.socket]:
    """``n`` connections to 127.0.0.1:``port`` that then say nothing more:
    every other one sends the hello frame first, the rest never speak."""
    socks: list[socket.socket] = []
    try:
        for i in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(sock)
            if i % 2 == 0:
                sock.sendall(hello_frame())
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks
