"""headwater.bench: the peer-benchmark driver and the comparison's arithmetic."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import pytest
import trio.testing

from headwater import InvalidArgument
from headwater.bench import HeadwaterDriver, _peers, find_bench_dir, run_peers, write_markdown
from headwater.bench._driver import HDR
from headwater.journal import SimulatedFileSystem


def _driver(tmp_path: pathlib.Path, durability: str = "always") -> HeadwaterDriver:
    url = f"embedded:///data?durability={durability}"
    opts = {
        "clock": trio.testing.MockClock(autojump_threshold=0),
        "fs": SimulatedFileSystem(),
        "quiet_logs": False,
    }
    return HeadwaterDriver(url, "bench", opts)


def _payloads(n: int, size: int = 100) -> list[bytes]:
    return [HDR.pack(i, 0) + b"x" * (size - HDR.size) for i in range(n)]


def test_driver_produces_and_consumes_every_event_embedded(tmp_path: pathlib.Path) -> None:
    """Each produce mode stores every payload; a new group reads them all back in order."""
    d = _driver(tmp_path)
    d.reset()
    out = d.produce(_payloads(250), "async", 100, 1000)
    assert (250, 0) == (out["acked"], out["errors"])
    d.produce(_payloads(30), "sync", 100, 1000)
    d.produce(_payloads(20), "many", 100, 7)
    assert 300 == d.stored_count()
    got = d.consume(300, 64, "explicit")
    assert (300, 300 * 100, 19) == (got["received"], got["bytes"], got["last_seq"])
    assert 300 == d.consume(300, 1000, "none", "assign")["received"]
    d.reset()
    assert 0 == d.stored_count()


def test_driver_latency_in_process_receives_every_event(tmp_path: pathlib.Path) -> None:
    """The one-process latency run returns one sample per event sent."""
    before = time.monotonic_ns()
    samples = _driver(tmp_path, "interval").latency_inprocess(25, 100, 0.001)
    elapsed = time.monotonic_ns() - before
    assert 25 == len(samples)
    # Real nanoseconds from send to receive (only the pacing runs on the mock
    # clock): each is positive and fits inside the run, so a sample taken on
    # the wrong clock (or from the wrong header field) fails here.
    assert [] == [s for s in samples if not 0 < s <= elapsed]


@pytest.mark.parametrize("url", ["nats://127.0.0.1:4222", "embedded://?durability=always"])
def test_driver_rejects_unknown_urls(url: str) -> None:
    """A URL that is neither headwater:// nor embedded:///PATH raises InvalidArgument naming it."""
    with pytest.raises(InvalidArgument, match="url="):
        HeadwaterDriver(url, "bench", {"quiet_logs": False})


def test_driver_rejects_unknown_modes(tmp_path: pathlib.Path) -> None:
    """An unknown produce mode or consume style is named in the error."""
    d = _driver(tmp_path)
    with pytest.raises(InvalidArgument, match="pipeline"):
        d.produce([], "pipeline", 1, 1)
    with pytest.raises(InvalidArgument, match="push"):
        d.consume(1, 1, "explicit", "push")


def _session(samples: dict[tuple[str, str, str], dict[int, float]]) -> _peers._Session:
    s = _peers._Session(_peers.plan_for(True), pathlib.Path("."), None, "")
    s.samples.update(samples)
    return s


