"""Actors, their context, and references to them.

Theory of operation
-------------------
An :class:`Actor` is a Trio task that takes messages one at a time from a
bounded mailbox (a Trio memory channel) and handles them. Nobody holds an actor
directly: everyone holds an :class:`ActorRef`, which the runtime hands out.

A ref does not point at one incarnation of an actor but at its *cell*: the
slot the actor occupies in its supervisor. When the actor crashes and is
restarted, the cell gets a new mailbox and the same ref reaches the new
incarnation. While the cell is restarting (backoff included), ``tell`` and
``ask`` wait for it, bounded by the caller's timeout; messages still in the old
mailbox are dropped and their ``ask`` callers get :class:`ActorRestarted`. A
cell that is stopped for good makes every ref to it raise :class:`ActorStopped`
at once.

``handle`` errors: an exception raised by :meth:`Actor.handle` for an ``ask``
goes back to the caller (as itself when it is a :class:`HeadwaterError`,
otherwise as :class:`ActorFailed` carrying the original type name and message).
A :class:`UsageError` is the caller's fault, so the actor keeps running; any
other exception also crashes the actor, and its supervisor decides what next.

:class:`ActorRef` is an abstract interface: a remote ref (over TCP) implements
the same methods with the same errors.
"""

from __future__ import annotations

import abc
import copy
import math
import reprlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs
import outcome
import trio

from headwater._errors import (
    ActorFailed,
    ActorStopped,
    ClosedError,
    HeadwaterError,
    HeadwaterTimeoutError,
    InvalidArgument,
    MailboxFull,
    UsageError,
)
from headwater.actors._links import Proc
from headwater.actors._monitor import Monitor
from headwater.actors._timers import Timer, check_delay
from headwater.supervision._specs import DEFAULT_MAILBOX_SIZE

if TYPE_CHECKING:
    from headwater.actors._system import ActorSystem

__all__ = [
    "DEFAULT_MAILBOX_SIZE",
    "Actor",
    "ActorContext",
    "ActorRef",
    "CellState",
    "LocalActorRef",
]

INSPECT: Any = object()
"""The message of an ``inspect`` envelope: the actor loop answers it with
``actor.inspect()`` instead of calling ``handle``."""


CellState = Literal["starting", "running", "restarting", "stopping", "stopped", "failed"]


def as_failure(exc: BaseException) -> HeadwaterError:
    """The error an ``ask`` caller sees for ``exc`` raised by a handler."""
    if isinstance(exc, HeadwaterError):
        return exc
    message = str(exc)
    return ActorFailed(
        f"the actor raised {type(exc).__name__}: {message}",
        error_type=type(exc).__name__,
        error_message=message,
    )


class _Reply:
    """A one-shot slot for the answer to one ``ask``."""

    __slots__ = ("_event", "_outcome")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._outcome: outcome.Outcome[Any] | None = None

    def set(self, value: Any) -> None:
        if self._outcome is None:
            self._outcome = outcome.Value(value)
            self._event.set()

    def fail(self, exc: BaseException) -> None:
        if self._outcome is None:
            self._outcome = outcome.Error(exc)
            self._event.set()

    async def wait(self) -> Any:
        await self._event.wait()
        assert self._outcome is not None
        return self._outcome.unwrap()


class _Ask:
    """Mailbox envelope of an ``ask``: the message and where to put the answer."""

    __slots__ = ("message", "reply")

    def __init__(self, message: Any, reply: _Reply) -> None:
        self.message = message
        self.reply = reply


