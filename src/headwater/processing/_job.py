"""Building a job: :class:`Job`, :class:`Stream`, :class:`Table` and windows.

Building only records a graph of nodes; nothing runs. ``job.topology(partitions)``
checks the graph against the topics' partition counts, splits it into
sub-topologies (cut at repartition topics) and returns a
:class:`~headwater.processing.Topology` whose tasks run it. Misconfigured
windows, joins and serdes raise :class:`~headwater.PipelineError` while the
pipeline is built; inputs that cannot be co-partitioned, when the topology is
made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from headwater._errors import InvalidTopicName, NotFoundError, PipelineError
from headwater.broker._config import validate_topic_name
from headwater.journal._batch import partition_for_key
from headwater.processing import _nodes as n
from headwater.processing._serde import (
    SerdeSpec,
    Windowed,
    dumps,
    hashable,
    loads,
    partition_bytes,
    serde,
)
from headwater.processing._task import (
    InternalTopic,
    OnError,
    Processing,
    TableInfo,
    Task,
    TaskId,
    Topology,
)
from headwater.processing._windows import Hopping, Session, Sliding, Tumbling, Windows

__all__ = ["Job", "Stream", "Table", "WindowedStream", "WindowedTable"]

Slot = Literal["children", "final", "join"] | int


class _Node:
    """One operator of the graph. ``make(ctx)`` builds its processor for a task."""

    def __init__(self, job: Job, kind: str, name: str, make: Callable[[_Ctx], Any]) -> None:
        self.job = job
        self.id = len(job._nodes)
        self.kind = kind
        self.name = name
        self.make = make
        self.children: list[tuple[_Node, Slot]] = []
        self.topic: str | None = None  # sources: the topic read
        self.repartition: bool = False  # a source reading a repartition topic
        self.writes: str | None = None  # repartition sinks: the topic written
        self.store: str | None = None  # the store it owns
        self.windowed = False
        self.wall_clock = False
        self.links: list[_Node] = []  # nodes that must share its task (joins)
        self.live: dict[int, n.Store] = {}  # partition -> store of the newest task
        self.partitions = 0
        job._nodes.append(self)


class _Ctx:
    """Builds one task's processors and stores, each node once."""

    def __init__(self, job: Job, task: Task, partition: int, subtopology: set[int]) -> None:
        self.job, self.task, self.partition = job, task, partition
        self.subtopology = subtopology
        self.procs: dict[int, Any] = {}
        self.shared: dict[int, Any] = {}

    def proc(self, node: _Node) -> Any:
        if node.id in self.procs:
            return self.procs[node.id]
        proc = node.make(self)
        self.procs[node.id] = proc
        for child, slot in node.children:
            cp = self.proc(child)
            if slot == "children":
                proc.children.append(cp)
            elif slot == "final":
                proc.final.append(cp)
            elif slot == "join":
                proc.state.children.append(cp)
            else:
                proc.branches[slot].append(cp)
        return proc

    def store(self, node: _Node, kind: type[n.Store] = n.Store) -> Any:
        assert node.store is not None
        store = kind(self.job._changelog(node.store), self.partition)
        self.task.add_store(store)
        live, partition = node.live, self.partition
        live[partition] = store

        def forget() -> None:
            if live.get(partition) is store:
                del live[partition]

        self.task.add_on_close(forget)
        return store


def _check_fn(what: str, fn: object) -> None:
    if not callable(fn):
        raise PipelineError(f"{what} needs a function, not {type(fn).__qualname__}")


def _topic(what: str, topic: object) -> str:
    try:
        return validate_topic_name(topic)
    except InvalidTopicName as exc:
        raise PipelineError(f"{what}: {exc}") from None


