"""Headwater beside NATS JetStream and Redis Streams, in one run.

Theory of operation
-------------------
Every figure comes from the shared peer benchmark's loop (``peers.py`` in
``../shared/bench``, found by :func:`find_bench_dir`): it is run once per
(target, size, round) as a subprocess. Peers run under the benchmark's own
virtualenv (their Python clients live there) with a throw-away server per
call (``--spawn``); Headwater runs under this interpreter through
:class:`~headwater.bench.HeadwaterDriver`, against a ``headwater serve``
process per durability (TCP) or an embedded broker in a fresh directory.
Rounds are interleaved (round 1 of every target, then round 2, ...), and
each throughput ratio is the median of the per-round ratios. Latency
percentiles are pooled instead: every round's samples of a target make one
set, its p50/p99/p99.9 are that set's (the per-round values remain as
min/max), and the latency ratios compare pooled figures. A p99 of one round
of 2,000 events rests on its 20 slowest; its median over three rounds swung
4x between runs.

Targets: Headwater TCP and embedded with durability ``always`` and
``interval``; NATS JetStream (file store) with ``sync_interval: always`` and
its default; Redis Streams (AOF) with ``appendfsync always`` and its default
``everysec``; plus Redis's own C client (``redis-benchmark``, fsync always).
Workloads: produce N events of 100 B and of 1 KiB from one client; consume
them all back from the start with one consumer; end-to-end latency at a
steady 1,000 events/s (100 B). The embedded broker's latency runs producer
and consumer in one process (an embedded broker cannot be shared).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import attrs

from headwater.testing._process import server_process, subprocess_env

from ._driver import HeadwaterDriver
from ._peer_samples import SAMPLES_KEY

Row = dict[str, Any]
Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)``: called before each step and once at the end."""

DRIVER = "headwater.bench:HeadwaterDriver"
SIZES = ((100, "100B"), (1024, "1KiB"))
_SRC = pathlib.Path(__file__).resolve().parents[2]
_SAMPLES_SCRIPT = pathlib.Path(__file__).resolve().with_name("_peer_samples.py")


@attrs.frozen
class Target:
    """One broker in one durability setting."""

    name: str
    kind: str  # "tcp" | "embedded" | "nats" | "redis"
    setting: str  # "always" | "interval" | "default"

    @property
    def durable(self) -> bool:
        """Whether this is the broker's most durable setting (fsync before ack)."""
        return self.setting == "always"

    @property
    def peer(self) -> bool:
        """Whether this is a peer (not Headwater)."""
        return self.kind in ("nats", "redis")


TARGETS = (
    Target("headwater-tcp-always", "tcp", "always"),
    Target("headwater-tcp-interval", "tcp", "interval"),
    Target("headwater-embedded-always", "embedded", "always"),
    Target("headwater-embedded-interval", "embedded", "interval"),
    Target("nats-always", "nats", "always"),
    Target("nats-default", "nats", "default"),
    Target("redis-always", "redis", "always"),
    Target("redis-default", "redis", "default"),
)


@attrs.frozen
class Plan:
    """Counts and repeats of one run."""

    rounds: int
    counts: dict[int, int]  # size -> events
    nats_always_count: int  # JetStream fsyncs every message: ~3k/s
    latency_count: int  # events at 1,000/s, per round (percentiles pool the rounds)
    redis_c_count: int
    call_timeout: float


def plan_for(quick: bool) -> Plan:
    """The quick (a few minutes) or full plan."""
    if quick:
        return Plan(3, {100: 50_000, 1024: 20_000}, 3_000, 3_000, 100_000, 120.0)
    return Plan(3, {100: 200_000, 1024: 50_000}, 20_000, 5_000, 200_000, 600.0)


# ------------------------------------------------------------------ discovery


