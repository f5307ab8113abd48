"""The transaction coordinator core: transactional ids, epochs, two-phase commit.

Theory of operation
-------------------
One :class:`TransactionCoordinator` owns the state of every transactional id
that hashes to one partition of the internal ``__transactions`` topic
(DECISIONS #25: a cluster spreads coordinators by placing those partitions;
on one broker there is one). It has no Trio in it: every call that needs time
takes ``now`` (seconds on the actor's clock) and :meth:`next_deadline` says
when to call :meth:`tick` next.

Each transactional id moves through Kafka's states (:data:`TRANSITIONS`)::

    (new) --initialized--> empty --added--> ongoing --added--+
                             ^                |   ^----------+
                             |                |
                 initialized |   prepare_commit / prepare_abort
                             |                v
    complete_commit <--complete_commit-- prepare_commit
    complete_abort  <--complete_abort--- prepare_abort  <-- marker_written (loops)
    complete_* --added--> ongoing        (the next transaction)
    empty / complete_* --expired--> dead --initialized--> empty

* :meth:`init_producer` gives a producer its identity: the transactional id's
  producer id and a **bumped epoch**, which fences every older instance (its
  adds, ends and partition writes carry a lower epoch and fail with
  :class:`~headwater.ProducerFencedError`). If the old instance left a
  transaction ongoing, it is aborted first under the bumped epoch
  (``prepare_abort``) and the new instance is told to retry
  (:class:`~headwater.ConcurrentTransactionsError`) until its markers are
  written; so the broker finishes what the zombie left before the new
  instance starts. When the epoch would overflow, a new producer id is taken.
* :meth:`add` puts partitions and consumer groups into the transaction (the
  first add starts it, and its ``transaction_timeout`` runs from then).
* :meth:`end` is phase one: ``prepare_commit`` / ``prepare_abort`` is made
  durable, and from then on the outcome is decided. Phase two writes a marker
  into every partition of the transaction and completes every group's pending
  offsets (:meth:`pending_markers`); each done one is recorded with
  :meth:`marker_written`, and when none is left the transaction becomes
  ``complete_commit`` / ``complete_abort``.
* :meth:`tick` aborts every transaction open longer than its timeout (under a
  bumped epoch, remembered as ``timed_out_epoch`` so the late producer hears
  :class:`~headwater.TransactionTimedOutError` rather than a bare fence).

Crash safety: the state is event-sourced. Every change is a plain
CBOR-encodable event (a delta) applied by the pure :func:`apply`; the actor
persists :meth:`take_events` before answering. A kill -9 after
``prepare_*`` replays into ``prepare_*`` with the markers not yet recorded as
written still pending: the actor writes them again (markers are idempotent on
the partition side: a marker for a producer with no open transaction there is
answered as already written). Deadlines are not persisted: after recovery an
ongoing transaction's timeout runs again from the recovery time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs

from headwater._errors import (
    ConcurrentTransactionsError,
    IllegalTransitionError,
    InvalidArgument,
    InvalidTransactionStateError,
    ProducerFencedError,
    TransactionTimedOutError,
    UnknownTransactionalIdError,
)

__all__ = [
    "MAX_EPOCH",
    "TRANSITIONS",
    "MarkerPlan",
    "ProducerIdentity",
    "TransactionCoordinator",
    "TxnEvent",
    "TxnMetadata",
    "TxnState",
    "apply",
    "state_from_plain",
    "state_to_plain",
]

TxnStatus = Literal[
    "empty",
    "ongoing",
    "prepare_commit",
    "prepare_abort",
    "complete_commit",
    "complete_abort",
    "dead",
]
#: A persisted change: a CBOR-encodable dict with ``"type"`` and ``"tid"`` keys.
TxnEvent = dict[str, Any]
TP = tuple[str, int]

MAX_EPOCH = 32767
"""Epochs are 16-bit signed in the record header; past this a new producer id is taken."""
MIN_TIMEOUT = 0.1
MAX_TIMEOUT = 900.0

_IDLE = ("empty", "complete_commit", "complete_abort")

#: (state, event) -> the state the event leads to. ``None`` is a transactional
#: id the coordinator has never seen.
TRANSITIONS: dict[tuple[str | None, str], TxnStatus] = {
    **{(s, "initialized"): "empty" for s in (None, *_IDLE, "dead")},
    **{(s, "added"): "ongoing" for s in (*_IDLE, "ongoing")},
    ("ongoing", "prepare_commit"): "prepare_commit",
    ("ongoing", "prepare_abort"): "prepare_abort",
    ("prepare_commit", "marker_written"): "prepare_commit",
    ("prepare_abort", "marker_written"): "prepare_abort",
    ("prepare_commit", "complete_commit"): "complete_commit",
    ("prepare_abort", "complete_abort"): "complete_abort",
    **{(s, "expired"): "dead" for s in _IDLE},
}
_KINDS = frozenset(kind for _, kind in TRANSITIONS)


@attrs.frozen
class TxnMetadata:
    """One transactional id's persisted state. ``partitions`` and ``groups``
    are those of the transaction under way (or being completed); the
    ``pending_*`` sets are what phase two has still to mark."""

    transactional_id: str
    producer_id: int
    epoch: int
    timeout: float
    status: TxnStatus = "empty"
    partitions: frozenset[TP] = frozenset()
    groups: frozenset[str] = frozenset()
    pending_partitions: frozenset[TP] = frozenset()
    pending_groups: frozenset[str] = frozenset()
    timed_out_epoch: int | None = None


@attrs.frozen
class TxnState:
    """Every transactional id of one coordinator (one ``__transactions``
    partition). Read-only: :func:`apply` returns a new state."""

    transactions: Mapping[str, TxnMetadata] = attrs.field(factory=dict)


@attrs.frozen
class ProducerIdentity:
    """What :meth:`TransactionCoordinator.init_producer` hands a producer."""

    producer_id: int
    epoch: int


@attrs.frozen
class MarkerPlan:
    """Phase two of one transaction: write a marker with ``(producer_id,
    epoch)`` and outcome ``commit`` into each partition, and complete each
    group's pending offsets the same way."""

    transactional_id: str
    producer_id: int
    epoch: int
    commit: bool
    partitions: tuple[TP, ...]
    groups: tuple[str, ...]


