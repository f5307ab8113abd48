"""A history of what clients saw, and one checker of the reliability invariants.

Theory of operation
-------------------
A reliability scenario records a :class:`History` as it runs: every send (an
event id carried in the payload), every acknowledgement (topic, partition,
offset), every failed send, every read, every successful group commit and
deliberate seek, every group assignment (member, generation, partitions),
and what was left running after each shutdown (open files, live tasks).
Times are whatever clock the scenario uses (Trio's virtual time under
``MockClock``). Recording is plain appends; no Trio here.

:func:`check` then judges the history against the final contents of every
partition (offset -> event id, read back after the last reopen) and returns a
:class:`CheckReport`:

* **I1** every acknowledged event is stored exactly once, at its acked offset
  (stored copies, not deliveries: consumers are at-least-once); an event that
  was sent once but whose send failed may be stored at most once.
* **I2** stored offsets per partition are strictly increasing and contiguous
  (for offsets that exist: retention and compaction remove offsets, so pass
  ``contiguous=False`` there); an offset never names two different events
  (acks and reads over the whole history included: no offset is reused).
* **I3** committed group offsets never go backwards, unless the committing
  member sought that partition since the previous commit (a deliberate reset).
* **I4** within one group generation, no partition has two owners.
* **I5** after each shutdown no file is open and no task is alive.
* **I6** no read_committed reader sees an aborted or duplicated effect. A
  transactional writer records every transaction it ended
  (:meth:`History.transaction`: its tag, the output event ids, each with the
  *effect* it carries, e.g. the input it was made from, and the outcome
  ``committed`` / ``aborted`` / ``unknown``). Over the read_committed reads
  of the history and the read_committed ``committed_view`` of the final
  contents: no output of an aborted transaction is seen, no effect is seen
  at two offsets, and every transaction is seen whole or not at all in the
  final view; a transaction whose commit returned is seen whole.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import attrs

__all__ = [
    "Ack",
    "Assignment",
    "CheckReport",
    "Commit",
    "History",
    "Read",
    "Seek",
    "SendFailed",
    "Shutdown",
    "TxnEnd",
    "Violation",
    "check",
]

TP = tuple[str, int]


@attrs.frozen
class Ack:
    """The broker acknowledged event ``event_id`` at ``offset``."""

    time: float
    topic: str
    partition: int
    offset: int
    event_id: str


@attrs.frozen
class SendFailed:
    """The producer gave up on ``event_id`` (it may or may not be stored)."""

    time: float
    topic: str
    event_id: str
    error: str


@attrs.frozen
class Read:
    """A consumer read ``event_id`` at ``offset``."""

    time: float
    consumer: str
    topic: str
    partition: int
    offset: int
    event_id: str | None
    isolation: str = "read_committed"


@attrs.frozen
class TxnEnd:
    """A transactional writer ended transaction ``tag``: ``outputs`` maps
    each output event id to its effect; ``outcome`` is ``committed`` (the
    commit returned), ``aborted`` (the writer aborted it, or the broker
    fenced or timed it out before any commit was asked) or ``unknown`` (the
    commit was asked and failed: it may have gone either way)."""

    time: float
    writer: str
    tag: str
    outcome: str
    outputs: tuple[tuple[str, str], ...]


@attrs.frozen
class Commit:
    """A successful group commit of one partition's offset."""

    time: float
    group: str
    member: str
    generation: int
    topic: str
    partition: int
    offset: int


@attrs.frozen
class Seek:
    """A member moved its position on purpose (the next commit may go back)."""

    time: float
    group: str
    member: str
    topic: str
    partition: int
    offset: int


@attrs.frozen
class Assignment:
    """A member learned its partitions for one group generation."""

    time: float
    group: str
    member: str
    generation: int
    partitions: tuple[TP, ...]


@attrs.frozen
class Shutdown:
    """What was still open or running after the broker shut down."""

    time: float
    open_files: tuple[str, ...] = ()
    live_tasks: tuple[str, ...] = ()


Op = Ack | SendFailed | Read | Commit | Seek | Assignment | Shutdown | TxnEnd


