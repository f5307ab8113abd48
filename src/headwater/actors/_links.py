"""Links between actor incarnations (Erlang's ``link/1`` and ``trap_exit``).

Theory of operation
-------------------
A link joins two *incarnations* (Erlang's processes), not two cells: when
either incarnation ends, the other gets an *exit signal* with a reason:

* ``"normal"`` -- it stopped gracefully or returned (``ctx.stop()``, a
  supervisor stopping it, its system closing);
* ``"failed"`` -- it raised (``detail`` names the error);
* ``"killed"`` -- it was killed on purpose (``system.kill``,
  ``headwater actors kill``);
* ``"unreachable"`` -- (remote refs) the connection to its process was lost.

What the receiver does with a signal is OTP's table:

================  ==========================  ==========================
signal reason     receiver traps exits        receiver does not trap
================  ==========================  ==========================
``normal``        gets ``Exit(..., normal)``  nothing happens
anything else     gets ``Exit(...)``          it fails too (its supervisor
                                              sees :class:`LinkedExit`)
================  ==========================  ==========================

A link is removed when either side ends (the signal consumes it) or by
``ctx.unlink``. A restarted actor starts unlinked: link again in
``started()``, as an Erlang worker does in ``init/1``. Remote links are a
long-poll ``link`` request on the far system (answered when the far
incarnation ends) plus an ``exit`` request sent there when ours fails, so
both directions hold across processes; a lost connection is an exit with
reason ``"unreachable"``.

This module holds the data and the bookkeeping (no Trio calls): the runtime
decides when an incarnation ends and performs the deliveries it is asked
for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs

if TYPE_CHECKING:
    from headwater.actors._actor import ActorRef

__all__ = ["EXIT_REASONS", "Exit", "ExitReason", "Proc"]

ExitReason = Literal["normal", "failed", "killed", "unreachable"]
EXIT_REASONS: tuple[ExitReason, ...] = ("normal", "failed", "killed", "unreachable")


@attrs.frozen
class Exit:
    """An exit signal delivered as a message to an actor that traps exits.

    ``ref`` is the linked actor's ref, ``path`` its path, ``reason`` one of
    ``"normal"``, ``"failed"``, ``"killed"``, ``"unreachable"`` and
    ``detail`` a human explanation (the error, the lost connection).
    ``ref`` is ``None`` when the signal came from an actor in another
    process that linked to this one (``path`` is then its URL).
    """

    ref: ActorRef | None = attrs.field(eq=False, repr=False)
    path: str
    reason: ExitReason
    detail: str = ""


ExitWatcher = Callable[[ExitReason, str], None]


class Proc:
    """One running incarnation as the link machinery sees it (private).

    ``signal(exit)`` is how the runtime hands this incarnation an exit
    signal: it either queues an :class:`Exit` message (trapping) or crashes
    the incarnation. ``peers`` are the local incarnations linked to this one;
    ``watchers`` are one-shot callbacks (remote links, far ``link`` polls)
    told when it ends.
    """

    __slots__ = ("_crash", "_deliver", "alive", "path", "peers", "ref", "trap_exits", "watchers")

    def __init__(
        self,
        path: str,
        ref: ActorRef | None,
        deliver: Callable[[Exit], None],
        crash: Callable[[Exit], None],
    ) -> None:
        self.path = path
        self.ref = ref
        self._deliver = deliver
        self._crash = crash
        self.alive = True
        self.trap_exits = False
        self.peers: set[Proc] = set()
        self.watchers: set[Any] = set()

    def __repr__(self) -> str:
        return f"<Proc {self.path} {'alive' if self.alive else 'ended'}>"

    def link(self, other: Proc) -> None:
        """Link two live incarnations (idempotent; linking to oneself does nothing)."""
        if other is self:
            return
        self.peers.add(other)
        other.peers.add(self)

    def unlink(self, other: Proc) -> None:
        """Remove the link, if any, in both directions."""
        self.peers.discard(other)
        other.peers.discard(self)

    def signal(self, exit: Exit) -> None:
        """Receive an exit signal from a linked incarnation (OTP's table)."""
        if not self.alive:
            return
        if self.trap_exits:
            self._deliver(exit)
        elif exit.reason != "normal":
            self._crash(exit)

    def end(self, reason: ExitReason, detail: str) -> None:
        """This incarnation ended: signal every peer and watcher, once."""
        if not self.alive:
            return
        self.alive = False
        peers, self.peers = self.peers, set()
        exit = Exit(self.ref, self.path, reason, detail)
        for peer in peers:
            peer.peers.discard(self)
            peer.signal(exit)
        watchers, self.watchers = self.watchers, set()
        for watcher in watchers:
            watcher(reason, detail)