def _tps(rows: Iterable[Iterable[Any]]) -> frozenset[TP]:
    return frozenset((str(t), int(p)) for t, p in rows)


def _plain_tps(tps: Iterable[TP]) -> list[list[Any]]:
    return [[t, p] for t, p in sorted(tps)]


def state_to_plain(state: TxnState) -> dict[str, Any]:
    """A :class:`TxnState` as plain CBOR-friendly data (for snapshots)."""
    return {
        "transactions": [
            {
                "tid": m.transactional_id,
                "producer_id": m.producer_id,
                "epoch": m.epoch,
                "timeout": m.timeout,
                "status": m.status,
                "partitions": _plain_tps(m.partitions),
                "groups": sorted(m.groups),
                "pending_partitions": _plain_tps(m.pending_partitions),
                "pending_groups": sorted(m.pending_groups),
                "timed_out_epoch": m.timed_out_epoch,
            }
            for m in sorted(state.transactions.values(), key=lambda m: m.transactional_id)
        ]
    }


def state_from_plain(data: Mapping[str, Any]) -> TxnState:
    """The inverse of :func:`state_to_plain`."""
    out = {}
    for m in data["transactions"]:
        out[m["tid"]] = TxnMetadata(
            m["tid"],
            int(m["producer_id"]),
            int(m["epoch"]),
            float(m["timeout"]),
            m["status"],
            _tps(m["partitions"]),
            frozenset(m["groups"]),
            _tps(m["pending_partitions"]),
            frozenset(m["pending_groups"]),
            m["timed_out_epoch"],
        )
    return TxnState(out)


