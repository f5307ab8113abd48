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
    Crash,
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
    assert Restart(stop=stop, start=start, delay=0.0, history=(Crash(exited, 0.0),)) == d


def test_intensity_window_forgets_old_restarts() -> None:
    """Restarts older than `within` do not count; at the limit it escalates."""
    policy = RestartPolicy(max_restarts=2, within=10.0)
    kids = [ChildInfo("a")]
    old = (Crash("a", 1.0), Crash("a", 2.0))
    assert isinstance(decide(policy, kids, "a", abnormal=True, history=old, now=5.0), Escalate)
    d = decide(policy, kids, "a", abnormal=True, history=old, now=11.5)
    assert isinstance(d, Restart)
    assert (Crash("a", 2.0), Crash("a", 11.5)) == d.history
    assert isinstance(
        decide(RestartPolicy(max_restarts=0), kids, "a", abnormal=True, history=(), now=0), Escalate
    )


def test_backoff_time_is_not_running_time() -> None:
    """DECISIONS #16: backoff does not count toward ``within``. With a backoff
    (1 s, doubling) longer than within/max_restarts (1 s / 3), a child that
    crashes at every start gives up at its 4th crash, at t=7; counted on the
    wall clock the window never filled and it restarted for ever."""
    policy = RestartPolicy(max_restarts=3, within=1.0, backoff=Backoff(1.0, 30.0))
    kids = [ChildInfo("p")]
    history: tuple[Crash, ...] = ()
    now = 0.0
    decisions = []
    while True:
        d = decide(policy, kids, "p", abnormal=True, history=history, now=now)
        decisions.append(d)
        if not isinstance(d, Restart):
            break
        history = d.history
        now += d.delay  # restarted after the backoff, crashes at once
        assert now < 100.0, "never gave up"
    assert [1.0, 2.0, 4.0] == [d.delay for d in decisions[:-1]]
    assert 7.0 == now
    assert (
        Escalate(
            "child 'p' failed after 3 restart(s) of its own (3 in this supervisor within "
            "1.0s of running time, max_restarts=3)",
            child="p",
            restarts=3,
            total=3,
        )
        == decisions[-1]
    )


def test_running_time_still_forgets_old_crashes() -> None:
    """Time a child ran counts: crashes further back than ``within`` seconds of
    running time are forgotten, however long the backoffs between them."""
    policy = RestartPolicy(max_restarts=1, within=5.0, backoff=Backoff(10.0, 10.0))
    kids = [ChildInfo("p")]
    first = decide(policy, kids, "p", abnormal=True, history=(), now=0.0)
    assert isinstance(first, Restart)
    assert 10.0 == first.delay
    # Restarted at 10, ran 4 s: 4 s of running time, still inside the window.
    assert isinstance(
        decide(policy, kids, "p", abnormal=True, history=first.history, now=14.0), Escalate
    )
    # Ran 6 s: the first crash is forgotten.
    assert isinstance(
        decide(policy, kids, "p", abnormal=True, history=first.history, now=16.0), Restart
    )


def test_escalate_names_the_crashing_child_and_its_own_restarts() -> None:
    """Point 4: the give-up names the child whose crash exceeded the intensity
    and counts its own restarts, not every restart of the supervisor."""
    policy = RestartPolicy(strategy="one_for_all", max_restarts=3, within=10.0)
    kids = [ChildInfo("a"), ChildInfo("b"), ChildInfo("c")]
    history = (Crash("a", 1.0), Crash("c", 2.0), Crash("c", 3.0))
    d = decide(policy, kids, "c", abnormal=True, history=history, now=4.0)
    assert isinstance(d, Escalate)
    assert ("c", 2, 3) == (d.child, d.restarts, d.total)
    assert d.reason.startswith("child 'c' failed after 2 restart(s) of its own")


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
    history: tuple[Crash, ...] = ()
    now = 0.0
    for name, abnormal, step in crashes:
        # Crashes come after the previous restart's backoff.
        now += step + (history[-1].delay if history else 0.0)
        d = decide(policy, CHILDREN, name, abnormal=abnormal, history=history, now=now)
        assert d == decide(policy, CHILDREN, name, abnormal=abnormal, history=history, now=now)
        restart_type = next(c.restart for c in CHILDREN if c.name == name)
        wanted = restart_type == "permanent" or (restart_type == "transient" and abnormal)
        if not wanted:
            assert isinstance(d, Ignore)
            continue
        # Running age: time since the crash minus the backoffs since it.
        recent = []
        paused = 0.0
        for h in reversed(history):
            paused += h.delay
            if now - h.at - paused < within:
                recent.append(h)
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
