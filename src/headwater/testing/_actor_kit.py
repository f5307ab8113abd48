"""The actor-ref conformance kit: one suite for local and remote refs.

``await check_actor_refs(maker)`` runs every check in :data:`ACTOR_REF_CHECKS`
against refs that ``maker`` hands out. Each check opens a fresh actor system
with the kit's actors (an echo-ish ``/kit/target`` and a ``/kit/watcher``),
then calls ``maker(system)``, an async context manager yielding an async
``get_ref(path) -> ActorRef``: for local refs that is ``system.lookup``; for
remote refs it serves ``system`` over some transport and looks the path up
through an :class:`~headwater.actors.ActorClient`. Messages are those of
:data:`KIT_REGISTRY`. Timings are short enough for a real clock (under a
second per check) and exact under ``MockClock``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio

from headwater._errors import (
    ActorFailed,
    ActorNotFound,
    ActorStopped,
    ClosedError,
    HeadwaterTimeoutError,
    InvalidArgument,
    StorageError,
)
from headwater.actors._actor import Actor, ActorRef
from headwater.actors._monitor import Down
from headwater.actors._system import ActorSystem, open_actor_system
from headwater.supervision._specs import ChildSpec, SupervisorSpec
from headwater.transport._messages import MessageRegistry

__all__ = ["ACTOR_REF_CHECKS", "KIT_REGISTRY", "check_actor_refs"]

KIT_REGISTRY = MessageRegistry("actor-kit")
"""The registry of the kit's messages (serve and connect with it)."""


@KIT_REGISTRY.message("kit.put")
@attrs.frozen
class Put:
    """Append ``value`` to the target's list."""

    value: int


@KIT_REGISTRY.message("kit.get")
@attrs.frozen
class Get:
    """Ask the target for its list (a plain reply)."""


@KIT_REGISTRY.message("kit.echo")
@attrs.frozen
class Echo:
    """Ask: the target replies with this very message (a registered reply)."""

    text: str


@KIT_REGISTRY.message("kit.fail")
@attrs.frozen
class Fail:
    """Ask: the target raises ``usage`` (InvalidArgument), ``storage``
    (StorageError, a crash) or ``other`` (KeyError, a crash)."""

    kind: str


@KIT_REGISTRY.message("kit.sleep")
@attrs.frozen
class Sleep:
    """The target sleeps ``seconds`` before answering."""

    seconds: float


@KIT_REGISTRY.message("kit.hold")
@attrs.frozen
class Hold:
    """The target waits until the kit's gate opens."""


@attrs.define
class _Shared:
    gate: trio.Event = attrs.field(factory=trio.Event)
    downs: list[Down] = attrs.field(factory=list)
    got_down: trio.Event = attrs.field(factory=trio.Event)


class _Target(Actor):
    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.values: list[int] = []

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Put):
            self.values.append(message.value)
            return None
        if isinstance(message, Get):
            return list(self.values)
        if isinstance(message, Echo):
            return message
        if isinstance(message, Fail):
            if message.kind == "usage":
                raise InvalidArgument(f"bad kind {message.kind!r}")
            if message.kind == "storage":
                raise StorageError("the disk broke")
            raise KeyError(message.kind)
        if isinstance(message, Sleep):
            await trio.sleep(message.seconds)
            return message.seconds
        if isinstance(message, Hold):
            await self.shared.gate.wait()
            return None
        return await super().handle(message)


@attrs.frozen
class _Watch:
    ref: ActorRef


class _Watcher(Actor):
    """Monitors the refs it is given (via its own context) and records Downs."""

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared

    async def handle(self, message: Any) -> Any:
        if isinstance(message, _Watch):
            await self.context.monitor(message.ref)
            return None
        if isinstance(message, Down):
            self.shared.downs.append(message)
            self.shared.got_down.set()
            return None
        return await super().handle(message)


GetRef = Callable[[str], Awaitable[ActorRef]]
Maker = Callable[[ActorSystem], AbstractAsyncContextManager[GetRef]]
Check = Callable[[ActorSystem, GetRef, _Shared], Awaitable[None]]

TARGET = "/kit/target"


async def _tell_then_ask_in_order(system: ActorSystem, get: GetRef, shared: _Shared) -> None:
    """Awaited tells arrive in order; ask returns the plain reply."""
    ref = await get(TARGET)
    for i in range(10):
        await ref.tell(Put(i))
    assert list(range(10)) == await ref.ask(Get())
    assert ref.path == TARGET


async def _registered_reply(system: ActorSystem, get: GetRef, shared: _Shared) -> None:
    """An ask's reply may be a registered message; many asks may be in flight."""
    ref = await get(TARGET)
    assert Echo("héllo") == await ref.ask(Echo("héllo"))
    replies: dict[int, Any] = {}

    async def one(i: int) -> None:
        replies[i] = await ref.ask(Echo(str(i)))

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(one, i)
    assert {i: Echo(str(i)) for i in range(40)} == replies


async def _errors_cross_as_themselves(system: ActorSystem, get: GetRef, shared: _Shared) -> None:
    """HeadwaterErrors arrive as themselves, others as ActorFailed; the actor
    keeps serving after a usage error and after its restarts."""
    ref = await get(TARGET)
    for kind, expected in (("usage", InvalidArgument), ("storage", StorageError)):
        try:
            await ref.ask(Fail(kind))
        except expected:
            pass
        else:
            raise AssertionError(f"Fail({kind!r}) did not raise {expected.__name__}")
    error_type = ""
    try:
        await ref.ask(Fail("other"))
    except ActorFailed as exc:
        error_type = exc.error_type
    assert error_type == "KeyError", "Fail('other') did not raise ActorFailed(KeyError)"
    assert Echo("alive") == await ref.ask(Echo("alive"))


