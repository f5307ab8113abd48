"""The record codec: round trips, and exact reports for torn and corrupt bytes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import InvalidArgument
from headwater.journal import (
    HEADER_SIZE,
    Corrupt,
    RecordHeader,
    Short,
    decode_header,
    encode_record,
    iter_records,
    patch_header,
    patch_record,
)
from headwater.journal._record import stamp_record, stored_header


@given(
    size=st.sampled_from([0, 1, 100, 1024, 65536, 1 << 20]),
    seed=st.integers(0, 2**32),
    count=st.integers(1, 2**31 - 1),
    ts=st.integers(-(2**62), 2**62),
    pid=st.integers(-1, 2**62),
    seq=st.integers(-1, 2**31 - 1),
)
def test_round_trip(size: int, seed: int, count: int, ts: int, pid: int, seq: int) -> None:
    """Any payload (0 B to 1 MiB, from a seeded PRNG) and header fields survive."""
    payload = random.Random(seed).randbytes(size)
    rec = encode_record(
        payload,
        count=count,
        first_timestamp=ts,
        producer_id=pid,
        producer_epoch=3,
        base_sequence=seq,
    )
    header = decode_header(rec)
    assert isinstance(header, RecordHeader)
    assert (HEADER_SIZE + size, count, ts, ts, pid, 3, seq) == (
        header.length,
        header.count,
        header.first_timestamp,
        header.max_timestamp,
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
    )
    assert payload == rec[HEADER_SIZE:]
    patched = patch_record(rec, 1000, 77)
    h2 = decode_header(patched)
    assert isinstance(h2, RecordHeader)
    assert (1000, 77, 1000 + count) == (h2.base_offset, h2.append_time, h2.next_offset)


def test_every_truncation_is_short_and_every_bit_flip_is_corrupt() -> None:
    """Cutting a record anywhere reports Short; flipping any one bit reports Corrupt."""
    rec = encode_record(b"hello, journal", count=2, first_timestamp=5, max_timestamp=9)
    for cut in range(len(rec)):
        assert isinstance(decode_header(rec[:cut]), Short), cut
    for bit in range(len(rec) * 8):
        damaged = bytearray(rec)
        damaged[bit // 8] ^= 1 << (bit % 8)
        result = decode_header(bytes(damaged))
        # A flip in the length field may also look like a short record.
        assert isinstance(result, Corrupt | Short), bit
        if bit // 8 >= 4:
            assert isinstance(result, Corrupt), bit


def test_bad_inputs() -> None:
    """Invalid counts and non-record bytes are refused clearly."""
    with pytest.raises(InvalidArgument, match="count"):
        encode_record(b"x", count=0)
    with pytest.raises(InvalidArgument, match="byte 0"):
        iter_records(b"\x00" * 100)
    two = encode_record(b"a", count=1) + encode_record(b"bb", count=2)
    assert [1, 2] == [h.count for h, _ in iter_records(two)]


# (base offset, append time) pairs a broker stamps: zero, a real time, the widest.
STAMPS = ((0, 0), (5, 1_700_000_000_000), (2**62, -1))
# Record sizes on both sides of the CRC combination threshold (8 KiB with the header).
SIZES = [0, 1, 61, 8129, 8130, 8131, 100_003, 1_024_000]


def client_record(size: int) -> tuple[bytes, bytes]:
    """A client's record (an idempotent producer's batch of three events)
    around ``size`` random bytes seeded by ``size``, and its payload."""
    payload = random.Random(size).randbytes(size)
    record = encode_record(
        payload, count=3, first_timestamp=11, max_timestamp=12, producer_id=7, base_sequence=4
    )
    return record, payload


@pytest.mark.parametrize("size", SIZES)
def test_stored_header_matches_patch_header(size: int) -> None:
    """stored_header (the append path: the header packed from the decoded
    fields) gives exactly patch_header's bytes, on both sides of the CRC
    combination threshold; and from a header that differs from the
    record's own bytes it still yields a record that passes its checksum."""
    record, payload = client_record(size)
    header = decode_header(record)
    assert isinstance(header, RecordHeader)
    for base_offset, append_time in STAMPS:
        stored = header._replace(base_offset=base_offset, append_time=append_time)
        head = stored_header(record, stored)
        assert patch_header(record, base_offset, append_time) == head
    other = decode_header(encode_record(bytes(size), count=9, first_timestamp=-3, attributes=4))
    assert isinstance(other, RecordHeader)
    other = other._replace(base_offset=42, append_time=43)
    decoded = decode_header(stored_header(record, other) + payload)
    assert isinstance(decoded, RecordHeader)  # its checksum holds
    assert other == decoded._replace(crc=other.crc)


@pytest.mark.parametrize("size", SIZES)
def test_stamp_record_checks_and_stamps_like_decode_then_patch(size: int) -> None:
    """stamp_record (the append path's one step) gives the header
    decode_header gives, with the base offset and append time set, and
    exactly patch_header's stored bytes, on both sides of the CRC
    combination threshold."""
    record, payload = client_record(size)
    decoded = decode_header(record)
    assert isinstance(decoded, RecordHeader)
    for base_offset, append_time in STAMPS:
        stamped = stamp_record(record, base_offset, append_time)
        assert stamped is not None
        header, head = stamped
        assert decoded._replace(base_offset=base_offset, append_time=append_time) == header
        assert patch_header(record, base_offset, append_time) == head
        stored = decode_header(head + payload)  # the stored record passes its checksum
        assert isinstance(stored, RecordHeader)
        assert (base_offset, append_time) == (stored.base_offset, stored.append_time)


def test_stamp_record_refuses_what_decode_header_refuses() -> None:
    """Anything but one whole valid record of exactly its own length is
    refused (None), never stamped: torn, trailing bytes, a flipped payload
    or header byte, a bad magic."""
    record = encode_record(b"payload" * 50, count=2)
    flipped_payload = bytearray(record)
    flipped_payload[-1] ^= 1
    flipped_header = bytearray(record)
    flipped_header[30] ^= 1  # first_timestamp: covered by the checksum
    bad_magic = bytearray(record)
    bad_magic[8] = 0
    for bad in (
        b"",
        record[: HEADER_SIZE - 1],
        record[:-1],
        record + b"x",
        bytes(flipped_payload),
        bytes(flipped_header),
        bytes(bad_magic),
    ):
        assert stamp_record(bad, 1, 2) is None
        assert not isinstance(decode_header(bad), RecordHeader) or len(bad) != len(record)


@pytest.mark.parametrize(
    "size", [0, 1, 61, 4096, 8129, 8130, 8131, 65_536, 100_003, 1_024_000, 3_000_001]
)
def test_patch_header_matches_patch_record_at_every_size(size: int) -> None:
    """patch_header (the writer's path: payload not copied, CRC combined
    from the old one for long records) gives exactly patch_record's header,
    and the patched record passes its checksum, on both sides of the
    combination threshold and for offsets and times of every width."""
    record, payload = client_record(size)
    for base_offset, append_time in STAMPS:
        head = patch_header(record, base_offset, append_time)
        assert bytes(patch_record(record, base_offset, append_time)) == head + payload
        header = decode_header(head + payload)
        assert isinstance(header, RecordHeader)
        assert (base_offset, append_time) == (header.base_offset, header.append_time)
