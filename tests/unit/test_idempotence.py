"""Broker-side idempotence: duplicates, gaps, fencing, rebuild from headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import InvalidArgument, OutOfOrderSequenceError, ProducerFencedError
from headwater.broker import Append, Duplicate, ProducerStates, RecordInfo


class FakeLog:
    """A partition: a list of record headers plus the idempotence state."""

    def __init__(self) -> None:
        self.records: list[RecordInfo] = []
        self.next_offset = 0
        self.states = ProducerStates("t", 0)

    def produce(self, pid: int, epoch: int, seq: int, count: int) -> tuple[int, bool]:
        """Check, then append unless duplicate; return (base offset, duplicate)."""
        decision = self.states.check(pid, epoch, seq, count)
        if isinstance(decision, Duplicate):
            return decision.base_offset, True
        base = self.next_offset
        self.records.append(RecordInfo(pid, epoch, seq, count, base))
        self.states.record(pid, epoch, seq, count, base)
        self.next_offset += count
        return base, False


def test_in_order_then_duplicate_returns_original_offset():
    """A retried batch gets its first copy's offset and is not written again."""
    log = FakeLog()
    assert (0, False) == log.produce(1, 0, 0, 3)
    assert (3, False) == log.produce(1, 0, 3, 2)
    assert (0, True) == log.produce(1, 0, 0, 3)
    assert (3, True) == log.produce(1, 0, 3, 2)
    assert 2 == len(log.records)


def test_only_last_five_batches_are_remembered():
    """A retry older than the last 5 batches is out of order."""
    log = FakeLog()
    for i in range(6):
        log.produce(1, 0, i, 1)
    assert (1, True) == log.produce(1, 0, 1, 1)
    with pytest.raises(OutOfOrderSequenceError, match="sent sequence 0 to t/0; expected 6"):
        log.produce(1, 0, 0, 1)


def test_gap_is_out_of_order_and_writes_nothing():
    """Skipping a sequence raises and leaves the log alone."""
    log = FakeLog()
    log.produce(1, 0, 0, 2)
    with pytest.raises(OutOfOrderSequenceError, match="expected 2"):
        log.produce(1, 0, 5, 1)
    assert 1 == len(log.records)
    assert "out_of_order_sequence" == OutOfOrderSequenceError.code


def test_epochs_fence_and_restart_sequences():
    """A higher epoch must start at 0 and fences the older epoch."""
    log = FakeLog()
    log.produce(1, 0, 0, 2)
    with pytest.raises(OutOfOrderSequenceError, match="must start at 0"):
        log.produce(1, 1, 2, 1)
    assert (2, False) == log.produce(1, 1, 0, 1)
    with pytest.raises(ProducerFencedError, match="epoch 0 is fenced on t/0: epoch 1"):
        log.produce(1, 0, 2, 1)


def test_unknown_producer_and_non_idempotent():
    """An unknown producer may start at any sequence; producer id -1 is never checked."""
    log = FakeLog()
    assert (0, False) == log.produce(9, 0, 42, 1)
    assert (1, False) == log.produce(-1, 0, 0, 1)
    assert (2, False) == log.produce(-1, 0, 0, 1)
    assert [9] == [e.producer_id for e in log.states.entries()]


def test_sequence_wraps():
    """Sequences wrap at 2**31 like Kafka's."""
    log = FakeLog()
    log.produce(1, 0, 2**31 - 2, 2)
    assert (2, False) == log.produce(1, 0, 0, 1)


scripts = st.lists(
    st.tuples(st.integers(1, 3), st.integers(0, 1), st.integers(0, 12), st.integers(1, 3)),
    max_size=60,
)


@given(scripts)
def test_rebuild_from_headers_equals_live_state(script):
    """Random batches (some rejected): state rebuilt from the headers equals the live one,
    and makes the same decisions."""
    log = FakeLog()
    for pid, epoch, seq, count in script:
        try:
            log.produce(pid, epoch, seq, count)
        except (OutOfOrderSequenceError, ProducerFencedError):
            pass
    rebuilt = ProducerStates("t", 0)
    rebuilt.rebuild(log.records)
    assert log.states.entries() == rebuilt.entries()
    for pid, epoch, seq, count in script:
        outcomes = []
        for states in (log.states, rebuilt):
            try:
                outcomes.append(states.check(pid, epoch, seq, count))
            except (OutOfOrderSequenceError, ProducerFencedError) as exc:
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1]


@given(st.lists(st.integers(1, 4), min_size=1, max_size=20), st.data())
def test_retries_store_each_batch_once(counts, data):
    """A producer resending random earlier (recent) batches never stores a copy twice."""
    log = FakeLog()
    seq = 0
    sent: list[tuple[int, int, int]] = []
    for count in counts:
        base, dup = log.produce(1, 0, seq, count)
        assert not dup
        sent.append((seq, count, base))
        seq += count
        for old_seq, old_count, old_base in data.draw(st.lists(st.sampled_from(sent[-5:]))):
            assert (old_base, True) == log.produce(1, 0, old_seq, old_count)
    assert len(counts) == len(log.records)
    assert isinstance(log.states.check(1, 0, seq, 1), Append)


def test_empty_batch_is_invalid():
    """A batch claiming zero events is refused before any state lookup."""
    with pytest.raises(InvalidArgument, match="at least one event, not 0"):
        ProducerStates().check(1, 0, 0, 0)
