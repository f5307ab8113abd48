"""The compaction decision, without I/O."""

from __future__ import annotations

from headwater.broker._compaction import StoredEvent, compact_segment, latest_offsets
from headwater.client import Event
from headwater.journal import decode_header
from headwater.journal._record import ATTR_COMPACTED, RecordHeader


def ev(offset: int, key: str | None, value: bytes | None, t: int = 0) -> StoredEvent:
    return StoredEvent(Event("t", 0, offset, 1000 + offset, key, value, ()), t)


def test_keeps_latest_ends_and_unkeyed_drops_superseded_and_old_tombstones() -> None:
    """Superseded events go; the latest per key, unkeyed events, the segment's first
    and last events and young tombstones stay; offsets are preserved and flagged."""
    seg = [
        ev(10, "a", b"1"),
        ev(11, "a", b"2"),
        ev(12, "b", b"1"),
        ev(13, None, b"x"),
        ev(14, "c", None, t=0),
        ev(15, "d", None, t=900),
        ev(16, "b", b"2"),
        ev(17, "a", b"3"),
    ]
    latest = latest_offsets(s.event for s in seg)
    records = compact_segment(seg, latest, now_ms=1000, tombstone_grace_ms=500)
    assert records is not None
    headers = [decode_header(r) for r in records]
    assert all(isinstance(h, RecordHeader) for h in headers)
    kept = [h.base_offset for h in headers if isinstance(h, RecordHeader)]
    assert [10, 13, 15, 16, 17] == kept
    assert all(h.attributes & ATTR_COMPACTED for h in headers if isinstance(h, RecordHeader))


def test_nothing_to_do_returns_none() -> None:
    """A segment whose events are all latest is left alone."""
    seg = [ev(0, "a", b"1"), ev(1, "b", b"1"), ev(2, "c", b"1")]
    assert (
        compact_segment(seg, latest_offsets(s.event for s in seg), now_ms=0, tombstone_grace_ms=0)
        is None
    )
