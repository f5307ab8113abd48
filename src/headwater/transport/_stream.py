"""Trio glue: a framed stream over any ``trio.abc.Stream``.

This is deliberately thin: all parsing lives in :mod:`._frames`. What it adds
is I/O, locking (several tasks may send; frames are never interleaved) and
error translation: Trio's ``BrokenResourceError`` / ``ClosedResourceError``
and an EOF in the middle of a frame become
:class:`~headwater.ConnectionLostError` (the peer went away) or
:class:`~headwater.ClosedError` (we closed it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import trio

from headwater._errors import ClosedError, ConnectionLostError

from ._frames import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame

__all__ = ["RECEIVE_SIZE", "FramedStream", "SendLock"]

RECEIVE_SIZE: Final = 65536
"""Bytes asked of the stream per ``receive_some`` call."""


class SendLock:
    """The lock that keeps one connection's frames whole (``async with
    lock:`` around taking the queued bytes and sending them), FIFO like
    ``trio.StrictFIFOLock`` but taken without a yield when free: a plain
    lock's acquire passes through the scheduler even uncontended, one more
    pass of the event loop before every frame leaves (a request, an
    acknowledgement, a pushed fetch). The block must reach a checkpoint of
    its own when it matters (a send does)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.StrictFIFOLock()

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()

    def locked(self) -> bool:
        """Whether a sender holds it now."""
        return self._lock.locked()


class FramedStream:
    """Send and receive whole frames (maps with a text ``"t"``) on a stream.

    Works over TCP, ``trio.SSLStream`` or ``trio.testing.memory_stream_pair()``.
    ``send_frame`` may be called from several tasks at once (frames are sent
    whole, in call order); ``receive_frame`` from one task at a time.
    Cancelling ``send_frame`` mid-way breaks the stream (a partial frame may
    have been written), so later sends raise ``ConnectionLostError``;
    cancelling ``receive_frame`` is safe (bytes stay buffered).
    """

    def __init__(
        self, stream: trio.abc.Stream, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame_size=max_frame_size)
        self._max = max_frame_size
        self._send_lock = trio.StrictFIFOLock()
        self._receive_lock = trio.StrictFIFOLock()
        self._closed = False
        self._broken: ConnectionLostError | None = None
        self._eof = False

    @property
    def max_frame_size(self) -> int:
        """The largest frame body sent or accepted, in bytes."""
        return self._max

    async def send_frame(self, frame: Mapping[str, Any]) -> None:
        """Encode and send one frame.

        Raises ``LocalProtocolError`` (nothing sent) for a frame too large or
        not encodable, ``ClosedError`` after our ``aclose``, and
        ``ConnectionLostError`` if the peer is gone.
        """
        data = encode_frame(frame, max_frame_size=self._max)
        await self.send_data(data)

    async def send_data(self, data: bytes) -> None:
        """Send already-encoded bytes (for example a connection's
        ``data_to_send()``), with the same errors as :meth:`send_frame`."""
        self._check_usable()
        async with self._send_lock:
            self._check_usable()
            completed = False
            try:
                await self.stream.send_all(data)
                completed = True
            except trio.ClosedResourceError:
                raise self._closed_or_lost("send") from None
            except trio.BrokenResourceError as exc:
                self._broken = ConnectionLostError(f"connection lost while sending: {exc}")
                raise self._broken from None
            finally:
                if not completed and self._broken is None and not self._closed:
                    self._broken = ConnectionLostError("a send was interrupted mid-frame")

    async def receive_data(self) -> bytes:
        """Receive some raw bytes (``b""`` at end of stream), translating errors."""
        self._check_usable()
        try:
            return bytes(await self.stream.receive_some(RECEIVE_SIZE))
        except trio.ClosedResourceError:
            raise self._closed_or_lost("receive") from None
        except trio.BrokenResourceError as exc:
            self._broken = ConnectionLostError(f"connection lost while receiving: {exc}")
            raise self._broken from None

    async def receive_frame(self) -> dict[str, Any] | None:
        """Wait for the next whole frame; ``None`` at a clean end of stream.

        Raises ``RemoteProtocolError`` for a malformed frame,
        ``ConnectionLostError`` if the peer vanished (EOF mid-frame included)
        and ``ClosedError`` after our ``aclose``.
        """
        async with self._receive_lock:
            while True:
                frame = self._decoder.next_frame()
                if frame is not None:
                    return frame
                if self._eof:
                    return None
                data = await self.receive_data()
                if not data:
                    self._eof = True
                    if not self._decoder.at_boundary:
                        self._broken = ConnectionLostError(
                            f"peer closed the connection mid-frame ({self._decoder.buffered} "
                            "bytes of a frame received)"
                        )
                        raise self._broken
                    return None
                self._decoder.feed(data)

    async def aclose(self) -> None:
        """Close the stream (idempotent). Later calls raise ``ClosedError``."""
        self._closed = True
        await self.stream.aclose()

    def _check_usable(self) -> None:
        if self._closed:
            raise ClosedError("this framed stream was closed")
        if self._broken is not None:
            raise ConnectionLostError(str(self._broken))

    def _closed_or_lost(self, what: str) -> Exception:
        if self._closed:
            return ClosedError(f"cannot {what}: this framed stream was closed")
        return ConnectionLostError(f"cannot {what}: the stream is closed")