def test_ratios_are_medians_of_per_round_ratios_against_the_best_durable_peer() -> None:
    """produce: vs the best durable peer of the same round; consume: vs any peer or style;
    latency: vs the lowest durable p99; a case without a peer has no ratio."""
    ev = "events_per_s"
    s = _session(
        {
            ("produce/100B", "headwater-tcp-always", ev): {1: 100.0, 2: 90.0, 3: 300.0},
            ("produce/100B", "redis-always", ev): {1: 50.0, 2: 10.0, 3: 100.0},
            ("produce/100B", "nats-always", ev): {1: 20.0, 2: 30.0, 3: 10.0},
            ("produce/100B", "redis-default", ev): {1: 1000.0, 2: 1000.0, 3: 1000.0},
            ("consume/100B", "headwater-tcp-always", ev): {1: 100.0},
            ("consume/100B", "redis-default", ev): {1: 40.0},
            ("consume/100B/push", "nats-default", ev): {1: 50.0},
            ("latency", "headwater-tcp-always", "p99_ms"): {1: 2.0},
            ("latency", "nats-always", "p99_ms"): {1: 4.0},
            ("latency", "redis-always", "p99_ms"): {1: 1.0},
            ("latency", "redis-default", "p99_ms"): {1: 0.1},
            ("latency", "headwater-tcp-always", "p50_ms"): {1: 0.9},
            ("latency", "nats-always", "p50_ms"): {1: 0.3},
            ("latency", "redis-always", "p50_ms"): {1: 0.6},
            ("latency", "redis-default", "p50_ms"): {1: 0.05},
            ("latency", "floor", "p50_ms"): {1: 0.45},
        }
    )
    rows = {(r["case"], r["metric"]): r for r in _peers._ratio_rows(s)}
    produce = rows[("produce/100B/always", "ratio_vs_best_peer")]
    assert (3.0, 2.0, 3.0, "redis-always") == (
        produce["value"],
        produce["min"],
        produce["max"],
        produce["vs"],
    )
    consume = rows[("consume/100B", "ratio_vs_best_peer")]
    assert (2.0, "nats-default") == (consume["value"], consume["vs"])
    latency = rows[("latency/always", "ratio_p99_vs_best_peer")]
    assert (2.0, "redis-always") == (latency["value"], latency["vs"])
    p50 = rows[("latency/always", "ratio_p50_vs_best_peer")]
    assert (3.0, "nats-always") == (pytest.approx(p50["value"]), p50["vs"])
    floor = rows[("latency/always", "ratio_p50_vs_floor")]
    assert (2.0, "floor") == (pytest.approx(floor["value"]), floor["vs"])
    assert ("produce/1KiB/always", "ratio_vs_best_peer") not in rows
    assert ("produce/100B/always", "ratio_vs_redis_c") not in rows


def test_markdown_section_is_replaced_and_the_rest_of_the_file_kept(
    tmp_path: pathlib.Path,
) -> None:
    """Writing twice leaves one section, the latest figures and the surrounding text."""
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nOther figures.\n")
    row = {
        "bench": "peers",
        "case": "produce/100B/headwater-tcp-always",
        "metric": "events_per_s",
        "value": 123456.0,
        "min": 120000.0,
        "max": 130000.0,
        "spread_pct": 8.1,
        "count": 50000,
    }
    ratio = {"bench": "peers", "case": "produce/100B/always", "metric": "ratio_vs_best_peer"}
    ratio.update(value=2.5, min=2.0, max=3.0, ours="headwater-tcp-always", vs="redis-always")
    skip = {"bench": "peers", "case": "nats", "metric": "skipped", "value": 0, "why": "absent"}
    write_markdown(doc, [row, ratio], "nproc: 2", "cmd")
    write_markdown(doc, [dict(row, value=654321.0), ratio, skip], "nproc: 2", "cmd")
    text = doc.read_text()
    assert 1 == text.count("<!-- peers:begin -->")
    assert text.startswith("# Benchmarks\n\nOther figures.\n")
    assert "654.3k ±4%" in text
    assert "123.5k" not in text
    assert (
        "| produce/100B/always | ratio_vs_best_peer | headwater-tcp-always | redis-always | 2.50 |"
        in text
    )
    assert "- nats: absent" in text
    assert "nproc: 2" in text


