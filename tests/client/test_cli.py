"""The `headwater` command in-process (click's runner) against an embedded
broker on disk: output shapes, --json, error lines and exit codes.

The CLI obtains every client through ``headwater.cli._open_client``; here it
opens an embedded broker in a temporary directory instead of a TCP
connection (each command is its own ``trio.run``, so each opens the broker).
Real servers and subprocesses are in tests/crash/test_cli_process.py.
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
from headwater.broker import open_broker
from headwater.client import Client
from headwater.client._tcp import DEFAULT_URL

pytestmark = pytest.mark.usefixtures("quiet_watchdog")

Run = Callable[..., Result]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run(*args, input=None)``: invoke the CLI against an embedded broker."""
    seen: dict[str, Any] = {}

    @asynccontextmanager
    async def embedded(url: str, token: str | None, tls: Any) -> AsyncIterator[Client]:
        seen.update(url=url, token=token, tls=tls)
        async with open_broker(str(tmp_path / "data")) as broker, broker.connect() as client:
            yield client

    monkeypatch.setattr(cli, "_open_client", embedded)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        result = runner.invoke(cli.main, list(args), input=input, env=env, catch_exceptions=False)
        result.seen = dict(seen)  # type: ignore[attr-defined]
        return result

    return invoke


def test_topics_round_trip_with_aligned_and_json_output(run: Run) -> None:
    """create, list, describe and delete; human tables line up, --json parses."""
    assert (
        "created topic orders with 3 partition(s)"
        in run("topics", "create", "orders", "-p", "3").output
    )
    listed = run("topics", "list").output.splitlines()
    assert listed[0].split() == ["TOPIC", "PARTITIONS", "DURABILITY", "COMPACTED", "RETENTION"]
    assert listed[2].split() == ["orders", "3", "always", "no", "forever"]
    assert len(listed[0]) == len(listed[1])  # the rule under the header spans the columns
    described = json.loads(run("topics", "describe", "orders", "--json").output)
    assert [0, 1, 2] == [p["partition"] for p in described["partition_details"]]
    deleted = json.loads(run("topics", "delete", "orders", "--json").output)
    assert {"deleted": "orders", "existed": True} == deleted
    assert [] == json.loads(run("topics", "list", "--json").output)


def test_produce_lines_then_consume_them_back_in_order(run: Run) -> None:
    """stdin lines become events (keys split off); consume prints them in order."""
    run("topics", "create", "t")
    lines = "".join(f"k{i % 3}\tv{i}\n" for i in range(500))
    produced = run("produce", "t", "--key-separator", "\t", "--header", "source=test", input=lines)
    assert "produced 500 event(s) to t" in produced.output
    text = run("consume", "t").output.splitlines()
    assert [f"v{i}" for i in range(500)] == text
    keyed = run("consume", "t", "--max", "2", "--print-key").output.splitlines()
    assert ["k0\tv0", "k1\tv1"] == keyed
    events = [
        json.loads(line) for line in run("consume", "t", "--json", "--max", "3").output.splitlines()
    ]
    assert [0, 1, 2] == [e["offset"] for e in events]
    assert [["source", "test"]] == events[0]["headers"]
    assert "k0" == events[0]["key"]
    assert ["v7"] == run("consume", "t", "--from", "7", "--max", "1").output.splitlines()
    assert [] == run("consume", "t", "--from", "latest").output.splitlines()
    assert [] == run("consume", "t", "--from", "500").output.splitlines()
    run("produce", "t", "--value", "single")
    assert ["single"] == run("consume", "t", "--from", "500").output.splitlines()


def test_groups_commit_and_show_lag(run: Run) -> None:
    """A group consumer commits what it printed; groups describe shows the lag."""
    run("topics", "create", "t", "-p", "2")
    run("produce", "t", input="".join(f"{i}\n" for i in range(100)))
    assert 30 == len(run("consume", "t", "--group", "g", "--max", "30").output.splitlines())
    listed = run("groups", "list").output.splitlines()
    assert ["GROUP", "STATE", "MEMBERS", "TOPICS", "LAG"] == listed[0].split()
    assert ["g", "empty", "0", "t", "70"] == listed[2].split()
    assert [{"group": "g", "state": "empty", "members": 0, "topics": ["t"], "total_lag": 70}] == (
        json.loads(run("groups", "list", "--json").output)
    )
    described = json.loads(run("groups", "describe", "g", "--json").output)
    assert 70 == described["total_lag"]
    assert 30 == sum(p["committed"] or 0 for p in described["partitions"])
    human = run("groups", "describe", "g").output.splitlines()
    assert human[1].split() == ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "OWNER"]
    rest = run("consume", "t", "--group", "g").output.splitlines()
    assert 70 == len(rest)


def test_groups_describe_shows_commit_metadata(run: Run, tmp_path: Path) -> None:
    """The text stored with commit(metadata=...) is shown per partition."""
    import trio

    run("topics", "create", "t", "-p", "2")

    async def commit() -> None:
        async with (
            open_broker(str(tmp_path / "data")) as broker,
            broker.connect() as client,
            client.consumer("t", group="g") as consumer,
        ):
            await consumer.commit({("t", 1): 0}, metadata="snapshot 41")

    trio.run(commit)
    described = json.loads(run("groups", "describe", "g", "--json").output)
    assert [(1, 0, "snapshot 41")] == [
        (p["partition"], p["committed"], p["metadata"]) for p in described["partitions"]
    ]
    human = run("groups", "describe", "g").output.splitlines()
    assert "METADATA" == human[1].split()[-1]
    assert human[3].endswith("snapshot 41")


