"""The seam between the processing library and the runner (sans-IO: no Trio).

A :class:`~headwater.processing.Job` is a description; ``job.topology(partitions)``
turns it into a :class:`Topology` for given source partition counts. The runner
(``headwater run``) or the :class:`~headwater.processing.TestDriver` then asks
the topology for one :class:`Task` per (sub-topology, partition), feeds it
:class:`InRecord` s, and writes what :meth:`Task.take_output` returns.

Theory of operation
-------------------

* A **sub-topology** is a part of the pipeline connected without a
  repartition topic in between; its inputs (user topics and repartition
  topics) are co-partitioned, so partition ``p`` of each input belongs to the
  same task, ``TaskId(subtopology, p)``.
* A task holds the state stores of its sub-topology for its partition. Each
  store has a compacted changelog topic ``<job>-<store>-changelog``; the task
  writes partition ``p`` of it. Changes are collected per batch and written
  (the latest value per key) by :meth:`Task.take_output`.
* The runner builds a task, feeds :meth:`Task.restore` every record of its
  changelog partitions (oldest first), then :meth:`Task.process` records. With
  exactly-once processing it sends the outputs of a batch, the changelog
  writes and the input offsets in one transaction; when a transaction aborts
  it drops the tasks and rebuilds them from the changelog.
* Timestamps are event times in seconds since the epoch (floats), both in and
  out. ``wall_now`` given to :meth:`Task.punctuate` is the runner's wall clock
  in the same unit.

The record types are frozen attrs classes; :class:`Task` methods that run user
code are ``async def`` plain coroutines that await only user functions (which
may be sync or async), never Trio.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from headwater._errors import InvalidArgument, ProcessingError
from headwater.broker._share import dead_letter_headers

if TYPE_CHECKING:
    from headwater.processing._nodes import Punctuator, SourceProc, Store

__all__ = [
    "InRecord",
    "InternalTopic",
    "OutRecord",
    "TableInfo",
    "Task",
    "TaskId",
    "TaskStatistics",
    "Topology",
]

Processing = Literal["exactly_once", "at_least_once"]
OnError = Literal["dead_letter", "stop"]

_EMPTY: Mapping[str, bytes] = {}


@attrs.frozen
class InRecord:
    """One input event as the runner read it: ``topic``/``partition``/``offset``
    is its position, ``key``/``value`` raw bytes (``None`` when absent),
    ``headers`` by name, ``timestamp`` its event time in seconds."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes] = _EMPTY
    timestamp: float = 0.0


