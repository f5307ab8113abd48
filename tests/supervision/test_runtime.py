"""The supervision runtime on virtual time: strategies, restart types,
intensity, escalation, shutdown order and timeouts, dynamic children."""

from __future__ import annotations

import errno
import math
from typing import Any

import pytest
import trio
import trio.testing

from headwater import (
    ActorFailed,
    ActorKilled,
    ActorStopped,
    ConfigError,
    CorruptionError,
    SupervisorGaveUp,
)
from headwater.actors import Actor, open_actor_system
from headwater.supervision import ChildSpec, SupervisorSpec
from headwater.testing import capture_logs


class Recorder:
    """Collects (time, what, who) tuples from the workers under test."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []

    def add(self, what: str, who: str) -> None:
        self.events.append((trio.current_time(), what, who))

    def of(self, what: str) -> list[str]:
        return [who for _, kind, who in self.events if kind == what]


class Worker(Actor):
    """Records starts and stops; crashes on "crash", exits normally on "exit"."""

    def __init__(self, rec: Recorder, name: str) -> None:
        self.rec = rec
        self.name = name

    async def started(self) -> None:
        self.rec.add("start", self.name)

    async def handle(self, message: Any) -> Any:
        if message == "crash":
            raise OSError(errno.EIO, f"{self.name} crashed")
        if message == "exit":
            self.context.stop()
            return None
        return (self.name, message)

    async def stopping(self) -> None:
        self.rec.add("stop", self.name)


def worker(rec: Recorder, name: str, **kw: Any) -> ChildSpec:
    return ChildSpec(name, lambda: Worker(rec, name), **kw)


async def test_restarts_with_backoff_then_escalates(autojump_clock: trio.abc.Clock) -> None:
    """The STYLE.md sketch: exact restart schedule, then a typed give-up with its cause."""
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(trio.current_time())
        raise OSError(errno.EIO, "disk on fire")

    spec = ChildSpec("p0", flaky, restart="permanent")
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_actor_system(max_restarts=3, within=5.0, backoff=0.1) as system:
            await system.start_child(spec)
            await trio.sleep_forever()

    assert pytest.approx([0.0, 0.1, 0.3, 0.7]) == starts
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize(
    ("strategy", "expected_restarted"),
    [
        ("one_for_one", ["b"]),
        ("one_for_all", ["a", "b", "c"]),
        ("rest_for_one", ["b", "c"]),
    ],
)
async def test_strategy_restart_sets(
    autojump_clock: trio.abc.Clock, strategy: str, expected_restarted: list[str]
) -> None:
    """Crashing b restarts exactly the strategy's set; siblings stop in reverse order."""
    rec = Recorder()
    sup = SupervisorSpec(
        "sup",
        [worker(rec, "a"), worker(rec, "b"), worker(rec, "c")],
        strategy=strategy,  # type: ignore[arg-type]
    )
    async with open_actor_system() as system:
        await system.start_child(sup)
        assert ["a", "b", "c"] == rec.of("start")
        rec.events.clear()
        with pytest.raises(ActorFailed):
            await system.lookup("/sup/b").ask("crash")
        await trio.testing.wait_all_tasks_blocked()
        assert expected_restarted == rec.of("start")
        stopped_siblings = [n for n in reversed(expected_restarted) if n != "b"]
        assert stopped_siblings == rec.of("stop")
        assert "running" == system.tree().walk()[1].state


@pytest.mark.parametrize(
    ("restart", "message", "restarted"),
    [
        ("permanent", "crash", True),
        ("permanent", "exit", True),
        ("transient", "crash", True),
        ("transient", "exit", False),
        ("temporary", "crash", False),
        ("temporary", "exit", False),
    ],
)
async def test_restart_types(
    autojump_clock: trio.abc.Clock, restart: str, message: str, restarted: bool
) -> None:
    """Each restart type with a normal and an abnormal exit."""
    rec = Recorder()
    async with open_actor_system() as system:
        ref = await system.start_child(worker(rec, "w", restart=restart))  # type: ignore[arg-type]
        try:
            await ref.ask(message)
        except ActorFailed:
            pass
        await trio.testing.wait_all_tasks_blocked()
        assert (["w", "w"] if restarted else ["w"]) == rec.of("start")
        if restarted:
            assert ("w", 1) == await ref.ask(1)
        else:
            with pytest.raises(ActorStopped):
                await ref.ask(1)