@attrs.define
class History:
    """An ordered record of a scenario (see the module docstring)."""

    ops: list[Op] = attrs.Factory(list)
    sent: Counter[str] = attrs.Factory(Counter)

    def send(self, event_id: str) -> None:
        """An event with this id was handed to a producer (once per send)."""
        self.sent[event_id] += 1

    def ack(self, time: float, topic: str, partition: int, offset: int, event_id: str) -> None:
        """Record an acknowledgement."""
        self.ops.append(Ack(time, topic, partition, offset, event_id))

    def send_failed(self, time: float, topic: str, event_id: str, error: str) -> None:
        """Record a send the producer gave up on."""
        self.ops.append(SendFailed(time, topic, event_id, error))

    def read(
        self,
        time: float,
        consumer: str,
        topic: str,
        partition: int,
        offset: int,
        event_id: str | None,
        isolation: str = "read_committed",
    ) -> None:
        """Record one event a consumer read."""
        self.ops.append(Read(time, consumer, topic, partition, offset, event_id, isolation))

    def transaction(
        self, time: float, writer: str, tag: str, outcome: str, outputs: Mapping[str, str]
    ) -> None:
        """Record the end of a transaction (see :class:`TxnEnd`)."""
        if outcome not in ("committed", "aborted", "unknown"):
            raise ValueError(f"outcome must be committed, aborted or unknown, not {outcome!r}")
        self.ops.append(TxnEnd(time, writer, tag, outcome, tuple(sorted(outputs.items()))))

    def commit(
        self,
        time: float,
        group: str,
        member: str,
        generation: int,
        offsets: Mapping[TP, int],
    ) -> None:
        """Record a successful commit (one op per partition)."""
        for (topic, partition), offset in sorted(offsets.items()):
            self.ops.append(Commit(time, group, member, generation, topic, partition, offset))

    def seek(
        self, time: float, group: str, member: str, topic: str, partition: int, offset: int
    ) -> None:
        """Record a deliberate seek by a group member."""
        self.ops.append(Seek(time, group, member, topic, partition, offset))

    def assignment(
        self, time: float, group: str, member: str, generation: int, partitions: Iterable[TP]
    ) -> None:
        """Record the partitions a member owns in a generation."""
        self.ops.append(Assignment(time, group, member, generation, tuple(sorted(partitions))))

    def shutdown(
        self, time: float, open_files: Iterable[str] = (), live_tasks: Iterable[str] = ()
    ) -> None:
        """Record what a shutdown left behind (both should be empty)."""
        self.ops.append(Shutdown(time, tuple(open_files), tuple(live_tasks)))

    def of(self, kind: type[Op]) -> list[Op]:
        """Every op of one kind, in order."""
        return [op for op in self.ops if type(op) is kind]


@attrs.frozen
class Violation:
    """One broken invariant, with what and where."""

    invariant: str
    detail: str


@attrs.frozen
class CheckReport:
    """What :func:`check` found."""

    acked_checked: int
    lost: int
    duplicates: int
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        """True when no invariant is broken."""
        return not self.violations

    def by_invariant(self) -> dict[str, int]:
        """Violation counts per invariant name."""
        return dict(Counter(v.invariant for v in self.violations))

    def summary(self) -> str:
        """One line (plus the first violations) for humans."""
        head = (
            f"acked_checked={self.acked_checked} lost={self.lost} "
            f"duplicates={self.duplicates} violations={len(self.violations)}"
        )
        return "\n".join([head, *(f"  {v.invariant}: {v.detail}" for v in self.violations[:20])])


def check(
    history: History,
    final: Mapping[TP, Sequence[tuple[int, str | None]]],
    *,
    contiguous: bool = True,
    committed_view: Mapping[TP, Sequence[tuple[int, str | None]]] | None = None,
) -> CheckReport:
    """Judge ``history`` and the ``final`` partition contents against I1-I6.

    ``final`` maps each partition to its stored ``(offset, event_id)`` pairs in
    stored order (``event_id`` None for events without one).
    ``committed_view`` is what a read_committed reader reads of the
    transactional writers' output partitions at the end (for I6; their
    events are not subject to I1, whose acks are plain sends).
    """
    violations: list[Violation] = []
    lost, duplicates, checked = _check_i1(history, final, violations)
    _check_i2(history, final, violations, contiguous)
    _check_i3(history, violations)
    _check_i4(history, violations)
    _check_i5(history, violations)
    duplicates += _check_i6(history, committed_view or {}, violations)
    return CheckReport(checked, lost, duplicates, tuple(violations))


