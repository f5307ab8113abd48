"""The reliability checker fails hand-built histories that break each invariant."""

from __future__ import annotations

from headwater.testing import History, check


def _clean() -> tuple[History, dict[tuple[str, int], list[tuple[int, str | None]]]]:
    h = History()
    for i in range(3):
        h.send(f"e{i}")
        h.ack(float(i), "t", 0, i, f"e{i}")
    h.assignment(0.0, "g", "m1", 1, [("t", 0)])
    h.assignment(0.0, "g", "m2", 1, [("t", 1)])
    h.commit(1.0, "g", "m1", 1, {("t", 0): 2})
    h.commit(2.0, "g", "m1", 1, {("t", 0): 3})
    h.read(2.5, "c", "t", 0, 1, "e1")
    h.shutdown(3.0)
    return h, {("t", 0): [(0, "e0"), (1, "e1"), (2, "e2")]}


def test_clean_history_passes() -> None:
    """A history that keeps every promise has no violations."""
    h, final = _clean()
    report = check(h, final)
    assert report.ok, report.summary()
    assert (3, 0, 0) == (report.acked_checked, report.lost, report.duplicates)


def test_lost_acked_event_is_i1() -> None:
    """An acked event missing from the final log is counted as lost."""
    h, final = _clean()
    final[("t", 0)] = [(0, "e0"), (1, "e1")]
    report = check(h, final)
    assert 1 == report.lost
    assert {"I1": 1} == report.by_invariant()


def test_duplicate_is_i1() -> None:
    """An acked event stored twice is a duplicate (stored copies, not deliveries)."""
    h, final = _clean()
    final[("t", 0)].append((3, "e1"))
    report = check(h, final)
    assert 1 == report.duplicates
    assert "I1" in report.by_invariant()


def test_unacked_event_stored_twice_is_a_duplicate() -> None:
    """A failed send may be stored once, never twice."""
    h, final = _clean()
    h.send("x")
    h.send_failed(2.0, "t", "x", "FsyncFailedError")
    final[("t", 0)] += [(3, "x")]
    assert check(h, final).ok
    final[("t", 0)] += [(4, "x")]
    assert 1 == check(h, final).duplicates


def test_wrong_offset_and_phantom_are_i1() -> None:
    """An acked event at another offset, or an event never sent, is I1."""
    h, final = _clean()
    final[("t", 0)] = [(0, "e0"), (1, "e2"), (2, "e1"), (3, "ghost")]
    report = check(h, final)
    details = [v.detail for v in report.violations if v.invariant == "I1"]
    assert any("ghost" in d and "never sent" in d for d in details)
    assert sum("acked at" in d for d in details) == 2


def test_gap_and_disorder_are_i2() -> None:
    """Offsets with a gap or going backwards break I2."""
    h, final = _clean()
    final[("t", 0)] = [(0, "e0"), (2, "e2"), (1, "e1")]
    report = check(h, final)
    details = [v.detail for v in report.violations if v.invariant == "I2"]
    assert any("gap" in d for d in details)
    assert any("not strictly increasing" in d for d in details)
    assert check(h, {("t", 0): [(0, "e0"), (1, "e1"), (2, "e2"), (9, None)]}).by_invariant() == {
        "I2": 1
    }
    assert check(h, {("t", 0): [(0, "e0"), (1, "e1"), (2, "e2"), (9, None)]}, contiguous=False).ok


def test_reused_offset_is_i2() -> None:
    """An offset read as one event and later holding another was reused."""
    h, final = _clean()
    h.read(2.7, "c", "t", 0, 2, "other")
    report = check(h, final)
    assert any("reused" in v.detail for v in report.violations if v.invariant == "I2")


def test_commit_going_back_is_i3_unless_sought() -> None:
    """A commit below the previous one breaks I3; after a seek it is a reset."""
    h, final = _clean()
    h.commit(4.0, "g", "m2", 2, {("t", 0): 1})
    assert {"I3": 1} == check(h, final).by_invariant()
    h2, final2 = _clean()
    h2.seek(3.5, "g", "m1", "t", 0, 0)
    h2.commit(4.0, "g", "m1", 1, {("t", 0): 1})
    assert check(h2, final2).ok