@attrs.define(eq=False)
class Cell:
    """The runtime's slot for one child of a supervisor (private to the runtime).

    It outlives incarnations: refs point here. ``mailbox`` is the send side of
    the current incarnation's mailbox, or ``None`` while no incarnation accepts
    messages.
    """

    path: str
    name: str
    kind: Literal["actor", "task", "supervisor"]
    system: ActorSystem
    state: CellState = "starting"
    mailbox: trio.MemorySendChannel[Any] | None = None
    ready: trio.Event = attrs.field(factory=trio.Event)
    incarnation: int = 0
    restarts: int = 0
    last_failure: str | None = None
    failure: BaseException | None = None  # the error a parked ("failed") cell answers with
    ref: LocalActorRef | None = None
    monitors: set[Monitor] = attrs.field(factory=set)
    handled: int = 0
    high_water: int = 0
    mailbox_size: int | None = None
    proc: Proc | None = None
    last_exit: tuple[int, str, str] | None = None  # (incarnation, reason, detail)

    def set_accepting(self, mailbox: trio.MemorySendChannel[Any]) -> None:
        self.mailbox = mailbox
        self.state = "running"
        self.ready.set()

    def set_waiting(self, state: CellState) -> None:
        """Stop accepting messages; senders wait for :meth:`set_accepting`."""
        self.mailbox = None
        self.state = state
        self.failure = None
        if self.ready.is_set():
            self.ready = trio.Event()

    def set_gone(self, state: CellState) -> None:
        """Stopped for good: wake every waiting sender so it raises."""
        self.mailbox = None
        self.state = state
        self.failure = None
        self.ready.set()
        monitors, self.monitors = self.monitors, set()
        reason: Literal["stopped", "failed"] = "failed" if state == "failed" else "stopped"
        for monitor in monitors:
            monitor._fire(reason, self.last_failure or "")

    def set_failed(self, failure: BaseException) -> None:
        """Parked for good after giving up: every message is answered by
        raising (a copy of) ``failure``; monitors fire."""
        self.set_gone("failed")
        self.failure = failure

    def failure_error(self) -> HeadwaterError:
        """The error a sender to this parked cell gets: a fresh copy of the
        last failure as :func:`as_failure` maps it (a copy, so concurrent
        raises do not grow one shared traceback)."""
        assert self.failure is not None
        error = copy.copy(as_failure(self.failure))
        error.__traceback__ = None
        error.__cause__ = error.__context__ = None
        return error


class ActorRef(abc.ABC):
    """How anyone talks to an actor, wherever it runs.

    Constructed only by the runtime (locally) or by a transport (remotely).
    """

    @property
    @abc.abstractmethod
    def path(self) -> str:
        """The actor's path in its tree, like ``/broker/topics/orders/0``."""

    @abc.abstractmethod
    async def tell(self, message: Any, *, timeout: float | None = None) -> None:
        """Put ``message`` in the actor's mailbox.

        Blocks while the mailbox is full (backpressure) and while the actor is
        restarting, up to ``timeout`` seconds (``None``: no limit), then raises
        :class:`HeadwaterTimeoutError`. Raises :class:`ActorStopped` at once if
        the actor is stopped for good, and its last error at once if it was
        parked as failed (``on_give_up="fail"``). Cancellation-safe: a cancelled ``tell``
        did not deliver the message.
        """

    @abc.abstractmethod
    def tell_nowait(self, message: Any) -> None:
        """Put ``message`` in the mailbox or raise :class:`MailboxFull` (also
        while the actor restarts) or :class:`ActorStopped`. Never blocks."""

    @abc.abstractmethod
    async def ask(self, message: Any, *, timeout: float | None = 5.0) -> Any:
        """Send ``message`` and wait for the actor's reply.

        Raises the actor's :class:`HeadwaterError` as itself, any other error
        as :class:`ActorFailed`, :class:`ActorRestarted` if the actor restarted
        before handling it, :class:`ActorStopped` if it is stopped for good,
        its last error (the same way) if it was parked as failed, and
        :class:`HeadwaterTimeoutError` after ``timeout`` seconds.
        """

    @abc.abstractmethod
    async def monitor(self, *, reconnect: bool = False) -> Monitor:
        """Watch this actor: the returned :class:`Monitor` fires once when
        it stops for good (not on a restart) or, for a remote ref, when its
        process becomes unreachable. A target already gone fires at once.
        ``reconnect`` (remote refs): after ``"unreachable"``, keep trying and
        report the actor's return (:meth:`Monitor.wait_up`).
        """

    @abc.abstractmethod
    async def inspect(self, *, timeout: float | None = 5.0) -> Any:
        """Return the actor's own :meth:`Actor.inspect` output (Erlang's
        ``sys:get_state``): by default a dict of its public attributes, each
        a repr cut short.

        The request goes through the mailbox like an ``ask``, so it sees the
        state between two messages. Raises like :meth:`ask`
        (:class:`ActorStopped`, :class:`HeadwaterTimeoutError`, ...) and
        :class:`UsageError` for a task or supervisor, which have no state
        to show.
        """

    async def _link_from(self, proc: Proc, nursery: trio.Nursery) -> None:
        """Link the incarnation ``proc`` (whose nursery is ``nursery``) to
        this ref's actor (runtime hook behind ``ActorContext.link``)."""
        raise UsageError(f"{type(self).__name__} does not support links")

    def _unlink_from(self, proc: Proc) -> None:  # noqa: B027 -- optional hook, no-op by default
        """Undo :meth:`_link_from` (idempotent)."""


