"""The processors a task runs and the stores it keeps (sans-IO: no Trio).

Each processor receives ``(key, value, timestamp)`` by ``await push(...)``
and pushes results to its children, depth first, so one input record's
effects are complete when :meth:`Task.process` returns. A user function that
raises calls :meth:`Task.fail` (dead letter or :class:`~headwater.ProcessingError`)
and the record goes no further down that path.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import inspect
import itertools
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from headwater._errors import SerializationError
from headwater.client._serializers import Serializer
from headwater.processing._serde import (
    KEY_HEADER,
    Windowed,
    auto_bytes,
    decode_key,
    dumps,
    encode_key,
    hashable,
    loads,
)
from headwater.processing._task import InRecord, OutRecord, Task
from headwater.processing._windows import Hopping, Session, Sliding, Tumbling, Windows

__all__ = [
    "MISSING",
    "Aggregator",
    "Proc",
    "Punctuator",
    "SourceProc",
    "Store",
    "is_async",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` returns an awaitable (an ``async def`` function
    or an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__
    )


def describe(fn: Callable[..., Any]) -> str:
    """A short name of a user function for error messages."""
    return str(getattr(fn, "__qualname__", None) or repr(fn))


class Punctuator(Protocol):
    """Something a task calls on the wall clock (windows with ``wall_clock=True``)."""

    async def punctuate(self, wall_now: float) -> None:
        """Act on the wall clock reaching ``wall_now``."""

    def next_deadline(self) -> float | None:
        """When :meth:`punctuate` next has work (``None``: never)."""


# ------------------------------------------------------------------ stores


class Store:
    """A key-value store of one task with a compacted changelog: changes are
    kept per batch and written (the latest value per changed key) by
    :meth:`flush`. Keys and values are CBOR in the changelog."""

    def __init__(self, changelog_topic: str, partition: int) -> None:
        self.changelog_topic = changelog_topic
        self.partition = partition
        self.data: dict[Any, Any] = {}
        self._dirty: dict[Any, Any] = {}
        self._ts = 0.0

    def get(self, key: Any, default: Any = MISSING) -> Any:
        """The value of ``key`` (``default`` when absent)."""
        return self.data.get(key, default)

    def put(self, key: Any, value: Any, ts: float) -> None:
        """Set ``key`` (``value`` must be CBOR-encodable)."""
        self.data[key] = value
        self._dirty[key] = value
        self._ts = ts

    def delete(self, key: Any, ts: float) -> None:
        """Remove ``key`` (a tombstone in the changelog)."""
        self.data.pop(key, None)
        self._dirty[key] = MISSING
        self._ts = ts

    def restore(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one changelog record."""
        if key is None:
            return
        k = hashable(loads(key))
        if value is None:
            self.data.pop(k, None)
        else:
            self.data[k] = loads(value)

    def flush(self, out: list[OutRecord]) -> None:
        """Append the changelog writes of the batch to ``out``."""
        if not self._dirty:
            return
        topic, partition, ts = self.changelog_topic, self.partition, self._ts
        for key, value in self._dirty.items():
            out.append(
                OutRecord(
                    topic,
                    dumps(key),
                    None if value is MISSING else dumps(value),
                    {},
                    ts,
                    partition,
                )
            )
        self._dirty.clear()


def _restore_hook(store: Store, key: bytes | None, value: bytes | None) -> None:
    """Restore ``store`` and tell its owner (windows, joins) about the change."""
    Store.restore(store, key, value)
    hook: Callable[[Any, Any], None] | None = getattr(store, "on_restore", None)
    if hook is not None and key is not None:
        k = hashable(loads(key))
        hook(k, None if value is None else loads(value))


