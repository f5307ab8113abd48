"""Running a job against a broker: the runner behind ``headwater run``.

Theory of operation
-------------------
:func:`open_job_runner` opens an actor system whose tree is the job::

    /job                    supervisor (one_for_one, restarts with backoff)
      /job/worker           the copy: one consumer group member + one producer

The **worker** (:meth:`JobRunner._worker`) is one task child:

1. It reads the source topics' partition counts, asks the job for its
   :class:`~headwater.processing.Topology`, and creates the internal topics
   (repartition, compacted changelogs) and the sink / dead-letter / late
   topics that are missing. A changelog that is missing while the group has
   committed offsets raises :class:`~headwater.ChangelogMissingError` (never
   an empty state resumed mid-stream).
2. It joins the job's consumer group (group = the job's name) over every
   input topic with ``group_instance_id = <instance>`` (static membership,
   DECISIONS #22) and the ``range`` assignor (partition ``p`` of every
   co-partitioned input lands on one copy, so a task is never split). A live
   twin refuses the join (:class:`~headwater.MemberInstanceInUseError`); the
   worker retries for up to ``instance_wait`` seconds (a restart after a
   crash is admitted once the dead copy's session ends) and then gives up
   with that error.
3. It opens the producer: transactional with id ``<job>.<instance>`` for
   ``exactly_once`` (which fences a dead copy's open transaction), plain for
   ``at_least_once``.
4. Then the loop: poll a batch (at most ``batch_events``); tasks that became
   ours (``on_assigned``) are built fresh and **restored** from their
   changelog partitions (read_committed, up to the last stable offset, with
   ``restore_progress`` log lines and the ``restored_records`` counter,
   within ``restore_timeout``) before any of their records is processed;
   tasks whose partitions were revoked are dropped. Each record goes to its
   task; tasks whose wall-clock deadline passed are punctuated; then the
   outputs are written and the input positions committed:

   * ``exactly_once``: one transaction per batch holding every output
     (sinks, repartition, changelog, dead letters, late events) and the
     group's next positions (``send_offsets`` with member id and
     generation), then commit;
   * ``at_least_once``: send, flush, then commit the positions.

Any failure of a batch (an aborted transaction, a lost connection, a
fenced or evicted member) crashes the worker: the supervisor restarts it
(backoff ``backoff`` doubling, at most ``max_restarts`` within ``within``
seconds of running time), and the new incarnation rebuilds every task from
its changelog and resumes from the committed positions, so an aborted batch
leaves no trace. Errors that a restart cannot cure end the job instead
(:data:`FATAL`): a :class:`~headwater.ProcessingError` (``on_error="stop"``),
a missing changelog, a fencing by a newer copy of the same instance, a
refused instance, bad configuration, a missing source topic.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from headwater._aio import unwrapping_groups
from headwater._errors import (
    AuthenticationError,
    ChangelogMissingError,
    ConfigError,
    HeadwaterError,
    HeadwaterTimeoutError,
    MemberInstanceInUseError,
    ProcessingError,
    ProducerFencedError,
    TopicExistsError,
    UnknownGroupError,
    UnknownTopicError,
)
from headwater._logging import get_logger
from headwater.actors import ActorSystem, open_actor_system
from headwater.client import Client
from headwater.processing._task import InRecord, OutRecord, Task, TaskId, Topology
from headwater.supervision import ChildSpec, SupervisorSpec

__all__ = ["FATAL", "JobRunner", "RunConfig", "RunStats", "open_job_runner", "run_job"]

log = get_logger("headwater.processing.runner")

TP = tuple[str, int]
_NO_HEADERS: Mapping[str, bytes] = {}
_UNKNOWN: Any = object()

FATAL: tuple[type[HeadwaterError], ...] = (
    ProcessingError,
    ChangelogMissingError,
    ProducerFencedError,
    MemberInstanceInUseError,
    ConfigError,
    UnknownTopicError,
    AuthenticationError,
)
"""Errors that end a job instead of restarting its worker (a restart would
meet them again)."""


def _positive(name: str) -> Any:
    def check(_inst: object, _attr: Any, value: object) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value < math.inf
        ):
            raise ConfigError(f"{name} must be a positive number, not {value!r}")

    return check


def _count(name: str) -> Any:
    def check(_inst: object, _attr: Any, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, not {value!r}")

    return check


def _instance(_inst: object, _attr: Any, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1_000_000:
        raise ConfigError(f"instance must be an int in 0..999999, not {value!r}")


@attrs.frozen
class RunConfig:
    """How a copy of a job runs. ``instance`` is its static member id and
    part of its transactional id ``<job>.<instance>``; copies of one job use
    different instances. ``session_timeout`` (s) is how long a dead copy
    holds its partitions (and how soon a restarted one is admitted);
    ``instance_wait`` (s, default ``2 * session_timeout + 1``) how long a
    copy refused because its instance is held keeps trying;
    ``batch_events`` the most records per batch (one transaction each);
    ``poll_timeout`` (s) the longest a poll waits for records;
    ``transaction_timeout`` (s) after which the broker aborts a batch's
    transaction of a vanished copy; ``restore_timeout`` (s) bounds the
    restore of one task; ``max_restarts`` within ``within`` (s of running
    time) and ``backoff`` (s, doubling) are the worker's restart policy;
    ``wall_clock`` returns seconds since the epoch (window close deadlines);
    ``wait_for_topics`` makes a missing source topic a wait (logged once)
    instead of :class:`~headwater.UnknownTopicError` (``headwater run``
    waits: the job may start before its input exists)."""

    instance: int = attrs.field(default=0, validator=_instance)
    session_timeout: float = attrs.field(default=10.0, validator=_positive("session_timeout"))
    max_poll_interval: float = attrs.field(default=300.0, validator=_positive("max_poll_interval"))
    instance_wait: float | None = None
    batch_events: int = attrs.field(default=1000, validator=_count("batch_events"))
    poll_timeout: float = attrs.field(default=0.1, validator=_positive("poll_timeout"))
    transaction_timeout: float = attrs.field(
        default=60.0, validator=_positive("transaction_timeout")
    )
    restore_timeout: float = attrs.field(default=600.0, validator=_positive("restore_timeout"))
    max_restarts: int = 5
    within: float = 60.0
    backoff: float = 0.5
    wall_clock: Callable[[], float] = time.time
    wait_for_topics: bool = False


@attrs.frozen
class RunStats:
    """A snapshot of a runner's counters (:meth:`JobRunner.statistics`):
    records ``processed``, ``batches`` committed (transactions, with
    exactly_once), ``outputs`` written, ``restored_records`` read back from
    changelogs in ``restores`` task restores, ``punctuations``,
    ``restarts`` of the worker, the ``tasks`` it runs now and its
    ``partitions`` (input topic, partition)."""

    processed: int = 0
    batches: int = 0
    outputs: int = 0
    restored_records: int = 0
    restores: int = 0
    punctuations: int = 0
    restarts: int = 0
    tasks: tuple[str, ...] = ()
    partitions: tuple[TP, ...] = ()


def _key_bytes(key: Any) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    return bytes(key)


def _close(task: Task | None) -> None:
    """Tell a dropped task (its state is no longer this copy's), if the
    library's Task can be told."""
    close = getattr(task, "close", None)
    if callable(close):
        close()


def _source_topics(job: Any) -> tuple[str, ...]:
    """The user topics ``job`` reads (needed before its topology exists)."""
    topics = getattr(job, "source_topics", None)
    if callable(topics):
        topics = topics()
    if topics is None:  # a library without Job.source_topics yet
        nodes = getattr(job, "_nodes", ())
        topics = tuple(
            dict.fromkeys(
                x.topic for x in nodes if x.topic is not None and not getattr(x, "repartition", 0)
            )
        )
    if not topics:
        raise ConfigError(f"job {getattr(job, 'name', job)!r} reads no topic: add job.stream(...)")
    return tuple(topics)


class JobRunner:
    """One running copy of a job (see the module docs). Made by
    :func:`open_job_runner`; read :meth:`statistics` while it runs."""

    def __init__(self, job: Any, client: Client, config: RunConfig) -> None:
        self.job = job
        self.name: str = job.name
        self.client = client
        self.config = config
        self.transactional_id = f"{self.name}.{config.instance}"
        self.topology: Topology | None = None
        self._tasks: dict[TaskId, Task] = {}
        self._task_tps: dict[TaskId, set[TP]] = {}
        self._pending: set[TaskId] = set()
        self._stats = RunStats()
        self._incarnations = 0
        self.fatal: HeadwaterError | None = None
        self.stopped = trio.Event()
        self.ready = trio.Event()
        """Set once the first incarnation owns its partitions and restored them."""
        self.system: ActorSystem | None = None
        """The job's actor system (``/job`` supervisor, ``/job/worker``)."""

    def statistics(self) -> RunStats:
        """The counters now."""
        return attrs.evolve(
            self._stats,
            tasks=tuple(str(t) for t in sorted(self._tasks)),
            partitions=tuple(sorted(tp for tps in self._task_tps.values() for tp in tps)),
        )

    def _count(self, **add: int) -> None:
        self._stats = attrs.evolve(
            self._stats, **{k: getattr(self._stats, k) + v for k, v in add.items()}
        )

    # ------------------------------------------------------------ the worker

    async def _worker(self) -> None:
        """The supervised child: run until cancelled; a fatal error is kept
        for :func:`open_job_runner` to raise (a normal exit: not restarted),
        any other failure crashes the child (restarted)."""
        self._incarnations += 1
        if self._incarnations > 1:
            self._count(restarts=1)
        self._tasks.clear()
        self._task_tps.clear()
        self._pending.clear()
        try:
            await self._work()
        except FATAL as exc:
            log.error("job_stopped", job=self.name, code=exc.code, error=str(exc))
            self.fatal = exc
            self.stopped.set()
        finally:
            for task in self._tasks.values():
                _close(task)
            self._tasks.clear()
            self._task_tps.clear()
            self._pending.clear()

    async def _work(self) -> None:
        topology = await self._prepare()
        async with self._join(topology) as consumer, self._producer(topology) as producer:
            for topic in self._output_topics(topology):
                await producer.partitions_of(topic)
            log.info(
                "job_running",
                job=self.name,
                instance=self.config.instance,
                processing=topology.processing,
                member_id=consumer.membership.member_id if consumer.membership else None,
            )
            await self._loop(topology, consumer, producer)

    # ------------------------------------------------------------ topics

    async def _prepare(self) -> Topology:
        client = self.client
        counts: dict[str, int] = {}
        for topic in _source_topics(self.job):
            counts[topic] = await self._partitions_of_source(topic)
        topology: Topology = self.job.topology(counts)
        self.topology = topology
        existing = {t.name: t.partitions for t in await client.list_topics()}
        committed: bool | None = None
        for internal in topology.internal_topics:
            have = existing.get(internal.name)
            if have is None:
                if internal.kind == "changelog":
                    if committed is None:
                        committed = await self._has_committed_offsets()
                    if committed:
                        raise ChangelogMissingError(
                            f"changelog topic {internal.name!r} of job {self.name!r} is missing "
                            f"but group {self.name!r} has committed offsets: the job's state "
                            "would restart empty mid-stream. Restore the topic, or start over "
                            "under a new job name"
                        )
                await self._create(internal.name, internal.partitions, internal.compacted)
            elif have != internal.partitions:
                raise ConfigError(
                    f"internal topic {internal.name!r} of job {self.name!r} has {have} "
                    f"partitions; the job needs {internal.partitions} (did a source topic "
                    "grow?). Run the changed job under a new name"
                )
        width = max(counts.values())
        for topic in self._output_topics(topology):
            if topic not in existing and topic not in {t.name for t in topology.internal_topics}:
                await self._create(topic, width, False)
        return topology

    async def _partitions_of_source(self, topic: str) -> int:
        said = False
        while True:
            try:
                description = await self.client.describe_topic(topic)
                return description.topic.partitions
            except UnknownTopicError:
                if not self.config.wait_for_topics:
                    raise UnknownTopicError(
                        f"job {self.name!r} reads topic {topic!r}, which does not exist: create "
                        f"it (headwater topics create {topic} --partitions N) and run the job "
                        "again"
                    ) from None
                if not said:
                    said = True
                    log.warning(
                        "job_waiting_for_topic",
                        job=self.name,
                        topic=topic,
                        hint=f"create it: headwater topics create {topic} --partitions N",
                    )
                await trio.sleep(1.0)

    def _output_topics(self, topology: Topology) -> list[str]:
        topics = [*topology.sink_topics, *topology.late_topics]
        if topology.dead_letter_topic is not None:
            topics.append(topology.dead_letter_topic)
        topics.extend(t.name for t in topology.internal_topics)
        return sorted(set(topics))

    async def _create(self, name: str, partitions: int, compacted: bool) -> None:
        try:
            await self.client.create_topic(name, partitions, compacted=compacted)
            log.info("job_topic_created", job=self.name, topic=name, partitions=partitions)
        except TopicExistsError:
            pass  # another copy made it first

    async def _has_committed_offsets(self) -> bool:
        try:
            description = await self.client.describe_group(self.name)
        except UnknownGroupError:
            return False
        return any(p.committed is not None for p in description.partitions)

    # ------------------------------------------------------------ group and producer

    @asynccontextmanager
    async def _join(self, topology: Topology) -> AsyncIterator[Any]:
        """The group member, retrying a refused instance for up to
        ``instance_wait`` seconds."""
        cfg = self.config
        wait = cfg.instance_wait if cfg.instance_wait is not None else 2 * cfg.session_timeout + 1
        deadline = trio.current_time() + wait
        attempt = 0
        while True:
            entered = False
            try:
                async with self.client.consumer(
                    list(topology.input_topics),
                    group=self.name,
                    start="earliest",
                    on_assigned=self._assigned,
                    on_revoked=self._revoked,
                    deserializer="bytes",
                    session_timeout=cfg.session_timeout,
                    # A restore runs between polls: it must not look like a hung copy.
                    max_poll_interval=max(cfg.max_poll_interval, cfg.restore_timeout + 30),
                    group_instance_id=str(cfg.instance),
                    assignor="range",
                    client_id=f"{self.name}.{cfg.instance}",
                    max_wait=min(cfg.poll_timeout, 0.5),
                ) as consumer:
                    entered = True
                    yield consumer
                return
            except MemberInstanceInUseError as exc:
                if entered:
                    raise
                attempt += 1
                if trio.current_time() >= deadline:
                    raise MemberInstanceInUseError(
                        f"{exc.message} (job {self.name!r}, instance {cfg.instance}: still "
                        f"held after {wait:.1f}s)"
                    ) from None
                if attempt == 1:
                    log.warning(
                        "job_instance_in_use", job=self.name, instance=cfg.instance, error=str(exc)
                    )
                await trio.sleep(min(1.0, cfg.session_timeout / 4))

    def _producer(self, topology: Topology) -> Any:
        if topology.processing == "exactly_once":
            return self.client.producer(
                transactional_id=self.transactional_id,
                transaction_timeout=self.config.transaction_timeout,
                serializer="bytes",
                linger=0.0,
            )
        return self.client.producer(serializer="bytes", linger=0.0)

    def _assigned(self, tps: list[TP]) -> None:
        topology = self.topology
        assert topology is not None
        for tp in tps:
            task_id = topology.task_id(*tp)
            self._task_tps.setdefault(task_id, set()).add(tp)
            if task_id not in self._tasks:
                self._pending.add(task_id)

    def _revoked(self, tps: list[TP]) -> None:
        topology = self.topology
        assert topology is not None
        for tp in tps:
            task_id = topology.task_id(*tp)
            owned = self._task_tps.get(task_id)
            if owned is None:
                continue
            owned.discard(tp)
            if not owned:
                del self._task_tps[task_id]
                _close(self._tasks.pop(task_id, None))
                self._pending.discard(task_id)
                log.info("job_task_dropped", job=self.name, task=str(task_id))

    # ------------------------------------------------------------ restore

    async def _restore_pending(self, topology: Topology) -> None:
        for task_id in sorted(self._pending):
            task = topology.task(task_id)
            with trio.move_on_after(self.config.restore_timeout) as scope:
                restored = await self._restore(task)
            if scope.cancelled_caught:
                raise HeadwaterTimeoutError(
                    f"restoring task {task_id} of job {self.name!r} from its changelog took "
                    f"longer than restore_timeout={self.config.restore_timeout}s; raise "
                    "--restore-timeout, or check the broker"
                )
            self._tasks[task_id] = task
            self._pending.discard(task_id)
            if task.changelog_partitions:
                self._count(restores=1)
                log.info("job_task_restored", job=self.name, task=str(task_id), records=restored)

    async def _restore(self, task: Task) -> int:
        """Feed the task its changelog partitions (read_committed, oldest
        first, up to the last stable offset seen at the start)."""
        total = 0
        for topic, partition in sorted(task.changelog_partitions.items()):
            description = await self.client.describe_topic(topic)
            info = description.partitions[partition]
            end = info.last_stable_offset if info.last_stable_offset >= 0 else info.next_offset
            started = trio.current_time()
            last_said = started
            log.info(
                "restore_started",
                job=self.name,
                task=str(task.task_id),
                topic=topic,
                partition=partition,
                earliest_offset=info.earliest_offset,
                end_offset=end,
                high_watermark=info.next_offset,
            )
            if end <= info.earliest_offset:
                continue
            async with self.client.consumer(
                topic, start="earliest", deserializer="bytes", max_wait=0.1
            ) as consumer:
                consumer.assign([(topic, partition)])
                while (consumer.position(topic, partition) or 0) < end:
                    before = total
                    for event in await consumer.getmany(max_events=5000, timeout=0.2):
                        if event.offset >= end:
                            break
                        task.restore(topic, _key_bytes(event.key), event.value)
                        total += 1
                    self._count(restored_records=total - before)
                    now = trio.current_time()
                    if now - last_said >= 1.0:
                        last_said = now
                        log.info(
                            "restore_progress",
                            job=self.name,
                            task=str(task.task_id),
                            topic=topic,
                            partition=partition,
                            position=consumer.position(topic, partition),
                            end_offset=end,
                            restored=total,
                        )
            log.info(
                "restore_done",
                job=self.name,
                task=str(task.task_id),
                topic=topic,
                partition=partition,
                restored=total,
                seconds=round(trio.current_time() - started, 3),
            )
        return total

    # ------------------------------------------------------------ the loop

    async def _loop(self, topology: Topology, consumer: Any, producer: Any) -> None:
        cfg = self.config
        exactly_once = topology.processing == "exactly_once"
        sent: dict[TP, int] = {}
        while True:
            timeout = cfg.poll_timeout
            deadline = self._next_deadline()
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - cfg.wall_clock()))
            events = await consumer.getmany(max_events=cfg.batch_events, timeout=timeout)
            while events and len(events) < cfg.batch_events:  # fill the batch from what is here
                more = await consumer.getmany(cfg.batch_events - len(events), timeout=0)
                if not more:
                    break
                events += more
            if self._pending:
                await self._restore_pending(topology)
            if not self.ready.is_set() and not self._pending:
                self.ready.set()
            tasks: dict[TP, Task | None] = {}
            for event in events:
                tp = (event.topic, event.partition)
                task = tasks.get(tp, _UNKNOWN)
                if task is _UNKNOWN:
                    task = tasks[tp] = self._tasks.get(topology.task_id(*tp))
                if task is None:  # revoked by a poll while the batch filled
                    continue
                await task.process(
                    InRecord(
                        event.topic,
                        event.partition,
                        event.offset,
                        _key_bytes(event.key),
                        event.value,
                        dict(event.headers) if event.headers else _NO_HEADERS,
                        event.timestamp / 1000.0,
                    )
                )
            wall = cfg.wall_clock()
            for task in list(self._tasks.values()):
                due = task.next_deadline()
                if due is not None and due <= wall:
                    await task.punctuate(wall)
                    self._count(punctuations=1)
            outputs = [o for task in self._tasks.values() for o in task.take_output()]
            offsets: dict[TP, int] = {}
            for tp in consumer.assignment():
                position = consumer.position(*tp)
                if position is not None and sent.get(tp) != position:
                    offsets[tp] = position
            if not outputs and not offsets:
                continue
            if exactly_once:
                await self._commit_transaction(consumer, producer, outputs, offsets)
            else:
                await self._commit_plain(consumer, producer, outputs, offsets)
            sent.update(offsets)
            self._count(processed=len(events), batches=1, outputs=len(outputs))

    def _next_deadline(self) -> float | None:
        deadlines = [d for t in self._tasks.values() if (d := t.next_deadline()) is not None]
        return min(deadlines, default=None)

    def _send(self, producer: Any, out: OutRecord) -> Any:
        return producer.send_nowait(
            out.topic,
            out.value,
            key=out.key,
            headers=out.headers or None,
            partition=out.partition,
            timestamp=int(out.timestamp * 1000) if out.timestamp > 0 else None,
        )

    async def _commit_transaction(
        self, consumer: Any, producer: Any, outputs: list[OutRecord], offsets: Mapping[TP, int]
    ) -> None:
        membership = consumer.membership
        async with producer.transaction():
            for out in outputs:
                self._send(producer, out)
            if offsets:
                await producer.send_offsets(
                    self.name,
                    dict(offsets),
                    generation=membership.generation,
                    member_id=membership.member_id,
                )

    async def _commit_plain(
        self, consumer: Any, producer: Any, outputs: list[OutRecord], offsets: Mapping[TP, int]
    ) -> None:
        handles = [self._send(producer, out) for out in outputs]
        await producer.flush()
        for handle in handles:
            handle.result()  # raises the send's error: the worker restarts
        if offsets:
            await consumer.commit(dict(offsets))


