"""Where Headwater's log lines go, in real processes (issue 11, point 7;
DECISIONS #17): nowhere by default when embedded; stderr, filtered by
``--log-level`` and rendered by ``--log-format``, under ``headwater serve``."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .server_proc import env, hw, server

pytestmark = pytest.mark.crash

EMBEDDED = """
import logging, sys
import trio
import headwater
from headwater.broker import open_broker

async def main(path):
    if len(sys.argv) > 2:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    async with open_broker(path) as broker, broker.connect() as client:
        await client.create_topic("orders", partitions=3)
        async with client.producer() as producer:
            await producer.send_many("orders", [(i, f"user-{i % 7}") for i in range(300)])
        async with client.consumer(["orders"]) as consumer:
            got = 0
            while got < 300:
                got += len(await consumer.getmany(max_events=100, timeout=1.0))
        await broker.kill("/broker/topics/orders/0", reason="on purpose")
        await client.describe_topic("orders")
    async with open_broker(path) as broker, broker.connect() as client:
        await client.describe_topic("orders")

trio.run(main, sys.argv[1])
"""


def _embedded(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", EMBEDDED, str(tmp_path / "data"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )


def test_embedded_use_prints_nothing_by_default(tmp_path: Path) -> None:
    """An embedded run (broker, topic, producer, consumer, an actor killed and
    restarted, a reopen) writes nothing at all to stdout or stderr: the
    ``headwater`` logger has a NullHandler and level WARNING."""
    run = _embedded(tmp_path)
    assert 0 == run.returncode, run.stderr
    assert ("", "") == (run.stdout, run.stderr)


def test_embedded_warnings_reach_a_program_that_configures_logging(tmp_path: Path) -> None:
    """With ``logging.basicConfig(level=INFO)`` in the program, Headwater's
    warnings (the killed actor) reach stderr as ``event key=value`` lines,
    its info events stay below the ``headwater`` logger's WARNING level, and
    stdout stays empty."""
    run = _embedded(tmp_path, "configure")
    assert 0 == run.returncode, run.stderr
    assert "" == run.stdout
    lines = [line for line in run.stderr.splitlines() if not line.startswith((" ", "Traceback"))]
    crashed = [line for line in lines if " actor_crashed " in line]
    assert crashed, run.stderr
    assert crashed[0].startswith("WARNING headwater.supervision actor_crashed")
    assert "actor='/broker/topics/orders/0'" in crashed[0]
    assert not [line for line in lines if line.startswith(("INFO", "DEBUG"))], run.stderr


def test_serve_json_logs_carry_the_actor_path_on_stderr(tmp_path: Path) -> None:
    """``serve --log-format json --log-level debug``: every stderr line is a
    JSON object with level and timestamp; an event logged inside an actor
    without passing its path (``topic_created``, by the registry) carries
    ``actor`` and ``incarnation`` bound by the runtime."""
    with server(tmp_path / "data", "--log-level", "debug") as proc:
        assert 0 == hw(proc.url, "topics", "create", "orders").returncode
        assert 0 == proc.stop()
    lines = proc.log.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"event", "level", "timestamp", "logger"} <= e.keys() for e in events)
    created = next(e for e in events if e["event"] == "topic_created")
    assert ("/broker/registry", 1, "info") == (
        created["actor"],
        created["incarnation"],
        created["level"],
    )
    assert any(e["event"] == "server_stopped" for e in events)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_log_level_warning_drops_info_lines(tmp_path: Path) -> None:
    """``serve --log-level warning`` writes no info line (no
    ``server_listening``, no ``actor_started``) while serving normally; an
    unknown level is refused in one usage line."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headwater",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
            "--log-format",
            "json",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        url = f"headwater://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            listed = hw(url, "topics", "create", "orders")
            if listed.returncode == 0:
                break
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, listed.stderr
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert 0 == proc.returncode, err
    assert ("", "") == (out, err)
    bad = subprocess.run(
        [sys.executable, "-m", "headwater", "serve", "--log-level", "chatty"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env(),
    )
    assert 2 == bad.returncode
    assert "--log-level" in bad.stderr
    assert "Traceback" not in bad.stderr
