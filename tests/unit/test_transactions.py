"""The transaction coordinator core (sans-IO): every transition and every illegal one."""

from __future__ import annotations

import itertools
from typing import Any

import cbor2
import pytest

from headwater import (
    ConcurrentTransactionsError,
    IllegalTransitionError,
    InvalidArgument,
    InvalidTransactionStateError,
    ProducerFencedError,
    TransactionTimedOutError,
    UnknownTransactionalIdError,
)
from headwater.broker._transactions import (
    MAX_EPOCH,
    TRANSITIONS,
    MarkerPlan,
    ProducerIdentity,
    TransactionCoordinator,
    TxnMetadata,
    TxnState,
    apply,
    state_from_plain,
    state_to_plain,
)

STATES = [
    None,
    "empty",
    "ongoing",
    "prepare_commit",
    "prepare_abort",
    "complete_commit",
    "complete_abort",
    "dead",
]
KINDS = sorted({kind for _, kind in TRANSITIONS})


def _ids() -> Any:
    counter = itertools.count(100)
    return lambda: next(counter)


def _replay(events: list[dict[str, Any]]) -> TxnState:
    state = TxnState()
    for event in events:
        state = apply(state, cbor2.loads(cbor2.dumps(event)))
    return state


class Recorder:
    """A coordinator whose events are all kept, so tests can replay them."""

    def __init__(self) -> None:
        self.c = TransactionCoordinator()
        self.events: list[dict[str, Any]] = []
        self.alloc = _ids()

    def take(self) -> list[dict[str, Any]]:
        events = self.c.take_events()
        self.events.extend(events)
        return events

    def init(self, tid: str = "t", timeout: float = 10.0, now: float = 0.0) -> ProducerIdentity:
        try:
            return self.c.init_producer(tid, timeout, now, self.alloc)
        finally:
            self.take()


def _to_state(r: Recorder, status: str | None) -> ProducerIdentity | None:
    """Drive transactional id "t" into ``status`` through the public commands."""
    if status is None:
        return None
    ident = r.init()
    pid, epoch = ident.producer_id, ident.epoch
    if status == "empty":
        return ident
    if status == "dead":
        r.c.expire("t")
        r.take()
        return ident
    r.c.add("t", pid, epoch, 0.0, partitions=[("a", 0), ("b", 1)], groups=["g"])
    r.take()
    if status == "ongoing":
        return ident
    commit = "commit" in status
    r.c.end("t", pid, epoch, commit, 0.0)
    r.take()
    if status.startswith("complete"):
        r.c.marker_written("t", partitions=[("a", 0), ("b", 1)], groups=["g"])
        r.take()
    return ident


# ------------------------------------------------------------------ apply


@pytest.mark.parametrize("status", STATES)
@pytest.mark.parametrize("kind", KINDS)
def test_apply_follows_the_table_in_every_state(status: str | None, kind: str) -> None:
    """Each (state, event) pair the table allows leads where it says; every
    other pair raises IllegalTransitionError and leaves the state alone."""
    r = Recorder()
    _to_state(r, status)
    state = r.c.state
    assert (state.transactions["t"].status if status else None) == status
    event: dict[str, Any] = {"type": kind, "tid": "t"}
    if kind == "initialized":
        event.update(producer_id=7, epoch=0, timeout=5.0)
    expected = TRANSITIONS.get((status, kind))
    if expected is None:
        with pytest.raises(IllegalTransitionError):
            apply(state, event)
        assert (state.transactions["t"].status if status else None) == status
    else:
        assert expected == apply(state, event).transactions["t"].status


def test_apply_rejects_unknown_and_malformed_events() -> None:
    """An unknown type or a missing transactional id is InvalidArgument."""
    with pytest.raises(InvalidArgument):
        apply(TxnState(), {"type": "exploded", "tid": "t"})
    with pytest.raises(InvalidArgument):
        apply(TxnState(), {"type": "initialized"})


def test_table_has_the_seven_states() -> None:
    """The lifecycle covers Kafka's states, and dead is left only by a new init."""
    seen = {s for s, _ in TRANSITIONS} | set(TRANSITIONS.values())
    assert set(STATES) == seen
    assert {("dead", "initialized")} == {(s, k) for s, k in TRANSITIONS if s == "dead"}


# --------------------------------------------------------------- commands


