"""Specifications of supervised children, and tree snapshots (no Trio here).

A :class:`ChildSpec` says how to start one worker (an actor or a task), a
:class:`SupervisorSpec` a supervisor with its policy and children; the runtime
in :mod:`headwater.actors` runs them. :class:`ActorSnapshot` is the live tree
as data.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from headwater._aio import unwrap_group as unwrap_group
from headwater._aio import unwrapping_groups as unwrapping_groups
from headwater._errors import ConfigError, InvalidArgument
from headwater.supervision._policy import (
    RESTART_TYPES,
    Backoff,
    RestartPolicy,
    RestartType,
    Strategy,
)

if TYPE_CHECKING:
    from headwater.actors._actor import Actor

__all__ = [
    "DEFAULT_MAILBOX_SIZE",
    "ActorSnapshot",
    "ChildCount",
    "ChildEntry",
    "ChildSpec",
    "GiveUp",
    "SupervisorSpec",
    "unwrap_group",
    "unwrapping_groups",
]

DEFAULT_MAILBOX_SIZE: Final = 64
"""Default mailbox capacity: small enough that a slow actor pushes back on its
senders quickly, large enough that bursts of ``tell`` do not block at once."""


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or "/" in name:
        raise InvalidArgument(f"child name {name!r} is invalid; give a non-empty str without '/'")
    return name


def _check_restart(restart: object) -> None:
    if restart not in RESTART_TYPES:
        raise ConfigError(f"restart={restart!r} is unknown; use one of {', '.join(RESTART_TYPES)}")


GiveUp = Literal["escalate", "fail"]
"""What a child's supervisor does when the child exhausts its restart
intensity: ``escalate`` (give up itself) or ``fail`` (park the child)."""


def _check_give_up(value: object) -> None:
    if value not in ("escalate", "fail"):
        raise ConfigError(f"on_give_up={value!r} is unknown; use 'escalate' or 'fail'")


def _check_shutdown(shutdown: object) -> None:
    if isinstance(shutdown, bool) or not isinstance(shutdown, int | float) or not shutdown >= 0:
        raise ConfigError(f"shutdown={shutdown!r} is invalid; give seconds >= 0 (or math.inf)")


def _as_tuple(children: Any) -> tuple[ChildSpec | SupervisorSpec, ...]:
    return tuple(children)


ActorFactory = Callable[[], "Actor"] | Callable[[], Awaitable[None]]


@attrs.frozen
class ChildSpec:
    """How to start (and restart) one worker child.

    ``factory`` is either a callable returning a new :class:`Actor` (an actor
    child, with a mailbox) or an ``async def`` function taking no arguments (a
    task child: it runs until it returns, a normal exit, or raises).
    ``shutdown`` is how long a graceful stop may take before the child is
    cancelled; ``mailbox_size`` bounds an actor's mailbox.

    ``on_give_up`` says what happens when this child's crash exceeds its
    supervisor's restart intensity: ``"escalate"`` (the default, Erlang's
    rule) makes the supervisor give up; ``"fail"`` parks the child in the
    final ``failed`` state instead, where every ``tell`` and ``ask`` to it
    raises its last error (a :class:`~headwater.HeadwaterError` as itself,
    anything else as :class:`~headwater.ActorFailed`) while its siblings run
    on. Such a child's intensity (the supervisor's ``max_restarts`` within
    ``within``) counts its own crashes only, and they do not count toward its
    siblings', as if it had a supervisor of its own.
    A broker partition whose files cannot be opened is parked this way.
    """

    name: str = attrs.field(validator=lambda _i, _a, v: _check_name(v))
    factory: ActorFactory
    restart: RestartType = attrs.field(
        default="permanent", validator=lambda _i, _a, v: _check_restart(v)
    )
    shutdown: float = attrs.field(default=5.0, validator=lambda _i, _a, v: _check_shutdown(v))
    mailbox_size: int = DEFAULT_MAILBOX_SIZE
    on_give_up: GiveUp = attrs.field(
        default="escalate", validator=lambda _i, _a, v: _check_give_up(v)
    )

    def __attrs_post_init__(self) -> None:
        if not callable(self.factory):
            raise ConfigError(f"factory={self.factory!r} of child {self.name!r} is not callable")
        size = self.mailbox_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(f"mailbox_size={size!r} of child {self.name!r}; give an int >= 0")

    @property
    def kind(self) -> Literal["actor", "task"]:
        """``"task"`` for an ``async def`` factory, else ``"actor"``."""
        return "task" if inspect.iscoroutinefunction(self.factory) else "actor"


@attrs.frozen
class SupervisorSpec:
    """A supervisor child: a policy and its own ordered children.

    ``backoff`` is the base delay in seconds (or a :class:`Backoff`); restart
    delays double up to ``backoff_max``.
    """

    name: str = attrs.field(validator=lambda _i, _a, v: _check_name(v))
    children: tuple[ChildSpec | SupervisorSpec, ...] = attrs.field(default=(), converter=_as_tuple)
    strategy: Strategy = "one_for_one"
    max_restarts: int = 3
    within: float = 5.0
    backoff: float = 0.0
    backoff_max: float = 30.0
    restart: RestartType = attrs.field(
        default="permanent", validator=lambda _i, _a, v: _check_restart(v)
    )
    shutdown: float = attrs.field(default=math.inf, validator=lambda _i, _a, v: _check_shutdown(v))

    def __attrs_post_init__(self) -> None:
        self.policy  # noqa: B018 -- validates the policy fields now, not at first crash
        names = [c.name for c in self.children]
        if len(names) != len(set(names)):
            raise ConfigError(f"supervisor {self.name!r} has duplicate child names: {names}")

    @property
    def policy(self) -> RestartPolicy:
        """The :class:`RestartPolicy` these fields describe."""
        return RestartPolicy(
            strategy=self.strategy,
            max_restarts=self.max_restarts,
            within=self.within,
            backoff=Backoff(self.backoff, self.backoff_max),
        )


@attrs.frozen
class ActorSnapshot:
    """One node of the live supervision tree, as data.

    Besides state and restarts, actors carry their mailbox figures:
    ``mailbox_depth`` (messages waiting now), ``mailbox_high_water`` (the most
    ever waiting at once, over all incarnations), ``mailbox_size`` (its
    capacity; ``None`` for tasks and supervisors) and ``handled`` (messages
    handled, over all incarnations).
    """

    path: str
    kind: str
    state: str
    restarts: int
    incarnation: int
    last_failure: str | None
    children: tuple[ActorSnapshot, ...] = ()
    mailbox_depth: int = 0
    mailbox_high_water: int = 0
    mailbox_size: int | None = None
    handled: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain dicts and lists (JSON/CBOR friendly)."""
        return {
            "path": self.path,
            "kind": self.kind,
            "state": self.state,
            "restarts": self.restarts,
            "incarnation": self.incarnation,
            "last_failure": self.last_failure,
            "mailbox_depth": self.mailbox_depth,
            "mailbox_high_water": self.mailbox_high_water,
            "mailbox_size": self.mailbox_size,
            "handled": self.handled,
            "children": [c.as_dict() for c in self.children],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActorSnapshot:
        """Rebuild a snapshot from :meth:`as_dict` output (the mailbox figures
        default to zero when an older peer did not send them)."""
        return cls(
            path=data["path"],
            kind=data["kind"],
            state=data["state"],
            restarts=data["restarts"],
            incarnation=data["incarnation"],
            last_failure=data["last_failure"],
            children=tuple(cls.from_dict(c) for c in data["children"]),
            mailbox_depth=int(data.get("mailbox_depth", 0)),
            mailbox_high_water=int(data.get("mailbox_high_water", 0)),
            mailbox_size=data.get("mailbox_size"),
            handled=int(data.get("handled", 0)),
        )

    def walk(self) -> list[ActorSnapshot]:
        """This node and every node below it, depth first."""
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out

    def render(self, *, stats: bool = True) -> str:
        """Draw the tree as text, one node per line. ``stats=False`` leaves out
        the mailbox figures (depth, high-water mark, messages handled), which
        vary from run to run with timing."""
        lines: list[str] = []

        def label(node: ActorSnapshot) -> str:
            name = node.path.rsplit("/", 1)[-1] or node.path
            text = f"{name} [{node.kind}] {node.state}"
            if stats and node.kind == "actor" and node.mailbox_size is not None:
                text += (
                    f" mailbox={node.mailbox_depth}/{node.mailbox_size}"
                    f" hw={node.mailbox_high_water} handled={node.handled}"
                )
            if node.restarts:
                text += f" restarts={node.restarts}"
            if node.last_failure:
                text += f" last_failure={node.last_failure}"
            return text

        def visit(node: ActorSnapshot, prefix: str, last: bool, top: bool) -> None:
            if top:
                lines.append(label(node))
                child_prefix = ""
            else:
                lines.append(prefix + ("└── " if last else "├── ") + label(node))
                child_prefix = prefix + ("    " if last else "│   ")
            for i, child in enumerate(node.children):
                visit(child, child_prefix, i == len(node.children) - 1, False)

        visit(self, "", True, True)
        return "\n".join(lines)


@attrs.frozen
class ChildEntry:
    """One child of a supervisor, as ``ActorSystem.which_children`` lists it
    (OTP's ``which_children``): its name, path, kind (``"actor"``, ``"task"``
    or ``"supervisor"``), cell state, restart type and ref."""

    name: str
    path: str
    kind: str
    state: str
    restart: str
    ref: Any = attrs.field(eq=False, repr=False)


@attrs.frozen
class ChildCount:
    """OTP's ``count_children``: ``specs`` children in all, ``active`` of them
    running, ``supervisors`` and ``workers`` (actors and tasks) among them."""

    specs: int
    active: int
    supervisors: int
    workers: int
