"""`headwater produce` stopped by a signal, as users do it: a real server, a
real producer process whose stdin is a pipe kept open. Ctrl-C exits 130
having stored what was read (never "Fatal Python error"); SIGTERM with the
server gone exits within --flush-timeout, counting what was not
acknowledged."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .server_proc import hw, server
from .test_cli_streams import eventually, local, spawn

pytestmark = pytest.mark.crash


def test_ctrl_c_while_stdin_waits_exits_130_having_stored_what_was_read(tmp_path: Path) -> None:
    """Three rounds: lines go in, some are stored, stdin stays open, SIGINT.
    Every round: exit 130, no "Fatal", the summary's count is exactly what
    the topic holds, and every line written before the wait is there."""
    with server(tmp_path / "data") as srv:
        assert 0 == hw(srv.url, "topics", "create", "t").returncode
        total = 0
        for round_ in range(3):
            producer = spawn(srv.url, "produce", "t", stdin=subprocess.PIPE)
            try:
                assert producer.stdin is not None
                producer.stdin.write(f"r{round_} a\nr{round_} b\n")
                producer.stdin.flush()
                seen: list[str] = []

                def stored(n: int = total + 2, seen: list[str] = seen) -> bool:
                    seen[:] = local(srv.url, "consume", "t").output.splitlines()
                    return len(seen) >= n

                eventually(stored)  # the producer runs and waits on stdin
                producer.stdin.write(f"r{round_} c\n")  # read or not: counted either way
                producer.stdin.flush()
                producer.send_signal(signal.SIGINT)
                _out, err = producer.communicate(timeout=30)
            finally:
                if producer.poll() is None:
                    producer.kill()
                    producer.wait(10)
            assert 130 == producer.returncode, err
            assert "Fatal" not in err
            assert "Traceback" not in err
            summary = [line for line in err.splitlines() if line.startswith("produced ")]
            assert 1 == len(summary), err
            count = int(summary[0].split()[1])
            assert "stopped by SIGINT: every event read was stored" in err
            stored()
            assert count == len(seen) - total
            assert [f"r{round_} a", f"r{round_} b"] == seen[total : total + 2]
            total = len(seen)
        assert 0 == srv.stop()


def test_ctrl_c_during_startup_prints_no_traceback() -> None:
    """SIGINT while the command is starting (connected to a listener that
    never answers the handshake): one line, exit 130, no traceback."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        silent.settimeout(30)
        url = f"headwater://127.0.0.1:{silent.getsockname()[1]}"
        for command in (["produce", "t"], ["topics", "list"]):
            process = spawn(url, *command, stdin=subprocess.PIPE)
            try:
                accepted, _ = silent.accept()  # the command is in its handshake
                with accepted:
                    process.send_signal(signal.SIGINT)
                    _out, err = process.communicate(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
            assert 130 == process.returncode, err
            assert "error: interrupted\n" == err


def test_sigterm_with_the_server_gone_exits_within_the_flush_timeout(tmp_path: Path) -> None:
    """The server dies (kill -9) under a running `produce`: the next lines
    cannot be stored, stderr says "reconnecting to ..." once, and SIGTERM
    ends the command within --flush-timeout, exit 143, counting the events
    read that were not acknowledged. The same for a `consume --follow`."""
    with server(tmp_path / "data") as srv:
        assert 0 == hw(srv.url, "topics", "create", "t").returncode
        producer = spawn(srv.url, "produce", "t", "--flush-timeout", "1.5", stdin=subprocess.PIPE)
        consumer = spawn(srv.url, "consume", "t", "--follow")
        # Bound the blocking readline()s below: kill both if they hang.
        watchdog = threading.Timer(60, lambda: (producer.kill(), consumer.kill()))
        watchdog.start()
        try:
            assert producer.stdin is not None
            assert consumer.stdout is not None
            producer.stdin.write("one\n")
            producer.stdin.flush()
            assert "one\n" == consumer.stdout.readline()  # stored, and read back
            srv.proc.kill()
            srv.proc.wait(10)
            producer.stdin.write("two\nthree\n")
            producer.stdin.flush()
            assert producer.stderr is not None
            notice = producer.stderr.readline()
            assert notice.startswith(f"reconnecting to {srv.url} (attempt 1: "), notice
            producer.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            _out, err = producer.communicate(timeout=30)
            took = time.monotonic() - signalled
            consumer.send_signal(signal.SIGTERM)
            _out, consumer_err = consumer.communicate(timeout=30)
        finally:
            watchdog.cancel()
            for process in (producer, consumer):
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
    assert 143 == producer.returncode, err
    assert took < 1.5 + 2.0, took
    assert "reconnecting" not in err  # once per series: said already
    # "one" is stored (the consumer read it), but its acknowledgement may
    # have been lost with the server: a consumer's push leaves before the
    # producer's acknowledgement of the same records. Either way the
    # command counts every line it read exactly once.
    produced = re.search(r"produced (\d+) event\(s\) to t\b", err)
    unacknowledged = re.search(
        r"stopped by SIGTERM: (\d+) event\(s\) read were not acknowledged within "
        r"--flush-timeout 1\.5s",
        err,
    )
    assert produced is not None, err
    assert unacknowledged is not None, err
    assert (int(produced[1]), int(unacknowledged[1])) in {(1, 2), (0, 3)}, err
    assert 1 == consumer_err.count(f"reconnecting to {srv.url} (attempt 1: "), consumer_err
