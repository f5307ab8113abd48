"""The supervision runtime: child specs, supervisors, and the actor system.

Theory of operation
-------------------
A supervisor is one Trio nursery and one loop. Each child runs as one task per
*incarnation* in the supervisor's nursery; the task catches whatever ends the
child and posts an exit report to the supervisor's exit channel instead of
letting it tear down the nursery. The loop takes one report at a time and asks
the pure :func:`~headwater.supervision.decide` what to do: restart (after a
backoff), ignore (remove the child), or escalate (stop every child in reverse
order and raise :class:`SupervisorGaveUp`, whose ``__cause__`` is the child's
exception, so the supervisor's own supervisor sees a crash). A child whose
spec says ``on_give_up="fail"`` does not escalate: it is parked in the final
``failed`` state, answering every message with its last error, its crashes
leave the supervisor's history, and its siblings run on.

Each child owns a :class:`~headwater.actors._actor.Cell`, the stable target of
its refs. Cell lifecycle (``state``), as a transition table::

    starting   -> running | restarting | stopped | failed
    running    -> restarting | stopping | stopped | failed
    restarting -> starting | running | stopped | failed
    stopping   -> stopped
    failed     -> stopped | restarting   (a parked child, with its supervisor)
    stopped: final

Graceful stop of an actor closes its mailbox (refs raise ``ActorStopped``), lets
it finish what is queued, runs its ``stopping`` hook, and cancels it when the
child's ``shutdown`` timeout passes. Tasks are cancelled at once; supervisors
stop their own children first. Errors leaving nurseries are unwrapped when an
exception group holds a single exception, so users see ``SupervisorGaveUp``
rather than a group; this is applied everywhere in the runtime.
"""

from __future__ import annotations

import contextvars
import math
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import attrs
import trio

from headwater._errors import (
    ActorKilled,
    ActorNotFound,
    ActorRestarted,
    ActorStopped,
    ConfigError,
    HeadwaterError,
    IllegalTransitionError,
    InvalidArgument,
    LinkedExit,
    SupervisorGaveUp,
    UsageError,
)
from headwater._logging import bind_actor, get_logger
from headwater.actors._actor import (
    INSPECT,
    Actor,
    ActorContext,
    ActorRef,
    Cell,
    CellState,
    LocalActorRef,
    _Ask,
    as_failure,
)
from headwater.actors._links import Exit, ExitReason, Proc
from headwater.actors._monitor import Monitor
from headwater.actors._watchdog import DEFAULT_WATCHDOG_THRESHOLD, LoopWatchdog
from headwater.supervision._policy import ChildInfo, Crash, Escalate, Ignore, Strategy, decide
from headwater.supervision._specs import (
    ActorSnapshot,
    ChildCount,
    ChildEntry,
    ChildSpec,
    SupervisorSpec,
    unwrap_group,
    unwrapping_groups,
)

__all__ = ["DEFAULT_BLOCKING_THREADS", "ActorSystem", "TraceHook", "open_actor_system", "tracing"]

DEFAULT_BLOCKING_THREADS = 8
"""Worker threads per system for :class:`~headwater.actors.BlockingActor`
handlers (Akka's default dispatcher for blocking work is a bounded pool too)."""

TraceHook = Callable[[float, str, str, str], None]
"""``hook(virtual_time, actor_path, message_type, outcome)``: called after an
actor handled a message (outcome: the reply's type name or ``raised:<Error>``)
and when an incarnation ends (message type ``<exit>``)."""

_TRACE: contextvars.ContextVar[TraceHook | None] = contextvars.ContextVar(
    "headwater_actor_trace", default=None
)


@contextmanager
def tracing(hook: TraceHook) -> Iterator[None]:
    """Trace every actor system opened inside this block (off by default;
    the deterministic simulation hashes the trace)."""
    token = _TRACE.set(hook)
    try:
        yield
    finally:
        _TRACE.reset(token)


_log = get_logger("headwater.supervision")