def _check_i1(
    history: History,
    final: Mapping[TP, Sequence[tuple[int, str | None]]],
    out: list[Violation],
) -> tuple[int, int, int]:
    where: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for (topic, partition), events in final.items():
        for offset, event_id in events:
            if event_id is not None:
                where[event_id].append((topic, partition, offset))
    lost = duplicates = 0
    acked: dict[str, Ack] = {}
    for op in history.ops:
        if isinstance(op, Ack):
            earlier = acked.get(op.event_id)
            if earlier is not None and (earlier.partition, earlier.offset) != (
                op.partition,
                op.offset,
            ):
                out.append(
                    Violation(
                        "I1",
                        f"event {op.event_id} acked twice at different places: "
                        f"{earlier.topic}/{earlier.partition}@{earlier.offset} and "
                        f"{op.topic}/{op.partition}@{op.offset}",
                    )
                )
            acked.setdefault(op.event_id, op)
    for event_id, ack in sorted(acked.items()):
        copies = where.get(event_id, [])
        if not copies:
            lost += 1
            out.append(
                Violation(
                    "I1",
                    f"acked event {event_id} ({ack.topic}/{ack.partition}@{ack.offset}, "
                    f"t={ack.time:.3f}) is lost",
                )
            )
            continue
        if (ack.topic, ack.partition, ack.offset) not in copies:
            out.append(
                Violation(
                    "I1",
                    f"acked event {event_id} was acked at {ack.topic}/{ack.partition}@"
                    f"{ack.offset} but is stored at {copies}",
                )
            )
    for event_id, copies in sorted(where.items()):
        if not history.sent[event_id] and event_id not in acked:
            out.append(Violation("I1", f"event {event_id} is stored but was never sent"))
            continue
        # An acked event once; an unacked one at most once per send.
        allowed = 1 if event_id in acked else history.sent[event_id]
        if len(copies) > allowed:
            duplicates += len(copies) - allowed
            out.append(Violation("I1", f"event {event_id} is stored {len(copies)} times: {copies}"))
    return lost, duplicates, len(acked)


def _check_i2(
    history: History,
    final: Mapping[TP, Sequence[tuple[int, str | None]]],
    out: list[Violation],
    contiguous: bool,
) -> None:
    for (topic, partition), events in sorted(final.items()):
        previous: int | None = None
        for offset, _event_id in events:
            if previous is not None:
                if offset <= previous:
                    out.append(
                        Violation(
                            "I2",
                            f"{topic}/{partition}: offset {offset} follows {previous} "
                            "(not strictly increasing)",
                        )
                    )
                elif contiguous and offset != previous + 1:
                    out.append(
                        Violation(
                            "I2",
                            f"{topic}/{partition}: offsets jump from {previous} to {offset} "
                            "(a gap)",
                        )
                    )
            previous = offset
    # No offset names two different events, across acks, reads and the end state.
    named: dict[tuple[str, int, int], tuple[str, str]] = {}

    def see(topic: str, partition: int, offset: int, event_id: str | None, source: str) -> None:
        if event_id is None:
            return
        key = (topic, partition, offset)
        seen = named.get(key)
        if seen is None:
            named[key] = (event_id, source)
        elif seen[0] != event_id:
            out.append(
                Violation(
                    "I2",
                    f"{topic}/{partition}@{offset} was reused: {seen[0]} ({seen[1]}) "
                    f"then {event_id} ({source})",
                )
            )

    for op in history.ops:
        if isinstance(op, Ack):
            see(op.topic, op.partition, op.offset, op.event_id, f"ack t={op.time:.3f}")
        elif isinstance(op, Read):
            see(op.topic, op.partition, op.offset, op.event_id, f"read t={op.time:.3f}")
    for (topic, partition), events in sorted(final.items()):
        for offset, event_id in events:
            see(topic, partition, offset, event_id, "final")


def _check_i3(history: History, out: list[Violation]) -> None:
    last: dict[tuple[str, str, int], Commit] = {}
    sought: set[tuple[str, str, str, int]] = set()
    for op in history.ops:
        if isinstance(op, Seek):
            sought.add((op.group, op.member, op.topic, op.partition))
        elif isinstance(op, Commit):
            key = (op.group, op.topic, op.partition)
            previous = last.get(key)
            reset = (op.group, op.member, op.topic, op.partition) in sought
            if previous is not None and op.offset < previous.offset and not reset:
                out.append(
                    Violation(
                        "I3",
                        f"group {op.group} {op.topic}/{op.partition}: commit went back from "
                        f"{previous.offset} (member {previous.member}, gen "
                        f"{previous.generation}, t={previous.time:.3f}) to {op.offset} "
                        f"(member {op.member}, gen {op.generation}, t={op.time:.3f})",
                    )
                )
            last[key] = op
            sought.discard((op.group, op.member, op.topic, op.partition))


