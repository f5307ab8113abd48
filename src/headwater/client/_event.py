"""The :class:`Event` a consumer reads and the types of its parts."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Event", "Headers", "Key"]

#: An event key: bytes, or a str (stored as a CBOR text string; hashed for
#: partitioning as its UTF-8 bytes, so ``"k"`` and ``b"k"`` land in the same
#: partition, but each comes back as the type it was sent as).
Key = bytes | str

#: Event headers: ordered (name, value) pairs; a name may repeat (as in Kafka).
Headers = tuple[tuple[str, bytes], ...]


@attrs.frozen
class Event:
    """One stored event, as a consumer sees it.

    ``offset`` is its position in the partition, ``timestamp`` the producer's
    time in milliseconds since the epoch. ``key`` is ``None``, bytes or str (as
    sent). ``value`` is ``None`` for a tombstone (a deleted key on a compacted
    topic), else the value as the consumer's deserializer returned it (bytes
    when read raw). ``headers`` are ordered (name, bytes) pairs.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: Key | None
    value: Any
    headers: Headers = ()