@asynccontextmanager
async def open_job_runner(
    job: Any, client: Client, config: RunConfig | None = None
) -> AsyncIterator[JobRunner]:
    """Run one copy of ``job`` (a :class:`~headwater.processing.Job`) against
    the broker behind ``client`` for the duration of the block, as a
    supervised actor tree (see the module docs); yields its
    :class:`JobRunner`. An error that ends the job (:data:`FATAL`) cancels
    the block and is raised as itself; a worker that keeps crashing ends it
    with :class:`~headwater.SupervisorGaveUp` (``__cause__``: the last
    crash)."""
    config = config if config is not None else RunConfig()
    if not isinstance(config, RunConfig):
        raise ConfigError(f"config must be a RunConfig, not {type(config).__name__}")
    runner = JobRunner(job, client, config)
    spec = SupervisorSpec(
        "job",
        children=(ChildSpec("worker", runner._worker, restart="transient", shutdown=5.0),),
        max_restarts=config.max_restarts,
        within=config.within,
        backoff=config.backoff,
        backoff_max=max(config.backoff, 10.0),
    )
    with unwrapping_groups():
        async with open_actor_system(f"job-{runner.name}", watchdog=None) as system:
            runner.system = system
            await system.start_child(spec)
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    await runner.stopped.wait()
                    assert runner.fatal is not None
                    raise runner.fatal

                nursery.start_soon(watch)
                yield runner
                nursery.cancel_scope.cancel()


async def run_job(job: Any, client: Client, config: RunConfig | None = None) -> None:
    """Run one copy of ``job`` until cancelled (or until an error ends it:
    see :func:`open_job_runner`)."""
    async with open_job_runner(job, client, config):
        await trio.sleep_forever()
