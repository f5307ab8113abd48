"""headwater.bench: Headwater side by side with NATS JetStream and Redis Streams.

:class:`HeadwaterDriver` plugs Headwater into the shared peer benchmark's
driver interface; :func:`run_peers` runs the whole comparison (the engine of
``benchmarks/run.py peers`` and of ``headwater bench``); :func:`run_local`
measures Headwater alone, embedded and over TCP (``benchmarks/run.py tcp``,
``headwater bench --local``); :func:`write_markdown`
puts its tables into ``docs/benchmarks.md``.
"""

from __future__ import annotations

from ._driver import HeadwaterDriver as HeadwaterDriver
from ._local import run_local as run_local
from ._peers import TARGETS as TARGETS
from ._peers import Plan as Plan
from ._peers import Target as Target
from ._peers import find_bench_dir as find_bench_dir
from ._peers import headwater_server as headwater_server
from ._peers import machine_facts as machine_facts
from ._peers import plan_for as plan_for
from ._peers import run_peers as run_peers
from ._report import render_markdown as render_markdown
from ._report import write_markdown as write_markdown

__all__ = [
    "HeadwaterDriver",
    "run_peers",
    "run_local",
    "Plan",
    "plan_for",
    "Target",
    "TARGETS",
    "find_bench_dir",
    "headwater_server",
    "machine_facts",
    "render_markdown",
    "write_markdown",
]
