"""Value serializers: how a producer turns values into bytes and back.

A serializer has a ``name`` and two methods, ``serialize(value) -> bytes`` and
``deserialize(data) -> value``. ``None`` is never passed to them: a ``None``
value is a tombstone and is stored as a null value, not serialized (see
:func:`serialize_value`). Four are built in: ``"cbor"`` (the default),
``"json"``, ``"str"`` (UTF-8) and ``"bytes"`` (as given). A value a serializer
cannot encode raises :class:`~headwater.SerializationError` naming its type,
before anything is written.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

import attrs
import cbor2

from headwater._errors import ConfigError, SerializationError

__all__ = [
    "BytesSerializer",
    "CborSerializer",
    "JsonSerializer",
    "Serializer",
    "StrSerializer",
    "deserialize_value",
    "get_serializer",
    "serialize_value",
]


@runtime_checkable
class Serializer(Protocol):
    """What a producer/consumer needs to turn values into bytes and back."""

    @property
    def name(self) -> str:
        """A short name for messages (``"cbor"``, ``"json"``, ...)."""
        ...

    def serialize(self, value: Any) -> bytes:
        """Return the bytes of ``value`` (never ``None``) or raise SerializationError."""
        ...

    def deserialize(self, data: bytes) -> Any:
        """Return the value encoded in ``data`` or raise SerializationError."""
        ...


def _cannot(name: str, value: Any, detail: object) -> SerializationError:
    return SerializationError(
        f"the {name} serializer cannot encode a value of type {type(value).__qualname__}"
        f" ({detail}); convert it first or choose another serializer"
    )


def _cannot_decode(name: str, data: bytes, detail: object) -> SerializationError:
    return SerializationError(f"the {name} serializer cannot decode {data[:16]!r}...: {detail}")


@attrs.frozen
class BytesSerializer:
    """Values are bytes as given (bytes, bytearray or memoryview)."""

    name: str = "bytes"

    def serialize(self, value: Any) -> bytes:
        """Return ``value`` as bytes; anything but a bytes-like object is refused."""
        if type(value) is bytes:
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise _cannot(self.name, value, "expected bytes, bytearray or memoryview")

    def deserialize(self, data: bytes) -> Any:
        """Return ``data`` unchanged."""
        return data


@attrs.frozen
class StrSerializer:
    """Values are str, stored as UTF-8."""

    name: str = "str"

    def serialize(self, value: Any) -> bytes:
        """Encode a str as UTF-8; anything else is refused."""
        if not isinstance(value, str):
            raise _cannot(self.name, value, "expected str")
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates
            raise _cannot(self.name, value, exc) from None

    def deserialize(self, data: bytes) -> Any:
        """Decode UTF-8 bytes into a str."""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerializationError(
                f"the str serializer cannot decode {data[:16]!r}: {exc}"
            ) from None


@attrs.frozen
class CborSerializer:
    """Values are any CBOR-encodable object (the default): ints, floats, str,
    bytes, lists, dicts, datetimes, ... encoded with cbor2."""

    name: str = "cbor"

    def serialize(self, value: Any) -> bytes:
        """Encode ``value`` as CBOR; an unencodable type is refused."""
        try:
            return cbor2.dumps(value)
        except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
            raise _cannot(self.name, value, exc) from None

    def deserialize(self, data: bytes) -> Any:
        """Decode CBOR bytes."""
        try:
            return cbor2.loads(data)
        except (cbor2.CBORDecodeError, TypeError, ValueError) as exc:
            raise SerializationError(
                f"the cbor serializer cannot decode {data[:16]!r}: {exc}"
            ) from None


@attrs.frozen
class JsonSerializer:
    """Values are JSON-encodable objects, stored as compact UTF-8 JSON (no NaN)."""

    name: str = "json"

    def serialize(self, value: Any) -> bytes:
        """Encode ``value`` as JSON; an unencodable type (or NaN) is refused."""
        try:
            return json.dumps(
                value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            raise _cannot(self.name, value, exc) from None

    def deserialize(self, data: bytes) -> Any:
        """Decode JSON bytes."""
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SerializationError(
                f"the json serializer cannot decode {data[:16]!r}: {exc}"
            ) from None


_BUILTIN: dict[str, Serializer] = {
    s.name: s for s in (CborSerializer(), JsonSerializer(), StrSerializer(), BytesSerializer())
}


def get_serializer(spec: str | Serializer | None = None) -> Serializer:
    """Resolve ``spec``: ``None`` means CBOR; a name picks a built-in
    (``"cbor"``, ``"json"``, ``"str"``, ``"bytes"``); an object with
    ``serialize``/``deserialize`` is used as is. Anything else raises
    :class:`~headwater.ConfigError`."""

    if spec is None:
        return _BUILTIN["cbor"]
    if isinstance(spec, str):
        try:
            return _BUILTIN[spec]
        except KeyError:
            raise ConfigError(
                f"unknown serializer {spec!r}: use one of {sorted(_BUILTIN)} or a Serializer object"
            ) from None
    if isinstance(spec, Serializer):
        return spec
    raise ConfigError(
        f"serializer must be a name or a Serializer object, not {type(spec).__qualname__}"
    )


def serialize_value(serializer: Serializer, value: Any) -> bytes | None:
    """Serialize ``value``, except that ``None`` (a tombstone) stays ``None``."""
    if value is None:
        return None
    return serializer.serialize(value)


def deserialize_value(serializer: Serializer, data: bytes | None) -> Any:
    """Deserialize ``data``, except that ``None`` (a tombstone) stays ``None``."""
    if data is None:
        return None
    return serializer.deserialize(data)