def _check(tid: str, status: str | None, kind: str) -> TxnStatus:
    target = TRANSITIONS.get((status, kind))
    if target is None:
        raise IllegalTransitionError(
            f"transactional id {tid!r} is {status or 'unknown'}: event {kind!r} is not allowed"
        ) from None
    return target


def apply(state: TxnState, event: TxnEvent) -> TxnState:
    """Return the state after ``event`` (pure: ``state`` is not changed).

    Raises :class:`~headwater.IllegalTransitionError` for an event the table
    does not allow in the transactional id's current state, and
    :class:`~headwater.InvalidArgument` for an unknown event type."""
    kind = event.get("type")
    tid = event.get("tid")
    if not isinstance(kind, str) or not isinstance(tid, str):
        raise InvalidArgument(f"not a transaction event: {event!r}")
    if kind not in _KINDS:
        raise InvalidArgument(f"unknown transaction event type {kind!r}")
    old = state.transactions.get(tid)
    status = _check(tid, None if old is None else old.status, kind)
    if kind == "initialized":
        new = TxnMetadata(
            tid,
            int(event["producer_id"]),
            int(event["epoch"]),
            float(event["timeout"]),
            "empty",
            timed_out_epoch=old.timed_out_epoch if old is not None else None,
        )
    else:
        assert old is not None  # the table has no other event from "unknown"
        if kind == "added":
            fresh = old.status != "ongoing"
            new = attrs.evolve(
                old,
                status=status,
                partitions=(frozenset() if fresh else old.partitions)
                | _tps(event.get("partitions", ())),
                groups=(frozenset() if fresh else old.groups) | frozenset(event.get("groups", ())),
            )
        elif kind in ("prepare_commit", "prepare_abort"):
            new = attrs.evolve(
                old,
                status=status,
                epoch=int(event.get("epoch", old.epoch)),
                pending_partitions=old.partitions,
                pending_groups=old.groups,
                timed_out_epoch=event.get("timed_out_epoch", old.timed_out_epoch),
            )
        elif kind == "marker_written":
            new = attrs.evolve(
                old,
                pending_partitions=old.pending_partitions - _tps(event.get("partitions", ())),
                pending_groups=old.pending_groups - frozenset(event.get("groups", ())),
            )
        elif kind in ("complete_commit", "complete_abort"):
            new = attrs.evolve(
                old, status=status, pending_partitions=frozenset(), pending_groups=frozenset()
            )
        else:  # expired
            new = attrs.evolve(old, status=status, partitions=frozenset(), groups=frozenset())
    return TxnState({**state.transactions, tid: new})