async def _ask_timeout(system: ActorSystem, get: GetRef, shared: _Shared) -> None:
    """An ask not answered in time raises HeadwaterTimeoutError."""
    ref = await get(TARGET)
    start = trio.current_time()
    try:
        await ref.ask(Sleep(0.6), timeout=0.1)
    except HeadwaterTimeoutError:
        pass
    else:
        raise AssertionError("the ask did not time out")
    assert trio.current_time() - start < 0.5
    assert await ref.ask(Sleep(0.6), timeout=5) == 0.6  # answered in time


async def _tell_backpressure(system: ActorSystem, get: GetRef, shared: _Shared) -> None:
    """tell completes only once the message is in the mailbox: with the
    actor held and its mailbox (size 1) full, a tell times out; after the
    gate opens, tells complete again."""
    ref = await get(TARGET)
    await ref.tell(Hold())  # taken out of the mailbox, blocks the actor
    await trio.sleep(0.05)
    await ref.tell(Put(1))  # fills the one-slot mailbox
    try:
        await ref.tell(Put(2), timeout=0.1)
    except HeadwaterTimeoutError:
        pass
    else:
        raise AssertionError("tell completed although the mailbox was full")
    shared.gate.set()
    await ref.tell(Put(3), timeout=5)
    got = await ref.ask(Get())
    assert got[0] == 1
    assert got[-1] == 3


async def _stopped_and_not_found(system: ActorSystem, get: GetRef, shared: _Shared) -> None:
    """A ref to an actor stopped for good raises ActorStopped at once; an
    unknown path raises ActorNotFound."""
    ref = await get(TARGET)
    await system.stop_child(TARGET)
    for call in (lambda: ref.tell(Put(1)), lambda: ref.ask(Get())):
        try:
            await call()
        except ActorStopped:
            pass
        else:
            raise AssertionError("a stopped actor accepted a message")
    try:
        await get("/kit/nobody")
    except ActorNotFound:
        pass
    else:
        raise AssertionError("an unknown path was found")


async def _monitor_fires_on_stop_not_restart(
    system: ActorSystem, get: GetRef, shared: _Shared
) -> None:
    """A monitor survives a restart and fires once, 'stopped', on a stop for
    good; a monitor set up afterwards fires at once."""
    ref = await get(TARGET)
    monitor = await ref.monitor()
    try:
        await ref.ask(Fail("other"))
    except ActorFailed:
        pass
    assert Echo("back") == await ref.ask(Echo("back"))
    await trio.sleep(0.05)
    assert monitor.down is None
    await system.stop_child(TARGET)
    with trio.fail_after(5):
        down = await monitor.wait()
    assert (down.reason, down.path) == ("stopped", TARGET)
    assert down.ref is ref
    late = await ref.monitor()
    with trio.fail_after(5):
        assert (await late.wait()).reason == "stopped"


async def _demonitor(system: ActorSystem, get: GetRef, shared: _Shared) -> None:
    """A cancelled monitor never fires and its wait raises ClosedError; other
    monitors of the same actor still fire."""
    ref = await get(TARGET)
    cancelled = await ref.monitor()
    kept = await ref.monitor()
    cancelled.cancel()
    cancelled.cancel()  # idempotent
    await trio.sleep(0.05)
    await system.stop_child(TARGET)
    with trio.fail_after(5):
        assert (await kept.wait()).reason == "stopped"
    try:
        await cancelled.wait()
    except ClosedError:
        pass
    else:
        raise AssertionError("a cancelled monitor fired")
    assert cancelled.down is None


async def _actor_gets_down_message(system: ActorSystem, get: GetRef, shared: _Shared) -> None:
    """An actor's context.monitor delivers Down to its own mailbox."""
    ref = await get(TARGET)
    await system.lookup("/kit/watcher").ask(_Watch(ref))
    await system.stop_child(TARGET)
    with trio.fail_after(5):
        await shared.got_down.wait()
    assert [(d.reason, d.path) for d in shared.downs] == [("stopped", TARGET)]


ACTOR_REF_CHECKS: tuple[Check, ...] = (
    _tell_then_ask_in_order,
    _registered_reply,
    _errors_cross_as_themselves,
    _ask_timeout,
    _tell_backpressure,
    _stopped_and_not_found,
    _monitor_fires_on_stop_not_restart,
    _demonitor,
    _actor_gets_down_message,
)
"""Every check of the kit, in the order :func:`check_actor_refs` runs them."""


async def check_actor_refs(maker: Maker, *, checks: tuple[Check, ...] = ACTOR_REF_CHECKS) -> None:
    """Run the conformance ``checks`` against the refs ``maker`` yields.

    Raises ``AssertionError`` (naming the check) on the first failure.
    """
    for check in checks:
        shared = _Shared()
        kit = SupervisorSpec(
            "kit",
            children=(
                ChildSpec("target", lambda s=shared: _Target(s), shutdown=0.5, mailbox_size=1),
                ChildSpec("watcher", lambda s=shared: _Watcher(s)),
            ),
            max_restarts=100,
        )
        async with open_actor_system("kit", children=(kit,), max_restarts=100) as system:
            async with maker(system) as get:
                try:
                    await check(system, get, shared)
                except AssertionError as exc:
                    raise AssertionError(f"{check.__name__}: {exc}") from exc
            shared.gate.set()
