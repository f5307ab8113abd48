"""FaultyStream's faults, observed through FramedStream on virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from headwater import ConnectionLostError, RemoteProtocolError
from headwater.testing import FaultyStream
from headwater.transport import FramedStream


def pair() -> tuple[FaultyStream, FramedStream, FramedStream]:
    left, right = trio.testing.memory_stream_pair()
    faulty = FaultyStream(left)
    return faulty, FramedStream(faulty), FramedStream(right)


async def test_drop_and_duplicate_frames(autojump_clock: trio.testing.MockClock) -> None:
    """drop_sends swallows whole frames; duplicate_sends sends them twice."""
    faulty, a, b = pair()
    faulty.drop_sends = 1
    faulty.duplicate_sends = 1
    await a.send_frame({"t": "one"})
    await a.send_frame({"t": "two"})
    await a.send_frame({"t": "three"})
    got = [await b.receive_frame() for _ in range(3)]
    assert [{"t": "two"}, {"t": "two"}, {"t": "three"}] == got
    stats = faulty.statistics()
    assert (3, 1, 1) == (stats.sends, stats.dropped_sends, stats.duplicated_sends)


async def test_delay_is_on_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    """send_delay delays each frame by exactly that much virtual time."""
    faulty, a, b = pair()
    faulty.send_delay = 2.5
    start = trio.current_time()
    await a.send_frame({"t": "late"})
    assert {"t": "late"} == await b.receive_frame()
    assert 2.5 == pytest.approx(trio.current_time() - start)


async def test_stall_blocks_until_unstalled(autojump_clock: trio.testing.MockClock) -> None:
    """A stalled stream blocks sends; unstall lets them through."""
    faulty, a, b = pair()
    faulty.stall()
    with trio.move_on_after(10) as scope:
        await a.send_frame({"t": "stuck"})
    assert scope.cancelled_caught
    faulty, a, b = pair()
    faulty.stall()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_frame, {"t": "later"})
        await trio.sleep(5)
        faulty.unstall()
        assert {"t": "later"} == await b.receive_frame()


async def test_break_is_connection_lost_on_both_sides(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Breaking the stream gives ConnectionLostError here and EOF to the peer."""
    faulty, a, b = pair()
    faulty.break_stream()
    with pytest.raises(ConnectionLostError):
        await a.send_frame({"t": "x"})
    with pytest.raises(ConnectionLostError):
        await a.send_frame({"t": "x"})
    assert await b.receive_frame() is None


async def test_corrupting_hook_is_remote_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bytes corrupted in transit reach the peer as RemoteProtocolError."""
    faulty, a, b = pair()
    faulty.send_hook = lambda data: b"\x7f" + data[1:]
    await a.send_frame({"t": "x"})
    with pytest.raises(RemoteProtocolError, match="max_frame_size"):
        await b.receive_frame()