_TRANSITIONS: dict[CellState, frozenset[CellState]] = {
    "starting": frozenset({"running", "restarting", "stopped", "failed"}),
    "running": frozenset({"restarting", "stopping", "stopped", "failed"}),
    "restarting": frozenset({"starting", "running", "stopped", "failed", "restarting"}),
    "stopping": frozenset({"stopped", "stopping"}),
    "stopped": frozenset(),
    # Only a child parked by on_give_up="fail" leaves "failed": stopped for
    # good with its supervisor, or taken over when its supervisor restarts.
    "failed": frozenset({"stopped", "restarting"}),
}


def _check_transition(cell: Cell, new: CellState) -> None:
    if new not in _TRANSITIONS[cell.state]:
        raise IllegalTransitionError(
            f"{cell.path}: cannot go from {cell.state!r} to {new!r}"
        ) from None


@attrs.define(eq=False)
class _Child:
    """Runtime record of one child of a supervisor."""

    spec: ChildSpec | SupervisorSpec
    cell: Cell
    scope: trio.CancelScope | None = None
    settled: trio.Event = attrs.field(factory=trio.Event)
    done: trio.Event = attrs.field(factory=trio.Event)
    stopping: bool = False
    kill_error: HeadwaterError | None = None
    mailbox: trio.MemorySendChannel[Any] | None = None
    proc: Proc | None = None
    supervisor: _Supervisor | None = None

    @property
    def kind(self) -> Literal["actor", "task", "supervisor"]:
        return "supervisor" if isinstance(self.spec, SupervisorSpec) else self.spec.kind


@attrs.frozen
class _Exit:
    child: _Child
    incarnation: int
    error: BaseException | None


def _parks(child: _Child) -> bool:
    return isinstance(child.spec, ChildSpec) and child.spec.on_give_up == "fail"


def _name(value: object) -> str:
    return type(value).__name__


