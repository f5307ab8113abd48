"""The network-fault checker judges a history: loss, duplicate stored copies,
offset gaps, undelivered events and commits going backwards are all counted."""

from __future__ import annotations

from headwater.client import Event
from headwater.testing._netchaos import RoundResult, check_stored, percentile


def ev(partition: int, offset: int, value: str) -> Event:
    return Event("t", partition, offset, 0, None, value)


def result(acked: list[Event], delivered: set[tuple[int, int]], commits=()) -> RoundResult:  # type: ignore[no-untyped-def]
    return RoundResult("reset", tuple(acked), frozenset(delivered), 0, 0.1, tuple(commits))


def test_a_clean_history_passes() -> None:
    """Every acked event stored once at its offset and delivered: all zero."""
    stored = [ev(0, 0, "a"), ev(0, 1, "b"), ev(1, 0, "c")]
    check = check_stored(result(stored, {(0, 0), (0, 1), (1, 0)}, [(0, 1), (0, 2)]), stored, [2, 1])
    assert check.ok
    assert (3, 3, 0, 0, 0, 0, 0) == (
        check.acked, check.stored, check.lost, check.duplicates, check.gaps,
        check.undelivered, check.commits_backwards,
    )  # fmt: skip


def test_each_violation_is_counted() -> None:
    """A lost event, a second stored copy, a gap, an undelivered event and a
    commit that went backwards each show up in their own count."""
    acked = [ev(0, 0, "a"), ev(0, 1, "b"), ev(1, 0, "c")]
    stored = [ev(0, 0, "a"), ev(0, 1, "x"), ev(0, 2, "a"), ev(1, 1, "c")]
    check = check_stored(result(acked, {(0, 0)}, [(0, 3), (0, 1)]), stored, [3, 2])
    assert not check.ok
    assert 2 == check.lost  # "b" overwritten by "x"; "c" not at offset 0
    assert 1 == check.duplicates  # "a" stored twice
    assert 1 == check.gaps  # partition 1 offset 0 missing
    assert 2 == check.undelivered
    assert 1 == check.commits_backwards


def test_percentile_by_nearest_rank() -> None:
    """p50 and p99 of a small sample by nearest rank."""
    values = [float(v) for v in range(1, 101)]
    assert (50.0, 99.0, 100.0) == (
        percentile(values, 0.5),
        percentile(values, 0.99),
        percentile(values, 1.0),
    )
