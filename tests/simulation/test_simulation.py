"""The deterministic simulation: fixed seeds keep I1-I5 and replay exactly;
a broker with a planted bug fails it (so the suite can fail)."""

from __future__ import annotations

import pytest

from headwater.broker._idempotence import Append, Duplicate, ProducerStates
from headwater.journal._async import AsyncLog
from headwater.testing import SimulationConfig, rerun_command, run_seed

SEEDS = range(12)
SMALL = SimulationConfig(rounds=3, events_per_producer=20)


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_keeps_invariants_and_replays(seed: int) -> None:
    """Each fixed seed passes the checker, and a rerun hashes the same trace."""
    first = run_seed(seed)
    assert first.ok, f"{first.report.summary()}\nrerun: {rerun_command(seed)}"
    assert first.report.acked_checked > 100
    assert sum(first.faults.values()) > 5
    second = run_seed(seed)
    assert first.trace_hash == second.trace_hash, f"nondeterministic; rerun: {rerun_command(seed)}"
    assert first.report == second.report


def test_a_broker_that_acks_before_fsync_loses_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Acks that do not wait for the fsync are caught: power loss loses acked events
    and hands their offsets out again (I1 and I2)."""

    async def no_wait(self: AsyncLog, end_offset: int, generation: int) -> None:
        return None

    monkeypatch.setattr(AsyncLog, "wait_durable", no_wait)
    reports = [run_seed(seed, SMALL).report for seed in range(3)]
    assert sum(r.lost for r in reports) > 0
    assert any("I2" in r.by_invariant() for r in reports)


def test_a_broker_without_idempotence_stores_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries after lost responses are stored twice when duplicates go undetected."""
    check = ProducerStates.check

    def forgetful(self: ProducerStates, *args: int) -> object:
        decision = check(self, *args)
        return Append() if isinstance(decision, Duplicate) else decision

    monkeypatch.setattr(ProducerStates, "check", forgetful)
    reports = [run_seed(seed, SMALL).report for seed in range(3)]
    assert sum(r.duplicates for r in reports) > 0


def test_rerun_command_names_the_seed() -> None:
    """A failing seed prints a command that reruns exactly that seed."""
    assert rerun_command(42).endswith("python -m headwater.testing.soak --seed 42")