def test_tree_draws_the_supervision_tree(run: Run) -> None:
    """`tree` draws the broker's live tree; --json gives the nested maps."""
    run("topics", "create", "t")
    drawn = run("tree").output
    assert "└── broker [supervisor] running" in drawn
    assert "0 [actor] running" in drawn
    assert "/broker" in {c["path"] for c in json.loads(run("tree", "--json").output)["children"]}


def test_errors_are_one_line_with_a_code_and_an_exit_status(run: Run) -> None:
    """A refused request: one stderr line naming the code, exit 1; bad usage: exit 2."""
    result = run("consume", "missing")
    assert 1 == result.exit_code
    assert result.output.startswith("error: topic 'missing' does not exist")
    assert result.output.strip().endswith("[unknown_topic]")
    assert 1 == len(result.output.strip().splitlines())
    bad = run("consume", "t", "--from", "yesterday")
    assert 2 == bad.exit_code
    assert "ISO time" in bad.output
    assert 2 == run("produce", "t", "--header", "nonsense", input="x\n").exit_code
    invalid = run("topics", "create", "bad name!")
    assert 1 == invalid.exit_code
    assert "[invalid_topic_name]" in invalid.output


def test_url_and_token_options(run: Run, tmp_path: Path) -> None:
    """--url / $HEADWATER_URL and --token-file reach the connection."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    result = run("topics", "list", "--url", "headwater://h:1", "--token-file", str(token))
    assert {"url": "headwater://h:1", "token": "s3cret", "tls": None} == result.seen  # type: ignore[attr-defined]
    result = run("topics", "list", "--tls", env={"HEADWATER_URL": "headwater://e:2"})
    assert {"url": "headwater://e:2", "token": None, "tls": True} == result.seen  # type: ignore[attr-defined]
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    assert 2 == run("topics", "list", "--token-file", str(empty)).exit_code


def test_url_before_the_command_and_its_order(run: Run) -> None:
    """`headwater --url X topics list` works; the command's --url wins over
    the group's, which wins over $HEADWATER_URL, which wins over the default
    (DECISIONS #26)."""
    env = {"HEADWATER_URL": "headwater://env:3"}
    group = run("--url", "headwater://group:1", "topics", "list", env=env)
    assert 0 == group.exit_code, group.output
    assert "headwater://group:1" == group.seen["url"]  # type: ignore[attr-defined]
    both = run("--url", "headwater://group:1", "topics", "list", "--url", "headwater://cmd:2")
    assert "headwater://cmd:2" == both.seen["url"]  # type: ignore[attr-defined]
    assert "headwater://env:3" == run("groups", "list", env=env).seen["url"]  # type: ignore[attr-defined]
    plain = run("tree", env={"HEADWATER_URL": ""})
    assert DEFAULT_URL == plain.seen["url"]  # type: ignore[attr-defined]
    assert "--url URL" in run("--help").output


def test_no_connection_is_exit_3() -> None:
    """Nothing listening: one line, exit 3."""
    result = CliRunner().invoke(cli.main, ["topics", "list", "--url", "headwater://127.0.0.1:1"])
    assert 3 == result.exit_code
    assert "is the server running" in result.output


def test_transactions_list_describe_and_stable_offset(run: Run, tmp_path: Path) -> None:
    """`transactions list|describe` show a transactional id; `topics describe`
    shows the LSO held back by an open transaction; `consume` stops there by
    default and prints the open events with --isolation read_uncommitted;
    an unknown id is a typed error line."""
    import trio

    run("topics", "create", "t")

    async def leave_open() -> None:
        from headwater import _protocol as p
        from headwater.journal import encode_record
        from headwater.journal._batch import encode_events
        from headwater.journal._record import ATTR_TRANSACTIONAL

        async with open_broker(str(tmp_path / "data")) as broker, broker.connect() as client:
            async with client.producer(serializer="str") as plain:
                await plain.send("t", "before", key="k")
            async with (
                client.producer(
                    transactional_id="w", transaction_timeout=900, serializer="str"
                ) as prod,
                prod.transaction(),
            ):
                await prod.send("t", "committed")
            # What a producer killed inside its next transaction leaves behind.
            ident = await broker.handle(p.InitTransactions("w", 900.0))
            tp = (p.TopicPartition("t", 0),)
            await broker.handle(p.AddPartitionsToTxn("w", ident.producer_id, ident.epoch, tp))
            record = encode_record(
                encode_events([(0, None, b"open", ())]),
                count=1,
                attributes=ATTR_TRANSACTIONAL,
                producer_id=ident.producer_id,
                producer_epoch=ident.epoch,
                base_sequence=0,
            )
            await broker.handle(p.Produce("t", 0, record))

    trio.run(leave_open)
    listed = run("transactions", "list").output.splitlines()
    assert ("w", "1", "ongoing") == (
        listed[2].split()[0],
        listed[2].split()[2],
        listed[2].split()[3],
    )
    described = json.loads(run("transactions", "describe", "w", "--json").output)
    assert ("ongoing", ["t/0"]) == (described["state"], described["partitions"])
    part = json.loads(run("topics", "describe", "t", "--json").output)["partition_details"][0]
    assert (4, 3) == (part["next_offset"], part["last_stable_offset"])
    assert "STABLE" in run("topics", "describe", "t").output.splitlines()[1]
    assert ["before", "committed"] == run("consume", "t").output.splitlines()
    assert ["before", "committed", "open"] == run(
        "consume", "t", "--isolation", "read_uncommitted"
    ).output.splitlines()
    missing = run("transactions", "describe", "nobody")
    assert 1 == missing.exit_code
    assert missing.output.startswith("error: transactional id 'nobody' is not known here")
