"""The partitioner: Kafka's murmur2 vectors, key stability, sticky round-robin."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import InvalidArgument, UnknownPartitionError
from headwater.client import Partitioner, murmur2, partition_for_key

# From Kafka's UtilsTest.testMurmur2 (clients/src/test/java/org/apache/kafka/
# common/utils/UtilsTest.java), as quoted by kafka_ex's murmur_test.exs, plus
# akka's Murmur2Spec (values "from the kafka murmur2 impl").
KAFKA_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
    "1": -1993445489,
    "12": 126087238,
    "123": -267702483,
    "1234": -1614185708,
    "12345": -1188365604,
}


@pytest.mark.parametrize(("text", "expected"), sorted(KAFKA_VECTORS.items()))
def test_murmur2_matches_kafka(text, expected):
    """Our murmur2 gives Kafka's published values (all tail lengths 0..3)."""
    assert expected == murmur2(text.encode())


def test_partition_formula():
    """partition = (murmur2 & 0x7fffffff) % n, for str and bytes keys alike."""
    assert (-790332482 & 0x7FFFFFFF) % 7 == partition_for_key("foobar", 7)
    assert partition_for_key(b"foobar", 7) == partition_for_key("foobar", 7)
    assert partition_for_key("é", 5) == partition_for_key("é".encode(), 5)


@given(st.binary(max_size=64), st.integers(1, 1000))
def test_same_key_same_partition(key, n):
    """A key always maps to one partition in range, through the partitioner too."""
    p = partition_for_key(key, n)
    assert 0 <= p < n
    assert p == Partitioner().choose("t", key, n)


def test_bad_key_type():
    """An int key is refused, naming the type."""
    with pytest.raises(InvalidArgument, match="not int"):
        partition_for_key(7, 3)  # type: ignore[arg-type]


def test_unkeyed_sticky_round_robin():
    """Unkeyed events stick to a partition until its batch closes, then move on."""
    part = Partitioner()
    assert [0, 0] == [part.choose("t", None, 3), part.choose("t", None, 3)]
    part.batch_closed("t", 0)
    assert 1 == part.choose("t", None, 3)
    part.batch_closed("t", 2)  # not the sticky one: no move
    assert 1 == part.choose("t", None, 3)
    part.batch_closed("t", 1)
    part.choose("t", None, 3)
    part.batch_closed("t", 2)
    assert 0 == part.choose("t", None, 3)
    assert 0 == part.choose("other", None, 3)


def test_unkeyed_spread_over_batches():
    """Closing a batch after every 10 events spreads 300 events evenly on 3 partitions."""
    part = Partitioner()
    counts = [0, 0, 0]
    for i in range(300):
        p = part.choose("t", None, 3)
        counts[p] += 1
        if i % 10 == 9:
            part.batch_closed("t", p)
    assert [100, 100, 100] == counts


def test_explicit_partition_validated():
    """An explicit partition is used as is, or refused when out of range or not int."""
    part = Partitioner()
    assert 2 == part.choose("t", b"k", 3, partition=2)
    with pytest.raises(UnknownPartitionError, match=r"0..2; there is no partition 3"):
        part.choose("t", None, 3, partition=3)
    with pytest.raises(UnknownPartitionError, match="-1"):
        part.choose("t", None, 3, partition=-1)
    with pytest.raises(InvalidArgument, match="bool"):
        part.choose("t", None, 3, partition=True)  # type: ignore[arg-type]


def test_bad_partition_counts_and_text_keys():
    """Zero partitions and surrogate str keys are InvalidArgument, not crashes."""
    with pytest.raises(InvalidArgument, match="partitions must be an int >= 1, not 0"):
        partition_for_key(b"k", 0)
    with pytest.raises(InvalidArgument, match="not 0"):
        Partitioner().choose("t", None, 0)
    with pytest.raises(InvalidArgument, match="valid Unicode"):
        partition_for_key("\ud800", 3)


def test_key_cache_follows_partition_count():
    """A remembered key is re-hashed when the topic's partition count changes."""
    part = Partitioner()
    assert partition_for_key("foobar", 7) == part.choose("t", "foobar", 7)
    assert partition_for_key("foobar", 7) == part.choose("t", "foobar", 7)
    assert partition_for_key("foobar", 11) == part.choose("t", "foobar", 11)
    with pytest.raises(InvalidArgument, match="not list"):
        part.choose("t", [1], 11)  # type: ignore[arg-type]
