"""The supervisor's decision, as plain code with no Trio in it.

Theory of operation
-------------------
When a child of a supervisor exits, the supervisor asks :func:`decide` what
to do. The answer depends only on data: the supervisor's policy (strategy,
restart intensity, backoff), the ordered list of children with their restart
types, which child exited and how, the times of recent restarts, and ``now``.

* The child's *restart type* says whether this exit calls for a restart at all:
  ``permanent`` children are always restarted, ``transient`` ones only after an
  abnormal exit (an exception), ``temporary`` ones never. No restart means
  :class:`Ignore`: the child is removed from the supervisor.
* *Restart intensity* bounds how often: if ``max_restarts`` crashes were
  already restarted within the last ``within`` seconds of *running time*, one
  more is not allowed and the answer is :class:`Escalate`: the supervisor gives
  up and its own supervisor decides (or, for a child whose spec says
  ``on_give_up="fail"``, the child is parked as failed). Running time leaves
  out the time spent in backoff: each :class:`Crash` in the history carries the
  delay that followed it, and a crash's age is the time since it minus every
  backoff since it. So a child that crashes at every start gives up after
  ``max_restarts`` restarts whatever its backoff (counting wall-clock time, a
  backoff longer than ``within / max_restarts`` kept the window from ever
  filling: a damaged partition restarted 86 times). An *isolated* child
  (``on_give_up="fail"``) has an intensity of its own: only its own crashes
  count toward it, and they do not count toward its siblings'.
* The *strategy* says which children restart with it: ``one_for_one`` only the
  child, ``one_for_all`` every child, ``rest_for_one`` the child and every
  child started after it. Siblings caught in the set are stopped first (in
  reverse start order) and started again (in start order); temporary siblings
  are stopped but not started again.
* *Backoff* delays the restart: ``min(base * 2 ** (n - 1), max)`` seconds where
  ``n`` counts the restarts within the window, this one included.

Everything here is deterministic, so it is tested exhaustively without an event
loop (``tests/unit/test_supervision_policy.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import attrs

from headwater._errors import ConfigError

__all__ = [
    "RESTART_TYPES",
    "STRATEGIES",
    "Backoff",
    "ChildInfo",
    "Crash",
    "Decision",
    "Escalate",
    "Ignore",
    "Restart",
    "RestartPolicy",
    "RestartType",
    "Strategy",
    "decide",
]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType = Literal["permanent", "transient", "temporary"]

STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all", "rest_for_one")
RESTART_TYPES: tuple[str, ...] = ("permanent", "transient", "temporary")


def _non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{name}={value!r} is invalid; give a number >= 0")


@attrs.frozen
class Backoff:
    """Delay between restarts: ``min(base * 2 ** (n - 1), max)`` seconds, where
    ``n`` is the number of restarts within the intensity window (this one
    included). ``Backoff()`` means no delay."""

    base: float = 0.0
    max: float = 30.0

    def __attrs_post_init__(self) -> None:
        _non_negative("backoff base", self.base)
        _non_negative("backoff max", self.max)

    def delay(self, n: int) -> float:
        """The delay before restart number ``n`` (1-based) within the window."""
        if self.base == 0 or n < 1:
            return 0.0
        # Cap the exponent: 2 ** 1000 overflows float multiplication.
        return float(min(self.base * 2.0 ** min(n - 1, 60), self.max))


@attrs.frozen
class RestartPolicy:
    """A supervisor's restart policy: strategy, intensity and backoff.

    At most ``max_restarts`` restarts within ``within`` seconds of running
    time (time spent in backoff is left out); one more crash and the
    supervisor gives up (escalates).
    """

    strategy: Strategy = "one_for_one"
    max_restarts: int = 3
    within: float = 5.0
    backoff: Backoff = attrs.field(factory=Backoff)

    def __attrs_post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"strategy={self.strategy!r} is unknown; use one of {', '.join(STRATEGIES)}"
            )
        if (
            isinstance(self.max_restarts, bool)
            or not isinstance(self.max_restarts, int)
            or self.max_restarts < 0
        ):
            raise ConfigError(f"max_restarts={self.max_restarts!r} is invalid; give an int >= 0")
        _non_negative("within", self.within)
        if not isinstance(self.backoff, Backoff):
            raise ConfigError(f"backoff={self.backoff!r} is invalid; give a Backoff")


@attrs.frozen
class ChildInfo:
    """What :func:`decide` needs to know of one child: its name, restart type,
    and whether it is ``isolated`` (``on_give_up="fail"``): such a child's
    intensity counts its own crashes only, and its crashes do not count
    toward its siblings'."""

    name: str
    restart: RestartType = "permanent"
    isolated: bool = False