def test_commit_two_phases_and_replay() -> None:
    """A commit: added -> prepare_commit -> marker per partition and group ->
    complete_commit; replaying the CBOR events rebuilds the same state."""
    r = Recorder()
    ident = r.init()
    assert ProducerIdentity(100, 0) == ident
    r.c.add("t", 100, 0, 1.0, partitions=[("a", 0)])
    r.c.add("t", 100, 0, 1.5, partitions=[("a", 0), ("b", 1)], groups=["g"])
    r.c.add("t", 100, 0, 1.6, partitions=[("a", 0)])  # nothing new: no event
    assert ["added", "added"] == [e["type"] for e in r.take()]
    plan = r.c.end("t", 100, 0, True, 2.0)
    assert MarkerPlan("t", 100, 0, True, (("a", 0), ("b", 1)), ("g",)) == plan
    assert [plan] == r.c.pending_markers()
    assert r.c.next_deadline() is None
    assert r.c.marker_written("t", partitions=[("a", 0)]) is False
    assert r.c.marker_written("t", partitions=[("b", 1)], groups=["g"]) is True
    assert [
        "prepare_commit",
        "marker_written",
        "marker_written",
        "complete_commit",
    ] == [e["type"] for e in r.take()]
    assert "complete_commit" == r.c.describe("t").status
    assert [] == r.c.pending_markers()
    assert r.c.state == _replay(r.events)
    assert r.c.state == state_from_plain(cbor2.loads(cbor2.dumps(state_to_plain(r.c.state))))


def test_abort_and_next_transaction_starts_clean() -> None:
    """An abort writes abort markers; the next add starts a transaction
    holding only what it names."""
    r = Recorder()
    r.init()
    r.c.add("t", 100, 0, 0.0, partitions=[("a", 0)], groups=["g"])
    plan = r.c.end("t", 100, 0, False, 0.0)
    assert MarkerPlan("t", 100, 0, False, (("a", 0),), ("g",)) == plan
    assert r.c.marker_written("t", partitions=[("a", 0)], groups=["g"]) is True
    r.c.add("t", 100, 0, 0.0, partitions=[("b", 0)])
    meta = r.c.describe("t")
    assert ("ongoing", frozenset({("b", 0)}), frozenset()) == (
        meta.status,
        meta.partitions,
        meta.groups,
    )
    r.take()
    assert r.c.state == _replay(r.events)


def test_end_retries_are_idempotent_and_the_opposite_outcome_is_refused() -> None:
    """A retried commit returns the remaining plan (empty once complete); an
    abort of a committing transaction is InvalidTransactionStateError."""
    r = Recorder()
    r.init()
    r.c.add("t", 100, 0, 0.0, partitions=[("a", 0), ("a", 1)])
    r.c.end("t", 100, 0, True, 0.0)
    r.c.marker_written("t", partitions=[("a", 0)])
    assert (("a", 1),) == r.c.end("t", 100, 0, True, 0.0).partitions
    with pytest.raises(InvalidTransactionStateError):
        r.c.end("t", 100, 0, False, 0.0)
    r.c.marker_written("t", partitions=[("a", 1)])
    assert MarkerPlan("t", 100, 0, True, (), ()) == r.c.end("t", 100, 0, True, 0.0)
    with pytest.raises(InvalidTransactionStateError):
        r.c.end("t", 100, 0, False, 0.0)


@pytest.mark.parametrize("commit", [True, False])
def test_end_without_an_open_transaction_is_refused(commit: bool) -> None:
    """Committing or aborting with nothing open says so."""
    r = Recorder()
    r.init()
    with pytest.raises(InvalidTransactionStateError, match="no transaction open"):
        r.c.end("t", 100, 0, commit, 0.0)


def test_marker_written_for_unknown_or_done_transactions_is_ignored() -> None:
    """Late marker acknowledgements (after a restart re-sent them) change nothing."""
    r = Recorder()
    assert r.c.marker_written("nobody", partitions=[("a", 0)]) is False
    _to_state(r, "complete_commit")
    r.take()
    assert r.c.marker_written("t", partitions=[("a", 0)]) is True
    assert [] == r.c.take_events()


def test_a_new_instance_fences_the_old_one() -> None:
    """init_producer bumps the epoch: the old instance's add and end are
    ProducerFencedError; a wrong producer id is fenced too."""
    r = Recorder()
    old = r.init()
    new = r.init()
    assert ProducerIdentity(100, 1) == new
    with pytest.raises(ProducerFencedError):
        r.c.add("t", old.producer_id, old.epoch, 0.0, partitions=[("a", 0)])
    r.c.add("t", 100, 1, 0.0, partitions=[("a", 0)])
    with pytest.raises(ProducerFencedError):
        r.c.end("t", old.producer_id, old.epoch, True, 0.0)
    with pytest.raises(ProducerFencedError):
        r.c.end("t", 999, 1, True, 0.0)
    with pytest.raises(InvalidArgument):
        r.c.end("t", 100, 5, True, 0.0)  # from the future: a client bug


