"""The Kafka codecs, sans-IO: RecordBatch v2 against kafka-python's own
implementation, frames and request headers, and a fuzzer over the request
decoder (only typed violations or valid requests, never a crash)."""

from __future__ import annotations

import gzip
import os
import struct

import cramjam
import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from headwater.kafka import (
    KafkaConnection,
    KafkaCorruptBatch,
    KafkaProtocolViolation,
    decode_batches,
    encode_batch,
)

from .conftest import frame

ROWS = [
    (1_700_000_000_000, b"k", b"v" * 100, (("h", b"1"), ("n", None))),
    (1_699_999_999_000, None, None, ()),
    (1_700_000_000_009, b"", b"", (("\u00e9", b""),)),
]


def recompress(data: bytes, codec: int) -> bytes:
    """The same batch with its records compressed by ``codec`` (1 gzip, 2
    snappy in xerial framing as Java clients write it, 3 lz4 frame, 4 zstd)."""
    body = data[61:]
    if codec == 1:
        packed = gzip.compress(body)
    elif codec == 2:
        block = bytes(cramjam.snappy.compress_raw(body))
        packed = (
            b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1) + struct.pack(">i", len(block)) + block
        )
    elif codec == 3:
        packed = bytes(cramjam.lz4.compress(body))
    else:
        packed = bytes(cramjam.zstd.compress(body))
    out = bytearray(data[:61] + packed)
    struct.pack_into(">i", out, 8, len(out) - 12)
    (attributes,) = struct.unpack_from(">h", out, 21)
    struct.pack_into(">h", out, 21, attributes | codec)
    struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


