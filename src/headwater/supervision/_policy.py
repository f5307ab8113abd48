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
* *Restart intensity* bounds how often: if ``max_restarts`` restarts already
  happened within the last ``within`` seconds, one more is not allowed and the
  answer is :class:`Escalate`: the supervisor gives up and its own supervisor
  decides.
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

    At most ``max_restarts`` restarts within ``within`` seconds; one more and
    the supervisor gives up (escalates).
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
    """What :func:`decide` needs to know of one child: its name and restart type."""

    name: str
    restart: RestartType = "permanent"


@attrs.frozen
class Restart:
    """Restart after ``delay`` seconds: stop ``stop`` (reverse start order, the
    exited child excluded as it is already gone), then start ``start`` in order.
    ``history`` is the new list of restart times to keep."""

    stop: tuple[str, ...]
    start: tuple[str, ...]
    delay: float
    history: tuple[float, ...]


@attrs.frozen
class Escalate:
    """Give up: the restart intensity is exceeded. The supervisor stops all its
    children and fails; its own supervisor decides."""

    reason: str


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
    history: Sequence[float],
    now: float,
) -> Decision:
    """Decide what a supervisor does when child ``exited`` stops.

    ``children`` are the supervisor's children in start order, ``abnormal`` is
    true when the child raised, ``history`` holds the times of earlier restarts
    (any order; those older than ``policy.within`` are forgotten). Pure: the
    same arguments always give the same decision.
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

    horizon = now - policy.within
    recent = tuple(sorted(t for t in history if t > horizon))
    if len(recent) >= policy.max_restarts:
        return Escalate(
            f"child {exited!r} failed after {len(recent)} restart(s) within "
            f"{policy.within}s (max_restarts={policy.max_restarts})"
        )

    if policy.strategy == "one_for_one":
        affected = [child]
    elif policy.strategy == "one_for_all":
        affected = list(children)
    else:  # rest_for_one
        affected = list(children[index:])
    stop = tuple(c.name for c in reversed(affected) if c.name != exited)
    start = tuple(c.name for c in affected if c.name == exited or c.restart != "temporary")
    n = len(recent) + 1
    return Restart(stop=stop, start=start, delay=policy.backoff.delay(n), history=(*recent, now))