async def test_escalation_through_two_levels(autojump_clock: trio.abc.Clock) -> None:
    """A child exceeding its supervisor's intensity fails the supervisor; the
    parent restarts it, until the parent gives up too and the root stops."""
    rec = Recorder()
    inner = SupervisorSpec("inner", [worker(rec, "w")], max_restarts=1, within=10.0)
    outer = SupervisorSpec("outer", [inner], max_restarts=1, within=10.0)
    with capture_logs() as logs, pytest.raises(SupervisorGaveUp) as info:
        async with open_actor_system(max_restarts=0) as system:
            await system.start_child(outer)
            for _ in range(10):
                try:
                    await system.lookup("/outer/inner/w").ask("crash")
                except ActorFailed:
                    pass
                await trio.testing.wait_all_tasks_blocked()
    # w: start, restart (inner ok), crash -> inner gives up -> outer restarts
    # inner (w starts again), crash, restart, crash -> inner gives up again ->
    # outer gives up -> root (max_restarts=0) gives up.
    assert 4 == len(rec.of("start"))
    cause = info.value.__cause__
    assert isinstance(cause, SupervisorGaveUp)
    assert isinstance(cause.__cause__, SupervisorGaveUp)
    assert isinstance(cause.__cause__.__cause__, OSError)
    gave_up = [e["actor"] for e in logs if e["event"] == "supervisor_gave_up"]
    assert ["/outer/inner", "/outer/inner", "/outer", "/"] == gave_up


async def test_shutdown_order_and_timeout(autojump_clock: trio.abc.Clock) -> None:
    """Leaving the system stops children in reverse start order; a child whose
    stopping hook hangs is cancelled after its shutdown timeout."""
    rec = Recorder()

    class Stuck(Worker):
        async def stopping(self) -> None:
            rec.add("stop", self.name)
            await trio.sleep_forever()

    specs = [
        worker(rec, "a"),
        ChildSpec("b", lambda: Stuck(rec, "b"), shutdown=2.0),
        worker(rec, "c"),
    ]
    async with open_actor_system(children=tuple(specs)):
        pass
    stops = [(t, who) for t, what, who in rec.events if what == "stop"]
    assert [(0.0, "c"), (0.0, "b"), (2.0, "a")] == stops


async def test_nested_shutdown_is_depth_first(autojump_clock: trio.abc.Clock) -> None:
    """A nested supervisor stops its own children (reverse order) in its turn."""
    rec = Recorder()
    sup = SupervisorSpec("s", [worker(rec, "s1"), worker(rec, "s2")])
    async with open_actor_system(children=(worker(rec, "a"), sup, worker(rec, "z"))):
        pass
    assert ["z", "s2", "s1", "a"] == rec.of("stop")


async def test_dynamic_children(autojump_clock: trio.abc.Clock) -> None:
    """Children can be added to and removed from a running supervisor."""
    rec = Recorder()
    async with open_actor_system() as system:
        await system.start_child(SupervisorSpec("topics"))
        for i in range(3):
            await system.start_child(worker(rec, f"t{i}"), parent="/topics")
        tree = system.tree()
        assert ["/", "/topics", "/topics/t0", "/topics/t1", "/topics/t2"] == [
            n.path for n in tree.walk()
        ]
        ref = system.lookup("/topics/t1")
        await system.stop_child("/topics/t1")
        assert ["t1"] == rec.of("stop")
        with pytest.raises(ActorStopped):
            await ref.tell("x")
        assert ["/topics/t0", "/topics/t2"] == [n.path for n in system.tree().walk()[2:]]


async def test_kill_restarts_and_ref_survives(autojump_clock: trio.abc.Clock) -> None:
    """kill(path) is a crash: the supervisor restarts the actor and old refs reach the new one."""
    rec = Recorder()
    with capture_logs() as logs:
        async with open_actor_system(backoff=1.0) as system:
            ref = await system.start_child(worker(rec, "w"))
            await system.kill("/w", reason="chaos")
            # The ask waits through the 1 s backoff and reaches the new incarnation.
            assert ("w", "hi") == await ref.ask("hi")
            assert 1.0 == trio.current_time()
            node = system.tree().children[0]
            assert (1, 2) == (node.restarts, node.incarnation)
            assert node.last_failure is not None
            assert node.last_failure.startswith("ActorKilled")
    events = [(e["event"], e.get("actor")) for e in logs]
    assert ("actor_crashed", "/w") in events
    assert ("actor_restarted", "/w") in events
    crashed = next(e for e in logs if e["event"] == "actor_crashed")
    assert isinstance(crashed["exc_info"], ActorKilled)


