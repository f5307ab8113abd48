"""TestDriver: run a job's topology in memory, with no broker and no I/O.

Modelled on Kafka Streams' TopologyTestDriver. Events piped in go through
the tasks exactly as the runner would feed them; repartition records are fed
back to the task owning their partition; changelog records are kept so
:meth:`TestDriver.restart` can rebuild every task from them; sink, late and
dead-letter records are kept per topic. Wall time is Trio's clock
(``trio.current_time()``), so tests use ``autojump_clock`` / ``MockClock`` and
:meth:`TestDriver.advance` to close windows by the wall clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from headwater._errors import InvalidArgument
from headwater.journal._batch import partition_for_key
from headwater.processing._job import Job, Table, WindowedTable
from headwater.processing._serde import SerdeSpec, auto_bytes, serde
from headwater.processing._task import (
    InRecord,
    OutRecord,
    Task,
    TaskId,
    TaskStatistics,
    Topology,
)

__all__ = ["TestDriver"]


class TestDriver:
    """Drives ``job`` in memory (see the module docs). ``partitions`` gives
    source topics' partition counts (default 1 each).

    All methods that run the pipeline are async (user functions may be);
    they raise what the tasks raise (:class:`~headwater.ProcessingError`
    with ``on_error="stop"``).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, job: Job, partitions: Mapping[str, int] | None = None) -> None:
        counts = dict(partitions or {})
        for topic in job.source_topics:
            counts.setdefault(topic, 1)
        self.job = job
        self.topology: Topology = job.topology(counts)
        self._logs: dict[str, list[OutRecord]] = {}
        self._offsets: dict[tuple[str, int], int] = {}
        self._tasks: dict[TaskId, Task] = {}
        self._build()

    def _build(self) -> None:
        for task in self._tasks.values():
            task.close()
        self._tasks = {tid: self.topology.task(tid) for tid in self.topology.task_ids()}

    # ------------------------------------------------------------ input

    async def pipe(
        self,
        topic: str,
        value: Any,
        *,
        key: Any = None,
        timestamp: float | None = None,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
    ) -> None:
        """Send one event to input ``topic`` and run everything it causes.
        ``key``/``value`` are bytes, str (UTF-8), numbers (decimal) or
        JSON-able values (or ``None``); ``timestamp`` (event time in
        seconds) defaults to the wall clock; ``partition`` to the key's."""
        kb = None if key is None else auto_bytes(key)
        vb = None if value is None else auto_bytes(value)
        ts = trio.current_time() if timestamp is None else float(timestamp)
        if topic not in self.topology.source_topics:
            raise InvalidArgument(
                f"job {self.job.name!r} does not read {topic!r}; it reads "
                f"{list(self.topology.source_topics)}"
            )
        count = self.topology.partitions[topic]
        if partition is None:
            partition = 0 if kb is None else partition_for_key(kb, count)
        await self._feed(topic, partition, kb, vb, dict(headers or {}), ts)
        await self._punctuate(trio.current_time(), only_due=True)

    async def pipe_many(self, topic: str, values: list[Any], **kwargs: Any) -> None:
        """:meth:`pipe` each of ``values`` in order (same keyword arguments)."""
        for value in values:
            await self.pipe(topic, value, **kwargs)

    async def _feed(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: dict[str, bytes],
        ts: float,
    ) -> None:
        queue = [(topic, partition, key, value, headers, ts)]
        while queue:
            topic, partition, key, value, headers, ts = queue.pop(0)
            offset = self._offsets.get((topic, partition), 0)
            self._offsets[(topic, partition)] = offset + 1
            task = self._tasks[self.topology.task_id(topic, partition)]
            await task.process(InRecord(topic, partition, offset, key, value, headers, ts))
            queue.extend(self._route(task.take_output()))

    def _route(
        self, records: list[OutRecord]
    ) -> list[tuple[str, int, bytes | None, bytes | None, dict[str, bytes], float]]:
        again = []
        repartitions = {t.name for t in self.topology.internal_topics if t.kind == "repartition"}
        for record in records:
            self._logs.setdefault(record.topic, []).append(record)
            if record.topic in repartitions:
                count = self.topology.partitions[record.topic]
                partition = 0 if record.key is None else partition_for_key(record.key, count)
                again.append(
                    (
                        record.topic,
                        partition,
                        record.key,
                        record.value,
                        dict(record.headers),
                        record.timestamp,
                    )
                )
        return again

    # ------------------------------------------------------------ time

    async def _punctuate(self, now: float, *, only_due: bool) -> None:
        for _ in range(3):  # a first punctuate marks the wall clock, a next one acts
            for task in list(self._tasks.values()):
                deadline = task.next_deadline()
                if deadline is None or (only_due and deadline > now):
                    continue
                await task.punctuate(now)
                again = self._route(task.take_output())
                for topic, partition, key, value, headers, ts in again:
                    await self._feed(topic, partition, key, value, headers, ts)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of wall time pass (on Trio's clock), closing
        windows built with ``wall_clock=True`` at the times they are due."""
        target = trio.current_time() + seconds
        while True:
            now = trio.current_time()
            await self._punctuate(now, only_due=True)
            deadlines = [
                d for d in (t.next_deadline() for t in self._tasks.values()) if d is not None
            ]
            due = min(deadlines, default=None)
            if due is None or due > target or due <= now:
                break
            await trio.sleep_until(due)
        await trio.sleep_until(target)
        await self._punctuate(trio.current_time(), only_due=True)

    # ------------------------------------------------------------ output

    def output(self, topic: str) -> list[OutRecord]:
        """Every record written to ``topic`` (a sink, a late topic, the
        dead-letter topic, a changelog or a repartition topic), in order."""
        return list(self._logs.get(topic, []))

    def read(
        self, topic: str, *, key: SerdeSpec = "bytes", value: SerdeSpec = "bytes"
    ) -> list[tuple[Any, Any]]:
        """(key, value) of each record of ``topic``, decoded with the serdes."""
        ks = serde(key, default="bytes", what="read() key")
        vs = serde(value, default="bytes", what="read() value")
        return [
            (
                None if r.key is None else ks.deserialize(r.key),
                None if r.value is None else vs.deserialize(r.value),
            )
            for r in self._logs.get(topic, [])
        ]

    @property
    def dead_letters(self) -> list[OutRecord]:
        """The records sent to the job's dead-letter topic."""
        topic = self.topology.dead_letter_topic
        return [] if topic is None else self.output(topic)

    def table(self, table: Table | WindowedTable | str) -> dict[Any, Any]:
        """A table's contents over every task: ``{key: value}``, or for a
        windowed table ``{Windowed(key, start, end): aggregate}`` of open windows."""
        if isinstance(table, str):
            node = next(
                (x for x in self.job._nodes if x.store == table),
                None,
            )
            if node is None:
                raise InvalidArgument(
                    f"job {self.job.name!r} has no table {table!r}: it has "
                    f"{sorted(self.topology.tables)}"
                )
            table = (
                WindowedTable(self.job, node, table)
                if node.windowed
                else Table(self.job, node, table)
            )
        return dict(table.items())

    def statistics(self) -> dict[TaskId, TaskStatistics]:
        """Each task's counters (processed, dead letters, late events, restored)."""
        return {tid: task.statistics() for tid, task in self._tasks.items()}

    # ------------------------------------------------------------ failures

    async def restart(self) -> None:
        """Drop every task and rebuild it from the changelog records written
        so far (as a copy of the job does after a crash or a rebalance)."""
        self._build()
        for task in self._tasks.values():
            for changelog, partition in task.changelog_partitions.items():
                for record in self._logs.get(changelog, []):
                    if record.partition == partition:
                        task.restore(changelog, record.key, record.value)
