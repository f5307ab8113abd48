"""Choosing a partition for an event, as Kafka's default partitioner does.

* **Keyed** events: ``(murmur2(key_bytes) & 0x7fffffff) % partitions``, where
  ``murmur2`` is Kafka's variant (seed ``0x9747b28c``) and ``key_bytes`` is the
  key itself, or a str key's UTF-8 bytes. So a key lands in the same partition
  as it would in Kafka with the same partition count, and ``"k"``/``b"k"``
  share a partition. (The hash itself, ``murmur2``, ``key_bytes`` and
  ``partition_for_key``, lives with the stored batch format in
  :mod:`headwater.journal._batch`; the broker's compaction uses it too.)
* **Unkeyed** events stick to one partition per topic until the batch being
  filled there is closed (ready to send), then move to the next partition
  round-robin (Kafka's "sticky" partitioner, deterministic here): batches fill
  up, and the load is spread evenly over batches.
* An **explicit** partition is checked against the topic's partition count.
"""

from __future__ import annotations

import attrs

from headwater._errors import InvalidArgument, UnknownPartitionError
from headwater.journal._batch import Key as Key
from headwater.journal._batch import key_bytes as key_bytes
from headwater.journal._batch import murmur2 as murmur2
from headwater.journal._batch import partition_for_key as partition_for_key

__all__ = ["Partitioner", "key_bytes", "murmur2", "partition_for_key"]

#: Keys whose partition a Partitioner remembers per topic (then it starts over).
KEY_CACHE_SIZE = 4096


@attrs.define
class Partitioner:
    """Picks the partition for each event of a producer (see the module docs).

    Keyed choices are remembered per topic (up to ``KEY_CACHE_SIZE`` keys,
    forgotten when the partition count changes), since keys repeat.
    Call :meth:`choose` per event and :meth:`batch_closed` when the
    accumulator closes a batch, so unkeyed events move on to the next partition.
    """

    _sticky: dict[str, int] = attrs.field(factory=dict)
    _counts: dict[str, int] = attrs.field(factory=dict)
    _key_cache: dict[str, tuple[int, dict[Key, int]]] = attrs.field(factory=dict)

    def choose(
        self, topic: str, key: Key | None, partitions: int, partition: int | None = None
    ) -> int:
        """Return the partition for one event of ``topic`` (with ``partitions``
        partitions). An explicit ``partition`` outside ``0 .. partitions - 1``
        raises :class:`~headwater.UnknownPartitionError`; a non-int one
        :class:`~headwater.InvalidArgument`."""
        if key is None and partition is None:
            current = self._sticky.get(topic)
            if current is not None and self._counts.get(topic) == partitions:
                return current  # the common case: an unkeyed event, nothing changed
        if type(partitions) is not int or partitions < 1:
            raise InvalidArgument(f"partitions must be an int >= 1, not {partitions!r}")
        if partition is not None:
            if type(partition) is not int:
                raise InvalidArgument(
                    f"partition must be an int, not {type(partition).__qualname__}"
                )
            if not 0 <= partition < partitions:
                raise UnknownPartitionError(
                    f"topic {topic!r} has partitions 0..{partitions - 1}; "
                    f"there is no partition {partition}"
                )
            return partition
        if key is not None:
            cached = self._key_cache.get(topic)
            if cached is None or cached[0] != partitions or len(cached[1]) >= KEY_CACHE_SIZE:
                cached = self._key_cache[topic] = (partitions, {})
            known = cached[1]
            try:
                hit = known.get(key)
            except TypeError:  # unhashable: not a valid key; key_bytes says why
                hit = None
            if hit is not None:
                return hit
            chosen = partition_for_key(key, partitions)
            known[key] = chosen
            return chosen
        self._counts[topic] = partitions
        current = self._sticky.get(topic)
        if current is None or current >= partitions:
            current = 0
            self._sticky[topic] = current
        return current

    def batch_closed(self, topic: str, partition: int) -> None:
        """A batch for ``topic``/``partition`` was closed: if unkeyed events were
        sticking to that partition, move them on to the next one."""
        if self._sticky.get(topic) == partition:
            self._sticky[topic] = (partition + 1) % self._counts[topic]
