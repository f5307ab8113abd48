"""Headwater over TCP beside the embedded broker, in one run.

One client process (this one) and a real ``headwater serve`` process
(durability ``always``): produce and consume throughput for 100 B and 1 KiB
events, and end-to-end latency p50/p99 at 1,000 events/s, each beside the
embedded broker's figure from the same run. The engine is
:func:`headwater.bench.run_local` (also behind ``headwater bench --local``);
see its docstring for the method.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

from headwater.bench import run_local

HERE = pathlib.Path(__file__).resolve().parent


def _quiet() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield TCP and embedded produce/consume rates and latency percentiles."""
    _quiet()
    yield from run_local(quick, workdir=str(HERE.parent))