def _raised(exc: BaseException) -> str:
    return f"raised:{type(exc).__name__}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Supervisor:
    """One incarnation of a supervisor: a nursery, its children and a loop."""

    def __init__(self, system: ActorSystem, cell: Cell, spec: SupervisorSpec) -> None:
        self.system = system
        self.cell = cell
        self.spec = spec
        self.policy = spec.policy
        self.children: list[_Child] = []
        self.history: tuple[Crash, ...] = ()
        self.lock = trio.Lock()
        self._exits_send, self._exits_recv = trio.open_memory_channel[_Exit](math.inf)
        self._nursery: trio.Nursery | None = None

    # -- main loop -------------------------------------------------------

    async def run(self, started: Callable[[], None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            async with self.lock:
                for spec in self.spec.children:
                    await self._add(spec)
            started()
            async for report in self._exits_recv:
                async with self.lock:
                    await self._on_exit(report)

    async def _on_exit(self, report: _Exit) -> None:
        child = report.child
        if child not in self.children or child.stopping:
            return  # stale: the child was stopped or replaced meanwhile
        if report.incarnation != child.cell.incarnation:
            return
        cell = child.cell
        error = report.error
        log = _log.bind(actor=cell.path, incarnation=cell.incarnation)
        if error is not None:
            cell.last_failure = _describe(error)
            log.warning("actor_crashed", error=cell.last_failure, exc_info=error)
        else:
            log.info("actor_exited")
        decision = decide(
            self.policy,
            [
                ChildInfo(c.cell.name, c.spec.restart, _parks(c))
                for c in self.children
                if c.cell.state != "failed"
            ],
            cell.name,
            abnormal=error is not None,
            history=self.history,
            now=trio.current_time(),
        )
        if isinstance(decision, Ignore):
            self._remove(child, "stopped")
            log.info("actor_stopped", reason=decision.reason)
            return
        if isinstance(decision, Escalate) and _parks(child):
            self._park(child, error, decision)
            return
        if isinstance(decision, Escalate):
            # The child waits with its siblings: if our supervisor restarts us,
            # our next incarnation takes its cell over.
            self.children.remove(child)
            cell.set_waiting("restarting")
            _log.error(
                "supervisor_gave_up",
                actor=self.cell.path,
                child=cell.path,
                reason=decision.reason,
            )
            # Not for good: if our supervisor restarts us, the same cells (and
            # so every ref to them) are taken over by the new incarnation.
            await self.stop_all(final=False)
            gave_up = SupervisorGaveUp(
                f"supervisor {self.cell.path} gave up: {decision.reason}; "
                f"last failure of {cell.path}: {cell.last_failure}",
                child=cell.path,
                restarts=decision.restarts,
            )
            _log.error("supervisor_escalated", actor=self.cell.path, error=str(gave_up))
            raise gave_up from error
        self.history = decision.history
        by_name = {c.cell.name: c for c in self.children}
        try:
            for name in decision.stop:
                final = name not in decision.start
                await self._stop(by_name[name], final=final)
                if final:
                    self._remove(by_name[name], "stopped")
        finally:
            # Also when a kill of this supervisor cut the graceful stops
            # short: a cell left "stopping" could not be taken over by our
            # next incarnation, which then failed until it gave up
            # (simulation soak seed 311).
            for name in decision.start:
                by_name[name].cell.set_waiting("restarting")
        if decision.delay > 0:
            await trio.sleep(decision.delay)
        for name in decision.start:
            target = by_name[name]
            target.cell.restarts += 1
            self.system.restarts += 1
            _log.info(
                "actor_restarted",
                actor=target.cell.path,
                incarnation=target.cell.incarnation + 1,
                restarts=target.cell.restarts,
                delay=decision.delay,
            )
            await self._launch(target)

    def _park(self, child: _Child, error: BaseException | None, decision: Escalate) -> None:
        """Give up on one child only: park it as failed (``on_give_up="fail"``)."""
        cell = child.cell
        if error is None:
            error = ActorStopped(
                f"actor {cell.path} kept exiting and was parked as failed: {decision.reason}"
            )
        _check_transition(cell, "failed")
        cell.set_failed(error)
        # Its crashes no longer count against the siblings' intensity.
        self.history = tuple(c for c in self.history if c.child != cell.name)
        _log.error(
            "actor_failed",
            actor=cell.path,
            reason=decision.reason,
            error=cell.last_failure,
        )

    # -- children ----------------------------------------------------------

    async def _add(self, spec: ChildSpec | SupervisorSpec) -> _Child:
        if any(c.cell.name == spec.name for c in self.children):
            raise IllegalTransitionError(
                f"supervisor {self.cell.path} already has a child named {spec.name!r}"
            )
        path = f"{self.cell.path.rstrip('/')}/{spec.name}"
        kind: Literal["actor", "task", "supervisor"] = (
            "supervisor" if isinstance(spec, SupervisorSpec) else spec.kind
        )
        orphan = self.system._orphan(path, kind)
        if orphan is not None:
            cell = orphan  # our previous incarnation's child: keep its refs valid
        else:
            cell = Cell(path=path, name=spec.name, kind=kind, system=self.system)
            cell.ref = LocalActorRef(cell)
        if isinstance(spec, ChildSpec) and kind == "actor":
            cell.mailbox_size = spec.mailbox_size
        child = _Child(spec=spec, cell=cell)
        self.children.append(child)
        self.system._register(cell, child)
        await self._launch(child)
        return child

    def _remove(self, child: _Child, state: CellState) -> None:
        if child in self.children:
            self.children.remove(child)
        if child.cell.state != state:
            _check_transition(child.cell, state)
        child.cell.set_gone(state)
        self.system._unregister(child.cell)
        if child.cell.kind == "supervisor":
            # Only supervisors have cells below them; scanning every cell for
            # each leaf removed made stopping 10,000 partitions quadratic.
            self.system._forget_below(child.cell.path)

    async def _launch(self, child: _Child) -> None:
        """Start one incarnation and wait until it runs (or ended)."""
        assert self._nursery is not None
        child.settled = trio.Event()
        child.done = trio.Event()
        child.stopping = False
        child.kill_error = None
        child.cell.incarnation += 1
        if child.cell.state != "starting":
            child.cell.set_waiting("restarting")
        self._nursery.start_soon(self._incarnation, child, child.cell.incarnation)
        await child.settled.wait()

    async def _incarnation(self, child: _Child, incarnation: int) -> None:
        cell = child.cell
        bind_actor(cell.path, incarnation)  # this task's (the actor's) log lines carry them
        error: BaseException | None = None
        graceful = False
        completed = False
        try:
            with trio.CancelScope() as scope:
                child.scope = scope
                try:
                    if child.kind == "actor":
                        graceful = await self._run_actor(child)
                    elif child.kind == "task":
                        assert isinstance(child.spec, ChildSpec)
                        cell.state = "running"
                        cell.ready.set()
                        child.settled.set()
                        _log.info("actor_started", actor=cell.path, incarnation=incarnation)
                        await child.spec.factory()  # type: ignore[misc]
                    else:
                        assert isinstance(child.spec, SupervisorSpec)
                        sup = _Supervisor(self.system, cell, child.spec)
                        child.supervisor = sup

                        def started() -> None:
                            cell.state = "running"
                            cell.ready.set()
                            child.settled.set()
                            _log.info("actor_started", actor=cell.path, incarnation=incarnation)

                        await sup.run(started)
                except Exception as exc:
                    error = unwrap_group(exc)
            if child.kill_error is not None and error is None:
                error = child.kill_error
            completed = True
        except Exception as exc:
            # An error raised while the kill's cancellation unwound (a journal
            # failing to close, say) surfaces at the scope's exit, mixed with
            # the Cancelled it strips: it is this child's crash, not ours.
            error = unwrap_group(exc)
            completed = True
        finally:
            self._end_proc(child, error, completed)
            if cell.state in ("running", "starting") and (
                cell.kind != "actor" or cell.mailbox is None or cell.mailbox is child.mailbox
            ):
                # Whatever ended this incarnation (a crash, or a cancellation
                # from a killed parent), its mailbox is closed: senders must
                # wait for the next incarnation, not spin on a dead channel.
                cell.set_waiting("restarting")
            child.settled.set()
            child.done.set()
        trace = self.system.trace
        if trace is not None:
            trace(
                trio.current_time(),
                cell.path,
                "<exit>",
                "stopped" if child.stopping or graceful else type(error).__name__,
            )
        if child.stopping or graceful:
            return
        if cell.state in ("running", "starting"):
            cell.set_waiting("restarting")
        self._exits_send.send_nowait(_Exit(child, incarnation, error))

    @staticmethod
    def _end_proc(child: _Child, error: BaseException | None, completed: bool) -> None:
        """Send the incarnation's exit signal to its links (OTP's table)."""
        proc, child.proc = child.proc, None
        if proc is None:
            return
        if child.cell.proc is proc:
            child.cell.proc = None
        reason: ExitReason
        if error is None:
            # Returned or stopped: normal. Cancelled from outside (a killed
            # parent): killed with it.
            reason, detail = ("normal" if completed or child.stopping else "killed"), ""
        elif isinstance(error, ActorKilled):
            reason, detail = "killed", str(error)
        else:
            reason, detail = "failed", _describe(error)
        child.cell.last_exit = (child.cell.incarnation, reason, detail)
        proc.end(reason, detail)

    async def _run_actor(self, child: _Child) -> bool:
        """Run one actor incarnation; return True if it was stopped gracefully."""
        spec = child.spec
        assert isinstance(spec, ChildSpec)
        cell = child.cell
        actor = spec.factory()
        if not isinstance(actor, Actor):
            raise ConfigError(
                f"factory of {cell.path} returned {type(actor).__name__}, not an Actor"
            )
        send, recv = trio.open_memory_channel[Any](spec.mailbox_size)
        child.mailbox = send
        current: _Ask | None = None
        closed = False

        def stop() -> None:
            nonlocal closed
            closed = True
            if cell.mailbox is send:
                cell.set_waiting("restarting")
            send.close()

        frame = sys._getframe()
        frames = self.system._frames
        try:
            async with trio.open_nursery() as nursery:
                assert cell.ref is not None
                own = cell.ref
                incarnation = cell.incarnation

                def deliver(exit: Exit) -> None:
                    try:
                        nursery.start_soon(_tell_exit, own, exit)
                    except RuntimeError:
                        pass  # this incarnation is ending too: nobody to tell

                def crash(exit: Exit) -> None:
                    if child.scope is None or cell.incarnation != incarnation:
                        return
                    child.kill_error = LinkedExit(
                        f"actor {cell.path} failed because linked actor {exit.path} exited "
                        f"({exit.reason}{': ' + exit.detail if exit.detail else ''}); "
                        "set ctx.trap_exits = True to receive Exit messages instead"
                    )
                    child.scope.cancel()

                proc = Proc(cell.path, own, deliver, crash)
                child.proc = cell.proc = proc
                frames[frame] = cell.path
                actor.context = ActorContext(
                    path=cell.path,
                    ref=own,
                    system=self.system,
                    nursery=nursery,
                    incarnation=incarnation,
                    stop=stop,
                    proc=proc,
                )
                await actor.started()
                if not closed and not child.stopping:
                    cell.set_accepting(send)
                child.settled.set()
                _log.info("actor_started", actor=cell.path, incarnation=cell.incarnation)
                handle = actor.handle
                trace = self.system.trace
                buffer = recv._state.data  # the queued items (for the high-water mark)
                async for item in recv:
                    cell.handled += 1
                    if len(buffer) >= cell.high_water:
                        cell.high_water = len(buffer) + 1
                    if type(item) is _Ask:
                        current = item
                        try:
                            if item.message is INSPECT:
                                result = actor.inspect()
                            else:
                                result = await handle(item.message)
                        except UsageError as exc:
                            item.reply.fail(exc)
                            if trace is not None:
                                trace(
                                    trio.current_time(),
                                    cell.path,
                                    _name(item.message),
                                    _raised(exc),
                                )
                        except Exception as exc:
                            if trace is not None:
                                trace(
                                    trio.current_time(),
                                    cell.path,
                                    _name(item.message),
                                    _raised(exc),
                                )
                            # Stop taking messages *before* waking the asker, so
                            # what it sends next goes to the next incarnation.
                            if cell.mailbox is send:
                                cell.set_waiting("restarting")
                            send.close()
                            item.reply.fail(as_failure(exc))
                            current = None
                            raise
                        else:
                            item.reply.set(result)
                            if trace is not None:
                                trace(
                                    trio.current_time(),
                                    cell.path,
                                    _name(item.message),
                                    _name(result),
                                )
                        current = None
                    else:
                        await handle(item)
                        if trace is not None:
                            trace(trio.current_time(), cell.path, _name(item), "told")
                if child.stopping:
                    await actor.stopping()
                nursery.cancel_scope.cancel()
            return child.stopping
        finally:
            frames.pop(frame, None)
            send.close()
            if child.stopping:
                lost: Exception = ActorStopped(f"actor {cell.path} stopped before handling it")
            else:
                lost = ActorRestarted(
                    f"actor {cell.path} restarted before handling it; resend if safe"
                )
            if current is not None:
                current.reply.fail(lost)
            while True:
                try:
                    item = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if type(item) is _Ask:
                    item.reply.fail(lost)
            recv.close()

    async def _stop(self, child: _Child, *, final: bool = True) -> None:
        """Stop one child gracefully, cancelling it after its shutdown timeout."""
        if child.done.is_set():
            return
        child.stopping = True
        cell = child.cell
        if cell.state != "stopping":
            cell.set_waiting("stopping")
        with trio.move_on_after(child.spec.shutdown):
            if child.kind == "actor":
                if child.mailbox is not None:
                    child.mailbox.close()
            elif child.kind == "supervisor" and child.supervisor is not None:
                await child.supervisor.stop_all(final=final)
                if child.scope is not None:
                    child.scope.cancel()
            elif child.scope is not None:
                child.scope.cancel()
            await child.done.wait()
        if not child.done.is_set():
            _log.warning("actor_shutdown_timeout", actor=cell.path, timeout=child.spec.shutdown)
            assert child.scope is not None
            child.scope.cancel()
            await child.done.wait()
        _log.info("actor_stopped", actor=cell.path, incarnation=cell.incarnation)

    async def stop_all(self, *, final: bool = True) -> None:
        """Stop every child in reverse start order.

        ``final``: stopped for good (refs raise). Otherwise the cells wait,
        registered, for the next incarnation of this supervisor to take them.
        """
        for child in reversed(list(self.children)):
            await self._stop(child, final=final)
            if final:
                self._remove(child, "stopped")
            else:
                if child in self.children:  # our own loop may have dropped it meanwhile
                    self.children.remove(child)
                child.cell.set_waiting("restarting")

    async def start_child(self, spec: ChildSpec | SupervisorSpec) -> _Child:
        async with self.lock:
            if self.cell.state not in ("running", "starting"):
                raise ActorStopped(f"supervisor {self.cell.path} is {self.cell.state}")
            return await self._add(spec)

    async def stop_child(self, child: _Child) -> None:
        async with self.lock:
            if child not in self.children:
                raise ActorNotFound(f"{child.cell.path} is not running under {self.cell.path}")
            await self._stop(child)
            self._remove(child, "stopped")

    def snapshot(self) -> tuple[ActorSnapshot, ...]:
        return tuple(_snapshot(c) for c in self.children)


async def _tell_exit(ref: ActorRef, exit: Exit) -> None:
    try:
        await ref.tell(exit)
    except ActorStopped:
        pass  # ending too: nobody to tell


def _snapshot(child: _Child) -> ActorSnapshot:
    cell = child.cell
    sub = child.supervisor.snapshot() if child.supervisor is not None else ()
    mailbox = cell.mailbox
    depth = mailbox.statistics().current_buffer_used if mailbox is not None else 0
    cell.high_water = max(cell.high_water, depth)
    return ActorSnapshot(
        path=cell.path,
        kind=cell.kind,
        state=cell.state,
        restarts=cell.restarts,
        incarnation=cell.incarnation,
        last_failure=cell.last_failure,
        children=sub if child.kind == "supervisor" else (),
        mailbox_depth=depth,
        mailbox_high_water=cell.high_water,
        mailbox_size=cell.mailbox_size,
        handled=cell.handled,
    )


class ActorSystem:
    """A running tree of supervised actors; made by :func:`open_actor_system`.

    Every actor has a path (``/broker/topics/orders/0``); :meth:`lookup` finds
    its ref, :meth:`tree` shows the whole tree.
    """

    def __init__(
        self,
        name: str,
        root: SupervisorSpec,
        *,
        watchdog: LoopWatchdog | None = None,
        blocking_threads: int = DEFAULT_BLOCKING_THREADS,
    ) -> None:
        self.name = name
        self.watchdog = watchdog
        """The :class:`LoopWatchdog` of this system, or ``None`` when off."""
        self.blocking_limiter = trio.CapacityLimiter(blocking_threads)
        """Bounds the worker threads of this system's
        :class:`~headwater.actors.BlockingActor` handlers."""
        self.restarts = 0
        """Actor restarts so far in this system (each leaves the old
        incarnation's objects to the garbage collector)."""
        self._frames: dict[Any, str] = {}
        self._root_spec = root
        self._cells: dict[str, tuple[Cell, _Child | None]] = {}
        self._root_cell = Cell(path="/", name="", kind="supervisor", system=self)
        self._root_cell.ref = LocalActorRef(self._root_cell)
        self._root = _Supervisor(self, self._root_cell, root)
        self._cells["/"] = (self._root_cell, None)
        self.trace: TraceHook | None = _TRACE.get()

    def __repr__(self) -> str:
        return f"<ActorSystem {self.name} {self._root_cell.state}>"

    def _register(self, cell: Cell, child: _Child) -> None:
        self._cells[cell.path] = (cell, child)

    def _unregister(self, cell: Cell) -> None:
        entry = self._cells.get(cell.path)
        if entry is not None and entry[0] is cell:
            del self._cells[cell.path]

    def _orphan(self, path: str, kind: str) -> Cell | None:
        """A registered cell at ``path`` left waiting by a restarting parent."""
        entry = self._cells.get(path)
        if entry is None:
            return None
        cell = entry[0]
        if cell.state == "restarting" and cell.kind == kind:
            return cell
        raise IllegalTransitionError(f"an actor at {path} is already {cell.state}")

    def _forget_below(self, path: str) -> None:
        """Stop for good every cell below ``path`` (its supervisor is gone)."""
        prefix = path.rstrip("/") + "/"
        for key in [k for k in self._cells if k.startswith(prefix) and k != "/"]:
            cell, _child = self._cells.pop(key)
            if cell.state not in ("stopped", "failed"):
                cell.set_gone("stopped")

    def _entry(self, path: str) -> tuple[Cell, _Child | None]:
        if not isinstance(path, str):
            raise InvalidArgument(f"path {path!r} is not a str")
        normal = "/" + path.strip("/") if path.strip("/") else "/"
        try:
            return self._cells[normal]
        except KeyError:
            raise ActorNotFound(
                f"no actor at {normal!r}; system.tree() lists the live paths"
            ) from None

    def _supervisor_at(self, path: str) -> _Supervisor:
        cell, child = self._entry(path)
        if child is None:
            return self._root
        if child.kind != "supervisor" or child.supervisor is None:
            raise InvalidArgument(f"{cell.path} is a {cell.kind}, not a supervisor")
        return child.supervisor

    def lookup(self, path: str) -> ActorRef:
        """Return the ref of the actor at ``path`` (raises :class:`ActorNotFound`)."""
        cell, _ = self._entry(path)
        assert cell.ref is not None
        return cell.ref

    async def start_child(self, spec: ChildSpec | SupervisorSpec, *, parent: str = "/") -> ActorRef:
        """Start a child under the supervisor at ``parent`` and return its ref.

        Waits until the child's ``started`` hook has run.
        """
        if not isinstance(spec, ChildSpec | SupervisorSpec):
            raise InvalidArgument(f"spec {spec!r} is not a ChildSpec or SupervisorSpec")
        child = await self._supervisor_at(parent).start_child(spec)
        assert child.cell.ref is not None
        return child.cell.ref

    async def stop_child(self, path: str) -> None:
        """Stop the child at ``path`` for good (gracefully, then cancelled after
        its shutdown timeout) and remove it from its supervisor."""
        cell, child = self._entry(path)
        if child is None:
            raise InvalidArgument("the root supervisor is stopped by leaving open_actor_system()")
        parent = cell.path.rsplit("/", 1)[0] or "/"
        await self._supervisor_at(parent).stop_child(child)

    async def kill(self, path: str, reason: str = "killed on request") -> None:
        """Crash the actor at ``path`` on purpose (an experiment and test hook).

        Its supervisor sees an :class:`~headwater.ActorKilled` crash and applies
        its policy. Returns once the incarnation has ended.
        """
        _cell, child = self._entry(path)
        if child is None:
            raise InvalidArgument("the root supervisor cannot be killed; close the system")
        if child.scope is None or child.done.is_set():
            return
        child.kill_error = ActorKilled(f"actor {child.cell.path} was killed: {reason}")
        child.scope.cancel()
        await child.done.wait()

    async def monitor(self, target: ActorRef | str) -> Monitor:
        """Monitor the actor at ``target`` (a ref, local or remote, or a path
        in this system): see :meth:`ActorRef.monitor`. A path with no actor
        raises :class:`~headwater.ActorNotFound`."""
        ref = self.lookup(target) if isinstance(target, str) else target
        return await ref.monitor()

    def which_children(self, path: str = "/") -> tuple[ChildEntry, ...]:
        """The children of the supervisor at ``path``, in start order (OTP's
        ``which_children``). Raises :class:`~headwater.ActorNotFound` for an
        unknown path and :class:`~headwater.InvalidArgument` for a path that
        is not a supervisor."""
        supervisor = self._supervisor_at(path)
        return tuple(
            ChildEntry(
                name=c.cell.name,
                path=c.cell.path,
                kind=c.cell.kind,
                state=c.cell.state,
                restart=c.spec.restart,
                ref=c.cell.ref,
            )
            for c in supervisor.children
        )

    def count_children(self, path: str = "/") -> ChildCount:
        """OTP's ``count_children`` for the supervisor at ``path``: how many
        children, how many running, how many supervisors and workers. Errors
        as :meth:`which_children`."""
        children = self._supervisor_at(path).children
        supervisors = sum(1 for c in children if c.kind == "supervisor")
        return ChildCount(
            specs=len(children),
            active=sum(1 for c in children if c.cell.state == "running"),
            supervisors=supervisors,
            workers=len(children) - supervisors,
        )

    async def inspect(self, path: str, *, timeout: float | None = 5.0) -> Any:
        """``await self.lookup(path).inspect()``: the actor's
        :meth:`~headwater.actors.Actor.inspect` output. An unknown path
        raises :class:`~headwater.ActorNotFound`."""
        return await self.lookup(path).inspect(timeout=timeout)

    def tree(self) -> ActorSnapshot:
        """A snapshot of the live supervision tree, with each actor's mailbox
        depth and high-water mark, messages handled, restarts and last
        failure."""
        return ActorSnapshot(
            path="/",
            kind="supervisor",
            state=self._root_cell.state,
            restarts=0,
            incarnation=1,
            last_failure=self._root_cell.last_failure,
            children=self._root.snapshot(),
        )

    async def _run_root(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cell = self._root_cell

        def started() -> None:
            cell.state = "running"
            cell.ready.set()
            task_status.started()

        try:
            await self._root.run(started)
        except BaseException as exc:
            if isinstance(unwrap_group(exc), SupervisorGaveUp):
                cell.last_failure = _describe(unwrap_group(exc))
                cell.set_gone("failed")
            raise

    async def _shutdown(self) -> None:
        if self._root_cell.state == "running":
            self._root_cell.set_waiting("stopping")
            async with self._root.lock:
                await self._root.stop_all()
            self._root_cell.set_gone("stopped")


@asynccontextmanager
async def open_actor_system(
    name: str = "headwater",
    *,
    strategy: Strategy = "one_for_one",
    max_restarts: int = 3,
    within: float = 5.0,
    backoff: float = 0.0,
    backoff_max: float = 30.0,
    children: tuple[ChildSpec | SupervisorSpec, ...] = (),
    watchdog: float | LoopWatchdog | Literal["auto"] | None = "auto",
    blocking_threads: int = DEFAULT_BLOCKING_THREADS,
) -> AsyncIterator[ActorSystem]:
    """Open an actor system whose root supervisor has the given policy.

    ``children`` start in order before the block runs. ``watchdog`` is the
    blocked-loop watchdog's threshold in seconds (default 0.1; ``None``
    switches it off; or a :class:`~headwater.actors.LoopWatchdog`): a step
    that holds the Trio loop longer is logged as ``loop_blocked`` with the
    actor and stack that held it. ``blocking_threads`` bounds the worker
    threads of :class:`~headwater.actors.BlockingActor` handlers.
    The default ``watchdog="auto"`` means 0.1 s on a real clock and off under
    ``trio.testing.MockClock``: the watchdog measures real time, and its
    probes would perturb a deterministic schedule (pass a threshold or a
    ``LoopWatchdog`` to have it anyway). Leaving the block stops
    every actor in reverse start order (each within its shutdown timeout) and
    leaves no task running. If the root supervisor gives up, the block is
    cancelled and this raises :class:`~headwater.SupervisorGaveUp`, whose
    ``__cause__`` is the failure that exhausted the restart intensity.
    """
    root = SupervisorSpec(
        name=name,
        children=children,
        strategy=strategy,
        max_restarts=max_restarts,
        within=within,
        backoff=backoff,
        backoff_max=backoff_max,
    )
    dog: LoopWatchdog | None
    if watchdog == "auto":
        # trio.testing is not imported for this: a MockClock exists only
        # where it has been imported already.
        testing = sys.modules.get("trio.testing")
        mock = testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock)
        dog = None if mock else LoopWatchdog(DEFAULT_WATCHDOG_THRESHOLD)
    elif watchdog is None or isinstance(watchdog, LoopWatchdog):
        dog = watchdog
    else:
        dog = LoopWatchdog(watchdog)
    if (
        isinstance(blocking_threads, bool)
        or not isinstance(blocking_threads, int)
        or blocking_threads < 1
    ):
        raise ConfigError(f"blocking_threads={blocking_threads!r} is invalid; give an int >= 1")
    system = ActorSystem(name, root, watchdog=dog, blocking_threads=blocking_threads)
    if dog is not None:
        dog._start(system._frames)
    try:
        with unwrapping_groups():
            async with trio.open_nursery() as nursery:
                await nursery.start(system._run_root)
                try:
                    yield system
                finally:
                    with trio.CancelScope(shield=True):
                        await system._shutdown()
                    nursery.cancel_scope.cancel()
                    system._forget_below("/")
    finally:
        if dog is not None:
            dog._close()