@attrs.frozen
class OutRecord:
    """One event a task wants written: to a sink, a repartition topic
    (``partition`` ``None``: the runner's default key partitioner), a changelog
    (``partition`` = the task's changelog partition), the dead-letter topic
    (``hw.dlq.*`` headers) or a late-event side output."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes] = _EMPTY
    timestamp: float = 0.0
    partition: int | None = None


@attrs.frozen
class InternalTopic:
    """A topic the job owns and the runner creates when missing: a
    ``repartition`` topic (``<job>-<name>-repartition``) or a compacted
    ``changelog`` (``<job>-<store>-changelog``) with ``partitions`` partitions."""

    name: str
    partitions: int
    kind: Literal["repartition", "changelog"]
    compacted: bool


@attrs.frozen(order=True)
class TaskId:
    """A task's identity: its sub-topology's index and its partition."""

    subtopology: int
    partition: int

    def __str__(self) -> str:
        return f"{self.subtopology}_{self.partition}"


@attrs.frozen
class TableInfo:
    """What ``headwater tables get`` needs to read a table from its changelog:
    ``key_to_bytes(key)`` is the changelog key of a (non-windowed) table key,
    ``value_from_bytes`` decodes a changelog value, ``partition_of(key)`` is the
    changelog partition holding ``key``. ``windowed`` tables key their
    changelog by ``[key, start, end]``; ``key_from_bytes`` decodes any
    changelog key (a list for windowed tables)."""

    name: str
    changelog_topic: str
    key_to_bytes: Callable[[Any], bytes]
    value_from_bytes: Callable[[bytes], Any]
    partition_of: Callable[[Any], int]
    key_from_bytes: Callable[[bytes], Any]
    windowed: bool = False


@attrs.frozen
class TaskStatistics:
    """Counters of one task since it was built: input records ``processed``,
    records sent to the dead-letter topic (``dead_letters``), ``late_events``
    sent to late topics, records ``restored`` from changelogs."""

    processed: int
    dead_letters: int
    late_events: int
    restored: int


class Task:
    """The running state of one (sub-topology, partition): its processors and
    stores. Made only by :meth:`Topology.task` (a fresh, empty task each call).

    Not thread-safe; one caller at a time. ``process`` and ``punctuate`` may
    raise :class:`~headwater.ProcessingError` (``on_error="stop"``); the task
    is then unusable: drop it and rebuild from the changelog.
    """

    def __init__(
        self,
        *,
        job: str,
        task_id: TaskId,
        on_error: OnError,
        dead_letter_topic: str | None,
    ) -> None:
        self.job = job
        self.task_id = task_id
        self.on_error: OnError = on_error
        self.dead_letter_topic = dead_letter_topic
        #: changelog topic -> the partition this task writes
        self.changelog_partitions: dict[str, int] = {}
        self.output: list[OutRecord] = []
        self.current: InRecord | None = None
        self._dead_lettered = False
        self._sources: dict[str, list[SourceProc]] = {}
        self._stores: dict[str, Store] = {}
        self._punctuators: list[Punctuator] = []
        self._on_close: list[Callable[[], None]] = []
        self.processed = 0
        self.dead_letters = 0
        self.late_events = 0
        self.restored = 0

    # ---------------------------------------------------------- building

    def add_source(self, topic: str, source: SourceProc) -> None:
        """(Building only) route records of ``topic`` to ``source`` (too)."""
        self._sources.setdefault(topic, []).append(source)

    def add_store(self, store: Store) -> None:
        """(Building only) own ``store`` and its changelog partition."""
        self._stores[store.changelog_topic] = store
        self.changelog_partitions[store.changelog_topic] = store.partition

    def add_on_close(self, fn: Callable[[], None]) -> None:
        """(Building only) call ``fn`` from :meth:`close`."""
        self._on_close.append(fn)

    def add_punctuator(self, punctuator: Punctuator) -> None:
        """(Building only) call ``punctuator`` from :meth:`punctuate`."""
        self._punctuators.append(punctuator)

    # ---------------------------------------------------------- the seam

    def restore(self, changelog_topic: str, key: bytes | None, value: bytes | None) -> None:
        """Apply one changelog record (oldest first) to the store it belongs
        to. Call before the first :meth:`process`."""
        store = self._stores.get(changelog_topic)
        if store is None:
            raise InvalidArgument(
                f"task {self.task_id} of job {self.job!r} has no changelog "
                f"{changelog_topic!r}: it owns {sorted(self._stores)}"
            )
        store.restore(key, value)
        self.restored += 1

    async def process(self, record: InRecord) -> None:
        """Run one input record through the pipeline. Outputs collect until
        :meth:`take_output`."""
        sources = self._sources.get(record.topic)
        if sources is None:
            raise InvalidArgument(
                f"task {self.task_id} of job {self.job!r} does not read topic "
                f"{record.topic!r}: it reads {sorted(self._sources)}"
            )
        self.current = record
        self._dead_lettered = False
        self.processed += 1
        try:
            for source in sources:
                await source.receive(record)
        finally:
            self.current = None

    async def punctuate(self, wall_now: float) -> None:
        """Close windows whose wall-clock close time has come (windows built
        with ``wall_clock=True``); a no-op otherwise."""
        for punctuator in self._punctuators:
            await punctuator.punctuate(wall_now)

    def next_deadline(self) -> float | None:
        """The wall-clock time at which :meth:`punctuate` has work, ``None``
        for never (until more records arrive). ``0.0`` means "now"."""
        best: float | None = None
        for punctuator in self._punctuators:
            deadline = punctuator.next_deadline()
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        return best

    def close(self) -> None:
        """The runner dropped this task (its partitions moved, or its worker
        restarts): the program's table reads stop seeing its stores (they
        say the partition is held elsewhere until a new task holds it).
        Idempotent; the task must not be used afterwards."""
        callbacks, self._on_close = self._on_close, []
        for fn in callbacks:
            fn()

    def statistics(self) -> TaskStatistics:
        """A snapshot of the task's counters."""
        return TaskStatistics(self.processed, self.dead_letters, self.late_events, self.restored)

    def take_output(self) -> list[OutRecord]:
        """Everything to write since the last call, changelog writes (the
        latest value of each changed key) last."""
        out = self.output
        for store in self._stores.values():
            store.flush(out)
        self.output = []
        return out

    # ---------------------------------------------------------- errors

    def fail(self, operator: str, exc: BaseException) -> None:
        """A user function (or a deserializer) named ``operator`` raised
        ``exc`` on the current record: dead-letter the record once, or raise
        :class:`~headwater.ProcessingError` (``on_error="stop"``)."""
        record = self.current
        where = (
            f"topic {record.topic!r} partition {record.partition} offset {record.offset}"
            if record is not None
            else "a wall-clock window close"
        )
        error = f"{type(exc).__qualname__}: {exc}"
        if self.on_error == "stop" or self.dead_letter_topic is None:
            raise ProcessingError(
                f"job {self.job!r} stopped: {operator} raised {error} on the event at "
                f"{where}. Fix the function or the data, or build the job with "
                f'on_error="dead_letter" to send such events to {self.job}.dlq',
                job=self.job,
                operator=operator,
                topic=record.topic if record is not None else "",
                partition=record.partition if record is not None else -1,
                offset=record.offset if record is not None else -1,
            ) from exc
        if self._dead_lettered:
            return
        self._dead_lettered = record is not None
        self.dead_letters += 1
        headers = dict(record.headers) if record is not None else {}
        headers.update(
            dead_letter_headers(
                topic=record.topic if record is not None else "",
                partition=record.partition if record is not None else -1,
                offset=record.offset if record is not None else -1,
                error=error,
                job=self.job,
                operator=operator,
            )
        )
        self.output.append(
            OutRecord(
                topic=self.dead_letter_topic,
                key=record.key if record is not None else None,
                value=record.value if record is not None else None,
                headers=headers,
                timestamp=record.timestamp if record is not None else 0.0,
                partition=None,
            )
        )