def test_two_owners_in_a_generation_is_i4() -> None:
    """Two members owning one partition in the same generation break I4."""
    h, final = _clean()
    h.assignment(0.5, "g", "m2", 1, [("t", 0)])
    assert {"I4": 1} == check(h, final).by_invariant()
    h2, final2 = _clean()
    h2.assignment(0.5, "g", "m2", 2, [("t", 0)])  # a new generation: fine
    assert check(h2, final2).ok


def test_leaks_after_shutdown_are_i5() -> None:
    """Open files or live tasks after a shutdown break I5."""
    h, final = _clean()
    h.shutdown(5.0, open_files=["/d/x.log"], live_tasks=["flusher"])
    report = check(h, final)
    assert {"I5": 2} == report.by_invariant()
    assert "/d/x.log" in report.summary()


def _txns() -> tuple[History, dict[tuple[str, int], list[tuple[int, str | None]]]]:
    """Two committed transactions over out/0 and out/1, one aborted one, one
    whose commit failed; the read_committed view holds the committed ones."""
    h = History()
    h.transaction(1.0, "x1", "T1", "committed", {"T1/a": "a", "T1/b": "b"})
    h.transaction(2.0, "x1", "T2", "aborted", {"T2/c": "c"})
    h.transaction(3.0, "x1", "T3", "committed", {"T3/c": "c"})
    h.transaction(4.0, "x1", "T4", "unknown", {"T4/d": "d"})
    h.read(3.5, "rc", "out", 0, 0, "T1/a")
    h.read(3.6, "rc", "out", 0, 3, "T3/c")
    h.read(3.7, "ru", "out", 0, 2, "T2/c", isolation="read_uncommitted")
    view = {("out", 0): [(0, "T1/a"), (3, "T3/c")], ("out", 1): [(0, "T1/b")]}
    return h, view


def test_clean_transactions_pass_i6() -> None:
    """Aborted outputs seen only read_uncommitted, each effect once, every
    transaction whole or absent (an unknown outcome may be either)."""
    h, view = _txns()
    report = check(h, {}, committed_view=view)
    assert report.ok, report.summary()


def test_an_aborted_output_seen_read_committed_is_i6() -> None:
    """A planted bug: a read_committed reader and the final view see the
    output of the aborted transaction (and its effect twice)."""
    h, view = _txns()
    h.read(3.8, "rc", "out", 0, 2, "T2/c")
    view[("out", 0)].insert(1, (2, "T2/c"))
    report = check(h, {}, committed_view=view)
    assert {"I6": 3} == report.by_invariant(), report.summary()
    assert 1 == report.duplicates


def test_a_duplicated_effect_is_i6() -> None:
    """A planted bug: the effect of input b is committed by two transactions
    (offsets not committed with the first), so a reader sees it twice."""
    h, view = _txns()
    h.transaction(5.0, "x2", "T5", "committed", {"T5/b": "b"})
    view[("out", 1)].append((2, "T5/b"))
    report = check(h, {}, committed_view=view)
    assert {"I6": 1} == report.by_invariant(), report.summary()
    assert 1 == report.duplicates


def test_a_partial_or_lost_committed_transaction_is_i6() -> None:
    """A transaction seen in part (one partition's marker missing), and a
    committed one missing from the view, each break I6."""
    h, view = _txns()
    del view[("out", 1)]
    report = check(h, {}, committed_view=view)
    assert {"I6": 1} == report.by_invariant(), report.summary()
    view[("out", 0)] = [(0, "T1/a")]
    view[("out", 1)] = [(0, "T1/b")]
    report = check(h, {}, committed_view=view)
    assert ["I6"] == [v.invariant for v in report.violations]
    assert "committed" in report.violations[0].detail
