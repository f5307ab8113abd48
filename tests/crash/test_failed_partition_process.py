"""A real `headwater serve` with a damaged segment (issue 11 point 3): the
partition is parked as failed and says why, the rest serves, and `headwater
repair --yes` on the stopped server makes it serve again with a gap."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from headwater.journal import HEADER_SIZE, iter_records

from .server_proc import hw, server

pytestmark = pytest.mark.crash


def _tree_line(url: str, suffix: str) -> str:
    drawn = hw(url, "tree").stdout
    return next((line for line in drawn.splitlines() if suffix in line), "")


def test_damaged_partition_fails_alone_then_repair_serves_again(tmp_path: Path) -> None:
    """Three records in partition 1 of t, then kill -9 and one flipped byte
    in the middle record: after a restart partition 1 is failed (tree and
    topics describe say so with file and byte), produce to it fails at once
    with the CorruptionError, partitions 0 and 2 serve; the repair dry run
    changes nothing, `repair --yes` drops that record only, and the restarted
    server serves partition 1 with a gap at its offsets."""
    data = tmp_path / "data"
    with server(data) as proc:
        url = proc.url
        assert 0 == hw(url, "topics", "create", "t", "--partitions", "3").returncode
        for q, batch in [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0)]:
            lines = "".join(f"p{q}-b{batch}-{i}\n" for i in range(5))
            done = hw(url, "produce", "t", "--partition", str(q), input=lines)
            assert 0 == done.returncode, done.stderr
        proc.stop(signal.SIGKILL)
    segment = data / "topics" / "t" / "1" / f"{0:020d}.log"
    records = iter_records(segment.read_bytes())
    assert 3 == len(records)
    second = len(records[0][1])
    assert (5, 5) == (records[1][0].base_offset, records[1][0].count)
    damaged = bytearray(segment.read_bytes())
    damaged[second + HEADER_SIZE + 4] ^= 0x20
    segment.write_bytes(bytes(damaged))

    with server(data, log_name="server2.log") as proc:
        url = proc.url
        deadline = time.monotonic() + 20
        while "failed" not in _tree_line(url, "1 [actor]") and time.monotonic() < deadline:
            time.sleep(0.1)
        line = _tree_line(url, "1 [actor]")
        assert "failed" in line, hw(url, "tree").stdout
        assert "CorruptionError" in line
        assert f"corrupt data at byte {second}" in line
        described = json.loads(hw(url, "topics", "describe", "t", "--json").stdout)
        states = [(p["partition"], p["state"]) for p in described["partition_details"]]
        assert [(0, "serving"), (1, "failed"), (2, "serving")] == states
        assert str(segment) in described["partition_details"][1]["error"]
        text = hw(url, "topics", "describe", "t").stdout
        assert f"partition 1 failed: CorruptionError: partition t/1 cannot open: {segment}" in text
        start = time.monotonic()
        refused = hw(url, "produce", "t", "--partition", "1", "--value", "x")
        took = time.monotonic() - start
        assert 1 == refused.returncode
        assert f"{segment}: corrupt data at byte {second}" in refused.stderr
        assert "headwater repair" in refused.stderr
        assert "[corruption]" in refused.stderr
        assert took < 10, took  # an answer, not a client timeout
        print(f"produce to the failed partition answered in {took:.2f} s")
        for q in (0, 2):
            ok = hw(url, "produce", "t", "--partition", str(q), "--value", f"after-{q}")
            assert 0 == ok.returncode, ok.stderr
        busy = hw("", "repair", "--data-dir", str(data))
        assert 1 == busy.returncode
        assert "is in use by a broker" in busy.stderr
        assert "[data_dir_locked]" in busy.stderr
        read = hw(url, "consume", "t", "--partition", "2")
        assert 0 == read.returncode, read.stderr
        assert 6 == len(read.stdout.splitlines())
        assert read.stdout.splitlines()[-1] == "after-2"
        proc.stop()

    before = segment.read_bytes()
    plan = hw("", "repair", "--data-dir", str(data))
    assert 1 == plan.returncode, plan.stderr
    assert "t/1: damaged" in plan.stdout
    assert f"drop {len(records[1][1])} byte(s) at byte {second}" in plan.stdout
    assert "offsets 5..9 become a gap" in plan.stdout
    assert "3 partition(s) checked: 1 damaged; nothing was changed" in plan.stdout
    assert before == segment.read_bytes()
    fixed = hw("", "repair", "--data-dir", str(data), "--topic", "t", "--partition", "1", "--yes")
    assert 0 == fixed.returncode, fixed.stderr
    assert "t/1: repaired" in fixed.stdout
    again = hw("", "repair", "--data-dir", str(data), "--json")
    assert 0 == again.returncode
    assert [[], [], []] == [r["damages"] for r in json.loads(again.stdout)]

    with server(data, log_name="server3.log") as proc:
        url = proc.url
        described = json.loads(hw(url, "topics", "describe", "t", "--json").stdout)
        assert ["serving"] * 3 == [p["state"] for p in described["partition_details"]]
        assert 0 == hw(url, "produce", "t", "--partition", "1", "--value", "new").returncode
        read = hw(url, "consume", "t", "--partition", "1", "--json")
        assert 0 == read.returncode, read.stderr
        events = [json.loads(line) for line in read.stdout.splitlines()]
        offsets = [e["offset"] for e in events]
        assert [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15] == offsets
        assert "p1-b2-0" == events[5]["value"]
        assert "new" == events[-1]["value"]
        gaps = [e for e in proc.events() if e.get("event") == "journal_gaps"]
        assert [[5, 10]] == gaps[0]["gaps"]
