"""The `headwater` command with streams, as users run it: a real server and
real processes. Input that trickles in is sent as it arrives; Ctrl-C ends a
`consume --follow` cleanly and commits what it printed; `| head` is quiet; a
server that never answers is a connection error (exit 3)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from headwater import cli

from .server_proc import env, hw, server

pytestmark = [pytest.mark.crash, pytest.mark.usefixtures("quiet_watchdog")]


def local(url: str, *args: str) -> Result:
    """Run the command in this process (no interpreter start-up) against ``url``."""
    return CliRunner().invoke(cli.main, [*args, "--url", url])


def spawn(url: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    """Start `python -m headwater ARGS` with pipes for stdout and stderr."""
    return subprocess.Popen(
        [sys.executable, "-m", "headwater", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env(), "HEADWATER_URL": url},
    )


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``check`` until it is true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_lines_are_sent_as_they_arrive_not_at_end_of_input(tmp_path: Path) -> None:
    """`tail -f log | headwater produce t`: each line is stored while stdin is
    still open; closing stdin ends the command with the summary."""
    with server(tmp_path / "data") as srv:
        assert 0 == hw(srv.url, "topics", "create", "live").returncode
        producer = spawn(srv.url, "produce", "live", stdin=subprocess.PIPE)
        try:
            assert producer.stdin is not None
            stored: list[str] = []

            def stored_count(n: int) -> Callable[[], bool]:
                def check() -> bool:
                    stored[:] = local(srv.url, "consume", "live").output.splitlines()
                    return len(stored) >= n

                return check

            producer.stdin.write("first\nsecond\n")
            producer.stdin.flush()
            eventually(stored_count(2))
            assert ["first", "second"] == stored
            producer.stdin.write("third")  # no newline yet: not a line yet
            producer.stdin.flush()
            producer.stdin.write("\n")
            producer.stdin.flush()
            eventually(stored_count(3))
            assert ["first", "second", "third"] == stored
            out, err = producer.communicate(timeout=30)
            assert 0 == producer.returncode, err
            assert "produced 3 event(s) to live" in out
        finally:
            if producer.poll() is None:
                producer.kill()
                producer.wait(10)
        assert 0 == srv.stop()


def test_ctrl_c_ends_follow_and_commits_what_was_printed(tmp_path: Path) -> None:
    """SIGINT to `consume --follow --group g`: exit 0, nothing on stderr, and
    the group's committed offsets cover exactly the printed events."""
    with server(tmp_path / "data") as srv:
        hw(srv.url, "topics", "create", "t", "--partitions", "2")
        hw(srv.url, "produce", "t", input="".join(f"{i}\n" for i in range(100)))
        consumer = spawn(srv.url, "consume", "t", "--group", "g", "--follow")
        try:
            assert consumer.stdout is not None
            lines = [consumer.stdout.readline() for _ in range(100)]
            assert sorted(range(100)) == sorted(int(x) for x in lines)
            consumer.send_signal(signal.SIGINT)
            out, err = consumer.communicate(timeout=30)
        finally:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait(10)
        assert 0 == consumer.returncode, err
        assert "" == out
        assert "" == err
        described = json.loads(hw(srv.url, "groups", "describe", "g", "--json").stdout)
        assert 0 == described["total_lag"]
        assert 100 == sum(p["committed"] for p in described["partitions"])
        assert 0 == srv.stop()


def test_a_reader_that_goes_away_ends_consume_quietly(tmp_path: Path) -> None:
    """`headwater consume t | head -1`: exit 0 and no complaint on stderr."""
    with server(tmp_path / "data") as srv:
        hw(srv.url, "topics", "create", "t")
        hw(srv.url, "produce", "t", input="".join(f"event {i:06d}\n" for i in range(20_000)))
        consumer = spawn(srv.url, "consume", "t")
        try:
            assert consumer.stdout is not None
            assert consumer.stderr is not None
            assert "event 000000\n" == consumer.stdout.readline()
            consumer.stdout.close()
            with consumer.stderr:
                assert "" == consumer.stderr.read()
            assert 0 == consumer.wait(30)
        finally:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait(10)
        assert 0 == srv.stop()


def test_a_server_that_never_answers_is_a_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener that accepts TCP but never speaks: one line, exit 3."""
    monkeypatch.setattr(cli, "CONNECT_TIMEOUT", 0.3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        port = silent.getsockname()[1]
        result = CliRunner().invoke(
            cli.main, ["topics", "list", "--url", f"headwater://127.0.0.1:{port}"]
        )
    assert cli.EXIT_CONNECTION == result.exit_code
    assert result.output.startswith("error: could not connect")
    assert 1 == len(result.output.splitlines())
