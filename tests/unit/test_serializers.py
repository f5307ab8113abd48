"""Serializers: round trips, tombstones, and SerializationError naming the type."""

from __future__ import annotations

import datetime
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import ConfigError, SerializationError
from headwater.client import (
    BytesSerializer,
    CborSerializer,
    JsonSerializer,
    StrSerializer,
    deserialize_value,
    get_serializer,
    serialize_value,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)


@given(json_values)
def test_cbor_and_json_round_trip(value):
    """CBOR and JSON return what they were given (JSON-shaped data)."""
    for serializer in (CborSerializer(), JsonSerializer()):
        assert value == serializer.deserialize(serializer.serialize(value))


@given(st.text())
def test_str_round_trip(value):
    """str values survive UTF-8 encoding (surrogates are refused)."""
    try:
        data = StrSerializer().serialize(value)
    except SerializationError:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in value)
        return
    assert value == StrSerializer().deserialize(data)


def test_bytes_serializer_accepts_bytes_like_only():
    """bytes, bytearray and memoryview become bytes; a str is refused by type."""
    s = BytesSerializer()
    assert (
        b"ab"
        == s.serialize(b"ab")
        == s.serialize(bytearray(b"ab"))
        == s.serialize(memoryview(b"ab"))
    )
    with pytest.raises(SerializationError, match=r"bytes serializer.*type str"):
        s.serialize("ab")


def test_cbor_encodes_datetimes():
    """CBOR handles more than JSON: timezone-aware datetimes round-trip."""
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert when == CborSerializer().deserialize(CborSerializer().serialize(when))


class Opaque:
    """A type no serializer knows."""


@pytest.mark.parametrize("name", ["cbor", "json", "str", "bytes"])
def test_unencodable_value_names_its_type(name):
    """Each built-in refuses an unknown type with SerializationError naming it."""
    with pytest.raises(SerializationError, match=rf"the {name} serializer.*type Opaque") as info:
        get_serializer(name).serialize(Opaque())
    assert "serialization_error" == info.value.code


def test_json_refuses_nan_and_sets():
    """NaN and sets are not JSON."""
    with pytest.raises(SerializationError, match="float"):
        JsonSerializer().serialize(math.nan)
    with pytest.raises(SerializationError, match="type set"):
        JsonSerializer().serialize({1})


@pytest.mark.parametrize("name", ["cbor", "json", "str"])
def test_undecodable_bytes(name):
    """Bytes that are not the format raise SerializationError on decode."""
    with pytest.raises(SerializationError, match="cannot decode"):
        get_serializer(name).deserialize(b"\xff\xfe\xfd")


def test_tombstones_bypass_the_serializer():
    """None stays None both ways; b"" is a value."""
    cbor = get_serializer()
    assert serialize_value(cbor, None) is None
    assert deserialize_value(cbor, None) is None
    assert b"" == serialize_value(get_serializer("bytes"), b"")


def test_get_serializer():
    """None is CBOR; names resolve; objects pass; junk is a ConfigError."""
    assert "cbor" == get_serializer().name
    assert "json" == get_serializer("json").name
    custom = JsonSerializer(name="mine")
    assert custom is get_serializer(custom)
    with pytest.raises(ConfigError, match="'yaml'"):
        get_serializer("yaml")
    with pytest.raises(ConfigError, match="int"):
        get_serializer(3)  # type: ignore[arg-type]