class Job:
    """A stream-processing job: build its pipelines from :meth:`stream` and
    :meth:`table`, then run it with ``headwater run job.py`` (a module defines
    one ``Job``) or drive it in tests with :class:`~headwater.processing.TestDriver`.

    ``processing`` is ``"exactly_once"`` (the default: outputs, state changes
    and input offsets commit in one transaction) or ``"at_least_once"``.
    ``on_error`` is ``"stop"`` (the default: an event a function raises on
    stops the job with :class:`~headwater.ProcessingError`) or
    ``"dead_letter"`` (the event goes to ``<name>.dlq`` with ``hw.dlq.*``
    headers and the job goes on). ``name`` is the consumer group and prefixes
    the job's internal topics.
    """

    def __init__(
        self,
        name: str,
        *,
        processing: Processing = "exactly_once",
        on_error: OnError = "stop",
    ) -> None:
        try:
            validate_topic_name(name)
        except InvalidTopicName as exc:
            raise PipelineError(f"job name: {exc}") from None
        if processing not in ("exactly_once", "at_least_once"):
            raise PipelineError(
                f'processing must be "exactly_once" or "at_least_once", not {processing!r}'
            )
        if on_error not in ("dead_letter", "stop"):
            raise PipelineError(f'on_error must be "dead_letter" or "stop", not {on_error!r}')
        self.name = name
        self.processing: Processing = processing
        self.on_error: OnError = on_error
        self._nodes: list[_Node] = []
        self._names: set[str] = set()
        self._counters: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Job({self.name!r}, processing={self.processing!r}, on_error={self.on_error!r})"

    @property
    def source_topics(self) -> tuple[str, ...]:
        """The user topics the job reads (streams and tables), in the order
        they were added: the topics whose partition counts
        :meth:`topology` needs."""
        return tuple(
            dict.fromkeys(x.topic for x in self._nodes if x.topic is not None and not x.repartition)
        )

    # ---------------------------------------------------------------- naming

    def _name(self, kind: str, name: str | None) -> str:
        if name is None:
            index = self._counters.get(kind, 0)
            self._counters[kind] = index + 1
            name = f"{kind}-{index}"
        elif name in self._names:
            raise PipelineError(
                f"job {self.name!r} already has an operator named {name!r}: names of "
                "tables, windows, joins and repartitions must differ"
            )
        _topic(f"the name {name!r}", f"{self.name}-{name}")
        self._names.add(name)
        return name

    def _changelog(self, store: str) -> str:
        return f"{self.name}-{store}-changelog"

    def _own(self, what: str, other: Stream | Table | WindowedTable) -> None:
        if other._job is not self:
            raise PipelineError(f"{what}: {other!r} belongs to job {other._job.name!r}")

    # ---------------------------------------------------------------- sources

    def stream(
        self,
        topic: str,
        *,
        key: SerdeSpec = None,
        value: SerdeSpec = None,
        timestamp: Callable[[Any], float] | None = None,
    ) -> Stream:
        """The events of ``topic``. ``key``/``value`` serdes default to bytes;
        ``timestamp(value)`` gives an event time in seconds (default: the
        event's own timestamp)."""
        topic = _topic("stream()", topic)
        ks = serde(key, default="bytes", what=f"stream({topic!r}) key")
        vs = serde(value, default="bytes", what=f"stream({topic!r}) value")
        if timestamp is not None:
            _check_fn(f"stream({topic!r}) timestamp", timestamp)
        name = f"stream({topic})"

        def make(ctx: _Ctx) -> n.Proc:
            return n.SourceProc(ctx.task, name, ks, vs, timestamp)

        node = _Node(self, "source", name, make)
        node.topic = topic
        return Stream(self, node, "children")

    def table(
        self,
        topic: str,
        *,
        key: SerdeSpec = None,
        value: SerdeSpec = None,
        name: str | None = None,
    ) -> Table:
        """A table of the latest value per key of ``topic`` (an event with no
        value deletes its key), kept in a store with a changelog, to join
        streams with (:meth:`Stream.join`). Serdes as for :meth:`stream`."""
        topic = _topic("table()", topic)
        ks = serde(key, default="bytes", what=f"table({topic!r}) key")
        vs = serde(value, default="bytes", what=f"table({topic!r}) value")
        store = self._name("table", name)

        def make(ctx: _Ctx) -> n.Proc:
            return n.TableSourceProc(ctx.task, f"table({topic})", ks, vs, ctx.store(node))

        node = _Node(self, "table", f"table({topic})", make)
        node.topic = topic
        node.store = store
        return Table(self, node, store)

    # ---------------------------------------------------------------- topology

    def topology(self, partitions: Mapping[str, int]) -> Topology:
        """This job made concrete for each source topic's partition count.
        A missing count or inputs that must be co-partitioned but are not
        raise :class:`~headwater.PipelineError`."""
        nodes = self._nodes
        sources = [x for x in nodes if x.topic is not None and not x.repartition]
        if not sources:
            raise PipelineError(f"job {self.name!r} reads nothing: add job.stream(topic)")
        # sub-topologies: connected without crossing a repartition topic
        parent = list(range(len(nodes)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        def union(a: int, b: int) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

        by_topic: dict[str, int] = {}
        for node in nodes:
            if node.topic is not None:  # one topic read twice: one task reads it
                union(by_topic.setdefault(node.topic, node.id), node.id)
        for node in nodes:
            for child, _slot in node.children:
                union(node.id, child.id)
            for other in node.links:
                union(node.id, other.id)
        groups: dict[int, list[_Node]] = {}
        for node in nodes:
            groups.setdefault(find(node.id), []).append(node)
        comps = [g for _root, g in sorted(groups.items()) if any(x.topic for x in g)]
        counts: dict[str, int] = {}
        for src in sources:
            assert src.topic is not None
            count = partitions.get(src.topic)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise PipelineError(
                    f"job {self.name!r} reads topic {src.topic!r}: give its partition count "
                    f"(an int >= 1) in topology(partitions), not {count!r}"
                )
            counts[src.topic] = count
        writer = {x.writes: x for x in nodes if x.writes is not None}
        comp_of = {x.id: i for i, g in enumerate(comps) for x in g}
        resolved: dict[int, int] = {}

        def resolve(i: int, seen: frozenset[int]) -> int:
            if i in resolved:
                return resolved[i]
            if i in seen:
                raise PipelineError(
                    f"job {self.name!r}: a stream is merged or joined with its own "
                    "re-keyed copy; re-key both sides with key_by first"
                )
            group = comps[i]
            fixed = {x.topic: counts[x.topic] for x in group if x.topic and not x.repartition}
            if len(set(fixed.values())) > 1:
                raise PipelineError(
                    f"job {self.name!r}: topics {sorted(fixed)} are joined or merged, so "
                    f"they must be co-partitioned, but their partition counts are {fixed}; "
                    "give them the same partition count or re-key one side with key_by"
                )
            if fixed:
                count = next(iter(fixed.values()))
            else:
                count = max(
                    resolve(comp_of[writer[x.topic].id], seen | {i})
                    for x in group
                    if x.repartition and x.topic is not None
                )
            resolved[i] = count
            return count

        for i in range(len(comps)):
            resolve(i, frozenset())
        subtopologies: list[tuple[str, ...]] = []
        internal: list[InternalTopic] = []
        late: list[str] = []
        tables: dict[str, TableInfo] = {}
        all_counts: dict[str, int] = dict(counts)
        for i, group in enumerate(comps):
            count = resolved[i]
            topics = tuple(dict.fromkeys(x.topic for x in group if x.topic is not None))
            subtopologies.append(topics)
            for x in group:
                x.partitions = count
                x.live = {}
                if x.repartition and x.topic is not None:
                    internal.append(InternalTopic(x.topic, count, "repartition", False))
                    all_counts[x.topic] = count
                if x.store is not None:
                    changelog = self._changelog(x.store)
                    internal.append(InternalTopic(changelog, count, "changelog", True))
                    if x.kind != "join":  # a join's buffers are no table to query
                        tables[x.store] = _table_info(x.store, changelog, count, x.windowed)
                    if x.kind in ("window", "join"):
                        late.append(f"{self.name}-{x.store}-late")
        sinks = sorted({x.name[3:-1] for x in nodes if x.kind == "sink"})
        topo_groups = [{x.id for x in g} for g in comps]

        def build(task_id: TaskId) -> Task:
            task = Task(
                job=self.name,
                task_id=task_id,
                on_error=self.on_error,
                dead_letter_topic=f"{self.name}.dlq" if self.on_error == "dead_letter" else None,
            )
            group = comps[task_id.subtopology]
            ctx = _Ctx(self, task, task_id.partition, topo_groups[task_id.subtopology])
            for x in group:
                if x.topic is not None:
                    task.add_source(x.topic, ctx.proc(x))
            for x in group:
                if x.kind == "window" and x.wall_clock:
                    task.add_punctuator(ctx.proc(x))
            return task

        user_topics = tuple(dict.fromkeys(x.topic for x in sources if x.topic is not None))
        repartitions = tuple(t.name for t in internal if t.kind == "repartition")
        return Topology(
            name=self.name,
            processing=self.processing,
            on_error=self.on_error,
            source_topics=user_topics,
            internal_topics=tuple(internal),
            input_topics=user_topics + repartitions,
            sink_topics=tuple(sinks),
            dead_letter_topic=f"{self.name}.dlq" if self.on_error == "dead_letter" else None,
            late_topics=tuple(late),
            tables=tables,
            partitions=all_counts,
            subtopologies=tuple(subtopologies),
            build=build,
        )


def _table_info(name: str, changelog: str, partitions: int, windowed: bool) -> TableInfo:
    def partition_of(key: Any) -> int:
        return partition_for_key(partition_bytes(key), partitions)

    def value_from_bytes(data: bytes) -> Any:
        value = loads(data)
        return value[0] if windowed and isinstance(value, list) else value

    return TableInfo(
        name=name,
        changelog_topic=changelog,
        key_to_bytes=dumps,
        value_from_bytes=value_from_bytes,
        partition_of=partition_of,
        key_from_bytes=lambda data: hashable(loads(data)),
        windowed=windowed,
    )


class Stream:
    """A stream of events (key, value, event time) in a job. Each method adds
    an operator and returns the stream after it. Functions get the value (or,
    with ``with_key=True``, the key and the value) and may be ``async def``."""

    def __init__(self, job: Job, node: _Node, slot: Slot) -> None:
        self._job, self._node, self._slot = job, node, slot

    def __repr__(self) -> str:
        return f"<Stream after {self._node.name} of job {self._job.name!r}>"

    def _add(self, kind: str, name: str, make: Callable[[_Ctx], Any]) -> _Node:
        node = _Node(self._job, kind, name, make)
        self._node.children.append((node, self._slot))
        return node

    def _simple(
        self, kind: str, cls: type[n.MapProc], fn: Callable[..., Any], with_key: bool
    ) -> _Node:
        _check_fn(f"{kind}()", fn)
        name = f"{kind}({n.describe(fn)})"
        return self._add(kind, name, lambda ctx: cls(ctx.task, name, fn, with_key))

    def map(self, fn: Callable[..., Any], *, with_key: bool = False) -> Stream:
        """Each value replaced by ``fn(value)`` (``fn(key, value)``)."""
        return Stream(self._job, self._simple("map", n.MapProc, fn, with_key), "children")

    def filter(self, fn: Callable[..., Any], *, with_key: bool = False) -> Stream:
        """Only the events for which ``fn(value)`` is true."""
        return Stream(self._job, self._simple("filter", n.FilterProc, fn, with_key), "children")

    def flat_map(self, fn: Callable[..., Any], *, with_key: bool = False) -> Stream:
        """Each value replaced by the values ``fn(value)`` returns (an iterable),
        with the same key."""
        return Stream(self._job, self._simple("flat_map", n.FlatMapProc, fn, with_key), "children")

    def foreach(self, fn: Callable[..., Any], *, with_key: bool = False) -> None:
        """Call ``fn(value)`` for each event, for its effect (an alert, a
        call): this ends the pipeline. With exactly-once processing the
        effect happens at least once (a batch that aborts is processed again)."""
        self._simple("foreach", n.ForeachProc, fn, with_key)

    def key_by(
        self, fn: Callable[..., Any], *, with_key: bool = False, name: str | None = None
    ) -> Stream:
        """The stream re-keyed by ``fn(value)``, through the internal topic
        ``<job>-<name>-repartition`` so each key's events meet in one task."""
        _check_fn("key_by()", fn)
        rname = self._job._name("repartition", name)
        topic = f"{self._job.name}-{rname}-repartition"
        label = f"key_by({n.describe(fn)})"
        sink = self._add(
            "repartition",
            label,
            lambda ctx: n.RepartitionSinkProc(ctx.task, label, topic, fn, with_key),
        )
        sink.writes = topic
        vs = serde("bytes", default="bytes", what="repartition")

        def make(ctx: _Ctx) -> n.Proc:
            return n.RepartitionSourceProc(ctx.task, f"repartition({topic})", vs, vs, None)

        source = _Node(self._job, "source", f"repartition({topic})", make)
        source.topic = topic
        source.repartition = True
        return Stream(self._job, source, "children")

    def group_by(
        self, fn: Callable[..., Any], *, with_key: bool = False, name: str | None = None
    ) -> Stream:
        """The same as :meth:`key_by`, named for what usually follows
        (``count``, ``reduce``, ``aggregate``, ``window``)."""
        return self.key_by(fn, with_key=with_key, name=name)

    def branch(self, *predicates: Callable[[Any], Any]) -> list[Stream]:
        """One stream per predicate: each event goes to the first branch whose
        predicate is true (none: it goes nowhere, as with :meth:`filter`;
        end with ``lambda v: True`` for "everything else")."""
        if not predicates:
            raise PipelineError("branch() needs at least one predicate")
        for p in predicates:
            _check_fn("branch()", p)
        label = f"branch({', '.join(n.describe(p) for p in predicates)})"
        node = self._add(
            "branch", label, lambda ctx: n.BranchProc(ctx.task, label, list(predicates))
        )
        return [Stream(self._job, node, i) for i in range(len(predicates))]

    def merge(self, *others: Stream) -> Stream:
        """This stream and ``others`` as one (their inputs must be
        co-partitioned: they run in one task)."""
        for other in others:
            if not isinstance(other, Stream):
                raise PipelineError(f"merge() takes streams, not {type(other).__qualname__}")
            self._job._own("merge()", other)
        node = self._add("merge", "merge", lambda ctx: n.Proc(ctx.task, "merge"))
        for other in others:
            other._node.children.append((node, other._slot))
        return Stream(self._job, node, "children")

    def to(self, topic: str, *, key: SerdeSpec = None, value: SerdeSpec = None) -> None:
        """Write the events to ``topic`` (serdes default to ``"auto"``: bytes,
        str as UTF-8, numbers as decimal text, else JSON; a windowed key is
        written as its key with ``hw.window.start``/``hw.window.end`` headers)."""
        topic = _topic("to()", topic)
        ks = serde(key, default="auto", what=f"to({topic!r}) key")
        vs = serde(value, default="auto", what=f"to({topic!r}) value")
        name = f"to({topic})"
        self._add("sink", name, lambda ctx: n.SinkProc(ctx.task, name, topic, ks, vs))

    # ---------------------------------------------------------------- tables

    def _aggregate(self, kind: str, agg: n.Aggregator, name: str | None) -> Table:
        store = self._job._name(kind, name)

        def make(ctx: _Ctx) -> n.Proc:
            return n.AggregateProc(ctx.task, f"{agg.name} [{store}]", ctx.store(node), agg)

        node = self._add("aggregate", f"{agg.name} [{store}]", make)
        node.store = store
        return Table(self._job, node, store)

    def count(self, *, name: str | None = None) -> Table:
        """The number of events per key, as a table (store ``name``)."""
        return self._aggregate("count", n.count_aggregator(), name)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> Table:
        """Per key, the first value, then ``fn(aggregate, value)`` for each next one."""
        _check_fn("reduce()", fn)
        return self._aggregate("reduce", n.reduce_aggregator(fn), name)

    def aggregate(
        self,
        initial: Any,
        fold: Callable[[Any, Any], Any],
        *,
        merge: Callable[[Any, Any], Any] | None = None,
        name: str | None = None,
    ) -> Table:
        """Per key, ``fold(aggregate, value)`` from ``initial`` (a value,
        copied per key, or a function returning one). The aggregate must be
        CBOR-encodable (it is written to the changelog); ``merge`` is unused
        without session windows."""
        _check_fn("aggregate()", fold)
        return self._aggregate("aggregate", n.aggregate_aggregator(initial, fold, merge), name)

    def window(self, windows: Windows, *, name: str | None = None) -> WindowedStream:
        """The stream cut into event-time ``windows`` (:func:`tumbling`,
        :func:`hopping`, :func:`sliding`, :func:`session`) to aggregate per
        key and window. Late events go to ``<job>-<name>-late``."""
        if not isinstance(windows, Tumbling | Hopping | Sliding | Session):
            raise PipelineError(
                "window() takes tumbling(...), hopping(...), sliding(...) or session(...), "
                f"not {windows!r}"
            )
        return WindowedStream(self, windows, name)

    # ---------------------------------------------------------------- joins

    def join(
        self,
        other: Stream | Table,
        fn: Callable[[Any, Any], Any],
        *,
        within: float | None = None,
        grace: float | None = None,
        left: bool = False,
        name: str | None = None,
    ) -> Stream:
        """Join with a :class:`Table` (each event with the table's current
        value for its key: ``fn(value, table_value)``; events whose key is
        not in the table are left out, or with ``left=True`` joined with
        ``None``) or with another :class:`Stream` within ``within`` seconds
        of event time (``fn(left_value, right_value)`` for each pair of one
        key; ``grace`` as for windows, late events to ``<job>-<name>-late``).
        Both sides must be co-partitioned by the same key."""
        _check_fn("join()", fn)
        if isinstance(other, WindowedTable):
            raise PipelineError("join() with a windowed table: join its .current() stream instead")
        if isinstance(other, Table):
            self._job._own("join()", other)
            if within is not None or grace is not None:
                raise PipelineError(
                    "a stream-table join has no window: drop within=/grace= "
                    "(they are for joining two streams)"
                )
            label = f"join({n.describe(fn)}, {other._store})"
            table_node = other._node

            def make_t(ctx: _Ctx) -> n.Proc:
                store = ctx.proc(table_node).store
                return n.TableJoinProc(ctx.task, label, store, fn, left)

            node = self._add("join", label, make_t)
            node.links.append(table_node)
            return Stream(self._job, node, "children")
        if not isinstance(other, Stream):
            raise PipelineError(f"join() takes a Stream or a Table, not {type(other).__qualname__}")
        self._job._own("join()", other)
        if left:
            raise PipelineError("left=True is for stream-table joins; stream joins are inner")
        if within is None:
            raise PipelineError(
                "a stream-stream join needs within= (seconds between partners' event times)"
            )
        if isinstance(within, bool) or not isinstance(within, int | float):
            raise PipelineError(f"join(): within must be a number of seconds, not {within!r}")
        if not math.isfinite(within) or within < 0:
            raise PipelineError(f"join(): within must be finite and >= 0, not {within!r}")
        if grace is None:
            raise PipelineError("a stream-stream join needs an explicit grace= (0 for none)")
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            raise PipelineError(f"join(): grace must be a number of seconds >= 0, not {grace!r}")
        store = self._job._name("join", name)
        label = f"join({n.describe(fn)}) [{store}]"
        job = self._job

        def make_side(side: int) -> Callable[[_Ctx], n.Proc]:
            def make(ctx: _Ctx) -> n.Proc:
                state = ctx.shared.get(left_node.id)
                if state is None:
                    state = n.StreamJoinState(
                        ctx.task,
                        label,
                        ctx.store(left_node, n.OwnedStore),
                        fn,
                        float(within),
                        float(grace),
                        f"{job.name}-{store}-late",
                    )
                    ctx.shared[left_node.id] = state
                return n.StreamJoinSide(ctx.task, label, state, side)

            return make

        left_node = self._add("join", label, make_side(0))
        left_node.store = store
        right_node = other._add("join-right", label, make_side(1))
        left_node.links.append(right_node)
        return Stream(self._job, left_node, "join")


class Table:
    """A table: the latest value per key, kept in a store of each task with
    a compacted changelog ``<job>-<name>-changelog``. In a running job (or a
    :class:`~headwater.processing.TestDriver`), ``table[key]``, ``get``,
    ``in``, ``len`` and iteration read the partitions this copy holds."""

    def __init__(self, job: Job, node: _Node, store: str) -> None:
        self._job, self._node, self._store = job, node, store

    def __repr__(self) -> str:
        return f"<Table {self._store!r} of job {self._job.name!r}>"

    @property
    def name(self) -> str:
        """The table's (store's) name."""
        return self._store

    def to_stream(self) -> Stream:
        """Each change of the table as an event (key, new value)."""
        return Stream(self._job, self._node, "children")

    def _store_of(self, key: Any) -> n.Store:
        node = self._node
        if not node.partitions:
            raise NotFoundError(
                f"table {self._store!r} is not running: read it inside the running job "
                "or through TestDriver.table()"
            )
        partition = partition_for_key(partition_bytes(key), node.partitions)
        store = node.live.get(partition)
        if store is None:
            raise NotFoundError(
                f"partition {partition} of table {self._store!r} is held by another copy "
                f"of job {self._job.name!r}: ask `headwater tables get {self._job.name} "
                f"{self._store} KEY`"
            )
        return store

    def __getitem__(self, key: Any) -> Any:
        value = self._store_of(key).data.get(key, n.MISSING)
        if value is n.MISSING:
            raise KeyError(key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        return self._store_of(key).data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._store_of(key).data

    def items(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) of every key in the partitions held here."""
        for store in list(self._node.live.values()):
            yield from list(store.data.items())

    def __iter__(self) -> Iterator[Any]:
        for store in list(self._node.live.values()):
            yield from list(store.data)

    def __len__(self) -> int:
        return sum(len(s.data) for s in self._node.live.values())


class WindowedStream:
    """A stream cut into windows (from :meth:`Stream.window`): aggregate it."""

    def __init__(self, stream: Stream, windows: Windows, name: str | None) -> None:
        self._stream, self._windows, self._name = stream, windows, name

    def _aggregate(self, kind: str, agg: n.Aggregator) -> WindowedTable:
        job = self._stream._job
        windows = self._windows
        if isinstance(windows, Session) and agg.merge is None:
            raise PipelineError(
                f"{agg.name} over session windows needs merge= (a function joining two "
                "aggregates): sessions merge when an event bridges them"
            )
        store = job._name(f"{windows.kind}-{kind}", self._name)
        label = f"{windows.kind}({agg.name}) [{store}]"
        late = f"{job.name}-{store}-late"

        def make(ctx: _Ctx) -> n.Proc:
            return n.WindowedAggregateProc(
                ctx.task, label, ctx.store(node, n.OwnedStore), agg, windows, late
            )

        node = self._stream._add("window", label, make)
        node.store = store
        node.windowed = True
        node.wall_clock = windows.wall_clock
        return WindowedTable(job, node, store)

    def count(self) -> WindowedTable:
        """The number of events per key and window."""
        return self._aggregate("count", n.count_aggregator())

    def reduce(self, fn: Callable[[Any, Any], Any]) -> WindowedTable:
        """Per key and window, the first value, then ``fn(aggregate, value)``
        (``fn`` also merges sessions)."""
        _check_fn("reduce()", fn)
        return self._aggregate("reduce", n.reduce_aggregator(fn))

    def aggregate(
        self,
        initial: Any,
        fold: Callable[[Any, Any], Any],
        *,
        merge: Callable[[Any, Any], Any] | None = None,
    ) -> WindowedTable:
        """Per key and window, ``fold(aggregate, value)`` from ``initial``;
        session windows need ``merge(a, b)``."""
        _check_fn("aggregate()", fold)
        return self._aggregate("aggregate", n.aggregate_aggregator(initial, fold, merge))


class WindowedTable:
    """The aggregates per key and window. :meth:`final` is one result per
    window when it closes; :meth:`current` every update. Keys of both are
    :class:`Windowed` (``.key``, ``.start``, ``.end``). Reading (in a running
    job): ``table[key]`` is ``{(start, end): aggregate}`` of the key's open windows."""

    def __init__(self, job: Job, node: _Node, store: str) -> None:
        self._job, self._node, self._store = job, node, store

    def __repr__(self) -> str:
        return f"<WindowedTable {self._store!r} of job {self._job.name!r}>"

    @property
    def name(self) -> str:
        """The table's (store's) name."""
        return self._store

    def final(self) -> Stream:
        """One event per window when it closes: (Windowed key, aggregate)."""
        return Stream(self._job, self._node, "final")

    def current(self) -> Stream:
        """One event per update: (Windowed key, new aggregate); a session
        merged into a bigger one is reported with the value ``None``."""
        return Stream(self._job, self._node, "children")

    def items(self) -> Iterator[tuple[Windowed, Any]]:
        """(Windowed key, aggregate) of every open window held here."""
        for store in list(self._node.live.values()):
            for key, value in list(store.data.items()):
                if isinstance(key, tuple) and len(key) == 3:
                    yield Windowed(*key), value[0]

    def __getitem__(self, key: Any) -> dict[tuple[float, float], Any]:
        return {(w.start, w.end): v for w, v in self.items() if w.key == key}