def find_bench_dir() -> pathlib.Path | None:
    """The shared peer benchmark: ``$HEADWATER_PEER_BENCH``, else
    ``../shared/bench`` beside this repository (or beside its main worktree)."""
    candidates: list[pathlib.Path] = []
    if os.environ.get("HEADWATER_PEER_BENCH"):
        candidates.append(pathlib.Path(os.environ["HEADWATER_PEER_BENCH"]))
    repo = _SRC.parent
    candidates.append(repo.parent / "shared" / "bench")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        common = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if common:
            candidates.append(pathlib.Path(common).parent.parent / "shared" / "bench")
    for c in candidates:
        if (c / "peers.py").is_file():
            return c.resolve()
    return None


def peer_python() -> pathlib.Path | None:
    """The benchmark virtualenv's python if it has the peers' clients."""
    venv = os.environ.get("BENCH_VENV") or os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "headwater-bench-venv"
    )
    py = pathlib.Path(venv) / "bin" / "python"
    if not py.exists():
        return None
    ok = subprocess.run(
        [str(py), "-c", "import nats, redis"], capture_output=True, timeout=60
    ).returncode
    return py if ok == 0 else None


def machine_facts(bench_dir: pathlib.Path | None) -> str:
    """``machine.sh``'s output (or a few facts from this process), plus the
    load average now (other work on the machine skews every figure)."""
    load = "load average (1/5/15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    if bench_dir is not None and (bench_dir / "machine.sh").is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["bash", str(bench_dir / "machine.sh")], capture_output=True, text=True, timeout=60
            )
            if out.stdout.strip():
                return out.stdout.strip() + "\n" + load
    return "\n".join(
        [
            f"date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
            f"nproc: {os.cpu_count()}",
            f"kernel: {os.uname().release}",
            f"python: {sys.version.split()[0]}",
            load,
        ]
    )


# ------------------------------------------------------------------ servers


@contextlib.contextmanager
def headwater_server(data_dir: str, durability: str) -> Iterator[tuple[str, int]]:
    """A ``headwater serve`` process on a free port; yields (URL, pid).
    Stopped with SIGTERM (killed if it does not stop within 30 s)."""
    with server_process(data_dir, "--durability", durability) as proc:
        try:
            yield proc.url, proc.pid
        finally:
            try:
                proc.stop(signal.SIGTERM, timeout=30)
            except subprocess.TimeoutExpired:
                proc.proc.kill()


def _pythonpath() -> str:
    return subprocess_env()["PYTHONPATH"]


# ------------------------------------------------------------------ one call


def _run_json(cmd: list[str], cwd: pathlib.Path, timeout: float, env: dict[str, str]) -> list[Row]:
    """Run a benchmark script; its ``"kind": "run"`` JSON lines."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd[1:4])}") from None
    rows = []
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            if row.get("kind") == "run":
                rows.append(row)
    if out.returncode != 0 or not rows:
        raise RuntimeError(f"rc={out.returncode}: {out.stderr.strip()[-600:]}")
    return rows


def _percentiles_ns(samples: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles in µs, as ``peers.percentiles_us``."""
    s = sorted(samples)
    n = len(s)

    def pct(p: float) -> float:
        k = max(0, min(n - 1, math.ceil(p / 100.0 * n) - 1))
        return s[k] / 1000.0

    return {"p50_us": pct(50), "p99_us": pct(99), "p999_us": pct(99.9)}