def test_init_aborts_what_the_zombie_left_open() -> None:
    """A new instance while a transaction is ongoing: the transaction is
    aborted under a bumped epoch (fencing the zombie's markers), the new
    instance retries until the markers are written, then gets a higher epoch."""
    r = Recorder()
    r.init()
    r.c.add("t", 100, 0, 0.0, partitions=[("a", 0)])
    r.take()
    with pytest.raises(ConcurrentTransactionsError):
        r.init()
    assert [MarkerPlan("t", 100, 1, False, (("a", 0),), ())] == r.c.pending_markers()
    with pytest.raises(ConcurrentTransactionsError):
        r.init()
    with pytest.raises(ProducerFencedError):
        r.c.end("t", 100, 0, True, 0.0)
    r.c.marker_written("t", partitions=[("a", 0)])
    assert ProducerIdentity(100, 2) == r.init()
    r.take()
    assert r.c.state == _replay(r.events)


def test_add_while_completing_is_retriable() -> None:
    """The same producer adding while its last commit is still marking gets
    ConcurrentTransactionsError (retry), not a state error."""
    r = Recorder()
    r.init()
    r.c.add("t", 100, 0, 0.0, partitions=[("a", 0)])
    r.c.end("t", 100, 0, True, 0.0)
    with pytest.raises(ConcurrentTransactionsError):
        r.c.add("t", 100, 0, 0.0, partitions=[("a", 0)])


def test_timeout_aborts_and_tells_the_late_producer() -> None:
    """An ongoing transaction past its timeout is aborted at tick; the
    deadline is exact; its producer then hears TransactionTimedOutError."""
    r = Recorder()
    r.init(timeout=5.0)
    r.c.add("t", 100, 0, 2.0, partitions=[("a", 0)])
    r.c.add("t", 100, 0, 4.0, partitions=[("a", 1)])  # the first add starts the clock
    assert 7.0 == r.c.next_deadline()
    assert [] == r.c.tick(6.999)
    assert ["t"] == r.c.tick(7.0)
    assert r.c.next_deadline() is None
    meta = r.c.describe("t")
    assert ("prepare_abort", 1, 0) == (meta.status, meta.epoch, meta.timed_out_epoch)
    with pytest.raises(TransactionTimedOutError):
        r.c.end("t", 100, 0, True, 8.0)
    r.c.marker_written("t", partitions=[("a", 0), ("a", 1)])
    assert ProducerIdentity(100, 2) == r.init()
    r.take()
    assert r.c.state == _replay(r.events)


def test_recovery_restarts_timeouts_and_keeps_pending_markers() -> None:
    """from_state: ongoing transactions get a fresh timeout from the recovery
    time; decided ones still list the markers not yet written."""
    r = Recorder()
    r.init("x", timeout=3.0)
    r.c.add("x", 100, 0, 0.0, partitions=[("a", 0)])
    r.init("y")
    r.c.add("y", 101, 0, 0.0, partitions=[("a", 0), ("b", 0)])
    r.c.end("y", 101, 0, True, 0.0)
    r.c.marker_written("y", partitions=[("b", 0)])
    r.take()
    recovered = TransactionCoordinator.from_state(_replay(r.events), now=50.0)
    assert 53.0 == recovered.next_deadline()
    assert [MarkerPlan("y", 101, 0, True, (("a", 0),), ())] == recovered.pending_markers()


def test_epoch_overflow_takes_a_new_producer_id() -> None:
    """At the largest epoch the next instance gets a fresh producer id, epoch 0."""
    state = TxnState({"t": TxnMetadata("t", 5, MAX_EPOCH, 10.0, "complete_commit")})
    c = TransactionCoordinator(state)
    assert ProducerIdentity(100, 0) == c.init_producer("t", 10.0, 0.0, _ids())


def test_expired_ids_are_unknown_then_start_afresh() -> None:
    """expire() makes an idle id dead: describe is UnknownTransactionalIdError
    and a later init takes a new producer id."""
    r = Recorder()
    r.init()
    r.c.expire("t")
    with pytest.raises(UnknownTransactionalIdError):
        r.c.describe("t")
    with pytest.raises(UnknownTransactionalIdError):
        r.c.add("t", 100, 0, 0.0, partitions=[("a", 0)])
    assert ProducerIdentity(101, 0) == r.init()
    r.c.add("t", 101, 0, 0.0, partitions=[("a", 0)])
    with pytest.raises(InvalidTransactionStateError):
        r.c.expire("t")


def test_bad_arguments() -> None:
    """Empty ids, out-of-range timeouts and empty adds are InvalidArgument;
    describing an unknown id is UnknownTransactionalIdError."""
    r = Recorder()
    with pytest.raises(InvalidArgument):
        r.init("")
    with pytest.raises(InvalidArgument):
        r.init(timeout=0.0)
    with pytest.raises(UnknownTransactionalIdError):
        r.c.describe("nobody")
    r.init()
    with pytest.raises(InvalidArgument):
        r.c.add("t", 100, 0, 0.0)
