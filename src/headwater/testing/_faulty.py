"""A fault-injecting ``trio.abc.Stream`` wrapper for transport tests."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

__all__ = ["FaultyStream", "FaultyStreamStatistics"]


@attrs.frozen
class FaultyStreamStatistics:
    """What a :class:`FaultyStream` has done so far."""

    sends: int
    bytes_sent: int
    dropped_sends: int
    duplicated_sends: int
    receives: int
    bytes_received: int


class FaultyStream(trio.abc.Stream):
    """Wrap a stream and inject faults, controlled by plain attributes.

    One ``send_all`` call is one frame when used under a ``FramedStream``, so
    the send-side faults act on whole frames:

    * ``drop_sends = n``: the next ``n`` sends are silently swallowed;
    * ``duplicate_sends = n``: the next ``n`` sends go out twice;
    * ``send_delay = seconds``: every send waits this long first (Trio's clock,
      so virtual under ``MockClock``);
    * ``receive_chunk = n``: ``receive_some`` returns at most ``n`` bytes
      (frames arrive in pieces);
    * ``send_hook(data) -> data``: rewrite the bytes of each send (corrupt them);
    * :meth:`stall` / :meth:`unstall`: sends and receives block until unstalled;
    * :meth:`break_stream`: every later operation raises
      ``trio.BrokenResourceError`` and the wrapped stream is closed.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.drop_sends = 0
        self.duplicate_sends = 0
        self.send_delay = 0.0
        self.receive_chunk: int | None = None
        self.send_hook: Callable[[bytes], bytes] | None = None
        self._unstalled = trio.Event()
        self._unstalled.set()
        self._broken = False
        self._sends = self._bytes_sent = self._dropped = self._duplicated = 0
        self._receives = self._bytes_received = 0

    def statistics(self) -> FaultyStreamStatistics:
        """A snapshot of the counters."""
        return FaultyStreamStatistics(
            self._sends, self._bytes_sent, self._dropped, self._duplicated,
            self._receives, self._bytes_received,
        )  # fmt: skip

    def stall(self) -> None:
        """Make sends and receives block until :meth:`unstall`."""
        if self._unstalled.is_set():
            self._unstalled = trio.Event()

    def unstall(self) -> None:
        """Let blocked sends and receives continue."""
        self._unstalled.set()

    def break_stream(self) -> None:
        """From now on every operation raises ``trio.BrokenResourceError``."""
        self._broken = True
        self._break_inner = True
        self.unstall()

    _break_inner = False

    async def _gate(self) -> None:
        await self._unstalled.wait()
        if self._broken:
            if self._break_inner:
                self._break_inner = False
                await trio.aclose_forcefully(self.inner)
            raise trio.BrokenResourceError("FaultyStream was broken on purpose")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` through the configured faults."""
        await self._gate()
        if self.send_delay:
            await trio.sleep(self.send_delay)
        await self._gate()
        self._sends += 1
        payload = bytes(data)
        if self.send_hook is not None:
            payload = self.send_hook(payload)
        if self.drop_sends > 0:
            self.drop_sends -= 1
            self._dropped += 1
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send_all(payload)
        self._bytes_sent += len(payload)
        if self.duplicate_sends > 0:
            self.duplicate_sends -= 1
            self._duplicated += 1
            await self.inner.send_all(payload)
            self._bytes_sent += len(payload)

    async def wait_send_all_might_not_block(self) -> None:
        """Delegate to the wrapped stream."""
        await self._gate()
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Receive through the configured faults (``receive_chunk``, stalls)."""
        await self._gate()
        if self.receive_chunk is not None:
            max_bytes = min(max_bytes or self.receive_chunk, self.receive_chunk)
        data = await self.inner.receive_some(max_bytes)
        await self._gate()
        self._receives += 1
        self._bytes_received += len(data)
        return data

    async def aclose(self) -> None:
        """Close the wrapped stream."""
        self.unstall()
        await self.inner.aclose()
