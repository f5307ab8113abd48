"""`headwater produce` input handling: lines split from arbitrary chunks,
bytes kept as they are, a missing topic refused before stdin is read.

Runs the CLI in-process against an embedded broker (as tests/client/test_cli.py).
"""

from __future__ import annotations

import base64
import errno
import io
import json
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

import headwater
from headwater import InvalidArgument, cli
from headwater.broker import open_broker
from headwater.client import Client
from headwater.supervision._specs import ActorSnapshot

pytestmark = pytest.mark.usefixtures("quiet_watchdog")

Run = Callable[..., Result]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run(*args, input=None)``: invoke the CLI against an embedded broker."""

    @asynccontextmanager
    async def embedded(url: str, token: str | None, tls: Any) -> AsyncIterator[Client]:
        async with open_broker(str(tmp_path / "data")) as broker, broker.connect() as client:
            yield client

    monkeypatch.setattr(cli, "_open_client", embedded)
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None) -> Result:
        return runner.invoke(cli.main, list(args), input=input, catch_exceptions=False)

    return invoke


@given(st.lists(st.binary(max_size=20), max_size=20))
def test_line_splitter_matches_splitting_the_whole_input(chunks: list[bytes]) -> None:
    """However the input is cut into chunks, the lines are those of the whole."""
    whole = b"".join(chunks)
    splitter = cli.LineSplitter()
    lines = [line for chunk in chunks for line in splitter.feed(chunk)] + splitter.finish()
    expected = whole.split(b"\n")
    if expected[-1] == b"":
        expected.pop()  # a final newline ends the last line; it starts no new one
    assert expected == lines


def test_line_splitter_keeps_a_partial_line_until_its_newline() -> None:
    """A line cut in two comes out once, whole, when its newline arrives."""
    splitter = cli.LineSplitter()
    assert [b"a"] == splitter.feed(b"a\nb")
    assert [] == splitter.feed(b"c")
    assert [b"bc", b""] == splitter.feed(b"\n\n")
    assert [] == splitter.finish()


def test_bytes_that_are_not_utf8_are_stored_as_they_are(run: Run) -> None:
    """A line of raw bytes is one event with exactly those bytes; --json gives
    them as base64, text output stays one line per event."""
    run("topics", "create", "raw")
    data = b"\xff\xfe\x00binary\ntext \xc3\xa9\nkey\xff=v\n"
    produced = run("produce", "raw", input=data)
    assert 0 == produced.exit_code, produced.output
    events = [json.loads(x) for x in run("consume", "raw", "--json").output.splitlines()]
    assert {"base64": base64.b64encode(b"\xff\xfe\x00binary").decode()} == events[0]["value"]
    assert "text é" == events[1]["value"]
    assert 3 == len(run("consume", "raw").output.splitlines())
    run("topics", "create", "keyed")
    run("produce", "keyed", "--key-separator", "=", input=data[-7:])
    (event,) = [json.loads(x) for x in run("consume", "keyed", "--json").output.splitlines()]
    assert {"base64": base64.b64encode(b"key\xff").decode()} == event["key"]
    assert "v" == event["value"]


def test_last_line_without_newline_and_empty_lines_are_events(run: Run) -> None:
    """Empty lines are empty events; a last line without newline is sent too."""
    run("topics", "create", "t")
    assert "produced 3 event(s)" in run("produce", "t", input="a\n\nlast").output
    assert ["a", "", "last"] == run("consume", "t").output.splitlines()
    assert "produced 0 event(s)" in run("produce", "t", input="").output


def test_headers_and_partition_apply_to_every_line(run: Run) -> None:
    """--header and --partition reach every event of the input."""
    run("topics", "create", "t", "-p", "3")
    run("produce", "t", "--partition", "2", "--header", "a=1", "--header", "a=2", input="x\ny\n")
    events = [json.loads(x) for x in run("consume", "t", "--json").output.splitlines()]
    assert [2, 2] == [e["partition"] for e in events]
    assert [[["a", "1"], ["a", "2"]]] * 2 == [e["headers"] for e in events]


def test_producing_to_a_missing_topic_fails_before_reading_input(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The topic is checked first: one error line, exit 1, stdin never read
    (so `headwater produce typo` does not sit waiting for input)."""
    reads: list[object] = []

    async def reader(stream: object, send: object) -> None:
        reads.append(stream)

    monkeypatch.setattr(cli, "_read_lines", reader)
    result = run("produce", "nope", input="x\n")
    assert 1 == result.exit_code
    assert result.output.startswith("error: ")
    assert "[unknown_topic]" in result.output
    assert [] == reads