async def test_no_task_left_after_close(autojump_clock: trio.abc.Clock) -> None:
    """Closing the system leaves no task of its own running."""
    rec = Recorder()

    class Ticker(Worker):
        async def started(self) -> None:
            await super().started()
            self.context.nursery.start_soon(trio.sleep_forever)

    def all_tasks() -> set[trio.lowlevel.Task]:
        found: set[trio.lowlevel.Task] = set()
        stack = [trio.lowlevel.current_root_task()]
        while stack:
            task = stack.pop()
            found.add(task)
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        return found

    before = all_tasks()
    async with open_actor_system(children=(ChildSpec("t", lambda: Ticker(rec, "t")),)):
        assert len(all_tasks()) > len(before) + 2
    assert before == all_tasks()


async def test_start_failure_counts_as_crash(autojump_clock: trio.abc.Clock) -> None:
    """A started() hook that raises is a crash subject to intensity."""
    attempts: list[float] = []

    class Broken(Actor):
        async def started(self) -> None:
            attempts.append(trio.current_time())
            raise RuntimeError("cannot open")

    with pytest.raises(SupervisorGaveUp) as info:
        async with open_actor_system(max_restarts=2, within=math.inf) as system:
            await system.start_child(ChildSpec("b", Broken))
            await trio.sleep_forever()
    assert 3 == len(attempts)
    assert isinstance(info.value.__cause__, RuntimeError)


async def test_ref_survives_parent_supervisor_restart(autojump_clock: trio.abc.Clock) -> None:
    """When a supervisor gives up and its parent restarts it, refs to its children
    reach the children of the new incarnation."""
    rec = Recorder()
    inner = SupervisorSpec("p", [worker(rec, "a"), worker(rec, "b")], max_restarts=0)
    async with open_actor_system(max_restarts=1, within=10.0, children=(inner,)) as system:
        ref = system.lookup("/p/b")
        with pytest.raises(ActorFailed):
            await ref.ask("crash")
        assert ("b", "hi") == await ref.ask("hi")
        node = system.tree().children[0]
        assert (1, 2) == (node.restarts, node.incarnation)
        assert ["a", "b", "a", "b"] == rec.of("start")


async def test_backoff_longer_than_the_window_still_gives_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    """DECISIONS #16: time in backoff is not running time. A child crashing at
    every start with a backoff (1 s, doubling) longer than within/max_restarts
    restarts exactly 3 times, then its supervisor gives up (it used to restart
    for ever: a damaged partition restarted 86 times)."""
    starts: list[float] = []

    async def broken() -> None:
        starts.append(trio.current_time())
        raise OSError(errno.EIO, "cannot open")

    with trio.fail_after(120), pytest.raises(SupervisorGaveUp) as info:
        async with open_actor_system(max_restarts=3, within=1.0, backoff=1.0) as system:
            await system.start_child(ChildSpec("p", broken))
            await trio.sleep_forever()
    assert [0.0, 1.0, 3.0, 7.0] == starts
    assert ("/p", 3) == (info.value.child, info.value.restarts)


