"""Share subscriptions, sans-IO: one partition's ack state and its decisions.

Theory of operation
-------------------
A share subscription deals the events of one topic to many consumers, event
by event. Each partition keeps a :class:`ShareState`:

* the **ack floor**: every offset below it is settled (acked, dead-lettered,
  or absent from the log);
* **entries**: the offsets at or above the floor that were delivered at least
  once, each with its :class:`Entry` -- state, delivery count, the consumer
  holding it, its lock deadline and the time it becomes visible again.

Offsets at or above the floor with no entry were never delivered. So the
state is proportional to the holes, not the backlog. The state changes only
through *deltas* (small CBOR maps) folded in by :func:`apply_delta`; the
actor appends each delta to the partition's state journal (fsynced, group
commit) *before* acting on it, and replay folds them again. A delivery is a
delta, so a crash never resets a delivery count, and an ack is a delta, so an
acked event is never delivered again.

Entry states (a table; anything else is an illegal transition)::

    (none) --deliver--> acquired --ack--> acked
    acquired --nack / lock timeout / consumer left--> available (visible_at)
    available --deliver--> acquired
    acquired / available --reject, or deliveries == max_deliveries--> dead
    dead --written to the dead-letter topic--> archived

``acked`` and ``archived`` entries are dropped when the floor passes them.

:class:`ShareCore` makes the decisions on one state: which offsets to hand
to a consumer now (:meth:`ShareCore.acquire`), what an ack / nack / reject /
extend means (:meth:`ShareCore.settle`), what a passed deadline means
(:meth:`ShareCore.expire`), and when it next needs to be woken
(:meth:`ShareCore.next_deadline`). Each returns deltas and never changes the
state itself: the caller persists the deltas, then folds them in. Times are
integer milliseconds from the broker's clock, so they survive a restart.

The core also keeps, in memory only, the events it has *loaded* from the log
(the window ``[floor, read_end)``, at most ``window`` offsets wide): the
actor reads the log and feeds them in with :meth:`ShareCore.load`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from headwater._errors import ConfigError, InvalidArgument, LockLostError
from headwater.journal._batch import murmur2

__all__ = [
    "MODES",
    "Entry",
    "ShareCore",
    "ShareSettings",
    "ShareState",
    "apply_delta",
    "dead_letter_headers",
    "state_from_plain",
    "state_to_plain",
]


def dead_letter_headers(
    *,
    topic: str,
    partition: int,
    offset: int,
    error: str,
    delivery_count: int = 1,
    subscription: str | None = None,
    job: str | None = None,
    operator: str | None = None,
) -> tuple[tuple[str, bytes], ...]:
    """The ``hw.dlq.*`` headers of a dead letter (DECISIONS #23: one schema for
    share subscriptions and stream processing), to add after the event's own:
    source ``topic``/``partition``/``offset``, ``delivery_count`` and ``error``,
    then ``subscription`` (share subscriptions) or ``job``/``operator`` (stream
    processing) when given. Numbers are decimal ASCII, text UTF-8."""
    headers = [
        ("hw.dlq.topic", topic.encode()),
        ("hw.dlq.partition", str(partition).encode()),
        ("hw.dlq.offset", str(offset).encode()),
        ("hw.dlq.delivery_count", str(delivery_count).encode()),
        ("hw.dlq.error", error.encode("utf-8", "backslashreplace")),
    ]
    if subscription is not None:
        headers.append(("hw.dlq.subscription", subscription.encode()))
    if job is not None:
        headers.append(("hw.dlq.job", job.encode()))
    if operator is not None:
        headers.append(("hw.dlq.operator", operator.encode()))
    return tuple(headers)


#: The subscription modes this broker implements.
MODES: Final = ("shared", "exclusive", "failover", "key_shared")

ACQUIRED: Final = "acquired"
AVAILABLE: Final = "available"
ACKED: Final = "acked"
DEAD: Final = "dead"
ARCHIVED: Final = "archived"
_SETTLED: Final = frozenset({ACKED, ARCHIVED})

OUTCOMES: Final = ("ack", "nack", "reject", "extend")


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, not {value!r}")
    return value


@attrs.frozen
class ShareSettings:
    """A subscription's settings, fixed when it is created.

    ``ack_timeout_ms``: the lock a delivery holds before it goes to someone
    else. ``max_deliveries``: after this many deliveries without an ack the
    event goes to the dead-letter topic. Backoff before a redelivery (after a
    nack or a lock timeout): ``backoff_ms`` as a list (the n-th redelivery
    waits ``backoff_ms[n-1]``, the last entry repeating), else exponential
    ``min(backoff_base_ms * 2**(n-1), backoff_max_ms)`` when
    ``backoff_base_ms`` > 0, else none. ``window``: how many offsets past the
    ack floor may be in play at once (bounds memory)."""

    topic: str
    mode: str = "shared"
    ack_timeout_ms: int = 30_000
    max_deliveries: int = 5
    backoff_ms: tuple[int, ...] = ()
    backoff_base_ms: int = 0
    backoff_max_ms: int = 60_000
    window: int = 1000
    start: str = "earliest"

    def __attrs_post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode={self.mode!r} is not supported; use one of {', '.join(MODES)}")
        _int("ack_timeout_ms", self.ack_timeout_ms, 1)
        _int("max_deliveries", self.max_deliveries, 1)
        _int("backoff_base_ms", self.backoff_base_ms, 0)
        _int("backoff_max_ms", self.backoff_max_ms, 0)
        _int("window", self.window, 1)
        if not isinstance(self.backoff_ms, tuple):
            raise ConfigError(f"backoff_ms must be a tuple of ints, not {self.backoff_ms!r}")
        for delay in self.backoff_ms:
            _int("each backoff delay", delay, 0)
        if self.start not in ("earliest", "latest"):
            raise ConfigError(f"start={self.start!r}; use 'earliest' or 'latest'")

    def backoff(self, deliveries: int) -> int:
        """Milliseconds to wait before redelivering an event delivered
        ``deliveries`` times so far."""
        n = max(deliveries, 1)
        if self.backoff_ms:
            return self.backoff_ms[min(n - 1, len(self.backoff_ms) - 1)]
        if self.backoff_base_ms:
            return int(min(self.backoff_base_ms * 2 ** min(n - 1, 62), self.backoff_max_ms))
        return 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (CBOR) for the subscription's config file."""
        d = attrs.asdict(self)
        d["backoff_ms"] = list(self.backoff_ms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShareSettings:
        """The inverse of :meth:`to_dict`."""
        d = dict(d)
        d["backoff_ms"] = tuple(d.get("backoff_ms", ()))
        return cls(**d)


@attrs.define
class Entry:
    """One offset's share state (see the module docstring's table)."""

    state: str
    deliveries: int = 0
    consumer: str | None = None
    deadline: int = 0
    visible_at: int = 0
    error: str | None = None


@attrs.define
class ShareState:
    """One partition's persisted share state: ack floor, entries, counters."""

    floor: int = 0
    entries: dict[int, Entry] = attrs.Factory(dict)
    acked: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    started: bool = False


def state_to_plain(state: ShareState) -> dict[str, Any]:
    """A snapshot of ``state`` as plain CBOR data."""
    return {
        "floor": state.floor,
        "entries": [
            [o, e.state, e.deliveries, e.consumer, e.deadline, e.visible_at, e.error]
            for o, e in sorted(state.entries.items())
        ],
        "acked": state.acked,
        "redelivered": state.redelivered,
        "dead_lettered": state.dead_lettered,
        "started": state.started,
    }


def state_from_plain(plain: dict[str, Any]) -> ShareState:
    """The inverse of :func:`state_to_plain`."""
    return ShareState(
        floor=plain["floor"],
        entries={row[0]: Entry(*row[1:]) for row in plain["entries"]},
        acked=plain["acked"],
        redelivered=plain["redelivered"],
        dead_lettered=plain["dead_lettered"],
        started=plain["started"],
    )


def _advance(state: ShareState) -> None:
    entries = state.entries
    floor = state.floor
    while True:
        entry = entries.get(floor)
        if entry is None or entry.state not in _SETTLED:
            break
        del entries[floor]
        floor += 1
    state.floor = floor


def apply_delta(state: ShareState, delta: dict[str, Any]) -> ShareState:
    """Fold one delta into ``state`` (in place; returns it).

    Deltas (``o`` is a list of offsets):

    * ``{"t": "start", "f": floor}``: the subscription starts at ``floor``;
    * ``{"t": "deliver", "o", "c": consumer, "x": lock deadline}``;
    * ``{"t": "ack", "o"}``;
    * ``{"t": "release", "o", "v": [visible_at, ...], "e": error or None}``;
    * ``{"t": "extend", "o", "x": lock deadline}``;
    * ``{"t": "dead", "o", "e": [error, ...]}``: to be dead-lettered;
    * ``{"t": "archived", "o"}``: written to the dead-letter topic;
    * ``{"t": "floor", "f": floor}``: offsets below ``f`` are absent or gone.

    Replaying the same deltas from the same state always gives the same state.
    """
    kind = delta["t"]
    entries = state.entries
    if kind == "deliver":
        consumer, deadline = delta["c"], delta["x"]
        for o in delta["o"]:
            entry = entries.get(o)
            if entry is None:
                entries[o] = Entry(ACQUIRED, 1, consumer, deadline)
            else:
                entry.state = ACQUIRED
                entry.deliveries += 1
                entry.consumer = consumer
                entry.deadline = deadline
                state.redelivered += 1
    elif kind == "ack":
        for o in delta["o"]:
            entry = entries.get(o)
            if entry is not None and entry.state == ACQUIRED:
                entry.state = ACKED
                entry.consumer = None
                state.acked += 1
        _advance(state)
    elif kind == "release":
        for o, visible in zip(delta["o"], delta["v"], strict=True):
            entry = entries.get(o)
            if entry is not None and entry.state == ACQUIRED:
                entry.state = AVAILABLE
                entry.consumer = None
                entry.visible_at = visible
                if delta.get("e") is not None:
                    entry.error = delta["e"]
    elif kind == "extend":
        for o in delta["o"]:
            entry = entries.get(o)
            if entry is not None and entry.state == ACQUIRED:
                entry.deadline = delta["x"]
    elif kind == "dead":
        for o, error in zip(delta["o"], delta["e"], strict=True):
            entry = entries.get(o)
            if entry is not None and entry.state in (ACQUIRED, AVAILABLE):
                entry.state = DEAD
                entry.consumer = None
                if error is not None:
                    entry.error = error
    elif kind == "archived":
        for o in delta["o"]:
            entry = entries.get(o)
            if entry is not None and entry.state == DEAD:
                entry.state = ARCHIVED
                state.dead_lettered += 1
        _advance(state)
    elif kind in ("floor", "start"):
        floor = delta["f"]
        if kind == "start":
            state.started = True
        if floor > state.floor:
            for o in [o for o in entries if o < floor]:
                del entries[o]
            state.floor = floor
            _advance(state)
    else:
        raise InvalidArgument(f"unknown share delta {kind!r}")
    return state


@attrs.frozen
class Delivery:
    """An offset handed to a consumer: its payload (as loaded) and count."""

    offset: int
    payload: Any
    delivery_count: int


@attrs.frozen
class DeadLetter:
    """An event to write to the dead-letter topic."""

    offset: int
    payload: Any
    delivery_count: int
    error: str | None


class ShareCore:
    """The decisions of one partition's share subscription (module docstring).

    ``state`` is read, never written, here: the caller folds the returned
    deltas in with :func:`apply_delta` once they are durable."""

    def __init__(
        self,
        settings: ShareSettings,
        state: ShareState,
        key_of: Callable[[Any], bytes | None] = lambda payload: None,
        not_before_of: Callable[[Any], int | None] = lambda payload: None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.loaded: dict[int, Any] = {}
        self.read_end = state.floor
        self.key_of = key_of
        self.not_before_of = not_before_of
        self.not_before: dict[int, int] = {}  # loaded offset -> deliver_at (ms)
        self._members: tuple[str, ...] = ()
        self._owners: dict[bytes, str] = {}

    def owner(self, key: bytes, members: tuple[str, ...]) -> str:
        """``key_shared``: the live consumer that owns ``key`` (rendezvous
        hashing over ``members``, so a key moves only when its owner leaves
        or a newcomer outranks it)."""
        if members != self._members:
            self._members = members
            self._owners = {}
        found = self._owners.get(key)
        if found is None:
            found = max(members, key=lambda m: (murmur2(key + b"\0" + m.encode()), m))
            self._owners[key] = found
        return found

    # --------------------------------------------------------------- window

    def room(self) -> int:
        """How many more offsets may be loaded (the window is full at 0)."""
        return max(0, self.settings.window - (self.read_end - self.state.floor))

    def load(self, events: Iterable[tuple[int, Any]], end: int) -> None:
        """Add events read from the log (ascending offsets below ``end``);
        ``end`` is where the next read starts. Settled offsets are skipped."""
        entries = self.state.entries
        floor = self.state.floor
        for offset, payload in events:
            if offset < floor:
                continue
            entry = entries.get(offset)
            if entry is not None and entry.state in _SETTLED:
                continue
            self.loaded[offset] = payload
            not_before = self.not_before_of(payload)
            if not_before is not None:
                self.not_before[offset] = not_before
        self.read_end = max(self.read_end, end)

    def forget_settled(self) -> None:
        """Drop loaded payloads of settled or passed offsets (after folding)."""
        floor = self.state.floor
        entries = self.state.entries
        for o in [
            o for o in self.loaded if o < floor or (o in entries and entries[o].state in _SETTLED)
        ]:
            del self.loaded[o]
            self.not_before.pop(o, None)
        if self.read_end < floor:
            self.read_end = floor

    def gap_delta(self) -> dict[str, Any] | None:
        """A ``floor`` delta when the floor sits on offsets absent from the
        log (compaction, retention) inside the loaded window, else ``None``."""
        floor = self.state.floor
        entries = self.state.entries
        new = floor
        while new < self.read_end and new not in self.loaded and new not in entries:
            new += 1
        return {"t": "floor", "f": new} if new > floor else None

    # ----------------------------------------------------------- decisions

    def acquire(
        self, consumer: str, max_events: int, now: int, members: tuple[str, ...] = ()
    ) -> tuple[list[dict[str, Any]], list[Delivery]]:
        """Choose up to ``max_events`` deliverable offsets (lowest first) for
        ``consumer``; returns the ``deliver`` delta and the deliveries.

        ``key_shared`` (with the live ``members``): an event with a key goes
        only to the key's owner, and only once every earlier event of its key
        in this partition is settled, so each key is processed in order."""
        if max_events <= 0:
            return [], []
        entries = self.state.entries
        chosen: list[Delivery] = []
        keyed = self.settings.mode == "key_shared" and consumer in members
        blocked: set[bytes] = set()
        for offset, payload in self.loaded.items():
            entry = entries.get(offset)
            if keyed:
                key = self.key_of(payload)
                if key is not None:
                    if key in blocked:
                        continue
                    blocked.add(key)  # later events of this key wait for this one
                    if self.owner(key, members) != consumer:
                        continue
            if self.not_before.get(offset, 0) > now:
                continue  # produced with deliver_at: not yet
            if entry is None:
                chosen.append(Delivery(offset, payload, 1))
            elif entry.state == AVAILABLE and entry.visible_at <= now:
                chosen.append(Delivery(offset, payload, entry.deliveries + 1))
            else:
                continue
            if len(chosen) >= max_events:
                break
        if not chosen:
            return [], []
        delta = {
            "t": "deliver",
            "o": [d.offset for d in chosen],
            "c": consumer,
            "x": now + self.settings.ack_timeout_ms,
        }
        return [delta], chosen

    def _fail(
        self, offsets: list[int], now: int, error: str | None, delay: int | None
    ) -> list[dict[str, Any]]:
        """Deltas that release (with backoff or ``delay``) or kill ``offsets``."""
        entries = self.state.entries
        released: list[int] = []
        visible: list[int] = []
        dead: list[int] = []
        for o in offsets:
            entry = entries[o]
            if entry.deliveries >= self.settings.max_deliveries:
                dead.append(o)
            else:
                released.append(o)
                wait = self.settings.backoff(entry.deliveries) if delay is None else delay
                visible.append(now + wait)
        out: list[dict[str, Any]] = []
        if released:
            out.append({"t": "release", "o": released, "v": visible, "e": error})
        if dead:
            out.append({"t": "dead", "o": dead, "e": [error] * len(dead)})
        return out

    def settle(
        self,
        consumer: str,
        items: Iterable[tuple[int, str, int | None, str | None]],
        now: int,
    ) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
        """Apply a consumer's outcomes ``(offset, outcome, delay_ms, error)``
        with ``outcome`` one of ``ack``, ``nack``, ``reject``, ``extend``.

        Returns the deltas and the refused items as ``(offset, reason)``: an
        event this consumer does not hold (never delivered to it, its lock
        expired and it went back or elsewhere). Acking an already acked (or
        passed) offset is a no-op, so a retried ack is safe."""
        entries = self.state.entries
        acks: list[int] = []
        extends: list[int] = []
        rejects: list[tuple[int, str | None]] = []
        nacks: dict[tuple[int | None, str | None], list[int]] = {}
        refused: list[tuple[int, str]] = []
        seen: set[int] = set()
        for offset, outcome, delay, error in items:
            if outcome not in OUTCOMES:
                raise InvalidArgument(
                    f"outcome {outcome!r} is unknown; use one of {', '.join(OUTCOMES)}"
                )
            if delay is not None and (
                isinstance(delay, bool) or not isinstance(delay, int) or delay < 0
            ):
                raise InvalidArgument(f"delay={delay!r}; give milliseconds >= 0")
            entry = entries.get(offset)
            if outcome == "ack" and (
                offset < self.state.floor or (entry is not None and entry.state == ACKED)
            ):
                continue  # a double ack: a no-op
            if entry is None or entry.state != ACQUIRED or entry.consumer != consumer:
                refused.append(
                    (
                        offset,
                        "not held by this consumer (never delivered to it, or its lock expired)",
                    )
                )
                continue
            if offset in seen:
                continue
            seen.add(offset)
            if outcome == "ack":
                acks.append(offset)
            elif outcome == "extend":
                extends.append(offset)
            elif outcome == "reject":
                rejects.append((offset, error))
            else:
                nacks.setdefault((delay, error), []).append(offset)
        deltas: list[dict[str, Any]] = []
        if acks:
            deltas.append({"t": "ack", "o": acks})
        if extends:
            deltas.append({"t": "extend", "o": extends, "x": now + self.settings.ack_timeout_ms})
        if rejects:
            deltas.append({"t": "dead", "o": [o for o, _ in rejects], "e": [e for _, e in rejects]})
        for (delay, error), offsets in nacks.items():
            deltas.extend(self._fail(offsets, now, error, delay))
        return deltas, refused

    def expire(self, now: int) -> list[dict[str, Any]]:
        """Deltas for locks that passed their deadline (redelivery after the
        backoff, or the dead-letter topic after ``max_deliveries``)."""
        late = [
            o for o, e in self.state.entries.items() if e.state == ACQUIRED and e.deadline <= now
        ]
        return self._fail(late, now, "ack timeout", None) if late else []

    def release_consumer(self, consumer: str, now: int) -> list[dict[str, Any]]:
        """Deltas that give back every event ``consumer`` holds (it left):
        visible at once, or dead-lettered if it used its last delivery."""
        held = [
            o
            for o, e in self.state.entries.items()
            if e.state == ACQUIRED and e.consumer == consumer
        ]
        return self._fail(held, now, "consumer left", 0) if held else []

    def dead_letters(self) -> list[DeadLetter]:
        """Events decided dead but not yet written to the dead-letter topic
        (their payload loaded)."""
        return [
            DeadLetter(o, self.loaded[o], e.deliveries, e.error)
            for o, e in sorted(self.state.entries.items())
            if e.state == DEAD and o in self.loaded
        ]

    def next_deadline(self, now: int) -> int | None:
        """The earliest future time (ms) something changes by itself: a lock
        deadline, or a released event becoming visible. ``None``: nothing."""
        best: int | None = None
        for e in self.state.entries.values():
            if e.state == ACQUIRED:
                t = e.deadline
            elif e.state == AVAILABLE and e.visible_at > now:
                t = e.visible_at
            else:
                continue
            if best is None or t < best:
                best = t
        for t in self.not_before.values():
            if t > now and (best is None or t < best):
                best = t
        return best

    def ready(self, now: int) -> int:
        """How many loaded events could be delivered at ``now``."""
        entries = self.state.entries
        n = 0
        for o in self.loaded:
            e = entries.get(o)
            if e is None or (e.state == AVAILABLE and e.visible_at <= now):
                n += 1
        return n

    def counts(self) -> dict[str, int]:
        """In-flight, waiting-for-redelivery and dead-pending counts."""
        out = {"in_flight": 0, "waiting": 0, "dead_pending": 0}
        for e in self.state.entries.values():
            if e.state == ACQUIRED:
                out["in_flight"] += 1
            elif e.state == AVAILABLE:
                out["waiting"] += 1
            elif e.state == DEAD:
                out["dead_pending"] += 1
        return out


def check_lock_lost(refused: list[tuple[int, str]], topic: str, partition: int) -> None:
    """Raise :class:`~headwater.LockLostError` naming the refused offsets."""
    if refused:
        offsets = ", ".join(str(o) for o, _ in refused[:10])
        raise LockLostError(
            f"{topic}/{partition} offsets {offsets}: {refused[0][1]}; the event was or "
            "will be delivered again, so make its processing idempotent"
        )