def test_from_offset_is_per_partition_and_short_partitions_start_at_their_end(
    run: Run,
) -> None:
    """--from OFFSET without a group prints offsets >= OFFSET of every partition;
    a partition that is shorter prints nothing (it does not start over)."""
    run("topics", "create", "t", "-p", "2")
    run("produce", "t", "--partition", "0", input="".join(f"a{i}\n" for i in range(10)))
    run("produce", "t", "--partition", "1", input="".join(f"b{i}\n" for i in range(3)))
    events = [
        json.loads(x) for x in run("consume", "t", "--from", "7", "--json").output.splitlines()
    ]
    assert [(0, 7), (0, 8), (0, 9)] == [(e["partition"], e["offset"]) for e in events]
    assert [] == run("consume", "t", "--from", "50").output.splitlines()
    assert ["b2"] == run("consume", "t", "--from", "2", "--partition", "1").output.splitlines()


def test_from_iso_time_starts_at_the_first_event_at_or_after_it(run: Run) -> None:
    """--from 2000-01-01T00:00:00Z reads everything; a time after the last
    event reads nothing; a naive time is taken as local time."""
    run("topics", "create", "t")
    run("produce", "t", input="x\ny\n")
    assert ["x", "y"] == run("consume", "t", "--from", "2000-01-01T00:00:00Z").output.split()
    assert [] == run("consume", "t", "--from", "2999-01-01T00:00:00+01:00").output.split()
    assert ["x", "y"] == run("consume", "t", "--from", "2000-01-01T00:00").output.split()


def test_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$HEADWATER_TOKEN is the default --token; --token wins over it."""
    seen: list[str | None] = []

    @asynccontextmanager
    async def embedded(url: str, token: str | None, tls: Any) -> AsyncIterator[Client]:
        seen.append(token)
        async with open_broker(str(tmp_path / "data")) as broker, broker.connect() as client:
            yield client

    monkeypatch.setattr(cli, "_open_client", embedded)
    runner = CliRunner()
    env = {"HEADWATER_TOKEN": "from-env"}
    assert 0 == runner.invoke(cli.main, ["groups", "list"], env=env).exit_code
    assert 0 == runner.invoke(cli.main, ["groups", "list", "--token", "flag"], env=env).exit_code
    assert ["from-env", "flag"] == seen


def test_a_bad_url_or_ca_file_is_a_usage_error() -> None:
    """A URL that is not headwater://host:port, or a CA file that does not
    load: one line and exit 2 (not 3: nothing was tried on the network)."""
    runner = CliRunner()
    bad_url = runner.invoke(cli.main, ["topics", "list", "--url", "http://127.0.0.1:7700"])
    assert cli.EXIT_USAGE == bad_url.exit_code
    assert bad_url.output.startswith("error: ")
    assert 1 == len(bad_url.output.splitlines())
    bad_ca = runner.invoke(cli.main, ["topics", "list", "--tls-ca", "/nonexistent/ca.pem"])
    assert cli.EXIT_USAGE == bad_ca.exit_code
    assert bad_ca.output.startswith("error: ")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250", 250),
        ("500ms", 500),
        ("30s", 30_000),
        ("15m", 900_000),
        ("12h", 43_200_000),
        ("7d", 604_800_000),
        ("2w", 1_209_600_000),
        ("1.5h", 5_400_000),
        (" 3 D ", 259_200_000),
    ],
)
def test_durations_parse_to_milliseconds(text: str, ms: int) -> None:
    """Durations take ms, s, m, h, d or w (any case, spaces allowed)."""
    assert ms == cli.parse_duration_ms(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("512KiB", 512 << 10),
        ("64MiB", 64 << 20),
        ("10G", 10 << 30),
        ("1GiB", 1 << 30),
        ("2 TiB", 2 << 40),
        ("5MB", 5_000_000),
        ("100b", 100),
    ],
)
def test_sizes_parse_to_bytes(text: str, size: int) -> None:
    """Sizes take bytes or K/M/G/T (binary; KB/MB/GB/TB decimal)."""
    assert size == cli.parse_size(text)


@pytest.mark.parametrize("text", ["", "soon", "7 days", "1.2.3h", "-5m", "h"])
def test_bad_durations_and_sizes_name_the_text(text: str) -> None:
    """Anything else is an InvalidArgument naming what was given."""
    with pytest.raises(InvalidArgument, match="duration"):
        cli.parse_duration_ms(text)
    with pytest.raises(InvalidArgument, match="size"):
        cli.parse_size(text.replace("h", "x"))


def test_topics_create_takes_readable_retention(run: Run) -> None:
    """--retention 7d and --retention-bytes 1GiB reach the topic; the table
    shows them back in the same units; a bad one is a usage error."""
    created = run(
        "topics", "create", "t", "--retention", "7d", "--retention-bytes", "1GiB", "--json"
    )
    info = json.loads(created.output)
    assert (604_800_000, 1 << 30) == (info["retention_ms"], info["retention_bytes"])
    assert ["t", "1", "always", "no", "1w,", "1.0", "GiB"] == (
        run("topics", "list").output.splitlines()[2].split()
    )
    bad = run("topics", "create", "u", "--retention", "soon")
    assert 2 == bad.exit_code
    assert "duration 'soon' is not understood" in bad.output
    both = run("topics", "create", "u", "--retention", "1d", "--retention-ms", "5")
    assert 2 == both.exit_code


def test_consume_key_separator_implies_print_key(run: Run) -> None:
    """consume --key-separator SEP prints KEY<SEP>VALUE (the produce format)."""
    run("topics", "create", "t")
    run("produce", "t", "--key-separator", "=", input="a=1\nb=2\n")
    assert ["a=1", "b=2"] == run("consume", "t", "--key-separator", "=").output.splitlines()
    assert ["a\t1", "b\t2"] == run("consume", "t", "--print-key").output.splitlines()


def test_progress_counts_on_stderr_when_it_is_a_terminal(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stderr on a terminal, produce and consume (to a file) redraw a
    counter on stderr and end with a summary there; stdout keeps only events."""
    monkeypatch.setattr(cli, "_is_terminal", lambda stream: stream is sys.stderr)
    run("topics", "create", "t")
    produced = run("produce", "t", input="".join(f"{i}\n" for i in range(3000)))
    assert "" == produced.stdout
    assert "\rproduced " in produced.stderr
    assert produced.stderr.endswith("produced 3,000 event(s) to t\n")
    consumed = run("consume", "t")
    assert [str(i) for i in range(3000)] == consumed.stdout.splitlines()
    assert "\rconsumed " in consumed.stderr
    assert consumed.stderr.endswith("consumed 3,000 event(s) from t\n")


