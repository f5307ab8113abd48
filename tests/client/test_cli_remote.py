"""The `headwater` command through its real client path (DECISIONS #30):
``cli._open_client`` as it is, the TCP channel, the handshake, the codec and
the server's request handling, with only the socket replaced by memory
streams (``headwater.testing.connect_in_memory``). The other CLI tests
replace ``_open_client`` by an embedded broker; real sockets and processes
are in tests/crash/.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from headwater import cli
from headwater.broker import ServerConfig, open_broker, open_server
from headwater.client import Client
from headwater.testing import connect_in_memory

pytestmark = pytest.mark.usefixtures("quiet_watchdog")

Run = Callable[..., Result]
TOKEN = "s3cret"


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run(*args, input=None)``: the CLI against a server (requiring
    ``TOKEN``) over memory streams; each command's ``trio.run`` opens it."""
    seen: list[dict[str, Any]] = []

    @asynccontextmanager
    async def connect(url: str, **options: Any) -> AsyncIterator[Client]:
        seen.append({"url": url, **options})
        async with (
            open_broker(str(tmp_path / "data")) as broker,
            open_server(broker, ServerConfig(auth_token=TOKEN), listen=False) as server,
            connect_in_memory(server, token=options["token"]) as client,
        ):
            yield client

    monkeypatch.setattr(cli, "connect", connect)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        result = runner.invoke(cli.main, list(args), input=input, catch_exceptions=False)
        result.seen = seen[-1] if seen else None  # type: ignore[attr-defined]
        return result

    return invoke


def test_commands_round_trip_through_the_protocol(run: Run) -> None:
    """create, produce, consume in a group, describe it, draw the tree: the
    same output as embedded, every request through the wire codec."""
    auth = ("--token", TOKEN)
    assert 0 == run("topics", "create", "t", "-p", "2", *auth).exit_code
    produced = run("produce", "t", "--key-separator", "=", *auth, input="a=1\nb=2\nc=3\n")
    assert "produced 3 event(s) to t\n" == produced.output
    consumed = run("consume", "t", "--group", "g", "--print-key", *auth)
    assert ["a\t1", "b\t2", "c\t3"] == sorted(consumed.output.splitlines())
    described = json.loads(run("groups", "describe", "g", "--json", *auth).output)
    assert 0 == described["total_lag"]
    assert "└── t [supervisor] running" in run("tree", *auth).output
    options = run("topics", "list", *auth).seen  # type: ignore[attr-defined]
    assert cli.CONNECT_TIMEOUT == options["connect_timeout"]
    assert callable(options["on_reconnect"])


def test_a_refused_handshake_is_exit_3_in_one_line(run: Run) -> None:
    """No token for a server that requires one: the handshake refuses, the
    CLI says so in one line and exits 3 (no connection)."""
    result = run("topics", "list")
    assert cli.EXIT_CONNECTION == result.exit_code
    assert 1 == len(result.output.splitlines())
    assert result.output.startswith("error: memory requires a token")
    assert result.output.rstrip().endswith("[authentication_failed]")
