"""Log compaction for compacted topics, sans-IO.

Theory of operation
-------------------
A compacted topic keeps at least the latest event of every key. Compaction
works on *sealed* segments (never the active one) and never moves or reuses
an offset (invariant I2): it only removes events.

1. One pass over the whole log finds the latest offset of every key.
2. Each sealed segment is rewritten keeping an event when it is the latest
   for its key, when it has no key, or when it is the first or the last event
   of the segment. Keeping the ends keeps every segment's first offset (its
   file name) and its end offset (the next segment's first offset), so
   recovery's contiguity check between segments still holds.
3. A tombstone (``value is None``) that is the latest for its key is kept for
   ``tombstone_grace_ms`` after its append, so consumers see the deletion,
   then removed like any superseded event.
4. Kept events are written one per record with the ``ATTR_COMPACTED`` flag:
   the log's recovery accepts a gap in offsets only before such a record.

Pure functions of decoded events and ``now``; the partition actor does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from headwater.journal._batch import Event, encode_events, key_bytes
from headwater.journal._record import ATTR_COMPACTED, encode_record

__all__ = ["StoredEvent", "compact_segment", "latest_offsets"]


@attrs.frozen
class StoredEvent:
    """An event as stored: the decoded event and its record's append time."""

    event: Event
    append_time: int


def latest_offsets(events: Iterable[Event]) -> dict[bytes, int]:
    """The latest offset of every key (events in offset order)."""
    latest: dict[bytes, int] = {}
    for e in events:
        if e.key is not None:
            latest[key_bytes(e.key)] = e.offset
    return latest


def compact_segment(
    events: Sequence[StoredEvent],
    latest: dict[bytes, int],
    *,
    now_ms: int,
    tombstone_grace_ms: int,
) -> list[bytes] | None:
    """Records for the compacted segment, or ``None`` if nothing would go."""
    if len(events) <= 2:
        return None
    keep: list[StoredEvent] = []
    last = len(events) - 1
    for i, stored in enumerate(events):
        e = stored.event
        if i in (0, last) or e.key is None:
            keep.append(stored)
            continue
        if latest.get(key_bytes(e.key)) != e.offset:
            continue  # superseded by a later event of the same key
        if e.value is None and stored.append_time + tombstone_grace_ms <= now_ms:
            continue  # a tombstone past its grace period
        keep.append(stored)
    if len(keep) == len(events):
        return None
    records = []
    for stored in keep:
        e = stored.event
        payload = encode_events([(e.timestamp, e.key, e.value, e.headers)])
        records.append(
            encode_record(
                payload,
                count=1,
                first_timestamp=e.timestamp,
                max_timestamp=e.timestamp,
                attributes=ATTR_COMPACTED,
                base_offset=e.offset,
                append_time=stored.append_time,
            )
        )
    return records
