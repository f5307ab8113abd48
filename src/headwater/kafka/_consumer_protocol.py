"""Kafka's ConsumerProtocol bytes, sans-IO: what consumer-group members put in
JoinGroup metadata (their subscription) and SyncGroup assignments.

Theory of operation
-------------------
Kafka's consumer groups carry opaque bytes the broker normally never reads.
Headwater reads two things from them so that its coordinator and tools see
Kafka members like its own: the topics a member subscribes to (the
subscription's leading ``version``, ``topics`` array) and the partitions the
elected leader assigned to each member (the assignment's ``version``, then
``[topic, [partition, ...]]`` pairs). Later fields (user data, owned
partitions, rack) are ignored. All integers are big-endian; strings are an
int16 length then UTF-8. Malformed bytes raise
:class:`~headwater.InvalidArgument`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from headwater._errors import InvalidArgument
from headwater._protocol import TopicPartition

__all__ = ["decode_assignment", "decode_subscription", "encode_assignment"]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise InvalidArgument("consumer-protocol bytes are cut short")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(value)

    def string(self) -> str:
        n = self.take(">h")
        if n < 0 or self.pos + n > len(self.data):
            raise InvalidArgument("a consumer-protocol string does not fit")
        text = self.data[self.pos : self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return text

    def count(self) -> int:
        n = self.take(">i")
        if n < -1 or n > len(self.data):
            raise InvalidArgument(f"a consumer-protocol array claims {n} items")
        return max(n, 0)


def decode_subscription(metadata: bytes) -> tuple[str, ...]:
    """The topics of a member's ConsumerProtocol subscription."""
    reader = _Reader(bytes(metadata))
    reader.take(">h")
    return tuple(reader.string() for _ in range(reader.count()))


def decode_assignment(data: bytes) -> tuple[TopicPartition, ...]:
    """The partitions of a ConsumerProtocol assignment (empty bytes: none)."""
    if not data:
        return ()
    reader = _Reader(bytes(data))
    reader.take(">h")
    out: list[TopicPartition] = []
    for _ in range(reader.count()):
        topic = reader.string()
        out.extend(TopicPartition(topic, reader.take(">i")) for _ in range(reader.count()))
    return tuple(out)


def encode_assignment(assignment: Iterable[TopicPartition]) -> bytes:
    """ConsumerProtocol assignment v0 bytes for a partition list."""
    by_topic: dict[str, list[int]] = {}
    for tp in assignment:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    out = bytearray(struct.pack(">hi", 0, len(by_topic)))
    for topic, parts in by_topic.items():
        name = topic.encode("utf-8")
        out += struct.pack(">h", len(name)) + name + struct.pack(">i", len(parts))
        for p in parts:
            out += struct.pack(">i", p)
    out += struct.pack(">i", -1)
    return bytes(out)
