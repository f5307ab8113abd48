"""Serdes of a processing job: how keys and values become bytes and back.

A serde is given as a name (``"bytes"``, ``"str"``, ``"int"``, ``"json"``,
``"cbor"``, ``"auto"``), a type (``bytes``, ``str``, ``int``), an object with
``serialize``/``deserialize`` (a client :class:`~headwater.client.Serializer`),
or, for writing only, a function ``value -> bytes``.

* ``"auto"`` (the default for sinks) writes bytes as they are, ``str`` as
  UTF-8, ``int``/``float`` as decimal text (so a count is ``b"3"``), a
  :class:`Windowed` key as its inner key, anything else as compact JSON; it
  reads bytes as they are.
* Internal topics use their own encodings: a repartition record's key is
  bytes, UTF-8 or CBOR with its kind in the ``hw.key`` header (so a str key
  lands in the partition a producer of that str would pick, and joins with
  tables keyed by it line up), its value CBOR; changelog keys and values are
  CBOR (keys of windowed stores are ``[key, start, end]``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import cbor2

from headwater._errors import ConfigError, PipelineError, SerializationError
from headwater.client._serializers import Serializer, get_serializer

__all__ = ["SerdeSpec", "Windowed", "auto_bytes", "decode_key", "encode_key", "serde"]

SerdeSpec = str | type | Serializer | Callable[[Any], bytes] | None


@attrs.frozen(order=True)
class Windowed:
    """The key of a windowed result: the grouping ``key`` and the window
    ``[start, end)`` (``end`` included for sliding and session windows), in
    seconds of event time."""

    key: Any
    start: float
    end: float


class IntSerializer:
    """Integers as decimal ASCII text (``b"42"``)."""

    name = "int"

    def serialize(self, value: Any) -> bytes:
        """``int`` -> decimal text; anything else raises SerializationError."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise SerializationError(
                f"the int serde writes ints, not {type(value).__qualname__}: map the value first"
            )
        return str(value).encode()

    def deserialize(self, data: bytes) -> Any:
        """Decimal text -> ``int``; anything else raises SerializationError."""
        try:
            return int(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise SerializationError(
                f"the int serde cannot decode {data[:16]!r}: not decimal text"
            ) from None


def auto_bytes(value: Any) -> bytes:
    """The ``"auto"`` encoding of ``value`` (see the module docs)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Windowed):
        return auto_bytes(value.key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value).encode()
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"cannot write a {type(value).__qualname__} with the auto serde ({exc}): "
            "give to(..., value=...) a serde or a function returning bytes"
        ) from None


class AutoSerializer:
    """Writes bytes, str, numbers and JSON-able values (see the module docs);
    reads bytes as they are."""

    name = "auto"

    def serialize(self, value: Any) -> bytes:
        """The ``"auto"`` encoding of ``value``."""
        return auto_bytes(value)

    def deserialize(self, data: bytes) -> Any:
        """``data`` itself."""
        return data


@attrs.frozen
class _FunctionSerializer:
    fn: Callable[[Any], bytes]
    name: str = "function"

    def serialize(self, value: Any) -> bytes:
        out = self.fn(value)
        if not isinstance(out, bytes | bytearray):
            raise SerializationError(
                f"the serde function {getattr(self.fn, '__qualname__', self.fn)!r} "
                f"returned {type(out).__qualname__}, not bytes"
            )
        return bytes(out)

    def deserialize(self, data: bytes) -> Any:
        raise SerializationError("a serde given as a function can only write")


_TYPES: dict[type, str] = {bytes: "bytes", str: "str", int: "int"}


def serde(spec: SerdeSpec, *, default: str, what: str) -> Serializer:
    """Resolve a serde ``spec`` (see the module docs); ``None`` means
    ``default``. A bad spec raises :class:`~headwater.PipelineError` naming
    ``what`` it was given for."""
    if spec is None:
        spec = default
    if isinstance(spec, type):
        name = _TYPES.get(spec)
        if name is None:
            raise PipelineError(
                f"{what}: no serde for type {spec.__qualname__}; use bytes, str, int, "
                '"json", "cbor" or a Serializer object'
            )
        spec = name
    if spec == "int":
        return IntSerializer()
    if spec == "auto":
        return AutoSerializer()
    if isinstance(spec, str):
        try:
            return get_serializer(spec)
        except ConfigError:
            raise PipelineError(
                f"{what}: unknown serde {spec!r}; use bytes, str, int, json, cbor or auto"
            ) from None
    if isinstance(spec, Serializer):
        return spec
    if callable(spec):
        return _FunctionSerializer(spec)
    raise PipelineError(f"{what}: a serde is a name, a type, a Serializer or a function")


# ------------------------------------------------------ internal encodings

KEY_HEADER = "hw.key"


def encode_key(key: Any) -> tuple[bytes, bytes]:
    """A repartition key as (bytes, kind): ``b"b"`` bytes, ``b"s"`` UTF-8
    text, ``b"c"`` CBOR."""
    if isinstance(key, bytes):
        return key, b"b"
    if isinstance(key, str):
        return key.encode(), b"s"
    return cbor2.dumps(key), b"c"


def decode_key(data: bytes, kind: bytes | None) -> Any:
    """The inverse of :func:`encode_key` (no kind: the bytes themselves)."""
    if kind == b"s":
        return data.decode()
    if kind == b"c":
        return hashable(cbor2.loads(data))
    return data


def partition_bytes(key: Any) -> bytes:
    """The bytes the default partitioner hashes for ``key`` (as the
    repartition topic and a producer of the same key would)."""
    return encode_key(key)[0]


def hashable(value: Any) -> Any:
    """CBOR arrays come back as lists; keys must be hashable: make them tuples."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    return value


def dumps(value: Any) -> bytes:
    """CBOR encoding of an internal value; a value CBOR cannot carry raises
    :class:`~headwater.SerializationError` saying what to do."""
    try:
        return cbor2.dumps(value)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise SerializationError(
            f"cannot store a {type(value).__qualname__} in a changelog or repartition "
            f"topic ({exc}): keep keys, values and aggregates to CBOR types "
            "(None, bool, int, float, str, bytes, lists, dicts, tuples)"
        ) from None


def loads(data: bytes) -> Any:
    """CBOR decoding of an internal value."""
    return cbor2.loads(data)