def test_bench_dir_from_the_environment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HEADWATER_PEER_BENCH points at a folder holding peers.py."""
    (tmp_path / "peers.py").write_text("")
    monkeypatch.setenv("HEADWATER_PEER_BENCH", str(tmp_path))
    assert tmp_path.resolve() == find_bench_dir()


def test_run_peers_without_the_shared_bench_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """No shared benchmark folder: one `skipped` row naming what to do, nothing run."""
    monkeypatch.setattr(_peers, "find_bench_dir", lambda: None)
    rows = run_peers(quick=True)
    assert ["skipped"] == [r["metric"] for r in rows]
    assert "HEADWATER_PEER_BENCH" in rows[0]["why"]


def test_latency_percentiles_pool_every_round_and_ratios_compare_the_pools() -> None:
    """A latency figure is the percentile of all rounds' samples together (not
    the median of per-round percentiles); min/max are the rounds' own; the
    ratio is ours pooled over the best peer's pooled."""
    s = _session({})
    ms = 1_000_000
    # Round 1: 99 fast events and one slow; round 2: all fast. Each round's
    # own p99 is 1 ms, so a median of per-round p99s says 1 ms; pooled, 2 of
    # 200 are slow, so the p99 (the 198th of 200) is still 1 ms, but the
    # p99.9 is the slow one.
    s.add_latency("latency", "headwater-tcp-always", 1, [1 * ms] * 99 + [50 * ms])
    s.add_latency("latency", "headwater-tcp-always", 2, [1 * ms] * 100)
    # The peer: round 1 slow in its last 2%, round 2 fast; per-round p99s
    # 9 and 2 ms (median 5.5); pooled, the 198th of 200 is 2 ms.
    s.add_latency("latency", "redis-always", 1, [2 * ms] * 98 + [9 * ms] * 2)
    s.add_latency("latency", "redis-always", 2, [2 * ms] * 100)
    s.add_latency("latency", "nats-always", 1, [3 * ms] * 100)
    s.add_latency("latency", "nats-always", 2, [3 * ms] * 100)
    rows = {(r["case"], r["metric"]): r for r in _peers._figure_rows(s)}
    p99 = rows[("latency/redis-always", "p99_ms")]
    assert (2.0, 2.0, 9.0, 200, True) == (
        p99["value"],
        p99["min"],
        p99["max"],
        p99["count"],
        p99["pooled"],
    )
    assert 50.0 == rows[("latency/headwater-tcp-always", "p999_ms")]["value"]
    ratios = {(r["case"], r["metric"]): r for r in _peers._ratio_rows(s)}
    ratio = ratios[("latency/always", "ratio_p99_vs_best_peer")]
    # Pooled: 1 / 2. Per round, against that round's best (nats' 3 ms in
    # round 1, redis' 2 ms in round 2): 1/3 and 1/2, kept as min and max.
    assert (0.5, "redis-always") == (ratio["value"], ratio["vs"])
    assert (pytest.approx(1 / 3), 0.5) == (ratio["min"], ratio["max"])


def test_a_round_without_latency_samples_is_an_error() -> None:
    """A run that returned no samples (an old peers.py, a broken wrapper) fails
    its step rather than leaving a figure without data."""
    s = _session({})
    with pytest.raises(RuntimeError, match="no latency samples"):
        s.add_latency("latency", "redis-always", 1, [])


def test_the_samples_wrapper_runs_peers_main_and_adds_the_samples(
    tmp_path: pathlib.Path,
) -> None:
    """``_peer_samples.py BENCH_DIR ARGS`` imports BENCH_DIR/peers.py, passes
    ARGS to its main, and every percentiles_us answer gains the samples."""
    (tmp_path / "peers.py").write_text(
        "import json, sys\n"
        "def percentiles_us(samples_ns):\n"
        "    return {'p50_us': sorted(samples_ns)[len(samples_ns) // 2] / 1000}\n"
        "def main(argv):\n"
        "    res = percentiles_us([3000, 1000, 2000])\n"
        "    print(json.dumps(dict(res, kind='run', argv=argv)))\n"
        "    return 0\n"
    )
    script = pathlib.Path(_peers.__file__).with_name("_peer_samples.py")
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--count", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=True,
    )
    row = json.loads(out.stdout)
    assert (2.0, [3000, 1000, 2000], ["--count", "3"]) == (
        row["p50_us"],
        row["samples_ns"],
        row["argv"],
    )