def kafka_python_batch(compression: int = 0, rows: list = ROWS, **producer: int) -> bytes:  # type: ignore[type-arg]
    """A batch as kafka-python's producer builds it (compressed afterwards:
    kafka-python needs extra libraries for snappy, lz4 and zstd)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=producer.get("pid", -1),
        producer_epoch=producer.get("epoch", -1),
        base_sequence=producer.get("seq", -1),
        batch_size=1 << 20,
    )
    for offset, (ts, key, value, headers) in enumerate(rows):
        builder.append(offset, ts, key, value, list(headers))
    data = bytes(builder.build())
    return recompress(data, compression) if compression else data


@pytest.mark.parametrize(
    "compression", [0, 1, 2, 3, 4], ids=["none", "gzip", "snappy", "lz4", "zstd"]
)
def test_decodes_batches_kafka_python_builds(compression: int) -> None:
    """Every codec kafka-python writes decodes to the same records, with the
    producer fields kept."""
    data = kafka_python_batch(compression, pid=5, epoch=1, seq=9)
    (batch,) = decode_batches(data)
    assert (5, 1, 9) == (batch.producer_id, batch.producer_epoch, batch.base_sequence)
    assert [(r.timestamp, r.key, r.value, r.headers) for r in batch.records] == [
        (ts, k, v, tuple(h)) for ts, k, v, h in ROWS
    ]
    assert 1_700_000_000_009 == batch.max_timestamp


def test_encoded_batches_read_by_kafka_python() -> None:
    """kafka-python reads the batches Headwater encodes: offsets, CRC, records."""
    data = encode_batch(40, ROWS, producer_id=3, producer_epoch=0, base_sequence=0)
    batch = DefaultRecordBatch(data)
    assert batch.validate_crc()
    assert [
        (40, 1_700_000_000_000, b"k"),
        (41, 1_699_999_999_000, None),
        (42, 1_700_000_000_009, b""),
    ] == [(r.offset, r.timestamp, r.key) for r in batch]
    assert [[("h", b"1"), ("n", None)], [], [("\u00e9", b"")]] == [
        list(r.headers) for r in DefaultRecordBatch(data)
    ]


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b[:-1], "cut short|does not fit"),
        (lambda b: b[:16] + b"\x01" + b[17:], "magic"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "CRC"),
        (lambda b: b + b"\x00" * 70, "cut short|does not fit|magic"),
    ],
)
def test_malformed_batches_are_typed_errors(damage, match) -> None:  # type: ignore[no-untyped-def]
    """Cut, wrong magic, wrong CRC, trailing garbage: KafkaCorruptBatch naming it."""
    with pytest.raises(KafkaCorruptBatch, match=match):
        decode_batches(damage(encode_batch(0, ROWS)))


def test_bad_compressed_body_is_corrupt() -> None:
    """A gzip batch whose body is not gzip fails as corrupt, not as a crash."""
    data = bytearray(kafka_python_batch(1))
    body = b"not gzip at all"
    fixed = data[:61] + body
    struct.pack_into(">i", fixed, 8, len(fixed) - 12)
    struct.pack_into(">I", fixed, 17, crc32c.crc32c(bytes(fixed[21:])))
    with pytest.raises(KafkaCorruptBatch, match="decompress"):
        decode_batches(bytes(fixed))
    assert gzip.decompress(gzip.compress(b"x")) == b"x"


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**41),
            st.none() | st.binary(max_size=20),
            st.none() | st.binary(max_size=50),
            st.lists(
                st.tuples(st.text(max_size=5), st.none() | st.binary(max_size=5)), max_size=3
            ).map(tuple),
        ),
        min_size=1,
        max_size=20,
    ),
    st.integers(0, 2**40),
)
def test_batches_round_trip(rows, base_offset) -> None:  # type: ignore[no-untyped-def]
    """encode_batch then decode_batches gives back every field."""
    (batch,) = decode_batches(encode_batch(base_offset, rows))
    assert base_offset == batch.base_offset
    assert [tuple(r) for r in rows] == [
        (r.timestamp, r.key, r.value, r.headers) for r in batch.records
    ]


# ---------------------------------------------------------------- frames


def test_requests_split_anywhere_decode_the_same() -> None:
    """Bytes arriving one at a time still give whole requests, in order."""
    data = frame(18, 0, {}) + frame(3, 1, {"topics": None})
    conn = KafkaConnection()
    got = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        request = conn.next_request()
        if request is not None:
            got.append((request.api_key, request.api_version, request.client_id))
    assert [(18, 0, "test"), (3, 1, "test")] == got
    assert 0 == conn.buffered


def test_oversized_unknown_and_undecodable_frames_are_violations() -> None:
    """A frame above the limit is refused from its size alone; an unknown API
    key or version, or a body with trailing bytes, is a violation; an
    ApiVersions of an unknown version is returned for a v0 answer."""
    conn = KafkaConnection(max_frame_size=1000)
    conn.receive_data(struct.pack(">i", 5000))
    with pytest.raises(KafkaProtocolViolation, match="outside"):
        conn.next_request()
    for data, match in [
        (struct.pack(">ihhih", 10, 99, 0, 1, -1), "unknown or unsupported API key 99"),
        (struct.pack(">ihhih", 10, 0, 1, 1, -1), r"Produce v1 is not supported"),
        (frame(3, 1, {"topics": None})[: -0 or None] + b"", None),
    ]:
        conn = KafkaConnection()
        conn.receive_data(data)
        if match is None:
            assert conn.next_request() is not None
            continue
        with pytest.raises(KafkaProtocolViolation, match=match):
            conn.next_request()
    bad = frame(3, 1, {"topics": None}) + b""
    grown = struct.pack(">i", len(bad) - 4 + 3) + bad[4:] + b"xyz"
    conn = KafkaConnection()
    conn.receive_data(grown)
    with pytest.raises(KafkaProtocolViolation, match="trailing"):
        conn.next_request()
    conn = KafkaConnection()
    conn.receive_data(struct.pack(">ihhih", 10, 18, 9, 5, -1))
    request = conn.next_request()
    assert request is not None
    assert (None, 5) == (request.body, request.correlation_id)


def fuzz_one(data: bytes) -> None:
    """Feed arbitrary bytes: every outcome is a request, None or a typed violation."""
    conn = KafkaConnection(max_frame_size=1 << 16)
    conn.receive_data(data)
    try:
        while conn.next_request() is not None:
            pass
    except KafkaProtocolViolation:
        pass


#: CI runs the fuzzers briefly; HEADWATER_FUZZ_EXAMPLES=100000 is the soak.
FUZZ = settings(
    max_examples=int(os.environ.get("HEADWATER_FUZZ_EXAMPLES", "200")),
    deadline=None,
    derandomize=os.environ.get("HEADWATER_FUZZ_EXAMPLES") is None,
)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_garbage(data: bytes) -> None:
    """Random bytes never crash the decoder."""
    fuzz_one(data)


@FUZZ
@given(st.sampled_from([(18, 3), (3, 8), (0, 8), (1, 11), (8, 7), (19, 4)]), st.data())
def test_fuzz_mutated_valid_requests(key_version: tuple[int, int], data: st.DataObject) -> None:
    """Valid frames with random bytes flipped, cut or appended never crash the decoder."""
    key, version = key_version
    values = {
        "topics": [{"name": "t", "partitions": []}],
        "topic_data": [
            {"name": "t", "partition_data": [{"index": 0, "records": encode_batch(0, ROWS)}]}
        ],
        "group_id": "g",
    }
    raw = bytearray(frame(key, version, values))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(4, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(4, len(raw)))
    fuzz_one(bytes(raw[:cut]))
    payload = bytes(raw[:cut]) + data.draw(st.binary(max_size=20))
    fuzz_one(struct.pack(">i", len(payload) - 4) + payload[4:])


@FUZZ
@given(st.data())
def test_fuzz_record_batches_with_valid_crc(data: st.DataObject) -> None:
    """Mutated batches whose CRC is fixed up (so the record framing itself is
    exercised) decode or raise KafkaCorruptBatch, never anything else."""
    codec = data.draw(st.sampled_from([0, 1, 4]))
    raw = bytearray(kafka_python_batch(codec))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(21, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    struct.pack_into(">I", raw, 17, crc32c.crc32c(bytes(raw[21:])))
    try:
        decode_batches(bytes(raw))
    except KafkaCorruptBatch:
        pass


def test_consumer_protocol_bytes_match_kafka_python() -> None:
    """Subscriptions and assignments as kafka-python's consumer writes them
    decode to the topics and partitions; ours decode in kafka-python."""
    from kafka.protocol.old.consumer_protocol import (
        ConsumerProtocolMemberAssignment_v0 as Assignment,
    )
    from kafka.protocol.old.consumer_protocol import (
        ConsumerProtocolMemberMetadata_v0 as Metadata,
    )

    from headwater._protocol import TopicPartition
    from headwater.kafka._consumer_protocol import (
        decode_assignment,
        decode_subscription,
        encode_assignment,
    )

    metadata = Metadata(0, ["a", "b"], b"").encode()
    assert ("a", "b") == decode_subscription(metadata)
    assigned = Assignment(0, [("a", [0, 2]), ("b", [1])], b"").encode()
    tps = (TopicPartition("a", 0), TopicPartition("a", 2), TopicPartition("b", 1))
    assert tps == decode_assignment(assigned)
    back = Assignment.decode(encode_assignment(tps))
    assert [("a", [0, 2]), ("b", [1])] == [(t, list(p)) for t, p in back.assigned_partitions]
    assert () == decode_assignment(b"")
