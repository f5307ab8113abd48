"""Typed messages: the registry, field validation and the error frame mapping."""

from __future__ import annotations

import inspect
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater import (
    ActorFailed,
    HeadwaterError,
    InvalidArgument,
    LocalProtocolError,
    RemoteProtocolError,
    UnsupportedVersionError,
    _errors,
)
from headwater.transport import (
    ENVELOPE,
    ErrorFrame,
    FrameDecoder,
    Hello,
    MessageRegistry,
    Request,
    Response,
    encode_frame,
    error_from_frame,
    error_to_frame,
)

user = MessageRegistry("test-user")


@user.message("point")
@attrs.frozen
class Point:
    x: int
    y: float


@user.message("shape")
@attrs.frozen
class Shape:
    name: str
    points: list[Point]
    tags: tuple[str, ...] = ()
    meta: dict[str, int] = attrs.field(factory=dict)
    blob: bytes | None = None
    extra: Any = None
    flag: bool = False


def wire(registry: MessageRegistry, message: object) -> object:
    """Encode, frame, unframe, decode."""
    decoder = FrameDecoder()
    decoder.feed(encode_frame(registry.encode(message)))
    frame = decoder.next_frame()
    assert frame is not None
    return registry.decode(frame)


shapes = st.builds(
    Shape,
    name=st.text(max_size=10),
    points=st.lists(
        st.builds(Point, st.integers(-(2**63), 2**63), st.floats(allow_nan=False)), max_size=4
    ),
    tags=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    meta=st.dictionaries(st.text(max_size=5), st.integers(-5, 5), max_size=3),
    blob=st.none() | st.binary(max_size=64),
    extra=st.none() | st.integers().filter(lambda v: abs(v) < 2**63) | st.text(max_size=5),
    flag=st.booleans(),
)


@given(shapes)
def test_user_messages_round_trip(shape: Shape) -> None:
    """Any user message survives encode -> frame -> decode unchanged."""
    assert shape == wire(user, shape)


@given(
    st.builds(
        Hello,
        st.lists(st.integers(1, 99), min_size=1, max_size=3),
        st.none() | st.text(max_size=9),
        st.text(max_size=9),
    )
    | st.builds(
        Request,
        st.integers(0, 2**63),
        st.text(max_size=9),
        st.dictionaries(st.text(max_size=5), st.binary(max_size=9), max_size=3),
    )
    | st.builds(
        Response,
        st.integers(0, 2**63),
        st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=3),
    )
    | st.builds(ErrorFrame, st.none() | st.integers(0, 9), st.text(max_size=9), st.text(max_size=9))
)
def test_envelope_frames_round_trip(message: object) -> None:
    """Every envelope frame survives the wire unchanged."""
    assert message == wire(ENVELOPE, message)


def test_bytes_field_is_not_copied_on_encode() -> None:
    """The encoded map holds the very bytes object (no copy before cbor2 writes it)."""
    payload = bytes(1 << 16)
    assert user.encode(Shape("s", [], blob=payload))["blob"] is payload


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"t": "point", "x": "1", "y": 1.0}, "Point.x"),
        ({"t": "point", "x": True, "y": 1.0}, "Point.x"),
        ({"t": "point", "x": 1, "y": "no"}, "Point.y"),
        ({"t": "point", "x": 1}, "Point.y"),
        ({"t": "shape", "name": "s", "points": [{"t": "point", "x": 1, "y": None}]}, "Point.y"),
        ({"t": "shape", "name": "s", "points": [{"t": "shape"}]}, "points"),
        ({"t": "shape", "name": "s", "points": {}}, "Shape.points"),
        ({"t": "shape", "name": "s", "points": [], "tags": [1]}, "Shape.tags[0]"),
        ({"t": "shape", "name": "s", "points": [], "meta": {"a": "b"}}, "Shape.meta['a']"),
        ({"t": "shape", "name": "s", "points": [], "blob": "text"}, "Shape.blob"),
        ({"t": "circle"}, "circle"),
        ({"x": 1}, "message.t"),
    ],
)
def test_wrong_fields_name_the_field(data: dict[str, Any], field: str) -> None:
    """A wrongly typed, missing or unknown-tag message raises RemoteProtocolError naming it."""
    with pytest.raises(RemoteProtocolError) as info:
        user.decode(data)
    assert field in str(info.value)


