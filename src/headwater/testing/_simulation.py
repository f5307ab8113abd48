"""Deterministic simulation: a whole embedded broker under faults, from a seed.

Theory of operation
-------------------
:func:`run_seed` runs one scenario in a fresh ``trio.run`` under
``MockClock(autojump_threshold=0)``, on a :class:`SimulatedFileSystem`. Every
choice comes from the seed: ``random.Random`` streams (one per actor of the
scenario, derived from the seed and a name) for the schedule, and Trio's own
scheduler randomness (``trio._core._run._r``, the hook Trio's Hypothesis
plugin uses), seeded the same way with deterministic scheduling switched on.

A scenario is a number of *rounds*; each opens the broker (recovering from
the disk), runs idempotent producers and a consumer group, and a chaos task
that kills random actors (any path in the tree, some while an fsync is in
flight), fails fsyncs, fills the disk for a while, makes consumers join,
leave and seek. A round ends with a clean close, or with a power loss
(``crash_after`` then ``crash(torn=...)``) or, in ``process_kill_share`` of
those rounds, a process kill at that file operation (``crash_after`` then
``crash(process_only=True)``: what was written stays). Everything clients see goes into a
:class:`~headwater.testing.History`; after the last round a clean reopen reads
every partition and :func:`~headwater.testing.check` judges I1-I6.

Transactions (``SimulationConfig.transactions``): a *copier* reads the topic
in its own group and, per batch, writes one output event per input to the
two partitions of ``out`` and sends its offsets in one transaction (some
aborted on purpose); after an abort or an error it starts again from the
group's committed offsets, as an application would. Its transactional id is
the same in every round, so each round's copier fences the last one's. A
chaos step may start a second copier with the same id at once (a zombie
pair), or kill the transaction coordinator or an ``out`` partition at the
coordinator's next fsync (mid-commit). A read_committed reader follows
``out``; the final reopen waits out the transaction timeout and reads
``out`` read_committed for I6 (and flags a partition whose last stable
offset stays below its end: a hanging transaction).

Every handled actor message is traced as ``(virtual time, actor path, message
type, outcome)`` (:func:`headwater.actors.tracing`); the trace and the
history are hashed. Running a seed twice must give the same hash, or some
nondeterminism leaked in (set ``PYTHONHASHSEED`` to rerun across processes:
the soak command does).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from typing import Any

import attrs
import cbor2
import trio
import trio.testing

from headwater import _protocol as p
from headwater._errors import ConnectionLostError, HeadwaterError, ProducerFencedError
from headwater.actors._system import tracing
from headwater.broker._broker import Broker, open_broker
from headwater.client._channel import LocalChannel
from headwater.client._client import Client
from headwater.journal._batch import decode_record_events
from headwater.journal._files import PowerLoss, SimulatedFileSystem
from headwater.journal._record import iter_records

from ._checker import CheckReport, History, Violation, check

__all__ = [
    "SimulationConfig",
    "SimulationResult",
    "rerun_command",
    "run_seed",
    "simulate",
]

DATA = "/data"
TOPIC = "t"
GROUP = "g"
OUT = "out"
COPY_GROUP = "copy"
COPIER_ID = "copier"
TXN_TIMEOUT = 5.0


@attrs.frozen
class SimulationConfig:
    """How big one simulated scenario is."""

    rounds: int = 4
    partitions: int = 3
    producers: int = 2
    events_per_producer: int = 30
    chaos_steps: int = 6
    power_loss_chance: float = 0.35
    process_kill_share: float = 0.3
    """Of the rounds that end in a crash at a file operation, the share that
    is a process kill (what was written stays) instead of a power loss."""
    round_timeout: float = 600.0
    transactions: bool = True
    txn_abort_chance: float = 0.2


@attrs.frozen
class SimulationResult:
    """What one seed did and what the checker said."""

    seed: int
    report: CheckReport
    trace_hash: str
    trace_length: int
    faults: dict[str, int]
    rounds: int
    recovery_times: tuple[float, ...]
    virtual_seconds: float

    @property
    def ok(self) -> bool:
        """True when every invariant held."""
        return self.report.ok


def rerun_command(seed: int) -> str:
    """The shell command that reruns one seed."""
    return f"PYTHONHASHSEED=0 python -m headwater.testing.soak --seed {seed}"


def _seed_trio_scheduler(seed: int) -> None:
    # Trio's Hypothesis plugin does exactly this: deterministic batches, then a
    # shuffle from a seedable Random. Both are private, so fail loudly if gone.
    from trio._core import _run

    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _run._r.seed(seed)


def run_seed(seed: int, config: SimulationConfig | None = None) -> SimulationResult:
    """Run one seed in a fresh Trio run under a MockClock (blocking)."""
    _seed_trio_scheduler(seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(simulate, seed, config or SimulationConfig(), clock=clock)


async def simulate(seed: int, config: SimulationConfig) -> SimulationResult:
    """Run one seeded scenario in the current Trio run (use a MockClock)."""
    sim = _Simulation(seed, config)
    trace: list[tuple[float, str, str, str]] = []

    def hook(t: float, path: str, message: str, outcome: str) -> None:
        trace.append((round(t, 9), path, message, outcome))

    with tracing(hook):
        for r in range(config.rounds):
            await sim.round(r)
        final = await sim.final_contents()
    report = check(sim.history, final, committed_view=sim.committed_view)
    if sim.errors or sim.hanging:
        report = CheckReport(
            report.acked_checked,
            report.lost,
            report.duplicates,
            report.violations
            + tuple(Violation("I6", e) for e in sim.hanging)
            + tuple(Violation("harness", e) for e in sim.errors),
        )
    digest = hashlib.sha256()
    for item in trace:
        digest.update(repr(item).encode())
    for op in sim.history.ops:
        digest.update(repr(op).encode())
    return SimulationResult(
        seed=seed,
        report=report,
        trace_hash=digest.hexdigest(),
        trace_length=len(trace),
        faults=dict(sim.faults),
        rounds=config.rounds,
        recovery_times=tuple(sim.recovery),
        virtual_seconds=trio.current_time(),
    )


def _all_tasks() -> list[trio.lowlevel.Task]:
    out: list[trio.lowlevel.Task] = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        out.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return out


def _actor_path(file_path: str) -> str | None:
    """The actor that owns a journal file (for kills during its fsync)."""
    rest = file_path[len(DATA) :].strip("/").split("/")
    if rest[0] == "topics" and len(rest) >= 3:
        return f"/broker/topics/{rest[1]}/{rest[2]}"
    if rest[:2] == ["meta", "groups"] and len(rest) >= 3:
        return f"/broker/groups/{rest[2]}"
    if rest[:2] == ["meta", "topics"]:
        return "/broker/registry"
    if rest[:2] == ["meta", "__transactions"]:
        return "/broker/transactions"
    return None


class _Consumer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stop = trio.Event()
        self.handle: Any = None  # the live headwater Consumer, once entered
        self.seeks: list[tuple[float, str, int, str, int, int]] = []


class _Simulation:
    def __init__(self, seed: int, config: SimulationConfig) -> None:
        self.seed = seed
        self.config = config
        self.fs = SimulatedFileSystem(seed=seed)
        self.history = History()
        self.faults: Counter[str] = Counter()
        self.recovery: list[float] = []
        self.errors: list[str] = []
        self.consumers: list[_Consumer] = []
        self._consumer_count = 0
        self._fsync_kill: str | None = None
        self.hanging: list[str] = []
        self.committed_view: dict[tuple[str, int], list[tuple[int, str | None]]] = {}
        self._copiers = 0
        self._round_over = trio.Event()

    def rng(self, *names: object) -> random.Random:
        return random.Random("/".join([str(self.seed), *map(str, names)]))

    @staticmethod
    def now() -> float:
        return trio.current_time()

    @staticmethod
    def clock_ms() -> int:
        return int(trio.current_time() * 1000) + 1_700_000_000_000

    # ------------------------------------------------------------ rounds

    async def round(self, r: int) -> None:
        rng = self.rng("round", r)
        power_loss = rng.random() < self.config.power_loss_chance
        baseline = set(_all_tasks())
        broker_died: list[BaseException] = []
        try:
            with trio.fail_after(self.config.round_timeout):
                await self._run_round(r, rng, power_loss, broker_died)
        except trio.TooSlowError:
            self.errors.append(f"round {r} hung for {self.config.round_timeout}s (virtual)")
        except BaseException as exc:
            if not (power_loss and _only(exc, (PowerLoss, HeadwaterError))):
                if not _only(exc, (HeadwaterError,)):
                    raise
                self.errors.append(f"round {r}: broker failed: {_describe(exc)}")
        self.fs.fsync_hook = None
        self._fsync_kill = None
        if power_loss:
            torn = rng.random() < 0.5
            # Its own stream: the other draws (and so older seeds' runs) stay.
            if self.rng("process-kill", r).random() < self.config.process_kill_share:
                self.fs.crash(process_only=True)
                self.faults["process_kill_at_file_op"] += 1
            else:
                self.fs.crash(torn=torn)
                self.faults["power_loss_torn" if torn else "power_loss"] += 1
            self.history.shutdown(self.now(), (), self._leaked(baseline))
        else:
            self.history.shutdown(self.now(), self.fs.open_paths(), self._leaked(baseline))
        self.consumers = []

    def _leaked(self, baseline: set[trio.lowlevel.Task]) -> list[str]:
        return sorted(t.name for t in _all_tasks() if t not in baseline)

    async def _run_round(
        self, r: int, rng: random.Random, power_loss: bool, died: list[BaseException]
    ) -> None:
        opened = self.now()
        lossy = self.rng("network", r)

        async def handler(request: Any) -> Any:
            # The network between client and broker loses some produce
            # requests and some responses (the request then took effect):
            # retries must be stored once (idempotence).
            if isinstance(request, p.Produce) and lossy.random() < 0.03:
                self.faults["lost_request"] += 1
                raise ConnectionLostError("simulated: the request was lost")
            response = await broker.handle(request)
            if isinstance(request, p.Produce) and lossy.random() < 0.06:
                self.faults["lost_response"] += 1
                raise ConnectionLostError("simulated: the response was lost")
            return response

        async with (
            open_broker(DATA, fs=self.fs, clock=self.clock_ms) as broker,
            Client(LocalChannel(handler)) as client,
        ):
            if r == 0:
                await client.create_topic(TOPIC, partitions=self.config.partitions)
                if self.config.transactions:
                    await client.create_topic(OUT, partitions=2)
            else:
                self.faults["reopen"] += 1
            self._round_over = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._probe, client, 0, opened, "reopen" if r else "")
                for _c in range(rng.randrange(1, 3)):
                    self._start_consumer(nursery, client)
                if self.config.transactions:
                    nursery.start_soon(self._copier, client, r)
                    nursery.start_soon(self._committed_reader, client, r)
                async with trio.open_nursery() as producers:
                    for k in range(self.config.producers):
                        producers.start_soon(self._producer, client, r, k)
                    await self._chaos(broker, client, nursery, r, rng, power_loss)
                for consumer in self.consumers:
                    consumer.stop.set()
                self._round_over.set()

    # ------------------------------------------------------------ actors

    async def _producer(self, client: Any, r: int, k: int) -> None:
        handles: list[tuple[str, Any]] = []
        try:
            await self._produce(client, r, k, handles)
        except Exception as exc:
            # Starting or closing a producer can fail under faults (its events
            # then have unknown outcomes); not an invariant, but counted.
            if not _only(exc, (HeadwaterError,)):
                raise
            self.faults[f"producer_error:{_leaf(exc)}"] += 1
            for eid, handle in handles:
                if handle.done():
                    await self._settle(eid, handle)

    async def _produce(self, client: Any, r: int, k: int, handles: list[tuple[str, Any]]) -> None:
        rng = self.rng("producer", r, k)
        async with client.producer(
            max_batch_events=rng.choice([1, 4, 16]),
            linger=rng.choice([0.0, 0.005, 0.02]),
            delivery_timeout=20.0,
            retry_backoff=0.02,
            retry_backoff_max=0.5,
            request_timeout=5.0,
            clock=self.clock_ms,
        ) as producer:
            await producer.partitions_of(TOPIC)
            for i in range(self.config.events_per_producer):
                eid = f"r{r}p{k}e{i}"
                self.history.send(eid)
                handles.append(
                    (eid, producer.send_nowait(TOPIC, {"id": eid}, key=f"k{rng.randrange(8)}"))
                )
                if rng.random() < 0.3:
                    await trio.sleep(rng.uniform(0.0, 0.2))
            while handles:
                eid, handle = handles[0]
                await self._settle(eid, handle)
                handles.pop(0)

    async def _settle(self, eid: str, handle: Any) -> bool:
        try:
            event = await handle
        except HeadwaterError as exc:
            self.history.send_failed(self.now(), TOPIC, eid, type(exc).__name__)
            return False
        self.history.ack(self.now(), event.topic, event.partition, event.offset, eid)
        return True

    async def _probe(self, client: Any, partition: int, since: float, kind: str) -> None:
        """Send one event to ``partition`` until it is stored: the recovery time."""
        if not kind:
            return
        eid = f"probe{self.faults.total()}-{kind}-{since:.6f}"
        self.history.send(eid)
        try:
            await self._probe_once(client, partition, since, eid)
        except Exception as exc:
            if not _only(exc, (HeadwaterError,)):
                raise
            self.faults[f"producer_error:{_leaf(exc)}"] += 1

    async def _probe_once(self, client: Any, partition: int, since: float, eid: str) -> None:
        async with client.producer(
            delivery_timeout=120.0, retry_backoff=0.02, clock=self.clock_ms
        ) as producer:
            try:
                await producer.partitions_of(TOPIC)
            except HeadwaterError as exc:
                self.history.send_failed(self.now(), TOPIC, eid, type(exc).__name__)
                return
            handle = producer.send_nowait(TOPIC, {"id": eid}, partition=partition)
            if await self._settle(eid, handle):
                self.recovery.append(self.now() - since)

    def _start_consumer(self, nursery: trio.Nursery, client: Any) -> None:
        self._consumer_count += 1
        consumer = _Consumer(f"c{self._consumer_count}")
        self.consumers.append(consumer)
        nursery.start_soon(self._consume, client, consumer)

    async def _consume(self, client: Any, me: _Consumer) -> None:
        rng = self.rng("consumer", me.name)
        seen: tuple[str, int] | None = None
        try:
            async with client.consumer(
                [TOPIC],
                group=GROUP,
                start="earliest",
                session_timeout=3.0,
                max_wait=0.2,
                request_timeout=5.0,
                client_id=me.name,
            ) as consumer:
                me.handle = consumer
                while not me.stop.is_set():
                    m = consumer.membership
                    if m is not None and (m.member_id, m.generation) != seen:
                        seen = (m.member_id, m.generation)
                        self.history.assignment(
                            self.now(),
                            GROUP,
                            m.member_id,
                            m.generation,
                            [(tp.topic, tp.partition) for tp in m.assignment],
                        )
                    for e in await consumer.getmany(100, timeout=0.3):
                        eid = e.value.get("id") if isinstance(e.value, dict) else None
                        self.history.read(self.now(), me.name, e.topic, e.partition, e.offset, eid)
                    if rng.random() < 0.4 and m is not None:
                        positions = {
                            tp: pos
                            for tp in consumer.assignment()
                            if (pos := consumer.position(*tp)) is not None
                        }
                        seeks = len(me.seeks)
                        try:
                            await consumer.commit()
                        except HeadwaterError:
                            continue
                        if positions:
                            self.history.commit(
                                self.now(), GROUP, m.member_id, m.generation, positions
                            )
                        # A seek while the commit was in flight came after the
                        # positions it committed: it still resets the next one.
                        for _t, member, _g, topic, partition, offset in me.seeks[seeks:]:
                            self.history.seek(self.now(), GROUP, member, topic, partition, offset)
        except Exception as exc:
            # A consumer may give up (e.g. a timeout joining while the group
            # actor restarts); not an invariant, but counted.
            if not _only(exc, (HeadwaterError,)):
                raise
            self.faults[f"consumer_error:{_leaf(exc)}"] += 1
        finally:
            me.handle = None

    # ------------------------------------------------------------ transactions

    async def _copier(self, client: Any, r: int) -> None:
        """Copy sessions until the round ends: each reads the topic from the
        group's committed offsets and ends at its first abort or error."""
        self._copiers += 1
        name = f"x{self._copiers}"
        session = 0
        while not self._round_over.is_set():
            session += 1
            try:
                await self._copy_session(client, r, f"{name}.{session}")
            except Exception as exc:
                if not _only(exc, (HeadwaterError,)):
                    raise
                self.faults[f"copier_error:{_leaf(exc)}"] += 1
                if _only(exc, (ProducerFencedError,)):
                    return  # a newer copier took over: this one is a zombie
            await trio.sleep(0.1)

    async def _copy_session(self, client: Any, r: int, name: str) -> None:
        rng = self.rng("copier", r, name)
        async with (
            client.consumer(
                [TOPIC],
                group=COPY_GROUP,
                start="earliest",
                session_timeout=1.0,
                max_wait=0.5,
                request_timeout=5.0,
                client_id=name,
            ) as consumer,
            client.producer(
                transactional_id=COPIER_ID,
                transaction_timeout=TXN_TIMEOUT,
                delivery_timeout=20.0,
                retry_backoff=0.02,
                retry_backoff_max=0.5,
                request_timeout=5.0,
                clock=self.clock_ms,
            ) as producer,
        ):
            await producer.partitions_of(OUT)
            batch = 0
            while not self._round_over.is_set():
                # Work in batches (fewer, larger transactions keep seeds fast).
                await trio.sleep(rng.uniform(0.1, 0.6))
                events = await consumer.getmany(rng.choice([5, 20, 50]), timeout=0.3)
                if not events:
                    continue
                batch += 1
                tag = f"r{r}{name}b{batch}"
                outputs: dict[str, str] = {}
                for e in events:
                    eid = e.value.get("id") if isinstance(e.value, dict) else None
                    outputs[f"{tag}/{eid}"] = str(eid)
                positions: dict[tuple[str, int], int] = {}
                for e in events:
                    positions[(e.topic, e.partition)] = e.offset + 1
                abort = rng.random() < self.config.txn_abort_chance
                asked = False
                try:
                    async with producer.transaction():
                        for out_id in outputs:
                            producer.send_nowait(OUT, {"id": out_id}, key=out_id)
                        m = consumer.membership
                        if m is None:
                            raise _Abort
                        await producer.send_offsets(
                            COPY_GROUP, positions, generation=m.generation, member_id=m.member_id
                        )
                        if abort:
                            raise _Abort
                        asked = True
                except _Abort:
                    self.faults["txn_abort"] += 1
                    self.history.transaction(self.now(), name, tag, "aborted", outputs)
                    return  # start again from the committed offsets
                except BaseException:
                    outcome = "unknown" if asked else "aborted"
                    self.history.transaction(self.now(), name, tag, outcome, outputs)
                    raise
                self.faults["txn_commit"] += 1
                self.history.transaction(self.now(), name, tag, "committed", outputs)

    async def _committed_reader(self, client: Any, r: int) -> None:
        """Follow ``out`` read_committed from the start, recording every read."""
        name = f"rc{r}"
        try:
            async with client.consumer(
                [OUT], start="earliest", max_wait=1.0, request_timeout=5.0
            ) as consumer:
                while not self._round_over.is_set():
                    for e in await consumer.getmany(500, timeout=1.0):
                        eid = e.value.get("id") if isinstance(e.value, dict) else None
                        self.history.read(self.now(), name, e.topic, e.partition, e.offset, eid)
        except Exception as exc:
            if not _only(exc, (HeadwaterError,)):
                raise
            self.faults[f"reader_error:{_leaf(exc)}"] += 1

    # ------------------------------------------------------------ chaos

    async def _chaos(
        self,
        broker: Broker,
        client: Any,
        nursery: trio.Nursery,
        r: int,
        rng: random.Random,
        power_loss: bool,
    ) -> None:
        kinds = [
            "kill",
            "kill",
            "kill",
            "kill_in_fsync",
            "kill_in_fsync",
            "fsync_fail",
            "fsync_fail",
            "disk_full",
            "consumer_join",
            "consumer_leave",
            "seek",
        ]
        if self.config.transactions:
            kinds += ["kill_mid_commit", "kill_mid_commit", "zombie_copier"]
        steps = self.config.chaos_steps
        crash_step = rng.randrange(steps) if power_loss else -1
        for step in range(steps):
            await trio.sleep(rng.uniform(0.05, 1.0))
            if step == crash_step:
                self.fs.crash_after(rng.randrange(0, 40))
                # The broker is now doomed: wait for it to trip over the
                # dead disk (or give it a moment), then pull the plug.
                await trio.sleep(rng.uniform(0.05, 1.0))
                raise PowerLoss(f"power loss in round {r}")
            kind = rng.choice(kinds)
            await self._fault(kind, broker, client, nursery, rng)
        await trio.sleep(rng.uniform(0.5, 2.0))
        # A clean close with injected fsync failures still pending would fail
        # (loudly, as it should): that is a storage fault, not this round's.
        self.fs.fail_next_fsyncs(0)

    async def _fault(
        self,
        kind: str,
        broker: Broker,
        client: Any,
        nursery: trio.Nursery,
        rng: random.Random,
    ) -> None:
        now = self.now()
        partition = rng.randrange(self.config.partitions)
        if kind == "kill":
            paths = sorted(n.path for n in broker.tree().walk() if n.path not in ("/",))
            path = rng.choice(paths)
            self.faults["kill"] += 1
            await broker.kill(path, "simulation")
            if path.startswith(f"/broker/topics/{TOPIC}/"):
                partition = int(path.rsplit("/", 1)[1])
        elif kind == "kill_in_fsync":
            # Counted when it lands; aimed at a partition, a group or the registry.
            want = rng.choice(["topics", "topics", "topics", "groups", "registry"])
            self._arm_fsync_kill(broker, nursery, want)
        elif kind == "fsync_fail":
            self.faults["fsync_fail"] += 1
            self.fs.fail_next_fsyncs(rng.randrange(1, 3))
        elif kind == "disk_full":
            self.faults["disk_full"] += 1
            self.fs.set_disk_full(True)
            await trio.sleep(rng.uniform(0.05, 0.8))
            self.fs.set_disk_full(False)
            now = self.now()
        elif kind == "consumer_join":
            self.faults["consumer_join"] += 1
            self._start_consumer(nursery, client)
            return
        elif kind == "consumer_leave":
            live = [c for c in self.consumers if not c.stop.is_set()]
            if live:
                self.faults["consumer_leave"] += 1
                rng.choice(live).stop.set()
            return
        elif kind == "seek":
            self._seek(rng)
            return
        elif kind == "kill_mid_commit":
            # At the coordinator's next fsync (a decision, markers recorded
            # or a completion): kill it or one of the output partitions.
            victim = rng.choice(
                ["/broker/transactions", f"/broker/topics/{OUT}/0", f"/broker/topics/{OUT}/1"]
            )
            self._arm_fsync_kill(broker, nursery, "transactions", victim)
            return
        elif kind == "zombie_copier":
            # A second copier with the same transactional id: it fences the
            # first, whose open transaction is aborted.
            self.faults["zombie_copier"] += 1
            nursery.start_soon(self._copier, client, self._copiers)
            return
        nursery.start_soon(self._probe, client, partition, now, kind)

    def _arm_fsync_kill(
        self, broker: Broker, nursery: trio.Nursery, want: str, victim: str | None = None
    ) -> None:
        def hook(path: str) -> None:
            target = _actor_path(path)
            if target is None or self._fsync_kill is not None or want not in target:
                return
            target = victim or target
            self._fsync_kill = target
            self.fs.fsync_hook = None
            kind = target.split("/")[2] if target.count("/") >= 2 else target
            fault = "kill_in_fsync" if victim is None else "kill_mid_commit"
            self.faults[f"{fault}:{kind}"] += 1

            async def kill() -> None:
                try:
                    await broker.kill(target, "simulation: during fsync")
                except HeadwaterError:
                    pass
                self._fsync_kill = None

            nursery.start_soon(kill)

        self.fs.fsync_hook = hook

    def _seek(self, rng: random.Random) -> None:
        live = [c for c in self.consumers if c.handle is not None and not c.stop.is_set()]
        if not live:
            return
        me = rng.choice(live)
        consumer = me.handle
        m = consumer.membership
        owned = [tp for tp in consumer.assignment() if consumer.position(*tp)]
        if m is None or not owned:
            return
        topic, partition = rng.choice(owned)
        offset = rng.randrange(consumer.position(topic, partition))
        consumer.seek(topic, partition, offset)
        self.history.seek(self.now(), GROUP, m.member_id, topic, partition, offset)
        me.seeks.append((self.now(), m.member_id, m.generation, topic, partition, offset))
        self.faults["seek"] += 1

    # ------------------------------------------------------------ end state

    async def _read_committed(self, broker: Broker, partition: int) -> None:
        events, last = await _fetch_all(broker, OUT, partition, "read_committed")
        self.committed_view[(OUT, partition)] = events
        if last.last_stable_offset < last.high_watermark:
            self.hanging.append(
                f"{OUT}/{partition} last stable offset {last.last_stable_offset} stays "
                f"below its end {last.high_watermark} after every transaction timed out "
                "(a hanging transaction)"
            )

    async def final_contents(self) -> dict[tuple[str, int], list[tuple[int, str | None]]]:
        """Reopen cleanly and read every stored event of every partition."""
        baseline = set(_all_tasks())
        final: dict[tuple[str, int], list[tuple[int, str | None]]] = {}
        async with open_broker(DATA, fs=self.fs, clock=self.clock_ms) as broker:
            for partition in range(self.config.partitions):
                start = await broker.handle(p.ListOffset(TOPIC, partition, "earliest"))
                result = await broker.handle(p.Fetch(TOPIC, partition, start.offset, 1 << 30, 0))
                events: list[tuple[int, str | None]] = []
                for header, record in iter_records(result.records):
                    for e in decode_record_events(header, record, topic=TOPIC, partition=partition):
                        value = cbor2.loads(e.value) if e.value is not None else None
                        eid = value.get("id") if isinstance(value, dict) else None
                        events.append((e.offset, eid))
                final[(TOPIC, partition)] = events
            if self.config.transactions:
                # Open transactions left by the last round time out.
                await trio.sleep(TXN_TIMEOUT * 2)
                await trio.testing.wait_all_tasks_blocked()
                for partition in range(2):
                    await self._read_committed(broker, partition)
        self.history.shutdown(self.now(), self.fs.open_paths(), self._leaked(baseline))
        return final


