"""A partition's transaction state: open transactions, the last stable offset,
the aborted-transaction index, and read-committed filtering (sans-IO).

Theory of operation
-------------------
A transactional producer's batches carry :data:`~headwater.journal._record.ATTR_TRANSACTIONAL`
and its producer id and epoch in the record header. The first such batch of a
producer *opens* a transaction on this partition at its base offset; the
coordinator's marker (a control record, :data:`ATTR_CONTROL`, one offset,
DECISIONS #20) *closes* it, committing (:data:`ATTR_COMMIT`) or aborting.
:class:`PartitionTransactions` follows the record headers in offset order:

* the **last stable offset** (LSO) is the first offset of the oldest open
  transaction, or the high watermark when none is open: read_committed
  fetches stop there, so they never see an undecided event;
* every abort adds an :class:`AbortedTxn` ``(producer id, first offset, marker
  offset)`` to the **aborted index**, so a read_committed fetch drops whole
  aborted batches from their headers alone (:func:`filter_records`), never
  decoding an event.

Everything is a function of the record headers, like the idempotence state, so
on recovery it is rebuilt from the same header scan (:meth:`rebuild`), and a
log cut back after a failed fsync is followed by a rebuild too. Nothing here
blocks or does I/O.

Kafka keeps the aborted index in a file per segment because its producer
snapshots let it skip the scan; here the partition already scans every header
at start for idempotence, so rebuilding costs nothing more and there is no
second file to keep consistent with the log.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping

import attrs

from headwater.journal._record import (
    ATTR_COMMIT,
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    RecordHeader,
    iter_records,
)

__all__ = [
    "AbortedTxn",
    "MarkerResult",
    "PartitionTransactions",
    "StableCell",
    "StableSnapshot",
    "filter_records",
]


@attrs.frozen
class AbortedTxn:
    """One aborted transaction on a partition: its producer, its first offset
    here and the offset of its abort marker."""

    producer_id: int
    first_offset: int
    last_offset: int


@attrs.frozen
class MarkerResult:
    """What writing a marker did: ``written`` False when the producer had no
    open transaction here (a marker re-sent after a coordinator restart)."""

    written: bool
    offset: int


@attrs.frozen
class StableSnapshot:
    """What readers need of a partition's transactions, frozen: the first
    offset of its oldest open transaction (``None``: none open) and its
    aborted index."""

    first_unstable: int | None = None
    aborted: tuple[AbortedTxn, ...] = ()

    def last_stable_offset(self, high_watermark: int) -> int:
        """The first offset a read_committed reader may not read yet."""
        if self.first_unstable is None:
            return high_watermark
        return min(self.first_unstable, high_watermark)

    def aborted_from(self, start: int) -> tuple[AbortedTxn, ...]:
        """Aborted transactions that may hold records at or after ``start``."""
        i = bisect.bisect_left(self.aborted, start, key=lambda a: a.last_offset)
        return self.aborted[i:]


@attrs.define(eq=False)
class StableCell:
    """Where a partition publishes its :class:`StableSnapshot` for fetches,
    which read it without a hop to the partition's actor (and so never wait
    behind an append or a compaction). Only the partition replaces
    ``snapshot``; readers take the frozen value.

    ``append``: once the partition is open, its ``append_now`` (an append
    in the caller's task while the partition is idle; ``None`` back means
    ask it instead)."""

    snapshot: StableSnapshot = attrs.field(factory=StableSnapshot)
    append: Callable[[bytes], object] | None = None


@attrs.define
class PartitionTransactions:
    """Open transactions and aborted index of one partition (see module docs)."""

    _open: dict[int, int] = attrs.field(factory=dict)  # producer id -> first offset
    _aborted: list[AbortedTxn] = attrs.field(factory=list)  # by marker offset
    _admitted: dict[int, int] = attrs.field(factory=dict)  # producer id -> epoch
    version: int = 0
    """Bumped whenever the open set or the aborted index changes."""

    def snapshot(self) -> StableSnapshot:
        """The current state, frozen for readers."""
        return StableSnapshot(min(self._open.values(), default=None), tuple(self._aborted))

    def admit(self, producer_id: int, epoch: int) -> None:
        """The coordinator added this partition to ``producer_id``'s
        transaction under ``epoch``: its transactional batches may open one."""
        self._admitted[producer_id] = epoch

    def revoke(self, producer_id: int) -> None:
        """A marker came for a producer with nothing open here: its
        admission ends with its transaction."""
        self._admitted.pop(producer_id, None)

    def may_append(self, producer_id: int, epoch: int) -> bool:
        """Whether a transactional batch of ``(producer_id, epoch)`` may be
        written: its transaction is open here, or the coordinator admitted it.
        (Kafka trusted the producer here and got hanging transactions,
        KIP-890: a batch no coordinator knows about would hold the LSO back
        for ever.)"""
        return producer_id in self._open or self._admitted.get(producer_id) == epoch

    def observe(self, header: RecordHeader) -> None:
        """Follow one stored record (headers must come in offset order)."""
        attributes = header.attributes
        pid = header.producer_id
        if attributes & ATTR_CONTROL:
            first = self._open.pop(pid, None)
            self._admitted.pop(pid, None)
            if first is not None:
                self.version += 1
                if not attributes & ATTR_COMMIT:
                    self._aborted.append(AbortedTxn(pid, first, header.base_offset))
        elif attributes & ATTR_TRANSACTIONAL and pid not in self._open:
            self._open[pid] = header.base_offset
            self.version += 1

    def rebuild(self, headers: Iterable[RecordHeader]) -> None:
        """Replace the state with the one implied by ``headers`` (in offset order)."""
        self._open.clear()
        self._aborted.clear()
        self._admitted.clear()
        self.version += 1
        for header in headers:
            self.observe(header)

    def is_open(self, producer_id: int) -> bool:
        """Whether ``producer_id`` has an open transaction on this partition."""
        return producer_id in self._open

    def open_transactions(self) -> dict[int, int]:
        """Producer id -> first offset of each open transaction."""
        return dict(self._open)

    def last_stable_offset(self, high_watermark: int) -> int:
        """The first offset a read_committed reader may not read yet."""
        return min(min(self._open.values(), default=high_watermark), high_watermark)

    def aborted(self, start: int = 0, end: int | None = None) -> list[AbortedTxn]:
        """Aborted transactions that may hold records in ``[start, end)``."""
        i = bisect.bisect_left(self._aborted, start, key=lambda a: a.last_offset)
        return [a for a in self._aborted[i:] if end is None or a.first_offset < end]

    def forget_before(self, offset: int) -> None:
        """Drop index entries wholly below ``offset`` (retention removed them)."""
        i = bisect.bisect_left(self._aborted, offset, key=lambda a: a.last_offset)
        if i:
            del self._aborted[:i]
            self.version += 1


def aborted_by_producer(aborted: Iterable[AbortedTxn]) -> dict[int, list[AbortedTxn]]:
    """The aborted index grouped by producer id, as :func:`is_hidden` takes it."""
    ranges: dict[int, list[AbortedTxn]] = {}
    for a in aborted:
        ranges.setdefault(a.producer_id, []).append(a)
    return ranges


def is_hidden(header: RecordHeader, aborted: Mapping[int, list[AbortedTxn]]) -> bool:
    """Whether a read_committed reader skips this record: a control record
    (marker), or a batch of an aborted transaction (``aborted`` by producer id)."""
    attributes = header.attributes
    if attributes & ATTR_CONTROL:
        return True
    return bool(attributes & ATTR_TRANSACTIONAL) and any(
        a.first_offset <= header.base_offset <= a.last_offset
        for a in aborted.get(header.producer_id, ())
    )


def filter_records(data: bytes, aborted: Iterable[AbortedTxn], *, committed: bool) -> bytes:
    """Keep what a reader may see of a run of whole records: never a control
    record; with ``committed``, no batch of an aborted transaction either.
    Whole records are kept or dropped from their headers (no event decoded);
    ``data`` itself is returned when nothing is dropped."""
    ranges = aborted_by_producer(aborted) if committed else {}
    kept: list[memoryview] = []
    dropped = False
    for header, record in iter_records(data):
        if is_hidden(header, ranges):
            dropped = True
            continue
        kept.append(record)
    if not dropped:
        return data
    return b"".join(kept)
