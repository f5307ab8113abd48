"""The sans-IO frame codec: round trips and a hostile corpus."""

from __future__ import annotations

import random
import struct
import tracemalloc
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import InvalidArgument, LocalProtocolError, RemoteProtocolError
from headwater.transport import FrameDecoder, encode_frame

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
frames = st.builds(
    lambda tag, rest: {**rest, "t": tag},
    st.text(max_size=10),
    st.dictionaries(st.text(max_size=8), plain, max_size=5),
)


def decode_all(
    data: bytes, chunks: list[int] | None = None, max_frame_size: int = 1 << 20
) -> list[dict[str, Any]]:
    decoder = FrameDecoder(max_frame_size=max_frame_size)
    out: list[dict[str, Any]] = []
    if chunks is None:
        decoder.feed(data)
        out.extend(decoder.frames())
        return out
    pos = 0
    for size in [*chunks, len(data)]:
        decoder.feed(data[pos : pos + size])
        pos += size
        out.extend(decoder.frames())
    return out


@given(st.lists(frames, max_size=5), st.lists(st.integers(0, 40), max_size=20))
def test_frames_round_trip_in_any_chunking(batch: list[dict[str, Any]], chunks: list[int]) -> None:
    """Any list of plain frames, encoded and fed in any chunking, decodes equal."""
    data = b"".join(encode_frame(f) for f in batch)
    assert batch == decode_all(data, chunks)


def test_big_bytes_field_passes_through_as_a_byte_string() -> None:
    """A 1 MiB bytes field is one CBOR byte string and comes back identical."""
    payload = random.Random(7).randbytes(1 << 20)
    data = encode_frame({"t": "fetch", "records": payload})
    (length,) = struct.unpack(">I", data[:4])
    assert len(data) - 4 == length
    assert payload in data  # written verbatim, not re-encoded
    assert [{"t": "fetch", "records": payload}] == decode_all(data, max_frame_size=2 << 20)


def test_huge_length_prefix_is_refused_without_allocating() -> None:
    """A 4 GiB length prefix is refused at once, allocating next to nothing."""
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.feed(b"\xff\xff\xff\xff")
        with pytest.raises(RemoteProtocolError, match="4294967295 bytes"):
            decoder.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000
    with pytest.raises(RemoteProtocolError):  # stays failed
        decoder.feed(b"more")


@pytest.mark.parametrize("cut", range(20))
def test_truncated_frame_waits_at_every_byte(cut: int) -> None:
    """A frame cut at any byte yields nothing (no error) until the rest arrives."""
    data = encode_frame({"t": "req", "id": 1, "op": "x"})
    assert 20 == len(data)
    decoder = FrameDecoder()
    decoder.feed(data[:cut])
    assert decoder.next_frame() is None
    assert (cut == 0) == decoder.at_boundary
    decoder.feed(data[cut:])
    assert {"t": "req", "id": 1, "op": "x"} == decoder.next_frame()


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


HOSTILE = {
    "invalid cbor (break byte)": framed(b"\xff"),
    "truncated cbor item": framed(b"\xa1\x61t"),
    "not a map: int": framed(cbor2.dumps(5)),
    "not a map: list": framed(cbor2.dumps([{"t": "x"}])),
    "not a map: bytes": framed(cbor2.dumps(b"abc")),
    "missing t": framed(cbor2.dumps({"id": 1})),
    "t not text": framed(cbor2.dumps({"t": 7})),
    "non-text key": framed(cbor2.dumps({"t": "x", 1: 2})),
    "semantic tag (datetime)": framed(b"\xa2\x61t\x61x\x61d\xc1\x01"),
    "unknown tag": framed(b"\xa2\x61t\x61x\x61d\xd9\x99\x99\x01"),
    "set": framed(cbor2.dumps({"t": "x", "s": frozenset({1})})),
    "trailing bytes": framed(cbor2.dumps({"t": "x"}) + b"\x00"),
    "invalid utf-8": framed(b"\xa1\x61t\x62\xff\xfe"),
    "deep nesting": framed(b"\xa2\x61t\x61x\x61d" + b"\x81" * 5000 + b"\x00"),
    "byte string longer than frame": framed(b"\xa2\x61t\x61x\x61d\x5a\x7f\xff\xff\xff"),
    "oversize prefix": b"\x01\x00\x00\x01" + b"\x00" * 16,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_corpus_is_remote_protocol_error(name: str) -> None:
    """Each hostile input raises RemoteProtocolError and nothing else."""
    with pytest.raises(RemoteProtocolError):
        decode_all(HOSTILE[name])


@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=10))
def test_decoder_fuzz_only_frames_or_remote_protocol_error(data: bytes, chunks: list[int]) -> None:
    """Arbitrary bytes in arbitrary chunks give frames, a wait, or RemoteProtocolError."""
    try:
        result = decode_all(data, chunks, max_frame_size=1024)
    except RemoteProtocolError:
        return
    for frame in result:
        assert isinstance(frame, dict)
        assert isinstance(frame["t"], str)


def test_random_bytes_corpus() -> None:
    """Seeded random garbage (with small length prefixes so bodies are parsed) never
    escapes as anything but RemoteProtocolError."""
    rng = random.Random(5)
    for _ in range(2000):
        body = rng.randbytes(rng.randrange(0, 40))
        try:
            decode_all(framed(body))
        except RemoteProtocolError:
            pass


def test_encode_refuses_what_it_cannot_send() -> None:
    """encode_frame raises LocalProtocolError for oversize, untagged or non-plain frames."""
    with pytest.raises(LocalProtocolError, match="max_frame_size=100"):
        encode_frame({"t": "x", "d": bytes(200)}, max_frame_size=100)
    with pytest.raises(LocalProtocolError, match="'t'"):
        encode_frame({"id": 1})
    with pytest.raises(LocalProtocolError, match="set"):
        encode_frame({"t": "x", "v": {1, 2}})
    with pytest.raises(LocalProtocolError, match="64-bit"):
        encode_frame({"t": "x", "v": 2**64})
    with pytest.raises(LocalProtocolError, match="not text"):
        encode_frame({"t": "x", "v": {1: 2}})


def test_decoder_rejects_a_bad_limit() -> None:
    """max_frame_size must be a sane int."""
    with pytest.raises(InvalidArgument, match="max_frame_size"):
        FrameDecoder(max_frame_size=2**33)


def test_many_small_frames_compact_the_buffer() -> None:
    """Frames fed in one large block are all returned and the buffer drains."""
    data = b"".join(encode_frame({"t": "s", "i": i}) for i in range(20000))
    decoder = FrameDecoder()
    decoder.feed(data)
    assert list(range(20000)) == [f["i"] for f in decoder.frames()]
    assert 0 == decoder.buffered
