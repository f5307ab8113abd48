"""The Kafka wire protocol, sans-IO: frames, request headers, message bodies.

Theory of operation
-------------------
Every Kafka request is a frame: a 4-byte big-endian size, then a request
header (``api_key`` int16, ``api_version`` int16, ``correlation_id`` int32,
``client_id`` nullable string, and for flexible versions a tagged-field
section), then the body. Every response is a frame with the correlation id
(plus an empty tagged-field section for flexible versions other than
ApiVersions) and the body.

:class:`KafkaConnection` is the h11-style core: :meth:`~KafkaConnection.receive_data`
buffers bytes (refusing a frame above ``max_frame_size`` from its size
alone, before buffering it), :meth:`~KafkaConnection.next_request` returns the
next decoded :class:`KafkaRequest` or ``None``, and
:meth:`~KafkaConnection.encode_response` turns a response body into frame
bytes. Message bodies are the dataclasses of ``kio`` (generated from Kafka's
own JSON schemas, with a compiled reader), so every field of every version is
exactly the spec's; :data:`SUPPORTED` is the set of API versions Headwater
advertises.

Violations -- a frame too large, an unknown API key or version, a body that
does not decode -- raise :class:`KafkaProtocolViolation`; the connection
actor closes the connection (what a Kafka broker does), except for an
ApiVersions request of a version it does not know, which is answered with
``UNSUPPORTED_VERSION`` and the supported ranges so the client can retry
lower (KIP-511).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import struct
from collections.abc import Mapping
from functools import cache
from typing import Any, Final

import attrs
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.serial._introspect import EntityField, EntityTupleField, classify_field
from kio.serial.errors import SerialError

from headwater._errors import RemoteProtocolError

__all__ = [
    "API_NAMES",
    "DEFAULT_MAX_FRAME_SIZE",
    "SUPPORTED",
    "KafkaConnection",
    "KafkaProtocolViolation",
    "KafkaRequest",
    "build",
]

DEFAULT_MAX_FRAME_SIZE: Final = 100 * 1024 * 1024
"""The largest request frame accepted (Kafka's ``socket.request.max.bytes``)."""

API_VERSIONS_KEY: Final = 18

#: api key -> (name, lowest version, highest version) that Headwater answers.
SUPPORTED: Final[Mapping[int, tuple[str, int, int]]] = {
    0: ("Produce", 3, 8),
    1: ("Fetch", 4, 11),
    2: ("ListOffsets", 1, 5),
    3: ("Metadata", 0, 8),
    8: ("OffsetCommit", 2, 7),
    9: ("OffsetFetch", 1, 7),
    10: ("FindCoordinator", 0, 2),
    11: ("JoinGroup", 0, 5),
    12: ("Heartbeat", 0, 3),
    13: ("LeaveGroup", 0, 3),
    14: ("SyncGroup", 0, 3),
    15: ("DescribeGroups", 0, 4),
    16: ("ListGroups", 0, 2),
    17: ("SaslHandshake", 0, 1),
    18: ("ApiVersions", 0, 3),
    19: ("CreateTopics", 2, 4),
    20: ("DeleteTopics", 1, 3),
    22: ("InitProducerId", 0, 4),
    24: ("AddPartitionsToTxn", 0, 3),
    25: ("AddOffsetsToTxn", 0, 3),
    26: ("EndTxn", 0, 3),
    28: ("TxnOffsetCommit", 0, 3),
    32: ("DescribeConfigs", 1, 3),
    36: ("SaslAuthenticate", 0, 1),
    37: ("CreatePartitions", 0, 1),
}

API_NAMES: Final = {key: name for key, (name, _lo, _hi) in SUPPORTED.items()}
"""Names of the supported API keys (for logs)."""

_HEADER: Final = struct.Struct(">hhi")
_SIZE: Final = struct.Struct(">i")
_MIN_HEADER: Final = _HEADER.size + 2


class KafkaProtocolViolation(RemoteProtocolError):
    """A Kafka client sent something the protocol does not allow (a frame too
    large, an unknown API key or version, a body that does not decode). The
    connection is closed; the client should reconnect and negotiate with
    ApiVersions first."""

    code = "kafka_protocol_violation"


@attrs.frozen
class KafkaRequest:
    """One decoded request: its header fields and its ``kio`` body."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any
    size: int


@cache
def _reader(api_key: int, version: int) -> Any:
    return entity_reader(load_request_schema(api_key, version))


@cache
def _writer(cls: type) -> Any:
    return entity_writer(cls)


def _read_unsigned_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise KafkaProtocolViolation("a request header's tagged fields run past its frame")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 28:
            raise KafkaProtocolViolation("a request header varint is too long")


class KafkaConnection:
    """One Kafka connection's framing and codec (see the module docstring)."""

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the socket."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as requests."""
        return len(self._buffer)

    def next_request(self) -> KafkaRequest | None:
        """The next whole request, or ``None`` until more bytes arrive.

        Raises :class:`KafkaProtocolViolation` for a frame the connection
        must be closed over; an unknown ApiVersions version is returned (with
        ``body=None``) so it can be answered."""
        buf = self._buffer
        if len(buf) < 4:
            return None
        (size,) = _SIZE.unpack_from(buf, 0)
        if size < _MIN_HEADER or size > self.max_frame_size:
            raise KafkaProtocolViolation(
                f"a request frame of {size} bytes is outside 10..{self.max_frame_size}; "
                "is this a Kafka client? (check the port and TLS settings)"
            )
        if len(buf) < 4 + size:
            return None
        frame = bytes(buf[4 : 4 + size])
        del buf[: 4 + size]
        return self._decode(frame)

    def _decode(self, frame: bytes) -> KafkaRequest:
        api_key, version, correlation_id = _HEADER.unpack_from(frame, 0)
        pos = _HEADER.size
        (id_len,) = struct.unpack_from(">h", frame, pos)
        pos += 2
        client_id: str | None = None
        if id_len >= 0:
            if pos + id_len > len(frame):
                raise KafkaProtocolViolation("a request header's client id runs past its frame")
            client_id = frame[pos : pos + id_len].decode("utf-8", "replace")
            pos += id_len
        supported = SUPPORTED.get(api_key)
        if supported is None:
            raise KafkaProtocolViolation(
                f"unknown or unsupported API key {api_key}; supported: "
                + ", ".join(f"{k} {n}" for k, (n, _l, _h) in sorted(SUPPORTED.items()))
            )
        name, low, high = supported
        if not low <= version <= high:
            if api_key == API_VERSIONS_KEY:
                return KafkaRequest(api_key, version, correlation_id, client_id, None, len(frame))
            raise KafkaProtocolViolation(
                f"{name} v{version} is not supported (Headwater answers v{low}..v{high}); "
                "the client should pick a version from ApiVersions"
            )
        schema = load_request_schema(api_key, version)
        if schema.__flexible__:
            count, pos = _read_unsigned_varint(frame, pos)
            for _ in range(count):
                _tag, pos = _read_unsigned_varint(frame, pos)
                length, pos = _read_unsigned_varint(frame, pos)
                pos += length
            if pos > len(frame):
                raise KafkaProtocolViolation("a request header's tagged fields run past its frame")
        try:
            body, used = _reader(api_key, version)(frame, pos)
        except (SerialError, ValueError, UnicodeDecodeError, OverflowError, IndexError) as exc:
            raise KafkaProtocolViolation(
                f"cannot decode a {name} v{version} request: {type(exc).__name__}: {exc}"
            ) from None
        if pos + used != len(frame):
            raise KafkaProtocolViolation(
                f"a {name} v{version} request has {len(frame) - pos - used} bytes of trailing data"
            )
        return KafkaRequest(api_key, version, correlation_id, client_id, body, len(frame))

    @staticmethod
    def encode_response(request: KafkaRequest, body: Any) -> bytes:
        """The frame answering ``request`` with ``body`` (a ``kio`` response)."""
        out = io.BytesIO()
        out.write(b"\0\0\0\0")
        out.write(struct.pack(">i", request.correlation_id))
        if type(body).__flexible__ and request.api_key != API_VERSIONS_KEY:
            out.write(b"\0")  # response header v1: no tagged fields
        writer: Any = _writer(type(body))  # type: ignore[arg-type]
        writer(out, body)
        data = out.getbuffer()
        struct.pack_into(">i", data, 0, len(data) - 4)
        return bytes(data)


# --------------------------------------------------------------------------
# building responses across versions


def _zero(field: dataclasses.Field[Any]) -> Any:
    t = field.type if isinstance(field.type, type) else None
    text = str(field.type)
    if "None" in text:
        return None
    if t is not None and issubclass(t, datetime.timedelta):
        return t.parse(datetime.timedelta(0))  # type: ignore[attr-defined]
    if t is ErrorCode or "ErrorCode" in text:
        return ErrorCode.none
    if text.startswith("tuple"):
        return ()
    if t is not None and issubclass(t, bool):
        return False
    if t is not None and issubclass(t, str):
        return ""
    if t is not None and issubclass(t, bytes):
        return b""
    return 0


@cache
def _plan(cls: type) -> tuple[tuple[str, dataclasses.Field[Any], Any], ...]:
    plan = []
    for field in dataclasses.fields(cls):
        kind = classify_field(field)
        nested = kind.type_ if isinstance(kind, EntityField | EntityTupleField) else None
        plan.append((field.name, field, (nested, isinstance(kind, EntityTupleField))))
    return tuple(plan)


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """Construct the ``kio`` entity ``cls`` from ``values`` (a dict, nested
    dicts and lists of dicts for nested entities), keeping only the fields
    this version has and filling the rest with their defaults or zeros. So
    one handler serves every version of an API."""
    kwargs: dict[str, Any] = {}
    for name, field, (nested, many) in _plan(cls):
        if name in values:
            value = values[name]
            if nested is not None and value is not None:
                if many:
                    value = tuple(build(nested, v) for v in value)
                elif isinstance(value, Mapping):
                    value = build(nested, value)
            elif isinstance(value, list):
                value = tuple(value)
            t = field.type if isinstance(field.type, type) else None
            if (
                t is not None
                and issubclass(t, datetime.timedelta)
                and not isinstance(value, datetime.timedelta)
            ):
                value = t.parse(datetime.timedelta(milliseconds=value))  # type: ignore[attr-defined]
            kwargs[name] = value
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            kwargs[name] = _zero(field)
    return cls(**kwargs)


def response_class(api_key: int, version: int) -> type:
    """The ``kio`` response class of an API version."""
    return load_response_schema(api_key, version)