def test_no_progress_when_stderr_is_not_a_terminal(run: Run) -> None:
    """Scripts (stderr not a terminal) see no counter, only the summary."""
    run("topics", "create", "t")
    produced = run("produce", "t", input="a\nb\n")
    assert "" == produced.stderr
    assert "produced 2 event(s) to t\n" == produced.stdout
    assert "" == run("consume", "t").stderr


def test_an_unreadable_stdin_is_one_error_line(run: Run) -> None:
    """An I/O error reading the input is one line and exit 1, no traceback."""

    class Broken(io.BufferedIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int | None = -1) -> bytes:
            if size == 0:
                return b""  # click probes the stream with read(0)
            raise OSError(errno.EIO, "Input/output error")

        read1 = read

    run("topics", "create", "t")
    result = run("produce", "t", input=Broken())
    assert 1 == result.exit_code
    assert "error: cannot read the input: Input/output error\n" == result.output


def test_consume_runs_from_a_thread_too(run: Run) -> None:
    """Off the main thread (no signal handling there) consume still works."""
    run("topics", "create", "t")
    run("produce", "t", input="a\nb\n")
    results: list[Result] = []
    thread = threading.Thread(target=lambda: results.append(run("consume", "t")))
    thread.start()
    thread.join(30)
    assert ["a", "b"] == results[0].output.splitlines()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["consume"], "error: Missing argument 'TOPIC'. (see 'headwater consume --help')"),
        (["topics", "create", "t", "--bogus"], "error: No such option"),
        (["nope"], "error: No such command 'nope'. (see 'headwater --help')"),
        (["topics", "create", "t", "-p", "many"], "error: Invalid value for '--partitions'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    """click's own usage errors come out like ours: one `error:` line, exit 2."""
    result = CliRunner().invoke(cli.main, args, prog_name="headwater")
    assert cli.EXIT_USAGE == result.exit_code
    assert "" == result.stdout
    assert 1 == len(result.stderr.splitlines())
    assert result.stderr.startswith(message)


def test_version_and_help_exit_0() -> None:
    """--version prints the package version (installed or not); --help works."""
    runner = CliRunner()
    version = runner.invoke(cli.main, ["--version"], prog_name="headwater")
    assert 0 == version.exit_code
    assert f"headwater, version {headwater.__version__}\n" == version.output
    assert 0 == runner.invoke(cli.main, ["consume", "--help"]).exit_code
    bare = runner.invoke(cli.main, [], prog_name="headwater")
    assert cli.EXIT_USAGE == bare.exit_code
    assert "Commands:" in bare.output


def _snapshot() -> ActorSnapshot:
    leaf = ActorSnapshot("/broker/topics/t/0", "actor", "restarting", 2, 3, "OSError: disk", ())
    ok = ActorSnapshot("/broker/registry", "actor", "running", 0, 1, None, ())
    return ActorSnapshot("/", "supervisor", "running", 0, 1, None, (leaf, ok))


def test_tree_colours_states_and_failures_only_as_decoration() -> None:
    """Colours mark states, restarts and failures; without them the text is
    exactly the plain drawing (click strips them off a terminal)."""
    drawn = _snapshot().render()
    coloured = cli.color_tree(drawn)
    assert drawn == click.unstyle(coloured)
    lines = coloured.splitlines()
    assert click.style("restarting", fg="yellow") in lines[1]
    assert click.style("last_failure=OSError: disk", fg="red") in lines[1]
    assert click.style("running", fg="green") in lines[2]


def test_tree_summary_counts_nodes_states_and_restarts(run: Run) -> None:
    """The line under the tree counts nodes by state and restarts; the
    command prints it after the drawing (plain when not on a terminal)."""
    assert "3 nodes (1 restarting, 2 running), 2 restart(s)" == cli.tree_summary(_snapshot())
    output = run("tree").output
    assert "\x1b[" not in output
    assert output.splitlines()[-1].endswith("running), 0 restart(s)")


def test_if_not_exists_and_if_exists_make_scripts_idempotent(run: Run) -> None:
    """create --if-not-exists twice and delete --if-exists twice both succeed,
    saying what happened; without the flags the second one fails."""
    first = json.loads(run("topics", "create", "t", "-p", "2", "--if-not-exists", "--json").output)
    assert (True, 2) == (first["created"], first["partitions"])
    again = run("topics", "create", "t", "-p", "5", "--if-not-exists")
    assert 0 == again.exit_code
    assert "topic t exists already, with 2 partition(s)\n" == again.output
    assert 1 == run("topics", "create", "t").exit_code
    assert "deleted topic t\n" == run("topics", "delete", "t", "--if-exists").output
    gone = json.loads(run("topics", "delete", "t", "--if-exists", "--json").output)
    assert {"deleted": "t", "existed": False} == gone
    assert 1 == run("topics", "delete", "t").exit_code


def test_line_splitter_joins_a_long_line_once() -> None:
    """A line arriving in many chunks is joined at its end, not per chunk
    (a 100 MB line stays linear)."""
    splitter = cli.LineSplitter()
    for _ in range(10_000):
        assert [] == splitter.feed(b"x" * 1000)
    assert [b"x" * 10_000_000] == splitter.feed(b"\n")


def test_from_offset_with_a_group_applies_where_it_has_no_commit(run: Run) -> None:
    """--group G --from OFFSET: partitions without a committed offset start
    at OFFSET (a shorter one does not start over); committed ones resume."""
    run("topics", "create", "t", "-p", "2")
    run("produce", "t", "--partition", "0", input="".join(f"a{i}\n" for i in range(10)))
    run("produce", "t", "--partition", "1", input="".join(f"b{i}\n" for i in range(3)))
    first = run("consume", "t", "--group", "g", "--from", "7").output.splitlines()
    assert ["a7", "a8", "a9"] == first
    described = json.loads(run("groups", "describe", "g", "--json").output)
    assert 0 == described["total_lag"]
    run("produce", "t", "--partition", "1", input="b3\n")
    assert ["b3"] == run("consume", "t", "--group", "g", "--from", "7").output.splitlines()


def test_serve_defaults_are_the_server_defaults_and_options_map_onto_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`serve` with no options builds exactly ServerConfig(); each option
    lands in its field (sizes parsed, the token read from its file)."""
    from headwater.broker import _server

    configs: list[_server.ServerConfig] = []
    fronts: list[list[Any]] = []

    def fake_run_server(config: _server.ServerConfig, front_ends: Any = ()) -> int:
        configs.append(config)
        fronts.append(list(front_ends))
        return 0

    monkeypatch.setattr(_server, "run_server", fake_run_server)
    runner = CliRunner()
    assert 0 == runner.invoke(cli.main, ["serve"]).exit_code
    assert _server.ServerConfig() == configs[-1]
    assert [] == fronts[-1]  # no HTTP front end unless asked
    token = tmp_path / "token"
    token.write_text("  s3cret\n")
    args = ["serve", "--port", "0", "--max-bytes-in-flight", "1MiB", "--send-timeout", "5"]
    args += ["--auth-token-file", str(token), "--max-connections", "7", "--log-format", "json"]
    assert 0 == runner.invoke(cli.main, args).exit_code
    got = configs[-1]
    assert (0, 1 << 20, 5.0, "s3cret", 7, "json") == (
        got.port,
        got.max_bytes_in_flight,
        got.send_timeout,
        got.auth_token,
        got.max_connections,
        got.log_format,
    )
    # --http-port adds the HTTP front end, with the same token.
    args = ["serve", "--http-port", "0", "--http-host", "::1", "--auth-token-file", str(token)]
    assert 0 == runner.invoke(cli.main, args).exit_code
    (front,) = fronts[-1]
    assert {"port": 0, "host": "::1", "token": "s3cret"} == front.keywords
    assert 2 == runner.invoke(cli.main, ["serve", "--http-port", "70000"]).exit_code
    token.write_text("\n")
    empty = runner.invoke(cli.main, ["serve", "--auth-token-file", str(token)])
    assert cli.EXIT_USAGE == empty.exit_code
    assert "is empty" in empty.output


class _FlakyCommits:
    """A consumer stand-in whose first ``failures`` commits lose the connection."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def commit(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error


async def test_final_commit_retries_a_lost_connection(autojump_clock: Any) -> None:
    """The last commit of `consume --group` survives a dropped connection
    (retried with growing delays); a non-retriable error is raised at once,
    and a connection that stays down gives up after the last attempt."""
    lost = headwater.ConnectionLostError("peer closed the connection")
    flaky = _FlakyCommits(2, lost)
    await cli._commit_with_retries(flaky)
    assert 3 == flaky.calls
    stale = _FlakyCommits(1, headwater.StaleGenerationError("stale"))
    with pytest.raises(headwater.StaleGenerationError):
        await cli._commit_with_retries(stale)
    assert 1 == stale.calls
    down = _FlakyCommits(99, lost)
    with pytest.raises(headwater.ConnectionLostError):
        await cli._commit_with_retries(down, attempts=3)
    assert 3 == down.calls


def test_an_over_size_line_is_named_with_the_events_stored_before_it(run: Run) -> None:
    """A line over --max-event-bytes: exit 1, one error line naming its line
    number and how many events before it were stored; those are stored,
    nothing after it is."""
    run("topics", "create", "t")
    lines = ["a", "b", "c", "x" * 2000, "d"]
    result = run("produce", "t", "--max-event-bytes", "1000", input="\n".join(lines) + "\n")
    assert 1 == result.exit_code
    (line,) = result.output.splitlines()
    assert line.startswith("error: line 4 of the input is too large: ")
    assert "the limit (max_event_bytes) is 1000" in line
    assert "the 3 event(s) before it were stored" in line
    assert line.endswith("[event_too_large]")
    assert ["a", "b", "c"] == run("consume", "t").output.splitlines()
    assert 0 == run("produce", "t", "--max-event-bytes", "4KiB", input=lines[3]).exit_code


def test_the_event_size_limit_is_in_the_help(run: Run) -> None:
    """`produce --help` names --max-event-bytes and its default."""
    text = " ".join(run("produce", "--help").output.split())
    assert "--max-event-bytes SIZE" in text
    assert "[default: 1MiB]" in text


def test_ctrl_c_before_the_command_runs_is_exit_130(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the command is still preparing (before its trio.run):
    "error: interrupted", exit 130, like Ctrl-C anywhere else (not click's
    "aborted", exit 1)."""

    def interrupted(values: tuple[str, ...]) -> list[tuple[str, bytes]]:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_parse_headers", interrupted)
    result = run("produce", "t", input="x\n")
    assert 130 == result.exit_code
    assert "error: interrupted\n" == result.output.lstrip("\n")
