"""A partition's transaction state (sans-IO): LSO, aborted index, filtering."""

from __future__ import annotations

import pytest

from headwater import ProducerFencedError
from headwater.broker._idempotence import Append, ProducerStates, RecordInfo
from headwater.broker._stable import AbortedTxn, PartitionTransactions, filter_records
from headwater.journal._record import (
    ATTR_COMMIT,
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    HEADER_SIZE,
    RecordHeader,
    decode_header,
    encode_record,
    iter_records,
)


def rec(offset: int, pid: int = -1, attrs: int = 0, count: int = 1, tag: bytes = b"") -> bytes:
    return encode_record(
        tag or b"x%d" % offset,
        count=count,
        attributes=attrs,
        base_offset=offset,
        producer_id=pid,
        producer_epoch=0 if pid >= 0 else -1,
        base_sequence=-1,
    )


def header(data: bytes) -> RecordHeader:
    h = decode_header(data)
    assert isinstance(h, RecordHeader)
    return h


TXN = ATTR_TRANSACTIONAL
ABORT = ATTR_CONTROL
COMMIT = ATTR_CONTROL | ATTR_COMMIT

# offsets: 0 plain, 1-2 txn of 7, 3 txn of 8, 4 abort(7), 5 txn of 8, 6 commit(8), 7 txn of 9
LOG = [
    rec(0),
    rec(1, 7, TXN, count=2),
    rec(3, 8, TXN),
    rec(4, 7, ABORT),
    rec(5, 8, TXN),
    rec(6, 8, COMMIT),
    rec(7, 9, TXN),
]


def test_lso_and_aborted_index_follow_the_headers() -> None:
    """The LSO is the first offset of the oldest open transaction (capped by
    the high watermark); aborts enter the index with their marker offset."""
    t = PartitionTransactions()
    lsos = []
    for data in LOG:
        h = header(data)
        t.observe(h)
        lsos.append(t.last_stable_offset(h.next_offset))
    assert [1, 1, 1, 3, 3, 7, 7] == lsos
    assert 6 == t.last_stable_offset(6)
    assert [AbortedTxn(7, 1, 4)] == t.aborted()
    assert [] == t.aborted(5)
    assert [AbortedTxn(7, 1, 4)] == t.aborted(0, 2)
    assert [] == t.aborted(0, 1)
    assert {9: 7} == t.open_transactions()
    again = PartitionTransactions()
    again.rebuild(header(d) for d in LOG)
    assert (again.open_transactions(), again.aborted()) == (t.open_transactions(), t.aborted())
    t.forget_before(5)
    assert [] == t.aborted()


def test_admission() -> None:
    """A transactional batch may open a transaction only for the producer and
    epoch the coordinator admitted; a marker ends the admission."""
    t = PartitionTransactions()
    assert not t.may_append(7, 0)
    t.admit(7, 0)
    assert not t.may_append(7, 1)
    assert t.may_append(7, 0)
    t.observe(header(rec(0, 7, TXN)))
    t.observe(header(rec(1, 7, COMMIT)))
    assert not t.may_append(7, 0)


@pytest.mark.parametrize(
    ("committed", "expected"),
    [(True, [0, 3, 5, 7]), (False, [0, 1, 3, 5, 7])],
)
def test_filter_records_drops_markers_and_aborted_batches(
    committed: bool, expected: list[int]
) -> None:
    """read_committed drops the aborted batches and every marker;
    read_uncommitted drops only markers; kept records are byte-identical."""
    t = PartitionTransactions()
    t.rebuild(header(d) for d in LOG)
    out = filter_records(b"".join(LOG), t.aborted(), committed=committed)
    assert expected == [h.base_offset for h, _ in iter_records(out)]
    by_offset = {header(d).base_offset: d for d in LOG}
    assert b"".join(by_offset[o] for o in expected) == out


def test_filter_records_returns_the_same_bytes_when_nothing_is_dropped() -> None:
    """No copy when every record is kept."""
    data = rec(0) + rec(1, 8, TXN)
    assert filter_records(data, [AbortedTxn(7, 0, 5)], committed=True) is data
    assert b"" == filter_records(rec(4, 7, ABORT), [], committed=False)
    assert HEADER_SIZE < len(data)


def test_markers_fence_older_epochs_and_rebuild() -> None:
    """A marker raises the producer's epoch on the partition: batches of the
    old epoch are fenced, a same-epoch marker keeps the sequence history."""
    s = ProducerStates("t", 0)
    s.record(7, 0, 0, 2, 0)
    s.fence(7, 0)
    assert Append() == s.check(7, 0, 2, 1)
    s.fence(7, 1)
    with pytest.raises(ProducerFencedError):
        s.check(7, 0, 2, 1)
    with pytest.raises(ProducerFencedError):
        s.fence(7, 0)
    rebuilt = ProducerStates("t", 0)
    rebuilt.rebuild([RecordInfo(7, 0, 0, 2, 0), RecordInfo(7, 1, -1, 1, 2, control=True)])
    assert s.entries() == rebuilt.entries()