class OwnedStore(Store):
    """A store whose owner (a window or a join) keeps indexes beside it and
    hears of each restored record through ``on_restore``."""

    on_restore: Callable[[Any, Any], None] | None = None

    def restore(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one changelog record and tell the owner."""
        _restore_hook(self, key, value)


# ------------------------------------------------------------------ processors


class Proc:
    """A processor: takes (key, value, timestamp), pushes to ``children``."""

    def __init__(self, task: Task, name: str) -> None:
        self.task = task
        self.name = name
        self.children: list[Proc] = []

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        for child in self.children:
            await child.push(key, value, ts)


class SourceProc(Proc):
    """Reads a user topic: deserializes, extracts the event time."""

    def __init__(
        self,
        task: Task,
        name: str,
        key_serde: Serializer,
        value_serde: Serializer,
        timestamp: Callable[[Any], float] | None,
    ) -> None:
        super().__init__(task, name)
        self.key_serde = key_serde
        self.value_serde = value_serde
        self.timestamp = timestamp

    async def receive(self, record: InRecord) -> None:
        """Take one input record."""
        try:
            key = None if record.key is None else self.key_serde.deserialize(record.key)
            value = None if record.value is None else self.value_serde.deserialize(record.value)
            ts = record.timestamp if self.timestamp is None else float(self.timestamp(value))
        except Exception as exc:
            self.task.fail(self.name, exc)
            return
        for child in self.children:
            await child.push(key, value, ts)


class RepartitionSourceProc(SourceProc):
    """Reads a repartition topic (key kind in ``hw.key``, CBOR value)."""

    async def receive(self, record: InRecord) -> None:
        """Take one input record."""
        try:
            key = (
                None
                if record.key is None
                else decode_key(record.key, record.headers.get(KEY_HEADER))
            )
            value = None if record.value is None else loads(record.value)
        except Exception as exc:
            self.task.fail(self.name, exc)
            return
        for child in self.children:
            await child.push(key, value, record.timestamp)


class MapProc(Proc):
    """``map``: a new value from the value (or the key and value)."""

    def __init__(self, task: Task, name: str, fn: Callable[..., Any], with_key: bool) -> None:
        super().__init__(task, name)
        self.fn, self.with_key, self.is_async = fn, with_key, is_async(fn)

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        try:
            out = self.fn(key, value) if self.with_key else self.fn(value)
            if self.is_async:
                out = await out
        except Exception as exc:
            self.task.fail(self.name, exc)
            return
        for child in self.children:
            await child.push(key, out, ts)


class FilterProc(MapProc):
    """``filter``: events whose predicate is true go on."""

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        try:
            keep = self.fn(key, value) if self.with_key else self.fn(value)
            if self.is_async:
                keep = await keep
        except Exception as exc:
            self.task.fail(self.name, exc)
            return
        if keep:
            for child in self.children:
                await child.push(key, value, ts)


class FlatMapProc(MapProc):
    """``flat_map``: zero or more values per value."""

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        try:
            out = self.fn(key, value) if self.with_key else self.fn(value)
            if self.is_async:
                out = await out
            values = list(out)
        except Exception as exc:
            self.task.fail(self.name, exc)
            return
        children = self.children
        for v in values:
            for child in children:
                await child.push(key, v, ts)


class ForeachProc(MapProc):
    """``foreach``: calls the function for its effect."""

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        try:
            out = self.fn(key, value) if self.with_key else self.fn(value)
            if self.is_async:
                await out
        except Exception as exc:
            self.task.fail(self.name, exc)


class BranchProc(Proc):
    """``branch``: each event to the first branch whose predicate is true."""

    def __init__(self, task: Task, name: str, predicates: list[Callable[[Any], Any]]) -> None:
        super().__init__(task, name)
        self.predicates = [(p, is_async(p)) for p in predicates]
        self.branches: list[list[Proc]] = [[] for _ in predicates]

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        for (predicate, asynchronous), children in zip(self.predicates, self.branches, strict=True):
            try:
                hit = predicate(value)
                if asynchronous:
                    hit = await hit
            except Exception as exc:
                self.task.fail(f"{self.name} ({describe(predicate)})", exc)
                return
            if hit:
                for child in children:
                    await child.push(key, value, ts)
                return


class SinkProc(Proc):
    """``to(topic)``: serializes and writes. A :class:`Windowed` key is
    written as its inner key with ``hw.window.start``/``hw.window.end`` headers."""

    def __init__(
        self, task: Task, name: str, topic: str, key_serde: Serializer, value_serde: Serializer
    ) -> None:
        super().__init__(task, name)
        self.topic, self.key_serde, self.value_serde = topic, key_serde, value_serde

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        headers: dict[str, bytes] = {}
        if isinstance(key, Windowed):
            headers["hw.window.start"] = repr(key.start).encode()
            headers["hw.window.end"] = repr(key.end).encode()
            key = key.key
        try:
            kb = None if key is None else self.key_serde.serialize(key)
            vb = None if value is None else self.value_serde.serialize(value)
        except Exception as exc:
            self.task.fail(self.name, exc)
            return
        self.task.output.append(OutRecord(self.topic, kb, vb, headers, ts, None))


class RepartitionSinkProc(Proc):
    """``key_by``/``group_by``: a new key, written to the repartition topic."""

    def __init__(
        self, task: Task, name: str, topic: str, fn: Callable[..., Any], with_key: bool
    ) -> None:
        super().__init__(task, name)
        self.topic, self.fn, self.with_key, self.is_async = topic, fn, with_key, is_async(fn)

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        try:
            new = self.fn(key, value) if self.with_key else self.fn(value)
            if self.is_async:
                new = await new
            if new is None:
                raise SerializationError(
                    "the key function returned None: every event needs a key to be grouped"
                )
            kb, kind = encode_key(new)
            vb = None if value is None else dumps(value)
        except Exception as exc:
            self.task.fail(self.name, exc)
            return
        self.task.output.append(OutRecord(self.topic, kb, vb, {KEY_HEADER: kind}, ts, None))


# ------------------------------------------------------------------ aggregation


@attrs.frozen
class Aggregator:
    """How an aggregation folds values: ``count``, ``reduce(fn)`` or
    ``aggregate(initial, fold, merge)``; ``merge`` joins two aggregates
    (session windows need it)."""

    name: str
    initial: Callable[[], Any] | None  # None: reduce (the first value is the aggregate)
    fold: Callable[[Any, Any], Any]
    merge: Callable[[Any, Any], Any] | None

    fold_async: bool = attrs.field(
        default=attrs.Factory(lambda self: is_async(self.fold), takes_self=True)
    )

    async def apply(self, acc: Any, value: Any) -> Any:
        """``acc`` folded with ``value`` (``acc`` may be MISSING)."""
        if acc is MISSING:
            if self.initial is None:
                return value
            acc = self.initial()
        out = self.fold(acc, value)
        if self.fold_async:
            out = await out
        return out

    async def combine(self, a: Any, b: Any) -> Any:
        """Two aggregates merged into one."""
        assert self.merge is not None
        out = self.merge(a, b)
        if inspect.isawaitable(out):
            out = await out
        return out


def count_aggregator() -> Aggregator:
    """The aggregator of ``count()``."""
    return Aggregator("count", lambda: 0, lambda acc, _v: acc + 1, lambda a, b: a + b)


def reduce_aggregator(fn: Callable[[Any, Any], Any]) -> Aggregator:
    """The aggregator of ``reduce(fn)`` (``fn`` also merges)."""
    return Aggregator(f"reduce({describe(fn)})", None, fn, fn)


def aggregate_aggregator(
    initial: Any, fold: Callable[[Any, Any], Any], merge: Callable[[Any, Any], Any] | None
) -> Aggregator:
    """The aggregator of ``aggregate(initial, fold, merge=)``: ``initial`` is
    a value (deep-copied for each key) or a function returning one."""
    factory = initial if callable(initial) else (lambda: copy.deepcopy(initial))
    return Aggregator(f"aggregate({describe(fold)})", factory, fold, merge)


class AggregateProc(Proc):
    """``count``/``reduce``/``aggregate`` by key into a table; pushes each
    new value (``to_stream()``)."""

    def __init__(self, task: Task, name: str, store: Store, agg: Aggregator) -> None:
        super().__init__(task, name)
        self.store, self.agg = store, agg

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        if key is None:
            self.task.fail(
                self.name,
                SerializationError("the event has no key: group_by/key_by before aggregating"),
            )
            return
        store = self.store
        try:
            new = await self.agg.apply(store.data.get(key, MISSING), value)
            store.put(key, new, ts)
        except Exception as exc:
            self.task.fail(self.name, exc)
            return
        for child in self.children:
            await child.push(key, new, ts)


class TableSourceProc(SourceProc):
    """``job.table(topic)``: each record sets (or, with no value, deletes) its key."""

    def __init__(
        self,
        task: Task,
        name: str,
        key_serde: Serializer,
        value_serde: Serializer,
        store: Store,
    ) -> None:
        super().__init__(task, name, key_serde, value_serde, None)
        self.store = store

    async def receive(self, record: InRecord) -> None:
        """Take one input record."""
        try:
            if record.key is None:
                raise SerializationError("a table's topic needs keys: this event has none")
            key = self.key_serde.deserialize(record.key)
            if record.value is None:
                self.store.delete(key, record.timestamp)
                value = None
            else:
                value = self.value_serde.deserialize(record.value)
                self.store.put(key, value, record.timestamp)
        except Exception as exc:
            self.task.fail(self.name, exc)
            return
        for child in self.children:
            await child.push(key, value, record.timestamp)


class TableJoinProc(Proc):
    """Stream-table join: each event with the table's current value of its key."""

    def __init__(
        self, task: Task, name: str, store: Store, fn: Callable[[Any, Any], Any], left: bool
    ) -> None:
        super().__init__(task, name)
        self.store, self.fn, self.left = store, fn, left

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        other = self.store.data.get(key, MISSING) if key is not None else MISSING
        if other is MISSING:
            if not self.left:
                return
            other = None
        try:
            out = self.fn(value, other)
            if inspect.isawaitable(out):
                out = await out
        except Exception as exc:
            self.task.fail(self.name, exc)
            return
        for child in self.children:
            await child.push(key, out, ts)


# ------------------------------------------------------------------ late events


def late_record(
    task: Task, topic: str, name: str, key: Any, value: Any, ts: float, wm: float
) -> None:
    """Write a late event to ``topic``: the key and value ("auto" encoding,
    CBOR when that fails), its source position and the watermark in headers."""

    def enc(x: Any) -> bytes | None:
        if x is None:
            return None
        try:
            return auto_bytes(x)
        except SerializationError:
            return dumps(x)

    headers = {
        "hw.late.operator": name.encode(),
        "hw.late.watermark": repr(wm).encode(),
    }
    record = task.current
    if record is not None:
        headers["hw.late.topic"] = record.topic.encode()
        headers["hw.late.partition"] = str(record.partition).encode()
        headers["hw.late.offset"] = str(record.offset).encode()
    try:
        out = OutRecord(topic, enc(key), enc(value), headers, ts, None)
    except Exception as exc:
        task.fail(name, exc)
        return
    task.output.append(out)
    task.late_events += 1


# ------------------------------------------------------------------ windows

_META = ("hw.watermark",)


class WindowedAggregateProc(Proc):
    """A windowed ``count``/``reduce``/``aggregate``. ``final`` children get
    one result per window when it closes, ``children`` (``.current()``) every
    update, with :class:`Windowed` keys. See :mod:`._windows` for the rules."""

    def __init__(
        self,
        task: Task,
        name: str,
        store: OwnedStore,
        agg: Aggregator,
        windows: Windows,
        late_topic: str,
    ) -> None:
        super().__init__(task, name)
        self.store, self.agg, self.windows, self.late_topic = store, agg, windows, late_topic
        self.final: list[Proc] = []
        self.stream_time = -float("inf")
        self.watermark = -float("inf")
        # (close time, seq, key, start, end); stale entries skipped on pop
        self._heap: list[tuple[float, int, Any, float, float]] = []
        self._seq = itertools.count()
        self._sessions: dict[Any, list[tuple[float, float]]] = {}
        self._events: dict[Any, list[tuple[float, int, Any]]] = {}  # sliding
        self._event_seq = 0
        self._stream_mark: float | None = None
        self._wall_mark: float | None = None
        self._inclusive = isinstance(windows, Tumbling | Hopping)
        store.on_restore = self._restored

    # -------------------------------------------------------------- restore

    def _restored(self, key: Any, value: Any) -> None:
        if key == _META:
            if value is not None:
                self.watermark = self.stream_time = value
            return
        if len(key) == 4:  # a sliding window's event
            k, t, seq, _ = key
            events = self._events.setdefault(k, [])
            i = bisect.bisect_left(events, (t, seq), key=_event_order)
            if i < len(events) and _event_order(events[i]) == (t, seq):
                del events[i]
            if value is not None:
                events.insert(i, (t, seq, value))
            if not events:
                del self._events[k]
            self._event_seq = max(self._event_seq, seq + 1)
            return
        k, start, end = key
        if isinstance(self.windows, Session):
            sessions = self._sessions.setdefault(k, [])
            if (start, end) in sessions:
                sessions.remove((start, end))
            if value is not None:
                sessions.append((start, end))
                sessions.sort()
            if not sessions:
                del self._sessions[k]
        if value is not None:
            heapq.heappush(
                self._heap, (self.windows.close_time(end), next(self._seq), k, start, end)
            )

    # -------------------------------------------------------------- events

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        if key is None:
            self.task.fail(
                self.name,
                SerializationError("the event has no key: group_by/key_by before windowing"),
            )
            return
        windows = self.windows
        wm = self.watermark
        try:
            if isinstance(windows, Session):
                if ts + windows.gap + windows.grace < wm:  # its session would be closed
                    late_record(self.task, self.late_topic, self.name, key, value, ts, wm)
                    return
                await self._session(key, value, ts)
            elif isinstance(windows, Sliding):
                if ts + windows.grace < wm:  # its own window [ts - size, ts] is closed
                    late_record(self.task, self.late_topic, self.name, key, value, ts, wm)
                    return
                await self._sliding(key, value, ts)
            else:
                grace = windows.grace
                open_windows = [w for w in windows.windows_for(ts) if w[1] + grace > wm]
                if not open_windows:  # every window holding it has closed
                    late_record(self.task, self.late_topic, self.name, key, value, ts, wm)
                    return
                for start, end in open_windows:
                    await self._update(key, start, end, value, ts)
        except _Failed:
            return
        if ts > self.stream_time:
            self.stream_time = ts
            if ts > self.watermark:
                self.watermark = ts
                self.store.put(_META, ts, ts)
            await self._close(self.watermark, self._inclusive)

    async def _fold(self, acc: Any, value: Any) -> Any:
        try:
            return await self.agg.apply(acc, value)
        except Exception as exc:
            self.task.fail(self.name, exc)
            raise _Failed from None

    async def _update(self, key: Any, start: float, end: float, value: Any, ts: float) -> None:
        wkey = (key, start, end)
        old = self.store.data.get(wkey, MISSING)
        if old is MISSING:
            acc, max_ts = MISSING, ts
            heapq.heappush(
                self._heap, (self.windows.close_time(end), next(self._seq), key, start, end)
            )
        else:
            acc, max_ts = old[0], max(old[1], ts)
        new = await self._fold(acc, value)
        self.store.put(wkey, [new, max_ts], ts)
        await self._emit(self.children, key, start, end, new, ts)

    async def _emit(
        self, children: list[Proc], key: Any, start: float, end: float, value: Any, ts: float
    ) -> None:
        if children:
            windowed = Windowed(key, start, end)
            for child in children:
                await child.push(windowed, value, ts)

    async def _session(self, key: Any, value: Any, ts: float) -> None:
        assert isinstance(self.windows, Session)
        gap = self.windows.gap
        sessions = self._sessions.get(key, [])
        touching = [(s, e) for s, e in sessions if s - gap <= ts <= e + gap]
        acc: Any = MISSING
        start, end, max_ts = ts, ts, ts
        for s, e in touching:
            old = self.store.data[(key, s, e)]
            acc = old[0] if acc is MISSING else await self._combine(acc, old[0])
            start, end, max_ts = min(start, s), max(end, e), max(max_ts, old[1])
        new = await self._fold(acc, value)
        for s, e in touching:
            self.store.delete((key, s, e), ts)
            sessions.remove((s, e))
            if (s, e) != (start, end):
                await self._emit(self.children, key, s, e, None, ts)
        sessions.append((start, end))
        sessions.sort()
        self._sessions[key] = sessions
        self.store.put((key, start, end), [new, max_ts], ts)
        heapq.heappush(self._heap, (self.windows.close_time(end), next(self._seq), key, start, end))
        await self._emit(self.children, key, start, end, new, ts)

    async def _combine(self, a: Any, b: Any) -> Any:
        try:
            return await self.agg.combine(a, b)
        except Exception as exc:
            self.task.fail(self.name, exc)
            raise _Failed from None

    async def _sliding(self, key: Any, value: Any, ts: float) -> None:
        assert isinstance(self.windows, Sliding)
        size = self.windows.size
        events = self._events.setdefault(key, [])
        seq = self._event_seq
        self._event_seq += 1
        bisect.insort(events, (ts, seq, value), key=_event_order)
        self.store.put((key, ts, seq, "e"), value, ts)
        # windows ending at later event times that now hold this event
        lo = bisect.bisect_right(events, (ts, _INF_SEQ), key=_event_order)
        hi = bisect.bisect_right(events, (ts + size, _INF_SEQ), key=_event_order)
        ends = sorted({t for t, _, _ in events[lo:hi]})
        for end in ends:
            wkey = (key, end - size, end)
            old = self.store.data.get(wkey)
            if old is None:
                continue
            new = await self._fold(old[0], value)
            self.store.put(wkey, [new, max(old[1], ts)], ts)
            await self._emit(self.children, key, end - size, end, new, ts)
        # this event's own window [ts - size, ts]
        wkey = (key, ts - size, ts)
        if wkey in self.store.data:
            old = self.store.data[wkey]
            new = await self._fold(old[0], value)
            self.store.put(wkey, [new, old[1]], ts)
        else:
            acc: Any = MISSING
            lo = bisect.bisect_left(events, (ts - size, -1), key=_event_order)
            for t, _, v in events[lo:]:
                if t > ts:
                    break
                acc = await self._fold(acc, v)
            new = acc
            self.store.put(wkey, [new, ts], ts)
            heapq.heappush(
                self._heap, (self.windows.close_time(ts), next(self._seq), key, ts - size, ts)
            )
        await self._emit(self.children, key, ts - size, ts, new, ts)

    # -------------------------------------------------------------- closing

    async def _close(self, watermark: float, inclusive: bool) -> None:
        heap, data = self._heap, self.store.data
        while heap:
            close, _, key, start, end = heap[0]
            if close > watermark or (close == watermark and not inclusive):
                break
            heapq.heappop(heap)
            wkey = (key, start, end)
            entry = data.get(wkey)
            if entry is None:
                continue  # merged away or already closed
            self.store.delete(wkey, entry[1])
            if isinstance(self.windows, Session):
                sessions = self._sessions.get(key, [])
                if (start, end) in sessions:
                    sessions.remove((start, end))
                if not sessions:
                    self._sessions.pop(key, None)
            elif isinstance(self.windows, Sliding):
                self._prune(key, watermark)
            await self._emit(self.final, key, start, end, entry[0], entry[1])

    def _prune(self, key: Any, watermark: float) -> None:
        assert isinstance(self.windows, Sliding)
        horizon = watermark - self.windows.grace - self.windows.size
        events = self._events.get(key, [])
        cut = bisect.bisect_left(events, (horizon, -1), key=_event_order)
        for t, seq, _v in events[:cut]:
            self.store.delete((key, t, seq, "e"), t)
        del events[:cut]
        if not events:
            self._events.pop(key, None)

    # -------------------------------------------------------------- wall clock

    async def punctuate(self, wall_now: float) -> None:
        """Push the watermark with the wall clock while no event advances it."""
        if self._stream_mark != self.stream_time or self._wall_mark is None:
            self._stream_mark, self._wall_mark = self.stream_time, wall_now
            return
        advanced = self.stream_time + (wall_now - self._wall_mark)
        if advanced > self.watermark:
            self.watermark = advanced
            self.store.put(_META, advanced, advanced)
            await self._close(advanced, True)

    def next_deadline(self) -> float | None:
        """When the next open window closes by the wall clock."""
        while (
            self._heap
            and self._heap[0][2:]
            and ((self._heap[0][2], self._heap[0][3], self._heap[0][4]) not in self.store.data)
        ):
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        if self._stream_mark != self.stream_time or self._wall_mark is None:
            return 0.0
        return self._wall_mark + (self._heap[0][0] - self.stream_time)


_INF_SEQ = float("inf")


def _event_order(event: tuple[float, Any, Any]) -> tuple[float, Any]:
    return (event[0], event[1])


class _Failed(Exception):
    """A user function failed; the task already dead-lettered the record."""


# ------------------------------------------------------------------ stream-stream join


class StreamJoinSide(Proc):
    """One side of a windowed stream-stream join; both sides share a state."""

    def __init__(self, task: Task, name: str, state: StreamJoinState, side: int) -> None:
        super().__init__(task, name)
        self.state, self.side = state, side

    async def push(self, key: Any, value: Any, ts: float) -> None:
        """Take one event."""
        await self.state.push(self.side, key, value, ts)


class StreamJoinState:
    """The buffers of a windowed stream-stream join: each event waits
    ``within + grace`` seconds of event time for partners of its key on the
    other side; a pair within ``within`` seconds gives ``fn(left, right)``."""

    def __init__(
        self,
        task: Task,
        name: str,
        store: OwnedStore,
        fn: Callable[[Any, Any], Any],
        within: float,
        grace: float,
        late_topic: str,
    ) -> None:
        self.task, self.name, self.store, self.fn = task, name, store, fn
        self.within, self.grace, self.late_topic = within, grace, late_topic
        self.children: list[Proc] = []
        self.watermark = -float("inf")
        # per side, key -> {seq: (event time, value)}
        self._buffers: tuple[dict[Any, dict[int, tuple[float, Any]]], ...] = ({}, {})
        self._seq = 0
        self._expiry: list[tuple[float, int, int, Any]] = []  # (t, seq, side, key)
        store.on_restore = self._restored

    def _restored(self, key: Any, value: Any) -> None:
        if key == _META:
            if value is not None:
                self.watermark = value
            return
        side, k, t, seq = key
        buf = self._buffers[side].setdefault(k, {})
        buf.pop(seq, None)
        if value is not None:
            buf[seq] = (t, value)
            heapq.heappush(self._expiry, (t, seq, side, k))
        if not buf:
            del self._buffers[side][k]
        self._seq = max(self._seq, seq + 1)

    async def push(self, side: int, key: Any, value: Any, ts: float) -> None:
        """Take one event of ``side`` (0 left, 1 right)."""
        if key is None:
            self.task.fail(
                self.name, SerializationError("the event has no key: key_by before joining")
            )
            return
        if ts < self.watermark - self.within - self.grace:
            late_record(self.task, self.late_topic, self.name, key, value, ts, self.watermark)
            return
        for t, other in list(self._buffers[1 - side].get(key, {}).values()):
            if abs(t - ts) <= self.within:
                left, right = (value, other) if side == 0 else (other, value)
                try:
                    out = self.fn(left, right)
                    if inspect.isawaitable(out):
                        out = await out
                except Exception as exc:
                    self.task.fail(self.name, exc)
                    return
                for child in self.children:
                    await child.push(key, out, max(t, ts))
        seq = self._seq
        self._seq += 1
        self._buffers[side].setdefault(key, {})[seq] = (ts, value)
        heapq.heappush(self._expiry, (ts, seq, side, key))
        self.store.put((side, key, ts, seq), value, ts)
        if ts > self.watermark:
            self.watermark = ts
            self.store.put(_META, ts, ts)
            horizon = ts - self.within - self.grace
            while self._expiry and self._expiry[0][0] < horizon:
                t, s, sd, k = heapq.heappop(self._expiry)
                buf = self._buffers[sd].get(k, {})
                buf.pop(s, None)
                if not buf:
                    self._buffers[sd].pop(k, None)
                self.store.delete((sd, k, t, s), ts)
