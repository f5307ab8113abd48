"""Run Headwater's benchmarks and print one JSON object per figure.

Usage::

    python benchmarks/run.py [NAME ...] [--quick]

Each benchmark is a module ``benchmarks/bench_<name>.py`` with a function
``run(quick: bool) -> Iterable[dict]`` yielding figures of the form
``{"bench": ..., "case": ..., "metric": ..., "value": ..., "unit": ...}``.
A ratio is a figure whose metric starts with ``ratio_``. With no NAME, every
benchmark runs. ``--quick`` is the short version (under a minute in process).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
from collections.abc import Iterable
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))


def available() -> list[str]:
    """Names of the benchmarks in this folder."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen benchmarks, print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(available())}")
    parser.add_argument("--quick", action="store_true", help="the short version")
    args = parser.parse_args(argv)
    names = args.names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {available()}")
    for name in names:
        module = importlib.import_module(f"bench_{name}")
        figures: Iterable[dict[str, Any]] = module.run(quick=args.quick)
        for figure in figures:
            print(json.dumps(figure), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
