"""The processing examples build their jobs and run their demos on the
TestDriver (``python examples/X.py`` runs the same demo; tests/crash runs
them as processes)."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

import pytest
import trio

from headwater.processing import Job, TestDriver

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ["word_count", "page_views", "threshold_alert", "order_enrichment"]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", EXAMPLES)
async def test_example_defines_one_job_and_its_demo_passes(
    name: str, autojump_clock: trio.abc.Clock
) -> None:
    """Exactly one Job at module level; the demo's own checks pass."""
    module = load(name)
    jobs = [v for v in vars(module).values() if isinstance(v, Job)]
    assert 1 == len(jobs)
    await module.demo()


async def test_word_count_is_exactly_the_issues_shape() -> None:
    """text (UTF-8 lines) -> word-counts: key = word, value = decimal count."""
    job = load("word_count").job
    topo = job.topology({"text": 4})
    assert (("text",), ("word-counts",)) == (topo.source_topics, topo.sink_topics)
    assert "exactly_once" == topo.processing
    driver = TestDriver(job, {"text": 4})
    lines = ["a b a", "b c", "a"] * 50
    for i, line in enumerate(lines):
        await driver.pipe("text", line, key=str(i))
    latest = dict(driver.read("word-counts", key=str, value=str))
    assert {"a": "150", "b": "100", "c": "50"} == latest
