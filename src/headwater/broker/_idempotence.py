"""Idempotent produce, broker side: one partition's producer state (sans-IO).

Theory of operation
-------------------
Every batch (journal record) of an idempotent producer carries, in its header,
the producer id, the producer epoch and the base sequence; with the event
count that gives the batch's last sequence. For each producer id a partition
keeps the current epoch and its **last 5 batches** (base sequence, last
sequence, base offset), like Kafka's ``ProducerStateManager``.

Before the partition actor appends a batch it calls :meth:`ProducerStates.check`:

========================================  ==========================================
situation                                 decision
========================================  ==========================================
producer id ``-1`` (not idempotent)       :class:`Append` (no checks)
epoch lower than the stored one           :class:`~headwater.ProducerFencedError`
epoch higher than the stored one          :class:`Append` if base sequence is 0,
                                          else :class:`~headwater.OutOfOrderSequenceError`
unknown producer id                       :class:`Append` (any sequence: its state may
                                          have gone with retention)
same (base, last) as a cached batch       :class:`Duplicate` with that batch's base offset
base == (last stored last sequence + 1)   :class:`Append`
anything else                             :class:`~headwater.OutOfOrderSequenceError`
========================================  ==========================================

(sequences wrap at 2**31, as in Kafka). A duplicate is *not* written again: the
producer gets the first copy's base offset, so a retried batch is stored once.
After the log assigns the base offset, the actor calls :meth:`ProducerStates.record`.

The state is a pure function of the record headers in offset order, so on
recovery it is rebuilt with :meth:`ProducerStates.rebuild` from the headers
alone, without decoding any event. Nothing here blocks or does I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import attrs

from headwater._errors import InvalidArgument, OutOfOrderSequenceError, ProducerFencedError

__all__ = [
    "Append",
    "BatchMetadata",
    "Duplicate",
    "ProducerEntry",
    "ProducerStates",
    "RecordInfo",
]

NO_PRODUCER_ID = -1
SEQUENCE_MODULUS = 1 << 31
BATCHES_KEPT = 5


@attrs.frozen
class RecordInfo:
    """The idempotence fields of one journal record header."""

    producer_id: int
    epoch: int
    base_sequence: int
    count: int
    base_offset: int
    control: bool = False
    """A transaction marker: it raises the producer's epoch, it is no batch."""


@attrs.frozen
class BatchMetadata:
    """One remembered batch: its first and last sequence and base offset."""

    base_sequence: int
    last_sequence: int
    base_offset: int


@attrs.frozen
class ProducerEntry:
    """A snapshot of one producer's state on a partition."""

    producer_id: int
    epoch: int
    batches: tuple[BatchMetadata, ...]


@attrs.frozen
class Append:
    """Decision: write the batch."""


@attrs.frozen
class Duplicate:
    """Decision: the batch is a retry of one already stored at ``base_offset``;
    do not write it, answer with that offset."""

    base_offset: int


def _last(base_sequence: int, count: int) -> int:
    return (base_sequence + count - 1) % SEQUENCE_MODULUS


@attrs.define
class _Producer:
    epoch: int
    batches: deque[BatchMetadata] = attrs.field(factory=lambda: deque(maxlen=BATCHES_KEPT))


@attrs.define
class ProducerStates:
    """The idempotence state of one partition (see the module docs)."""

    topic: str = ""
    partition: int = 0
    _producers: dict[int, _Producer] = attrs.field(factory=dict)

    def check(
        self, producer_id: int, epoch: int, base_sequence: int, count: int
    ) -> Append | Duplicate:
        """Decide whether a batch is new, a duplicate, out of order or fenced.

        Raises :class:`~headwater.ProducerFencedError` for an old epoch and
        :class:`~headwater.OutOfOrderSequenceError` for a sequence gap; changes
        nothing either way."""
        if count < 1:
            raise InvalidArgument(f"a batch must hold at least one event, not {count}")
        if producer_id == NO_PRODUCER_ID:
            return Append()
        where = f"{self.topic}/{self.partition}"
        state = self._producers.get(producer_id)
        if state is None:
            return Append()
        if epoch < state.epoch:
            raise ProducerFencedError(
                f"producer {producer_id} epoch {epoch} is fenced on {where}: "
                f"epoch {state.epoch} has started since"
            )
        if epoch > state.epoch:
            if base_sequence != 0:
                raise OutOfOrderSequenceError(
                    f"producer {producer_id} started epoch {epoch} on {where} with "
                    f"sequence {base_sequence}; a new epoch must start at 0"
                )
            return Append()
        last = _last(base_sequence, count)
        for batch in state.batches:
            if batch.base_sequence == base_sequence and batch.last_sequence == last:
                return Duplicate(batch.base_offset)
        if not state.batches:
            return Append()
        expected = (state.batches[-1].last_sequence + 1) % SEQUENCE_MODULUS
        if base_sequence != expected:
            raise OutOfOrderSequenceError(
                f"producer {producer_id} epoch {epoch} sent sequence {base_sequence} "
                f"to {where}; expected {expected}"
            )
        return Append()

    def record(
        self, producer_id: int, epoch: int, base_sequence: int, count: int, base_offset: int
    ) -> None:
        """Remember a batch that was written at ``base_offset``."""
        if producer_id == NO_PRODUCER_ID:
            return
        state = self._producers.get(producer_id)
        if state is None or epoch > state.epoch:
            state = _Producer(epoch)
            self._producers[producer_id] = state
        state.batches.append(BatchMetadata(base_sequence, _last(base_sequence, count), base_offset))

    def fence(self, producer_id: int, epoch: int) -> None:
        """A transaction marker with ``epoch`` was written for ``producer_id``:
        from now on its batches of a lower epoch are fenced (its remembered
        batches stay when the epoch is the same).

        Raises :class:`~headwater.ProducerFencedError` when ``epoch`` is
        already older than the stored one."""
        if producer_id == NO_PRODUCER_ID:
            return
        state = self._producers.get(producer_id)
        if state is not None and epoch < state.epoch:
            raise ProducerFencedError(
                f"marker of producer {producer_id} epoch {epoch} is fenced on "
                f"{self.topic}/{self.partition}: epoch {state.epoch} has started since"
            )
        if state is None or epoch > state.epoch:
            self._producers[producer_id] = _Producer(epoch)

    def rebuild(self, records: Iterable[RecordInfo]) -> None:
        """Replace the state with the one implied by ``records`` (journal record
        headers in offset order), as after recovery."""
        self._producers.clear()
        for r in records:
            if r.control:
                self.fence(r.producer_id, r.epoch)
            else:
                self.record(r.producer_id, r.epoch, r.base_sequence, r.count, r.base_offset)

    def entries(self) -> tuple[ProducerEntry, ...]:
        """A snapshot of every producer's state, by producer id."""
        return tuple(
            ProducerEntry(pid, st.epoch, tuple(st.batches))
            for pid, st in sorted(self._producers.items())
        )