@attrs.frozen
class Crash:
    """One crash a supervisor restarted after: the child, when it crashed (the
    supervisor's clock), and the backoff delay that followed it."""

    child: str
    at: float
    delay: float = 0.0


@attrs.frozen
class Restart:
    """Restart after ``delay`` seconds: stop ``stop`` (reverse start order, the
    exited child excluded as it is already gone), then start ``start`` in order.
    ``history`` is the new list of crashes to keep (this one included)."""

    stop: tuple[str, ...]
    start: tuple[str, ...]
    delay: float
    history: tuple[Crash, ...]


@attrs.frozen
class Escalate:
    """Give up: the restart intensity is exceeded. ``child`` is the child whose
    crash exceeded it, ``restarts`` how many of the counted restarts were for
    that child's own crashes, ``total`` how many there were in all. The
    supervisor stops all its children and fails (its own supervisor decides),
    unless the child's spec parks it as failed."""

    reason: str
    child: str = ""
    restarts: int = 0
    total: int = 0


@attrs.frozen
class Ignore:
    """Do not restart: the child is removed from the supervisor."""

    reason: str


Decision = Restart | Escalate | Ignore


def _needs_restart(restart: RestartType, abnormal: bool) -> bool:
    if restart == "permanent":
        return True
    if restart == "transient":
        return abnormal
    return False


def decide(
    policy: RestartPolicy,
    children: Sequence[ChildInfo],
    exited: str,
    *,
    abnormal: bool,
    history: Sequence[Crash],
    now: float,
) -> Decision:
    """Decide what a supervisor does when child ``exited`` stops at time ``now``.

    ``children`` are the supervisor's children in start order, ``abnormal`` is
    true when the child raised, ``history`` holds the earlier crashes that were
    restarted (any order). Those older than ``policy.within`` seconds of
    running time (backoff delays left out) are forgotten. Pure: the same
    arguments always give the same decision.
    """
    names = [c.name for c in children]
    try:
        index = names.index(exited)
    except ValueError:
        raise ConfigError(f"child {exited!r} is not among the children {names}") from None
    child = children[index]
    if not _needs_restart(child.restart, abnormal):
        how = "abnormal" if abnormal else "normal"
        return Ignore(f"{child.restart} child {exited!r} exited ({how}); not restarted")

    recent = _recent(history, now, policy.within)
    if child.isolated:
        counted = [c for c in recent if c.child == exited]
        scope = "for it alone"
    else:
        isolated = {c.name for c in children if c.isolated}
        counted = [c for c in recent if c.child not in isolated]
        scope = "in this supervisor"
    if len(counted) >= policy.max_restarts:
        own = sum(1 for c in counted if c.child == exited)
        return Escalate(
            f"child {exited!r} failed after {own} restart(s) of its own "
            f"({len(counted)} {scope} within {policy.within}s of running time, "
            f"max_restarts={policy.max_restarts})",
            child=exited,
            restarts=own,
            total=len(counted),
        )

    if policy.strategy == "one_for_one":
        affected = [child]
    elif policy.strategy == "one_for_all":
        affected = list(children)
    else:  # rest_for_one
        affected = list(children[index:])
    stop = tuple(c.name for c in reversed(affected) if c.name != exited)
    start = tuple(c.name for c in affected if c.name == exited or c.restart != "temporary")
    n = len(counted) + 1
    delay = policy.backoff.delay(n)
    return Restart(
        stop=stop, start=start, delay=delay, history=(*recent, Crash(exited, now, delay))
    )


def _recent(history: Sequence[Crash], now: float, within: float) -> tuple[Crash, ...]:
    """The crashes less than ``within`` seconds of running time before ``now``.

    A crash's running age is ``now - at`` minus the backoff delays that
    followed it and every later crash (they ran one after the other, so all
    of them lie between it and ``now``). Ages only grow going back in time,
    so the scan stops at the first crash that is too old.
    """
    kept: list[Crash] = []
    paused = 0.0
    for crash in sorted(history, key=lambda c: c.at, reverse=True):
        paused += crash.delay
        if now - crash.at - paused >= within:
            break
        kept.append(crash)
    kept.reverse()
    return tuple(kept)