def test_int_is_accepted_for_float_and_unknown_fields_are_ignored() -> None:
    """Ints widen to floats; fields a newer peer added are ignored; defaults fill in."""
    assert Point(1, 2.0) == user.decode({"t": "point", "x": 1, "y": 2, "z": "new"})
    assert Shape("s", []) == user.decode({"t": "shape", "name": "s", "points": []})


def test_registration_errors_are_invalid_argument() -> None:
    """Bad registrations fail at registration time with InvalidArgument."""
    reg = MessageRegistry("r")

    @attrs.define
    class Mutable:
        x: int

    @attrs.frozen
    class Odd:
        x: set[int]

    class Plain:
        pass

    with pytest.raises(InvalidArgument, match="frozen"):
        reg.register(Mutable, "m")
    with pytest.raises(InvalidArgument, match="not supported"):
        reg.register(Odd, "o")
    with pytest.raises(InvalidArgument, match="attrs"):
        reg.register(Plain, "p")
    reg.register(Point, "pt")
    with pytest.raises(InvalidArgument, match="already registered"):
        reg.register(Point, "pt2")
    with pytest.raises(InvalidArgument, match="already registered"):
        reg.register(Shape, "pt")


def test_encoding_an_unregistered_or_ill_typed_message_is_local() -> None:
    """Sending what the registry cannot encode is our fault: LocalProtocolError."""
    with pytest.raises(LocalProtocolError, match="not registered"):
        user.encode(Hello([1]))
    with pytest.raises(LocalProtocolError, match=r"Point\.x"):
        user.encode(Point("one", 1.0))  # type: ignore[arg-type]


ERROR_CLASSES = [
    getattr(_errors, n) for n in _errors.__all__ if inspect.isclass(getattr(_errors, n))
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_crosses_the_wire_as_itself(cls: type[HeadwaterError]) -> None:
    """Each HeadwaterError maps to its code and back to the same class and message."""
    frame = error_to_frame(7, cls("it went wrong"))
    back = wire(ENVELOPE, frame)
    assert isinstance(back, ErrorFrame)
    error = error_from_frame(back)
    assert (cls, "it went wrong", 7, cls.code) == (type(error), str(error), back.id, back.code)


def test_actor_failed_and_foreign_exceptions_keep_their_details() -> None:
    """ActorFailed keeps error_type/error_message; a foreign exception becomes ActorFailed."""
    original = ActorFailed("boom", error_type="ZeroDivisionError", error_message="division by zero")
    back = error_from_frame(error_to_frame(1, original))
    assert isinstance(back, ActorFailed)
    assert ("ZeroDivisionError", "division by zero") == (back.error_type, back.error_message)
    foreign = error_from_frame(error_to_frame(2, KeyError("k")))
    assert isinstance(foreign, ActorFailed)
    assert ("KeyError", "'k'") == (foreign.error_type, foreign.error_message)


def test_unsupported_version_keeps_the_supported_list() -> None:
    """UnsupportedVersionError's supported versions survive the wire."""
    back = error_from_frame(error_to_frame(None, UnsupportedVersionError("no", supported=(1, 2))))
    assert isinstance(back, UnsupportedVersionError)
    assert (1, 2) == back.supported


def test_unknown_code_from_a_newer_peer_is_a_headwater_error_with_that_code() -> None:
    """A code we do not know arrives as HeadwaterError, keeping the code."""
    error = error_from_frame(ErrorFrame(3, "from_the_future", "new"))
    assert (HeadwaterError, "from_the_future", "new") == (type(error), error.code, str(error))