async def test_gave_up_names_the_crashing_child_and_its_own_restarts(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Point 4: under one_for_all, a crash of a then two of c exhaust the
    intensity at c's crash: the error names c and counts c's own restart (1),
    not the supervisor's (2)."""
    rec = Recorder()
    sup = SupervisorSpec(
        "sup",
        [worker(rec, "a"), worker(rec, "b"), worker(rec, "c")],
        strategy="one_for_all",
        max_restarts=2,
        within=10.0,
    )
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_actor_system(max_restarts=0, children=(sup,)) as system:
            for who in ("a", "c", "c"):
                with pytest.raises(ActorFailed):
                    await system.lookup(f"/sup/{who}").ask("crash")
                await trio.testing.wait_all_tasks_blocked()
            await trio.sleep_forever()
    cause = info.value.__cause__
    assert isinstance(cause, SupervisorGaveUp)
    assert ("/sup/c", 1) == (cause.child, cause.restarts)
    assert "child 'c' failed after 1 restart(s) of its own (2 in this supervisor" in str(cause)
    assert "last failure of /sup/c: OSError: [Errno 5] c crashed" in str(cause)


async def test_on_give_up_fail_parks_the_child_and_siblings_serve(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A child with on_give_up="fail" that exhausts the intensity is parked as
    failed: asks and tells raise its last error at once (a HeadwaterError as
    itself, others as ActorFailed), the tree says failed with the reason, the
    supervisor does not give up and its siblings keep serving and restarting."""
    rec = Recorder()
    attempts: list[float] = []

    class Damaged(Actor):
        async def started(self) -> None:
            attempts.append(trio.current_time())
            raise CorruptionError("/d/0.log: corrupt data at byte 162")

    class Odd(Actor):
        async def handle(self, message: Any) -> Any:
            raise ValueError("odd")

    with pytest.raises(ConfigError, match="on_give_up='park'"):
        ChildSpec("0", Damaged, on_give_up="park")  # type: ignore[arg-type]
    sup = SupervisorSpec(
        "t",
        [
            ChildSpec("0", Damaged, on_give_up="fail"),
            ChildSpec("1", Odd, on_give_up="fail"),
            worker(rec, "2"),
        ],
        max_restarts=3,
        within=10.0,
        backoff=0.1,
    )
    async with open_actor_system(children=(sup,)) as system:
        ref = system.lookup("/t/0")
        with trio.fail_after(5):  # waits out the restarts, then fails at once
            with pytest.raises(CorruptionError, match="byte 162"):
                await ref.ask("hello", timeout=None)
        assert pytest.approx([0.0, 0.1, 0.3, 0.7]) == attempts
        start = trio.current_time()
        for _ in range(3):
            with pytest.raises(CorruptionError, match="byte 162"):
                await ref.ask("again")
            with pytest.raises(CorruptionError):
                await ref.tell("again")
            with pytest.raises(CorruptionError):
                ref.tell_nowait("again")
        assert start == trio.current_time()
        for _ in range(5):  # 4 crashes (3 restarts), then the parked answer
            with pytest.raises(ActorFailed, match="odd") as odd:
                await system.lookup("/t/1").ask("x")
            assert "ValueError" == odd.value.error_type
        nodes = {n.path: n for n in system.tree().walk()}
        assert "failed" == nodes["/t/0"].state
        assert nodes["/t/0"].last_failure == "CorruptionError: /d/0.log: corrupt data at byte 162"
        assert "failed" == nodes["/t/1"].state
        assert "running" == nodes["/t"].state
        # The parked children's crashes no longer count: the sibling restarts.
        for _ in range(3):
            with pytest.raises(ActorFailed):
                await system.lookup("/t/2").ask("crash")
            assert ("2", "hi") == await system.lookup("/t/2").ask("hi")
        assert "running" == system.tree().walk()[0].state


async def test_a_parked_child_gets_a_new_start_when_its_supervisor_restarts(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Parked is final for its supervisor's incarnation only: when the
    supervisor itself is restarted by its parent, the parked child is started
    again, and the old ref reaches it."""
    rec = Recorder()
    opens: list[float] = []

    class Flaky(Actor):
        async def started(self) -> None:
            opens.append(trio.current_time())
            if len(opens) <= 2:
                raise CorruptionError("damaged")

        async def handle(self, message: Any) -> Any:
            return ("p", message)

    inner = SupervisorSpec(
        "inner", [ChildSpec("p", Flaky, on_give_up="fail"), worker(rec, "w")], max_restarts=1
    )
    async with open_actor_system(max_restarts=1, children=(inner,)) as system:
        ref = system.lookup("/inner/p")
        with pytest.raises(CorruptionError):
            await ref.ask("x", timeout=None)
        assert 2 == len(opens)
        for _ in range(2):  # w exhausts inner's intensity: the root restarts inner
            with pytest.raises(ActorFailed):
                await system.lookup("/inner/w").ask("crash")
            await trio.testing.wait_all_tasks_blocked()
        assert 3 == len(opens)
        assert ("p", "x") == await ref.ask("x")
        assert "running" == next(n for n in system.tree().walk() if n.path == "/inner/p").state
