"""``python -m headwater.testing.soak``: run the deterministic simulation on many seeds.

Each seed runs twice (the two trace hashes must match) and is judged by the
reliability checker (I1-I6). Prints one JSON line per seed, then a summary
table (faults injected by kind, rounds, acknowledged events checked, lost,
duplicates, recovery time p50/p99 in virtual seconds) and a final JSON
summary line. Exits 1 if any seed fails, printing its rerun command::

    python -m headwater.testing.soak --seeds 200
    python -m headwater.testing.soak --seed 17        # rerun one seed

``PYTHONHASHSEED`` is pinned to 0 (the command re-executes itself if it is
not), so a seed replays identically in any process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence

from headwater._logging import configure_structlog_for_cli

from ._simulation import SimulationConfig, SimulationResult, percentile, rerun_command, run_seed

__all__ = ["main", "soak"]


def soak(
    seeds: Sequence[int], config: SimulationConfig | None = None, *, twice: bool = True
) -> tuple[list[SimulationResult], list[str]]:
    """Run every seed (twice when ``twice``); return the results and the failures."""
    results: list[SimulationResult] = []
    failures: list[str] = []
    for seed in seeds:
        first = run_seed(seed, config)
        results.append(first)
        if not first.ok:
            failures.append(f"seed {seed}: {first.report.summary()}")
        if twice:
            second = run_seed(seed, config)
            if second.trace_hash != first.trace_hash:
                failures.append(
                    f"seed {seed}: nondeterministic (trace hashes {first.trace_hash[:12]} != "
                    f"{second.trace_hash[:12]})"
                )
    return results, failures


def summarize(results: Sequence[SimulationResult]) -> dict[str, object]:
    """The figures of a soak: faults by kind, events checked, lost, duplicates,
    recovery percentiles (virtual seconds)."""
    faults: Counter[str] = Counter()
    recovery: list[float] = []
    for r in results:
        faults.update(r.faults)
        recovery.extend(r.recovery_times)
    return {
        "seeds": len(results),
        "rounds": sum(r.rounds for r in results),
        "acked_checked": sum(r.report.acked_checked for r in results),
        "lost": sum(r.report.lost for r in results),
        "duplicates": sum(r.report.duplicates for r in results),
        "violations": sum(len(r.report.violations) for r in results),
        "recovery_p50_s": round(percentile(recovery, 0.50), 4),
        "recovery_p99_s": round(percentile(recovery, 0.99), 4),
        "faults": dict(sorted(faults.items())),
    }


def _table(summary: dict[str, object]) -> str:
    faults = summary["faults"]
    assert isinstance(faults, dict)
    rows = [(f"faults: {k}", str(v)) for k, v in faults.items()]
    rows += [(k, str(v)) for k, v in summary.items() if k != "faults"]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>10}" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m headwater.testing.soak")
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds (from --start)")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, default=None, help="run this one seed")
    parser.add_argument("--rounds", type=int, default=4, help="broker lifetimes per seed")
    parser.add_argument("--once", action="store_true", help="run each seed once (no hash check)")
    args = parser.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0" and argv is None:
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "headwater.testing.soak", *sys.argv[1:]])
    # A command-line program: structlog loggers that follow the global
    # configuration go through the (silenced) stdlib loggers too.
    configure_structlog_for_cli()
    logging.getLogger("headwater").setLevel(logging.CRITICAL)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    config = SimulationConfig(rounds=args.rounds)
    started = time.perf_counter()
    results: list[SimulationResult] = []
    failures: list[str] = []
    for seed in seeds:
        done, failed = soak([seed], config, twice=not args.once)
        results += done
        failures += failed
        r = done[0]
        print(
            json.dumps(
                {
                    "seed": seed,
                    "ok": not failed,
                    "acked_checked": r.report.acked_checked,
                    "lost": r.report.lost,
                    "duplicates": r.report.duplicates,
                    "violations": len(r.report.violations),
                    "trace_hash": r.trace_hash[:16],
                    "virtual_s": round(r.virtual_seconds, 3),
                    "faults": r.faults,
                }
            )
        )
        for line in failed:
            print(f"FAILED {line}\n  rerun: {rerun_command(seed)}", file=sys.stderr)
    summary = summarize(results)
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    summary["failed_seeds"] = len({f.split(":")[0] for f in failures})
    print(_table(summary))
    print(json.dumps({"summary": summary}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
