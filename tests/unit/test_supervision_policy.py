"""The pure restart decision, exhaustively and with hypothesis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import ConfigError
from headwater.supervision import (
    Backoff,
    ChildInfo,
    Escalate,
    Ignore,
    Restart,
    RestartPolicy,
    decide,
)

CHILDREN = (ChildInfo("a"), ChildInfo("b", "transient"), ChildInfo("c", "temporary"))
NAMES = ["a", "b", "c"]


def test_backoff_formula() -> None:
    """delay = min(base * 2**(n-1), max); no base means no delay."""
    b = Backoff(0.1, 1.0)
    assert [0.1, 0.2, 0.4, 0.8, 1.0, 1.0] == [b.delay(n) for n in range(1, 7)]
    assert 0.0 == Backoff().delay(5)
    assert 1.0 == b.delay(10_000)


@pytest.mark.parametrize(
    ("restart", "abnormal", "restarts"),
    [
        (r, ab, r == "permanent" or (r == "transient" and ab))
        for r, ab in itertools.product(["permanent", "transient", "temporary"], [True, False])
    ],
)
def test_restart_types(restart: str, abnormal: bool, restarts: bool) -> None:
    """permanent always, transient only abnormal, temporary never."""
    children = [ChildInfo("x", restart)]  # type: ignore[arg-type]
    d = decide(RestartPolicy(), children, "x", abnormal=abnormal, history=(), now=0.0)
    assert restarts == isinstance(d, Restart)
    if not restarts:
        assert isinstance(d, Ignore)


@pytest.mark.parametrize(
    ("strategy", "exited", "stop", "start"),
    [
        ("one_for_one", "a", (), ("a",)),
        ("one_for_one", "b", (), ("b",)),
        ("one_for_all", "a", ("c", "b"), ("a", "b")),
        ("one_for_all", "b", ("c", "a"), ("a", "b")),
        ("rest_for_one", "a", ("c", "b"), ("a", "b")),
        ("rest_for_one", "b", ("c",), ("b",)),
    ],
)
def test_strategy_sets(
    strategy: str, exited: str, stop: tuple[str, ...], start: tuple[str, ...]
) -> None:
    """Siblings stop in reverse start order; temporary siblings are not restarted."""
    policy = RestartPolicy(strategy=strategy)  # type: ignore[arg-type]
    d = decide(policy, CHILDREN, exited, abnormal=True, history=(), now=0.0)
    assert Restart(stop=stop, start=start, delay=0.0, history=(0.0,)) == d


def test_intensity_window_forgets_old_restarts() -> None:
    """Restarts older than `within` do not count; at the limit it escalates."""
    policy = RestartPolicy(max_restarts=2, within=10.0)
    kids = [ChildInfo("a")]
    assert isinstance(
        decide(policy, kids, "a", abnormal=True, history=(1.0, 2.0), now=5.0), Escalate
    )
    d = decide(policy, kids, "a", abnormal=True, history=(1.0, 2.0), now=11.5)
    assert isinstance(d, Restart)
    assert (2.0, 11.5) == d.history
    assert isinstance(
        decide(RestartPolicy(max_restarts=0), kids, "a", abnormal=True, history=(), now=0), Escalate
    )


def test_bad_policy_and_unknown_child() -> None:
    """Invalid settings and an unknown child name are ConfigErrors naming the value."""
    with pytest.raises(ConfigError, match="strategy"):
        RestartPolicy(strategy="all_for_none")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_restarts"):
        RestartPolicy(max_restarts=-1)
    with pytest.raises(ConfigError, match="within"):
        RestartPolicy(within=float("nan"))
    with pytest.raises(ConfigError, match="'zz'"):
        decide(RestartPolicy(), CHILDREN, "zz", abnormal=True, history=(), now=0.0)


@given(
    strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
    max_restarts=st.integers(0, 6),
    within=st.floats(0.0, 100.0),
    base=st.floats(0.0, 5.0),
    crashes=st.lists(
        st.tuples(st.sampled_from(NAMES), st.booleans(), st.floats(0.0, 50.0)), max_size=30
    ),
)
def test_properties_over_crash_sequences(
    strategy: str,
    max_restarts: int,
    within: float,
    base: float,
    crashes: list[tuple[str, bool, float]],
) -> None:
    """Over any crash sequence: the exited child is restarted iff its type says so and
    intensity allows; history never exceeds max_restarts within the window; delays
    follow the backoff formula; the restart set matches the strategy."""
    policy = RestartPolicy(strategy, max_restarts, within, Backoff(base, 10.0))  # type: ignore[arg-type]
    history: tuple[float, ...] = ()
    now = 0.0
    for name, abnormal, step in crashes:
        now += step
        d = decide(policy, CHILDREN, name, abnormal=abnormal, history=history, now=now)
        assert d == decide(policy, CHILDREN, name, abnormal=abnormal, history=history, now=now)
        restart_type = next(c.restart for c in CHILDREN if c.name == name)
        wanted = restart_type == "permanent" or (restart_type == "transient" and abnormal)
        if not wanted:
            assert isinstance(d, Ignore)
            continue
        recent = [t for t in history if t > now - within]
        if len(recent) >= max_restarts:
            assert isinstance(d, Escalate)
            continue
        assert isinstance(d, Restart)
        assert name in d.start
        assert name not in d.stop
        assert len(d.history) <= max_restarts
        assert pytest.approx(Backoff(base, 10.0).delay(len(d.history))) == d.delay
        index = NAMES.index(name)
        if strategy == "one_for_one":
            assert (name,) == d.start
        elif strategy == "one_for_all":
            assert set(NAMES) - {name} == set(d.stop)
        else:
            assert set(NAMES[index + 1 :]) == set(d.stop)
        assert "c" not in d.start or name == "c"
        history = d.history
