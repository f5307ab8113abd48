"""The frame codec: length-prefixed CBOR maps, sans-IO.

Theory of operation
-------------------
On the wire a frame is a 4-byte big-endian unsigned length ``n`` followed by
exactly ``n`` bytes holding one CBOR data item, which must be a map with text
keys and a text ``"t"`` (type tag) entry. Only the plain CBOR data model is
accepted: integers, floats, text, byte strings, arrays, maps, booleans and
null. Semantic tags (dates, bignums beyond 64 bits are fine as ints, sets,
shared references...) are refused, so a peer cannot make us build arbitrary
objects.

:class:`FrameDecoder` is fed bytes as they arrive (``feed``) and hands out
whole frames (``next_frame`` / ``frames``). It checks the length prefix
*before* buffering the body, so a 4 GiB prefix is refused at once with
:class:`~headwater.RemoteProtocolError` and nothing of that size is ever
allocated; a frame that is merely incomplete waits for more bytes. Any fault
in a frame body (invalid CBOR, trailing bytes, not a map, a missing or
ill-typed ``"t"``, a forbidden type) is a ``RemoteProtocolError`` as well,
and the decoder stays failed: a byte stream that went wrong once cannot be
resynchronised.

:func:`encode_frame` is the other direction; it raises
:class:`~headwater.LocalProtocolError` for a frame it cannot send.

Byte strings travel as CBOR byte strings (major type 2) and are written and
read in one piece by cbor2: a producer's batch bytes or a fetch's records go
through without re-encoding. Encoding copies the payload once (into the frame
buffer); decoding copies it once (out of the frame buffer into its own
``bytes`` object), which is the least a length-prefixed stream allows without
handing out views into a buffer that is about to be reused.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator, Mapping
from typing import Any, Final

import cbor2

from headwater._errors import InvalidArgument, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "MAX_NESTING",
    "FrameDecoder",
    "check_plain",
    "decode_frame_body",
    "encode_frame",
]

HEADER_SIZE: Final = 4
"""Bytes in the length prefix (big-endian unsigned 32-bit)."""

DEFAULT_MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
"""Default largest frame body accepted or sent, in bytes (16 MiB)."""

MAX_NESTING: Final = 32
"""Deepest nesting of arrays/maps accepted in a frame."""

_HEADER = struct.Struct(">I")
_LIMIT: Final = 2**32 - 1
_PLAIN_SCALARS = (str, bytes, int, float, bool, type(None))


def _check_max(max_frame_size: int) -> int:
    if (
        not isinstance(max_frame_size, int)
        or isinstance(max_frame_size, bool)
        or not 16 <= max_frame_size <= _LIMIT
    ):
        raise InvalidArgument(
            f"max_frame_size={max_frame_size!r} is invalid; give an int between 16 and {_LIMIT}"
        )
    return max_frame_size


def check_plain(value: object, depth: int = 0) -> str | None:
    """Return ``None`` if ``value`` uses only the plain CBOR data model, else a
    short description of the first offending part.

    Plain means: ``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None``,
    ``list`` and ``dict`` with ``str`` keys (ints within -2**64 .. 2**64-1), nested at most
    :data:`MAX_NESTING` deep.
    """
    if isinstance(value, _PLAIN_SCALARS):
        if type(value) is int and not -(2**64) <= value < 2**64:
            return f"integer {value} does not fit in CBOR's 64-bit integers"
        return None
    if depth >= MAX_NESTING:
        return f"nesting deeper than {MAX_NESTING}"
    if isinstance(value, list):
        for item in value:
            problem = check_plain(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"map key {key!r} is not text"
            problem = check_plain(item, depth + 1)
            if problem is not None:
                return f"{key}: {problem}"
        return None
    return f"value of type {type(value).__name__} is not plain CBOR"


def _refuse_tag(tag: cbor2.CBORTag, immutable: bool) -> object:
    raise RemoteProtocolError(f"frame contains CBOR semantic tag {tag.tag}; tags are not allowed")


def decode_frame_body(body: bytes) -> dict[str, Any]:
    """Decode one frame body (the bytes after the length prefix).

    Returns the map. Raises :class:`~headwater.RemoteProtocolError` if the
    bytes are not exactly one plain CBOR map with a text ``"t"`` entry.
    """
    fp = io.BytesIO(body)
    try:
        value = cbor2.CBORDecoder(fp, tag_hook=_refuse_tag, str_errors="strict").decode()
    except RemoteProtocolError:
        raise
    except (Exception, RecursionError) as exc:  # cbor2 raises many types on garbage
        raise RemoteProtocolError(
            f"frame of {len(body)} bytes is not valid CBOR ({type(exc).__name__}: {exc})"
        ) from None
    if fp.tell() != len(body):
        raise RemoteProtocolError(
            f"frame has {len(body) - fp.tell()} trailing bytes after its CBOR item"
        )
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"frame is a CBOR {type(value).__name__}, not a map")
    problem = check_plain(value)
    if problem is not None:
        raise RemoteProtocolError(f"frame is not plain CBOR: {problem}")
    tag = value.get("t")
    if not isinstance(tag, str):
        if "t" not in value:
            raise RemoteProtocolError("frame has no type tag: required field 't' is missing")
        raise RemoteProtocolError(f"frame field 't' must be text, got {type(tag).__name__} {tag!r}")
    return value


def encode_frame(
    frame: Mapping[str, Any], *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> bytes:
    """Encode ``frame`` (a map with a text ``"t"``) as length prefix + CBOR.

    ``bytes`` values are written as CBOR byte strings without conversion.
    Raises :class:`~headwater.LocalProtocolError` (nothing is sent) if the
    frame has no text ``"t"``, holds a value outside the plain CBOR data model,
    or encodes to more than ``max_frame_size`` bytes.
    """
    if not isinstance(frame, Mapping):
        raise LocalProtocolError(f"a frame must be a mapping, got {type(frame).__name__}")
    if not isinstance(frame.get("t"), str):
        raise LocalProtocolError(f"frame needs a text 't' (type tag); got {frame.get('t')!r}")
    as_dict = frame if isinstance(frame, dict) else dict(frame)
    problem = check_plain(as_dict)
    if problem is not None:
        raise LocalProtocolError(f"cannot encode frame {frame['t']!r}: {problem}")
    try:
        body = cbor2.dumps(as_dict)
    except Exception as exc:  # pragma: no cover - check_plain catches what cbor2 refuses
        raise LocalProtocolError(f"cannot encode frame {frame['t']!r}: {exc}") from None
    if len(body) > max_frame_size:
        raise LocalProtocolError(
            f"frame {frame['t']!r} is {len(body)} bytes, over max_frame_size={max_frame_size}; "
            "send less per frame or raise the limit on both sides"
        )
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Turn a byte stream into frames (sans-IO).

    ``feed(data)`` appends received bytes; ``next_frame()`` returns the next
    whole frame or ``None`` if more bytes are needed; ``frames()`` yields every
    whole frame available now. A protocol violation raises
    :class:`~headwater.RemoteProtocolError`, and every later call raises it
    again (the stream cannot be resynchronised).
    """

    __slots__ = ("_buffer", "_error", "_max", "_pos")

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._max = _check_max(max_frame_size)
        self._buffer = bytearray()
        self._pos = 0
        self._error: RemoteProtocolError | None = None

    @property
    def max_frame_size(self) -> int:
        """The largest frame body accepted, in bytes."""
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._pos

    @property
    def at_boundary(self) -> bool:
        """True if no partial frame is buffered (an EOF here is clean)."""
        return self.buffered == 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Never blocks, never parses."""
        if self._error is not None:
            raise self._error
        if self._pos and self._pos == len(self._buffer):
            self._buffer.clear()
            self._pos = 0
        self._buffer += data

    def _fail(self, message: str) -> RemoteProtocolError:
        self._error = RemoteProtocolError(message)
        self._buffer = bytearray()
        self._pos = 0
        return self._error

    def next_frame(self) -> dict[str, Any] | None:
        """Return the next whole frame, or ``None`` if it has not all arrived."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        start = self._pos
        available = len(buffer) - start
        if available < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(buffer, start)
        if length > self._max:
            raise self._fail(
                f"peer announced a frame of {length} bytes, over max_frame_size={self._max}"
            ) from None
        end = start + HEADER_SIZE + length
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:  # one copy, not a slice then a copy
            body = bytes(view[start + HEADER_SIZE : end])
        if end == len(buffer):
            buffer.clear()
            self._pos = 0
        else:
            self._pos = end
            if end > 65536 and end * 2 > len(buffer):
                del buffer[:end]
                self._pos = 0
        try:
            return decode_frame_body(body)
        except RemoteProtocolError as exc:
            raise self._fail(str(exc)) from None

    def frames(self) -> Iterator[dict[str, Any]]:
        """Yield every whole frame available now."""
        while (frame := self.next_frame()) is not None:
            yield frame