class _Abort(Exception):
    """The copier aborts this transaction on purpose."""


async def _fetch_all(
    broker: Broker, topic: str, partition: int, isolation: str
) -> tuple[list[tuple[int, str | None]], p.FetchResult]:
    """Every event a reader at ``isolation`` reads of one partition, and the last fetch."""
    start = await broker.handle(p.ListOffset(topic, partition, "earliest"))
    offset = start.offset
    events: list[tuple[int, str | None]] = []
    while True:
        result = await broker.handle(p.Fetch(topic, partition, offset, 1 << 30, 0, isolation))
        for header, record in iter_records(result.records):
            for e in decode_record_events(header, record, topic=topic, partition=partition):
                value = cbor2.loads(e.value) if e.value is not None else None
                eid = value.get("id") if isinstance(value, dict) else None
                events.append((e.offset, eid))
        end = result.next_offset
        if end < 0:
            end = events[-1][0] + 1 if events else offset
        if end <= offset:
            return events, result
        offset = end


def _only(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` (or every leaf of its exception group) is one of ``kinds``."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(e, kinds) for e in exc.exceptions)
    return isinstance(exc, kinds) or isinstance(exc.__cause__, PowerLoss)


def _leaf(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return type(exc).__name__


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def percentile(values: list[float] | tuple[float, ...], q: float) -> float:
    """The ``q`` (0..1) percentile by nearest rank (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