def _check_i4(history: History, out: list[Violation]) -> None:
    owners: dict[tuple[str, int, str, int], str] = {}
    for op in history.ops:
        if not isinstance(op, Assignment):
            continue
        for topic, partition in op.partitions:
            key = (op.group, op.generation, topic, partition)
            owner = owners.setdefault(key, op.member)
            if owner != op.member:
                out.append(
                    Violation(
                        "I4",
                        f"group {op.group} generation {op.generation}: {topic}/{partition} "
                        f"owned by {owner} and {op.member}",
                    )
                )


def _check_i5(history: History, out: list[Violation]) -> None:
    for op in history.ops:
        if isinstance(op, Shutdown):
            if op.open_files:
                out.append(
                    Violation(
                        "I5",
                        f"shutdown at t={op.time:.3f} left files open: {list(op.open_files)}",
                    )
                )
            if op.live_tasks:
                out.append(
                    Violation(
                        "I5",
                        f"shutdown at t={op.time:.3f} left tasks alive: {list(op.live_tasks)}",
                    )
                )


def _check_i6(
    history: History,
    view: Mapping[TP, Sequence[tuple[int, str | None]]],
    out: list[Violation],
) -> int:
    """I6 (see the module docs); returns the number of duplicated effects."""
    txns = [op for op in history.ops if isinstance(op, TxnEnd)]
    if not txns and not view:
        return 0
    owner: dict[str, TxnEnd] = {}
    for txn in txns:
        for event_id, _effect in txn.outputs:
            owner[event_id] = txn
    # Where each effect was seen by read_committed readers: (topic, partition, offset, event).
    seen: dict[str, set[tuple[str, int, int, str]]] = defaultdict(set)

    def judge(topic: str, partition: int, offset: int, event_id: str | None, where: str) -> None:
        txn = owner.get(event_id) if event_id is not None else None
        if event_id is None or txn is None:
            return
        if txn.outcome == "aborted" and (txn.tag, where) not in shown_aborted:
            shown_aborted.add((txn.tag, where))
            out.append(
                Violation(
                    "I6",
                    f"{where} saw {event_id} at {topic}/{partition}@{offset}, an output of "
                    f"transaction {txn.tag} that {txn.writer} aborted",
                )
            )
        effect = dict(txn.outputs)[event_id]
        seen[effect].add((topic, partition, offset, event_id))

    shown_aborted: set[tuple[str, str]] = set()
    for op in history.ops:
        if isinstance(op, Read) and op.isolation == "read_committed":
            judge(op.topic, op.partition, op.offset, op.event_id, f"reader {op.consumer}")
    in_view: dict[str, set[str]] = defaultdict(set)  # tag -> its event ids in the view
    for (topic, partition), events in sorted(view.items()):
        for offset, maybe_id in events:
            judge(topic, partition, offset, maybe_id, "the final read_committed view")
            if maybe_id is not None and maybe_id in owner:
                in_view[owner[maybe_id].tag].add(maybe_id)
    duplicates = 0
    for effect, places in sorted(seen.items()):
        if len({(t, p, o) for t, p, o, _ in places}) > 1:
            duplicates += len(places) - 1
            out.append(
                Violation(
                    "I6",
                    f"effect {effect} seen {len(places)} times by read_committed readers: "
                    f"{sorted(places)}",
                )
            )
    for txn in txns:
        outputs = {event_id for event_id, _ in txn.outputs}
        got = in_view.get(txn.tag, set())
        if got and got != outputs:
            out.append(
                Violation(
                    "I6",
                    f"transaction {txn.tag} of {txn.writer} is seen in part: "
                    f"{len(got)} of its {len(outputs)} outputs",
                )
            )
        elif txn.outcome == "committed" and outputs and not got:
            out.append(
                Violation(
                    "I6",
                    f"transaction {txn.tag} of {txn.writer} committed at t={txn.time:.3f} "
                    "but none of its outputs is in the final read_committed view",
                )
            )
    return duplicates
