"""The transport conformance kit over in-memory streams (virtual time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from headwater.testing import TRANSPORT_CHECKS, FaultyStream, check_transport
from headwater.transport import FramedStream


@asynccontextmanager
async def memory_pair() -> AsyncIterator[tuple[FramedStream, FramedStream]]:
    left, right = trio.testing.memory_stream_pair()
    a, b = FramedStream(left, max_frame_size=4 << 20), FramedStream(right, max_frame_size=4 << 20)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


@asynccontextmanager
async def chunked_faulty_pair() -> AsyncIterator[tuple[FramedStream, FramedStream]]:
    left, right = trio.testing.memory_stream_pair()
    fa, fb = FaultyStream(left), FaultyStream(right)
    fa.receive_chunk = fb.receive_chunk = 997
    a, b = FramedStream(fa, max_frame_size=4 << 20), FramedStream(fb, max_frame_size=4 << 20)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_memory_stream_pair_conforms(autojump_clock: trio.testing.MockClock) -> None:
    """Every check passes over trio.testing.memory_stream_pair."""
    ran = await check_transport(memory_pair)
    assert len(TRANSPORT_CHECKS) == len(ran)


async def test_tiny_receive_chunks_conform(autojump_clock: trio.testing.MockClock) -> None:
    """Every check passes when the receiver gets 997 bytes at a time."""
    ran = await check_transport(chunked_faulty_pair)
    assert len(TRANSPORT_CHECKS) == len(ran)


async def test_kit_catches_a_transport_that_duplicates_frames(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The kit fails (naming the check) on a transport that duplicates a frame."""

    @asynccontextmanager
    async def duplicating_pair() -> AsyncIterator[tuple[FramedStream, FramedStream]]:
        left, right = trio.testing.memory_stream_pair()
        faulty = FaultyStream(left)
        faulty.duplicate_sends = 1
        a, b = FramedStream(faulty), FramedStream(right)
        try:
            yield a, b
        finally:
            await a.aclose()
            await b.aclose()

    with pytest.raises(AssertionError, match="round_trip_small"):
        await check_transport(duplicating_pair)