class TransactionCoordinator:
    """The coordinator of one ``__transactions`` partition's transactional ids
    (sans-IO; owned by the transaction coordinator actor)."""

    def __init__(self, state: TxnState | None = None) -> None:
        self.state = state if state is not None else TxnState()
        self._outbox: list[TxnEvent] = []
        self._deadlines: dict[str, float] = {}

    @classmethod
    def from_state(cls, state: TxnState, now: float) -> TransactionCoordinator:
        """A coordinator for an already folded ``state`` (as replayed); every
        ongoing transaction's timeout runs again from ``now``."""
        coordinator = cls(state)
        for m in state.transactions.values():
            if m.status == "ongoing":
                coordinator._deadlines[m.transactional_id] = now + m.timeout
        return coordinator

    # ------------------------------------------------------------ plumbing

    def _emit(self, event: TxnEvent) -> None:
        self.state = apply(self.state, event)
        self._outbox.append(event)

    def take_events(self) -> list[TxnEvent]:
        """Return and forget the events emitted since the last call (persist
        them before answering the request that caused them)."""
        events, self._outbox = self._outbox, []
        return events

    def next_deadline(self) -> float | None:
        """When the earliest ongoing transaction times out (``None``: none)."""
        return min(self._deadlines.values(), default=None)

    def _known(self, tid: str) -> TxnMetadata:
        meta = self.state.transactions.get(tid)
        if meta is None or meta.status == "dead":
            raise UnknownTransactionalIdError(
                f"transactional id {tid!r} is not known here; start a producer with it first"
            )
        return meta

    def _fence(self, meta: TxnMetadata, producer_id: int, epoch: int) -> None:
        if producer_id == meta.producer_id and epoch == meta.epoch:
            return
        tid = meta.transactional_id
        if producer_id == meta.producer_id and epoch == meta.timed_out_epoch:
            raise TransactionTimedOutError(
                f"transaction of {tid!r} was aborted by the broker after its "
                f"transaction_timeout ({meta.timeout:g}s); start a new producer with this id"
            )
        if producer_id == meta.producer_id and epoch > meta.epoch:
            raise InvalidArgument(
                f"epoch {epoch} of {tid!r} is newer than the coordinator's {meta.epoch}; "
                "use the identity init_producer returned"
            )
        raise ProducerFencedError(
            f"producer {producer_id} epoch {epoch} of {tid!r} was fenced by a newer "
            f"instance (producer {meta.producer_id} epoch {meta.epoch}); close this producer"
        )

    # ------------------------------------------------------------ commands

    def init_producer(
        self, tid: str, timeout: float, now: float, allocate: Callable[[], int]
    ) -> ProducerIdentity:
        """Give a (re)starting producer of ``tid`` its identity, fencing every
        older instance. ``allocate()`` returns a fresh producer id (called only
        for a new id or an epoch overflow).

        Raises :class:`~headwater.ConcurrentTransactionsError` (retry) while an
        earlier transaction of ``tid`` is being completed; if one was ongoing,
        it is aborted first."""
        if not tid:
            raise InvalidArgument("transactional id must be a non-empty string")
        if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
            raise InvalidArgument(
                f"transaction_timeout must be within {MIN_TIMEOUT}..{MAX_TIMEOUT} s, got {timeout}"
            )
        meta = self.state.transactions.get(tid)
        if meta is not None and meta.status == "ongoing":
            self._abort(meta, meta.epoch + 1, timed_out=False)
            meta = self.state.transactions[tid]
        if meta is not None and meta.status in ("prepare_commit", "prepare_abort"):
            raise ConcurrentTransactionsError(
                f"the previous transaction of {tid!r} is still completing; retry shortly"
            )
        if meta is None or meta.status == "dead" or meta.epoch >= MAX_EPOCH:
            producer_id, epoch = allocate(), 0
        else:
            producer_id, epoch = meta.producer_id, meta.epoch + 1
        self._emit(
            {
                "type": "initialized",
                "tid": tid,
                "producer_id": producer_id,
                "epoch": epoch,
                "timeout": float(timeout),
            }
        )
        return ProducerIdentity(producer_id, epoch)

    def add(
        self,
        tid: str,
        producer_id: int,
        epoch: int,
        now: float,
        *,
        partitions: Iterable[TP] = (),
        groups: Iterable[str] = (),
    ) -> None:
        """Put partitions and groups into ``tid``'s transaction (starting one if
        none is open). Fenced producers get :class:`~headwater.ProducerFencedError`;
        while the last one completes, :class:`~headwater.ConcurrentTransactionsError`."""
        meta = self._known(tid)
        self._fence(meta, producer_id, epoch)
        if meta.status in ("prepare_commit", "prepare_abort"):
            raise ConcurrentTransactionsError(
                f"the previous transaction of {tid!r} is still completing; retry shortly"
            )
        new_tps = frozenset(partitions)
        new_groups = frozenset(groups)
        if not new_tps and not new_groups:
            raise InvalidArgument(f"add to {tid!r}'s transaction: name partitions or groups")
        if meta.status == "ongoing":
            new_tps -= meta.partitions
            new_groups -= meta.groups
            if not new_tps and not new_groups:
                return
        event: TxnEvent = {"type": "added", "tid": tid}
        if new_tps:
            event["partitions"] = _plain_tps(new_tps)
        if new_groups:
            event["groups"] = sorted(new_groups)
        self._emit(event)
        self._deadlines.setdefault(tid, now + meta.timeout)

    def end(self, tid: str, producer_id: int, epoch: int, commit: bool, now: float) -> MarkerPlan:
        """Phase one: decide ``tid``'s open transaction (commit or abort) and
        return phase two's plan. A retry of an end already under way or done
        with the same outcome returns its plan again (empty once complete).

        Raises :class:`~headwater.InvalidTransactionStateError` with no
        transaction open or for the opposite outcome of one already decided."""
        meta = self._known(tid)
        self._fence(meta, producer_id, epoch)
        want = "commit" if commit else "abort"
        if meta.status == "ongoing":
            if commit:
                self._emit({"type": "prepare_commit", "tid": tid})
                self._deadlines.pop(tid, None)
            else:
                self._abort(meta, meta.epoch, timed_out=False)
            return self._plan(tid)
        if meta.status in (f"prepare_{want}", f"complete_{want}"):
            return self._plan(tid)
        raise InvalidTransactionStateError(
            f"cannot {want} the transaction of {tid!r}: it is {meta.status}"
            + (" (no transaction open)" if meta.status == "empty" else "")
        )

    def _abort(self, meta: TxnMetadata, epoch: int, *, timed_out: bool) -> None:
        event: TxnEvent = {"type": "prepare_abort", "tid": meta.transactional_id}
        if epoch != meta.epoch:
            event["epoch"] = epoch
        if timed_out:
            event["timed_out_epoch"] = meta.epoch
        self._emit(event)
        self._deadlines.pop(meta.transactional_id, None)

    def _plan(self, tid: str) -> MarkerPlan:
        meta = self.state.transactions[tid]
        return MarkerPlan(
            tid,
            meta.producer_id,
            meta.epoch,
            meta.status.endswith("commit"),
            tuple(sorted(meta.pending_partitions)),
            tuple(sorted(meta.pending_groups)),
        )

    def pending_markers(self) -> list[MarkerPlan]:
        """Phase two of every decided but unfinished transaction (after a
        restart: what the actor must write again)."""
        return [
            self._plan(tid)
            for tid, m in sorted(self.state.transactions.items())
            if m.status in ("prepare_commit", "prepare_abort")
        ]

    def marker_written(
        self, tid: str, *, partitions: Iterable[TP] = (), groups: Iterable[str] = ()
    ) -> bool:
        """Record markers written for ``tid``'s decided transaction; returns
        whether that completed it. Markers not pending are ignored."""
        meta = self.state.transactions.get(tid)
        if meta is None or meta.status not in ("prepare_commit", "prepare_abort"):
            return meta is not None and meta.status.startswith("complete")
        done_tps = frozenset(partitions) & meta.pending_partitions
        done_groups = frozenset(groups) & meta.pending_groups
        if done_tps or done_groups:
            event: TxnEvent = {"type": "marker_written", "tid": tid}
            if done_tps:
                event["partitions"] = _plain_tps(done_tps)
            if done_groups:
                event["groups"] = sorted(done_groups)
            self._emit(event)
        meta = self.state.transactions[tid]
        if meta.pending_partitions or meta.pending_groups:
            return False
        self._emit({"type": f"complete_{meta.status.removeprefix('prepare_')}", "tid": tid})
        return True

    def tick(self, now: float) -> list[str]:
        """Abort every transaction open longer than its timeout (fencing its
        producer's epoch); returns their transactional ids."""
        expired = sorted(tid for tid, at in self._deadlines.items() if at <= now)
        for tid in expired:
            meta = self.state.transactions[tid]
            self._abort(meta, meta.epoch + 1, timed_out=True)
        return expired

    def expire(self, tid: str) -> None:
        """Forget an idle transactional id (``dead``); a later producer with
        it starts afresh with a new producer id."""
        meta = self._known(tid)
        if meta.status not in _IDLE:
            raise InvalidTransactionStateError(
                f"cannot expire {tid!r} while it is {meta.status}; end its transaction first"
            )
        self._emit({"type": "expired", "tid": tid})

    def describe(self, tid: str) -> TxnMetadata:
        """``tid``'s state; :class:`~headwater.UnknownTransactionalIdError` if unknown."""
        return self._known(tid)