def _check_timeout(timeout: float | None) -> float:
    if timeout is None:
        return math.inf
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise InvalidArgument(f"timeout={timeout!r} is invalid; give seconds >= 0 or None")
    return float(timeout)


class LocalActorRef(ActorRef):
    """A reference to an actor in this process (see :class:`ActorRef`)."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    def __repr__(self) -> str:
        return f"<ActorRef {self._cell.path} {self._cell.state}>"

    @property
    def path(self) -> str:
        """The actor's path."""
        return self._cell.path

    async def _deliver(self, item: Any) -> None:
        cell = self._cell
        while True:
            mailbox = cell.mailbox
            if mailbox is not None:
                try:
                    await mailbox.send(item)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The incarnation ended while we waited for room; retry on
                    # the next one (or raise if it is gone for good).
                    continue
                return
            if cell.kind != "actor":
                raise UsageError(f"{cell.path} is a {cell.kind}, not an actor: it has no mailbox")
            if cell.state == "failed" and cell.failure is not None:
                raise cell.failure_error()
            if cell.state in ("stopped", "failed", "stopping"):
                raise ActorStopped(f"actor {cell.path} is {cell.state}; it takes no messages")
            await cell.ready.wait()

    async def tell(self, message: Any, *, timeout: float | None = None) -> None:
        """See :meth:`ActorRef.tell`."""
        cell = self._cell
        mailbox = cell.mailbox
        if timeout is None and mailbox is not None:
            # Fast path: one channel send, no cancel scope.
            try:
                await mailbox.send(message)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        seconds = _check_timeout(timeout)
        with trio.move_on_after(seconds) as scope:
            await self._deliver(message)
        if scope.cancelled_caught:
            raise HeadwaterTimeoutError(
                f"tell to {cell.path} could not deliver within {seconds}s "
                f"(mailbox full or actor {cell.state})"
            )

    def tell_nowait(self, message: Any) -> None:
        """See :meth:`ActorRef.tell_nowait`."""
        cell = self._cell
        mailbox = cell.mailbox
        if mailbox is None:
            if cell.state == "failed" and cell.failure is not None:
                raise cell.failure_error()
            if cell.state in ("stopped", "failed", "stopping"):
                raise ActorStopped(f"actor {cell.path} is {cell.state}; it takes no messages")
            raise MailboxFull(f"actor {cell.path} is {cell.state}; use await tell() to wait")
        try:
            mailbox.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull(
                f"mailbox of {cell.path} is full; use await tell() to wait for room"
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise MailboxFull(f"actor {cell.path} is restarting; use await tell()") from None

    async def ask(self, message: Any, *, timeout: float | None = 5.0) -> Any:
        """See :meth:`ActorRef.ask`."""
        seconds = _check_timeout(timeout)
        reply = _Reply()
        with trio.move_on_after(seconds):
            await self._deliver(_Ask(message, reply))
            return await reply.wait()
        raise HeadwaterTimeoutError(
            f"ask {type(message).__name__} to {self._cell.path} got no reply within "
            f"{seconds}s; the actor is {self._cell.state}"
        )

    async def inspect(self, *, timeout: float | None = 5.0) -> Any:
        """See :meth:`ActorRef.inspect`."""
        return await self.ask(INSPECT, timeout=timeout)

    async def _proc(self) -> Proc:
        """The live incarnation behind this ref, waiting while it restarts;
        raises :class:`ActorStopped` if the actor is gone for good."""
        cell = self._cell
        while True:
            if cell.proc is not None and cell.proc.alive:
                return cell.proc
            if cell.kind != "actor":
                raise UsageError(f"{cell.path} is a {cell.kind}, not an actor: link to an actor")
            if cell.state in ("stopped", "failed", "stopping"):
                raise ActorStopped(
                    f"cannot link to {cell.path}: it is {cell.state} (Erlang would say noproc); "
                    "monitor it instead to learn that it is gone"
                )
            await cell.ready.wait()
            await trio.lowlevel.checkpoint()

    async def _link_from(self, proc: Proc, nursery: trio.Nursery) -> None:
        proc.link(await self._proc())

    def _unlink_from(self, proc: Proc) -> None:
        target = self._cell.proc
        if target is not None:
            proc.unlink(target)

    async def monitor(self, *, reconnect: bool = False) -> Monitor:
        """See :meth:`ActorRef.monitor` (a local actor is never unreachable,
        so ``reconnect`` changes nothing here)."""
        await trio.lowlevel.checkpoint()
        cell = self._cell
        monitor = Monitor(self, cell.monitors.discard, reconnect=reconnect)
        if cell.state in ("stopped", "failed"):
            monitor._fire("failed" if cell.state == "failed" else "stopped", "already gone")
        else:
            cell.monitors.add(monitor)
        return monitor


@attrs.define(eq=False)
class ActorContext:
    """What an actor knows of its place: path, own ref, system, and a nursery.

    ``nursery`` belongs to this incarnation: tasks started in it (timers,
    readers) are cancelled when the incarnation ends. An exception in one of
    them crashes the actor like an exception in :meth:`Actor.handle`.
    Timers (:meth:`send_after`, :meth:`send_interval`) and links
    (:meth:`link`) belong to the incarnation too.
    """

    path: str
    ref: ActorRef
    system: ActorSystem
    nursery: trio.Nursery
    incarnation: int
    _stop: Callable[[], None]
    _proc: Proc

    def stop(self) -> None:
        """End this actor normally after the current message (a *normal* exit:
        ``transient`` and ``temporary`` children are then not restarted)."""
        self._stop()

    def note_handled(self) -> None:
        """Count one request this incarnation served outside its mailbox
        (see :meth:`mailbox_idle`) as a handled message, so the ``handled``
        figure of the tree and the metrics stays the work the actor did."""
        if isinstance(self.ref, LocalActorRef):
            cell = self.ref._cell
            if cell.incarnation == self.incarnation:
                cell.handled += 1

    def mailbox_idle(self) -> bool:
        """Whether this incarnation takes messages and none waits in its
        mailbox (nor a sender blocked on a full one). A message already
        taken out of the mailbox but not yet handled is not seen: an actor
        that serves a caller outside its mailbox also keeps its own count of
        what it is handling and of that caller's asks in flight."""
        if not isinstance(self.ref, LocalActorRef):
            return False
        cell = self.ref._cell
        if cell.incarnation != self.incarnation or cell.mailbox is None:
            return False
        stats = cell.mailbox.statistics()
        return stats.current_buffer_used == 0 and stats.tasks_waiting_send == 0

    # -- timers --------------------------------------------------------------

    def send_after(self, delay: float, message: Any) -> Timer:
        """Tell ``message`` to this actor once, ``delay`` seconds from now
        (Erlang's ``erlang:send_after``, Akka's ``startSingleTimer``).

        Returns a :class:`Timer` (``cancel()`` it to drop the message). The
        timer is cancelled when this incarnation ends (stop or restart). The
        message is put in the mailbox with ``await tell()``: a full mailbox
        delays it (backpressure). ``delay`` must be a finite number >= 0, else
        :class:`InvalidArgument`. Never blocks.
        """
        seconds = check_delay("delay", delay, zero_ok=True)
        timer = Timer(self.path, seconds, None)
        self.nursery.start_soon(timer._run, self.ref, message)
        return timer

    def send_interval(self, period: float, message: Any) -> Timer:
        """Tell ``message`` to this actor every ``period`` seconds, first one
        period from now (Akka's ``startTimerAtFixedRate``); fire times stay
        on the grid ``start + n * period`` even if a delivery waited.

        Returns a :class:`Timer`; cancelled with the incarnation. ``period``
        must be a finite number > 0, else :class:`InvalidArgument`. Never
        blocks.
        """
        seconds = check_delay("period", period, zero_ok=False)
        timer = Timer(self.path, seconds, seconds)
        self.nursery.start_soon(timer._run, self.ref, message)
        return timer

    # -- links ---------------------------------------------------------------

    @property
    def trap_exits(self) -> bool:
        """Whether exit signals from linked actors arrive as
        :class:`~headwater.actors.Exit` messages (``True``) or make this
        actor fail when their reason is not ``"normal"`` (``False``, the
        default): Erlang's ``process_flag(trap_exit, ...)``. Set it in
        ``started()``; it lasts for this incarnation."""
        return self._proc.trap_exits

    @trap_exits.setter
    def trap_exits(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InvalidArgument(f"trap_exits={value!r}; give True or False")
        self._proc.trap_exits = value

    async def link(self, ref: ActorRef) -> None:
        """Link this incarnation with the actor behind ``ref``, local or
        remote (Erlang's ``link/1``; see :mod:`headwater.actors._links`).

        When either ends, the other gets an exit signal: with
        :attr:`trap_exits` it arrives as an :class:`~headwater.actors.Exit`
        message; otherwise any reason but ``"normal"`` makes the receiver
        fail with :class:`~headwater.LinkedExit`. A lost connection to a
        remote actor is reason ``"unreachable"``. Waits while the target
        restarts; raises :class:`~headwater.ActorStopped` if it is stopped
        for good (a dead ref) and :class:`~headwater.ActorNotFound` for a
        remote path that does not exist.
        """
        if not isinstance(ref, ActorRef):
            raise InvalidArgument(f"link({ref!r}): give an ActorRef")
        if not self._proc.alive:
            raise ActorStopped(f"actor {self.path} is ending; it cannot link any more")
        await ref._link_from(self._proc, self.nursery)

    async def unlink(self, ref: ActorRef) -> None:
        """Remove a link made by :meth:`link` (idempotent). A signal already
        delivered as an :class:`~headwater.actors.Exit` message stays in
        the mailbox."""
        await trio.lowlevel.checkpoint()
        ref._unlink_from(self._proc)

    async def monitor(self, ref: ActorRef, *, reconnect: bool = False) -> Monitor:
        """Monitor ``ref`` and have its :class:`~headwater.actors.Down`
        delivered to this actor's own mailbox (Erlang's ``monitor/2``).

        With ``reconnect=True`` (remote refs), an ``"unreachable"`` down is
        followed by an :class:`~headwater.actors.Up` message when the actor
        answers again, and the watch goes on (each loss gives one ``Down``).
        The delivery runs in this incarnation's nursery; when the incarnation
        ends the monitor is cancelled. The returned (first) monitor may also
        be awaited or cancelled directly.
        """
        first = await ref.monitor(reconnect=reconnect)
        own = self.ref

        async def deliver() -> None:
            monitor = first
            try:
                while True:
                    try:
                        down = await monitor.wait()
                        await own.tell(down)
                        if not (reconnect and down.reason == "unreachable"):
                            return
                        up = await monitor.wait_up()
                        await own.tell(up)
                    except ClosedError:
                        return  # cancelled, or we are stopping: nobody to tell
                    finally:
                        monitor.cancel()
                    monitor = up.monitor
            finally:
                monitor.cancel()

        self.nursery.start_soon(deliver)
        return first


class Actor:
    """Base class of actors: subclass it and override :meth:`handle`.

    A new instance is made by the child's factory for every incarnation, so
    state on ``self`` starts fresh after a restart (persist what must survive).
    Messages are handled one at a time, in arrival order.
    """

    context: ActorContext

    async def started(self) -> None:
        """Called before the first message. Failing here counts as a crash."""

    async def handle(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to an ``ask``."""
        raise UsageError(f"{type(self).__name__} does not handle {type(message).__name__}")

    async def stopping(self) -> None:
        """Called on graceful stop (not after a crash), bounded by the child's
        shutdown timeout."""

    def inspect(self) -> Any:
        """What ``await ref.inspect()`` (and ``headwater actors inspect``)
        shows of this actor, between two messages.

        By default: a dict of the public attributes on ``self`` (names not
        starting with ``_``, ``context`` left out), each value as a repr cut
        to 200 characters. Override it to show something else; for remote
        callers return a plain CBOR value (dicts, lists, str, numbers) or a
        registered message.
        """
        shown = reprlib.Repr()
        shown.maxstring = shown.maxother = 200
        shown.maxlist = shown.maxdict = shown.maxset = shown.maxtuple = 20
        return {
            name: shown.repr(value)[:200]
            for name, value in sorted(vars(self).items())
            if not name.startswith("_") and name != "context"
        }