@attrs.define
class _Session:
    """One comparison run: where things are, and every sample so far."""

    plan: Plan
    bench_dir: pathlib.Path
    peer_py: pathlib.Path | None
    base: str
    urls: dict[str, str] = attrs.field(factory=dict)  # durability -> headwater:// URL
    samples: dict[tuple[str, str, str], dict[int, float]] = attrs.field(factory=dict)
    # (case, target) -> every round's latency samples (ns), pooled
    pooled: dict[tuple[str, str], list[int]] = attrs.field(factory=dict)
    counts: dict[tuple[str, str], int] = attrs.field(factory=dict)
    notes: list[Row] = attrs.field(factory=list)
    calls: int = 0

    def add(self, case: str, target: str, metric: str, rnd: int, value: float) -> None:
        self.samples.setdefault((case, target, metric), {})[rnd] = value

    def add_latency(self, case: str, target: str, rnd: int, samples_ns: list[int]) -> None:
        """One round's latency samples: its percentiles (ms) as that round's
        figures, and the samples into the target's pool."""
        if not samples_ns:
            raise RuntimeError(f"{target}: no latency samples in round {rnd}")
        for key, us in _percentiles_ns(samples_ns).items():
            self.add(case, target, key.replace("_us", "_ms"), rnd, us / 1000)
        self.pooled.setdefault((case, target), []).extend(samples_ns)
        self.counts[(case, target)] = len(self.pooled[(case, target)])

    def _count(self, target: Target, size: int) -> int:
        if target.kind == "nats" and target.durable:
            return self.plan.nats_always_count
        return self.plan.counts[size]

    def _base_args(self, target: Target) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if target.kind == "nats":
            nats_bin = pathlib.Path(str(self.peer_py)).parent / "nats-server"
            args = ["--peer", "nats", "--spawn", "--nats-bin"]
            args += [str(nats_bin) if nats_bin.exists() else "nats-server"]
            args += ["--nats-sync", "always" if target.durable else "default"]
            return [*args, "--mode", "async", "--window", "1000", "--consumer", "pull,push"], env
        if target.kind == "redis":
            fsync = "always" if target.durable else "everysec"
            args = ["--peer", "redis", "--spawn", "--redis-fsync", fsync]
            return [*args, "--mode", "pipeline", "--batch", "1000"], env
        env["PYTHONPATH"] = _pythonpath()
        if target.kind == "tcp":
            url = self.urls[target.setting]
        else:
            self.calls += 1
            url = f"embedded://{self.base}/emb{self.calls}?durability={target.setting}"
        return ["--peer", DRIVER, "--url", url, "--mode", "async", "--window", "1000"], env

    def _python(self, target: Target) -> str:
        return str(self.peer_py) if target.peer else sys.executable

    def throughput(self, target: Target, size: int, label: str, rnd: int) -> None:
        """produce + consume of one size, one round, through ``peers.py``."""
        args, env = self._base_args(target)
        count = self._count(target, size)
        args += ["--workload", "produce,consume", "--size", str(size), "--count", str(count)]
        cmd = [self._python(target), str(self.bench_dir / "peers.py"), *args, "--repeat", "1"]
        for row in _run_json(cmd, self.bench_dir, self.plan.call_timeout, env):
            if not row.get("ok"):
                raise RuntimeError(f"{target.name}: a run was not ok: {row}")
            if row["workload"] == "produce":
                case = f"produce/{label}"
            else:
                style = str(row["mode"]).split("-")[0]
                case = f"consume/{label}" + (f"/{style}" if target.kind == "nats" else "")
            self.add(case, target.name, "events_per_s", rnd, float(row["msgs_per_s"]))
            self.counts[(case, target.name)] = count

    def latency(self, target: Target, rnd: int) -> None:
        """End-to-end latency at 1,000 events/s, one round."""
        count = self.plan.latency_count
        if target.kind == "embedded":
            self.calls += 1
            url = f"embedded://{self.base}/lat{self.calls}?durability={target.setting}"
            samples = HeadwaterDriver(url, "bench", {}).latency_inprocess(count, 100, 0.001)
            lost = count - len(samples)
        else:
            args, env = self._base_args(target)
            args += ["--workload", "latency", "--size", "100", "--count", str(count)]
            args += ["--interval-ms", "1"]
            # peers.py's own loop, run through a wrapper that keeps the samples.
            cmd = [self._python(target), str(_SAMPLES_SCRIPT), str(self.bench_dir), *args]
            res = _run_json([*cmd, "--repeat", "1"], self.bench_dir, self.plan.call_timeout, env)[0]
            samples = [int(x) for x in res.get(SAMPLES_KEY, [])]
            lost = int(res.get("lost", 0))
        if lost:
            raise RuntimeError(f"{target.name}: {lost} of {count} latency events lost")
        self.add_latency("latency", target.name, rnd, samples)

    def floor(self, rnd: int) -> None:
        """The latency floor of this round (DECISIONS #27): the median bare
        round trip of 100 B between two Python processes over loopback TCP
        plus the median write + fsync of 100 B in the benchmark's directory."""
        rtt = statistics.median(_echo_round_trips(FLOOR_SAMPLES))
        fsync = statistics.median(_fsync_times(self.base, FLOOR_SAMPLES // 4))
        self.add("latency", "floor-round-trip", "p50_ms", rnd, rtt / 1e6)
        self.add("latency", "floor-fsync", "p50_ms", rnd, fsync / 1e6)
        self.add("latency", "floor", "p50_ms", rnd, (rtt + fsync) / 1e6)
        for name in ("floor-round-trip", "floor-fsync", "floor"):
            self.counts[("latency", name)] = FLOOR_SAMPLES

    def redis_c(self, rnd: int) -> None:
        """``redis-benchmark`` XADD of 100 B with appendfsync always, one round."""
        count = self.plan.redis_c_count
        cmd = [str(self.peer_py), str(self.bench_dir / "redis_ref.py"), "--fsync", "always"]
        cmd += ["--sizes", "100", "--count", str(count), "--repeat", "1"]
        row = _run_json(cmd, self.bench_dir, self.plan.call_timeout, dict(os.environ))[0]
        rate = float(row["msgs_per_s"])
        if not math.isfinite(rate):
            raise RuntimeError("redis-benchmark printed no rate")
        self.add("produce/100B", "redis-c-always", "events_per_s", rnd, rate)
        self.counts[("produce/100B", "redis-c-always")] = count


# ------------------------------------------------------------------ the floor

FLOOR_SAMPLES = 2000
FLOOR_TARGETS = ("floor-round-trip", "floor-fsync", "floor")
"""Latency rows of the floor: the round trip, the fsync, and their sum."""

_ECHO = """
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept(); conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    data = conn.recv(65536)
    if not data:
        break
    conn.sendall(data)
"""


def _echo_round_trips(count: int, size: int = 100) -> list[int]:
    """Round trips (ns) of ``size`` bytes to an echo process over loopback TCP."""
    import socket

    proc = subprocess.Popen(
        [sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            payload = b"x" * size
            out = []
            for _ in range(count):
                t0 = time.perf_counter_ns()
                sock.sendall(payload)
                got = 0
                while got < size:
                    got += len(sock.recv(65536))
                out.append(time.perf_counter_ns() - t0)
            return out
    finally:
        proc.kill()
        proc.wait(10)


def _fsync_times(directory: str, count: int, size: int = 100) -> list[int]:
    """Durations (ns) of appending ``size`` bytes and fsyncing, in ``directory``."""
    path = os.path.join(directory, "floor-fsync.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        payload = b"x" * size
        out = []
        for _ in range(count):
            t0 = time.perf_counter_ns()
            os.write(fd, payload)
            os.fsync(fd)
            out.append(time.perf_counter_ns() - t0)
        return out
    finally:
        os.close(fd)
        os.unlink(path)


# ------------------------------------------------------------------ figures


def _stats(values: list[float]) -> Row:
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "value": med,
        "min": lo,
        "max": hi,
        "spread_pct": round(100.0 * (hi - lo) / med, 1) if med else None,
        "runs": len(values),
    }


_UNITS = {"events_per_s": "events/s", "p50_ms": "ms", "p99_ms": "ms", "p999_ms": "ms"}


def _pooled_value(s: _Session, key: tuple[str, str, str]) -> float | None:
    """The figure of ``key`` = (case, target, metric) over the whole run: the
    percentile of every round's samples pooled (latency percentiles), else
    the median of the rounds; ``None`` if there is none."""
    case, target, metric = key
    pool = s.pooled.get((case, target))
    if pool and metric.endswith("_ms"):
        return _percentiles_ns(pool)[metric.replace("_ms", "_us")] / 1000
    by_round = s.samples.get(key)
    return statistics.median(by_round.values()) if by_round else None


def _figure_rows(s: _Session) -> list[Row]:
    rows = []
    for key, by_round in sorted(s.samples.items()):
        case, target, metric = key
        row: Row = {"bench": "peers", "case": f"{case}/{target}", "metric": metric}
        row.update(_stats(list(by_round.values())), unit=_UNITS[metric], target=target)
        if (case, target) in s.pooled:
            # value: the percentile of the pooled samples; min/max/spread:
            # the rounds' own percentiles (how much one round alone varies).
            row["value"] = _pooled_value(s, key)
            row["pooled"] = True
        row["count"] = s.counts.get((case, target))
        rows.append(row)
    return rows


def _ratio_row(
    s: _Session,
    case: str,
    metric: str,
    ours: tuple[str, str, str],
    theirs: list[tuple[str, str, str]],
    lower_is_better: bool = False,
) -> Row | None:
    """Median over rounds of ours / (best of theirs in the same round); for
    pooled latency percentiles, ours pooled / the best of theirs pooled
    (min/max stay the per-round ratios')."""
    mine = s.samples.get(ours, {})
    ratios: list[float] = []
    best_names: list[str] = []
    for rnd, value in sorted(mine.items()):
        cands = [(s.samples[k][rnd], k[1]) for k in theirs if rnd in s.samples.get(k, {})]
        if not cands:
            continue
        best, name = min(cands) if lower_is_better else max(cands)
        if best > 0:
            ratios.append(value / best)
            best_names.append(name)
    if not ratios:
        return None
    row: Row = {"bench": "peers", "case": case, "metric": metric}
    row.update(_stats(ratios), unit="x")
    row["ours"] = ours[1]
    row["vs"] = max(set(best_names), key=best_names.count)
    if (ours[0], ours[1]) in s.pooled:
        mine_all = _pooled_value(s, ours)
        pooled = [(v, k[1]) for k in theirs if (v := _pooled_value(s, k)) is not None]
        if pooled and mine_all is not None:
            best, name = min(pooled) if lower_is_better else max(pooled)
            if best > 0:
                row.update(value=mine_all / best, vs=name, pooled=True)
    return row


def _ratio_rows(s: _Session) -> list[Row]:
    peers_always = [t.name for t in TARGETS if t.peer and t.durable]
    peers_all = [t.name for t in TARGETS if t.peer]
    consume_keys = {
        label: [k for k in s.samples if k[0].startswith(f"consume/{label}") and k[1] in peers_all]
        for _, label in SIZES
    }
    out: list[Row | None] = []
    for mode in ("tcp", "embedded"):
        suffix = "" if mode == "tcp" else "/embedded"
        ours = f"headwater-{mode}-always"
        for _, label in SIZES:
            case = f"produce/{label}"
            out.append(
                _ratio_row(
                    s,
                    f"{case}/always{suffix}",
                    "ratio_vs_best_peer",
                    (case, ours, "events_per_s"),
                    [(case, p, "events_per_s") for p in peers_always],
                )
            )
        for _, label in SIZES:
            case = f"consume/{label}"
            out.append(
                _ratio_row(
                    s,
                    f"{case}{suffix}",
                    "ratio_vs_best_peer",
                    (case, ours, "events_per_s"),
                    consume_keys[label],
                )
            )
        out.append(
            _ratio_row(
                s,
                f"latency/always{suffix}",
                "ratio_p99_vs_best_peer",
                ("latency", ours, "p99_ms"),
                [("latency", p, "p99_ms") for p in peers_always],
                lower_is_better=True,
            )
        )
        out.append(
            _ratio_row(
                s,
                f"latency/always{suffix}",
                "ratio_p50_vs_best_peer",
                ("latency", ours, "p50_ms"),
                [("latency", p, "p50_ms") for p in peers_always],
                lower_is_better=True,
            )
        )
        out.append(
            _ratio_row(
                s,
                f"latency/always{suffix}",
                "ratio_p50_vs_floor",
                ("latency", ours, "p50_ms"),
                [("latency", "floor", "p50_ms")],
                lower_is_better=True,
            )
        )
        out.append(
            _ratio_row(
                s,
                f"produce/100B/always{suffix}",
                "ratio_vs_redis_c",
                ("produce/100B", ours, "events_per_s"),
                [("produce/100B", "redis-c-always", "events_per_s")],
            )
        )
    return [r for r in out if r is not None]


# ------------------------------------------------------------------ the run


def _note(case: str, why: str) -> Row:
    return {"bench": "peers", "case": case, "metric": "skipped", "value": 0, "unit": "", "why": why}


def run_peers(quick: bool = False, progress: Progress | None = None) -> list[Row]:
    """Run the whole comparison; return its figures (JSON-ready dicts with
    ``bench``, ``case``, ``metric``, ``value``, ``unit``; medians carry
    ``min``/``max``/``spread_pct``/``runs``; ratios have metrics starting
    ``ratio_``; a part that could not run is a row with metric ``skipped``
    and ``why``). ``progress(done, total, what)`` reports each step."""
    bench_dir = find_bench_dir()
    if bench_dir is None:
        why = (
            "the shared peer benchmark (../shared/bench/peers.py) is not beside this "
            "repository; set HEADWATER_PEER_BENCH to its folder"
        )
        return [_note("all", why)]
    s = _Session(plan_for(quick), bench_dir, peer_python(), "")
    targets = list(TARGETS)
    if s.peer_py is None:
        why = "the peers' Python clients are missing: run `bash ../shared/bench/setup.sh`"
        s.notes.append(_note("nats,redis", why))
        targets = [t for t in targets if not t.peer]
    base = tempfile.mkdtemp(prefix="hw-bench-peers-")
    s.base = base
    try:
        with contextlib.ExitStack() as stack:
            for durability in ("always", "interval"):
                try:
                    url, _pid = stack.enter_context(
                        headwater_server(os.path.join(base, f"srv-{durability}"), durability)
                    )
                    s.urls[durability] = url
                except RuntimeError as exc:
                    s.notes.append(_note(f"headwater-tcp-{durability}", str(exc)[:600]))
                    targets = [t for t in targets if t.name != f"headwater-tcp-{durability}"]
            _run_steps(s, targets, progress)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return [*s.notes, *_figure_rows(s), *_ratio_rows(s)]


def _run_steps(s: _Session, targets: list[Target], progress: Progress | None) -> None:
    steps: list[tuple[str, Callable[[], None]]] = []
    for rnd in range(1, s.plan.rounds + 1):
        steps += [
            (
                f"round {rnd}: {t.name} produce+consume {label}",
                partial(s.throughput, t, size, label, rnd),
            )
            for size, label in SIZES
            for t in targets
        ]
        steps += [(f"round {rnd}: {t.name} latency", partial(s.latency, t, rnd)) for t in targets]
        steps.append((f"round {rnd}: latency floor (round trip + fsync)", partial(s.floor, rnd)))
        if s.peer_py is not None:
            steps.append((f"round {rnd}: redis-benchmark (C)", partial(s.redis_c, rnd)))
    failed: set[str] = set()
    for i, (what, step) in enumerate(steps):
        if progress is not None:
            progress(i, len(steps), what)
        key = what.split(": ", 1)[1]
        if key in failed:
            continue
        try:
            step()
        except (RuntimeError, OSError, ValueError) as exc:
            failed.add(key)
            s.notes.append(_note(key, str(exc)[:600]))
    if progress is not None:
        progress(len(steps), len(steps), "done")