@attrs.frozen
class Topology:
    """A job made concrete for given source partition counts (see the module
    docs). Made by :meth:`Job.topology`. ``partitions`` has every input
    topic's partition count (sources and repartition topics)."""

    name: str
    processing: Processing
    on_error: OnError
    source_topics: tuple[str, ...]
    internal_topics: tuple[InternalTopic, ...]
    input_topics: tuple[str, ...]
    sink_topics: tuple[str, ...]
    dead_letter_topic: str | None
    late_topics: tuple[str, ...]
    tables: Mapping[str, TableInfo]
    partitions: Mapping[str, int]
    subtopologies: tuple[tuple[str, ...], ...]
    _build: Callable[[TaskId], Task] = attrs.field(alias="build", repr=False)

    def task_id(self, topic: str, partition: int) -> TaskId:
        """The task that processes ``partition`` of input ``topic``. An
        unknown topic or partition raises :class:`~headwater.InvalidArgument`."""
        for index, topics in enumerate(self.subtopologies):
            if topic in topics:
                if not 0 <= partition < self.partitions[topic]:
                    raise InvalidArgument(
                        f"topic {topic!r} has {self.partitions[topic]} partitions "
                        f"in job {self.name!r}, not partition {partition}"
                    )
                return TaskId(index, partition)
        raise InvalidArgument(
            f"job {self.name!r} does not read topic {topic!r}: it reads {list(self.input_topics)}"
        )

    def task_ids(self) -> list[TaskId]:
        """Every task of the topology, in order."""
        return [
            TaskId(index, p)
            for index, topics in enumerate(self.subtopologies)
            for p in range(self.partitions[topics[0]])
        ]

    def task(self, task_id: TaskId) -> Task:
        """A fresh task (empty stores) for ``task_id``; restore it from its
        changelog partitions before processing."""
        return self._build(task_id)
