"""Typed wire messages: frozen attrs classes with a type tag, as CBOR maps.

Theory of operation
-------------------
A :class:`MessageRegistry` maps type tags (short text) to frozen attrs
classes. ``encode(msg)`` turns an instance into a plain map
``{"t": tag, field: value, ...}``; ``decode(map)`` checks the tag is known
and every field has its declared type, then builds the instance. A wrong
type raises :class:`~headwater.RemoteProtocolError` naming the class and
the field. Rules (the same in every protocol version):

* an unknown tag is an error (the set is closed);
* a missing field is an error unless the attrs field has a default;
* an unknown field is ignored (a newer peer may add optional fields);
* ``bytes`` fields are passed through untouched in both directions.

Field annotations may be ``int``, ``float``, ``str``, ``bytes``, ``bool``,
``None``, ``Any`` (any plain CBOR value), ``list[T]``, ``tuple[T, ...]``,
``dict[str, T]``, unions of these (``T | None``), and other registered
classes (nested as their own tagged maps). Anything else is refused when the
class is registered, not when the first message is sent.

:data:`ENVELOPE` holds the protocol's own frames (``hello``, ``hello_ok``,
``auth``, ``auth_ok``, ``req``, ``res``, ``error``, and from version 2
``push``); user registries (for
remote actor messages) are separate and are carried inside request bodies,
so a user tag can never collide with an envelope tag.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import attr
import attrs

from headwater._errors import (
    ActorFailed,
    HeadwaterError,
    InvalidArgument,
    LocalProtocolError,
    RemoteProtocolError,
    UnsupportedVersionError,
    error_class_for_code,
)

__all__ = [
    "ENVELOPE",
    "PROTOCOL_VERSIONS",
    "PUSH_VERSION",
    "Push",
    "Auth",
    "AuthOk",
    "ErrorFrame",
    "Hello",
    "HelloOk",
    "MessageRegistry",
    "Request",
    "Response",
    "error_from_frame",
    "error_to_frame",
]

# attrs gives every frozen class this very __setattr__; there is no public test.
_FROZEN_SETATTR: Final = getattr(getattr(attr, "_make", None), "_frozen_setattrs", None)

PROTOCOL_VERSIONS: Final = (1, 2)
"""Protocol versions this code speaks, oldest first (2 adds ``push``)."""

PUSH_VERSION: Final = 2
"""The first protocol version with server-pushed frames."""

T = TypeVar("T")
_Check = Callable[[object, str], object]  # returns the (possibly converted) value or raises


class _FieldError(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(where, message)
        self.where = where
        self.message = message


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _scalar(expected: type) -> _Check:
    def check(value: object, where: str) -> object:
        if type(value) is expected:
            return value
        if expected is float and type(value) is int:
            return float(value)
        raise _FieldError(where, f"expected {expected.__name__}, got {_type_name(value)}")

    return check


def _none(value: object, where: str) -> object:
    if value is None:
        return None
    raise _FieldError(where, f"expected null, got {_type_name(value)}")


def _any(value: object, where: str) -> object:
    return value


@attrs.define
class _Spec:
    cls: type
    tag: str
    fields: list[tuple[str, _Check, _Check, bool, object]]
    # (name, decode_check, encode_conv, required, default-or-factory)


class MessageRegistry:
    """A closed set of tagged, frozen attrs message classes and their codec.

    Register with the :meth:`message` decorator (or :meth:`register`); then
    :meth:`encode` instances to plain maps and :meth:`decode` maps back to
    instances with every field's type checked. ``version`` is an integer the
    owner bumps when the set changes incompatibly.
    """

    def __init__(self, name: str, *, version: int = 1) -> None:
        self.name = name
        self.version = version
        self._by_tag: dict[str, _Spec] = {}
        self._by_class: dict[type, _Spec] = {}

    def __repr__(self) -> str:
        return f"<MessageRegistry {self.name!r} v{self.version} tags={sorted(self._by_tag)}>"

    @property
    def tags(self) -> frozenset[str]:
        """The registered type tags."""
        return frozenset(self._by_tag)

    def tag_of(self, cls: type) -> str:
        """The tag ``cls`` was registered under."""
        try:
            return self._by_class[cls].tag
        except KeyError:
            raise InvalidArgument(f"{cls.__qualname__} is not registered in {self!r}") from None

    def class_for(self, tag: str) -> type:
        """The class registered under ``tag``."""
        try:
            return self._by_tag[tag].cls
        except KeyError:
            raise InvalidArgument(f"tag {tag!r} is not registered in {self!r}") from None

    def message(self, tag: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: register a frozen attrs class under ``tag``.

        ::

            @registry.message("greet")
            @attrs.frozen
            class Greet:
                name: str
        """

        def decorate(cls: type[T]) -> type[T]:
            self.register(cls, tag)
            return cls

        return decorate

    def register(self, cls: type, tag: str) -> None:
        """Register the frozen attrs class ``cls`` under ``tag``.

        Raises :class:`~headwater.InvalidArgument` for a class that is not a
        frozen attrs class, a duplicate tag or class, a field named ``t``, or
        a field annotation the codec cannot check.
        """
        if not isinstance(tag, str) or not tag:
            raise InvalidArgument(f"tag must be non-empty text, got {tag!r}")
        if not attrs.has(cls):
            raise InvalidArgument(f"{cls!r} is not an attrs class; decorate it with @attrs.frozen")
        if tag in self._by_tag:
            raise InvalidArgument(
                f"tag {tag!r} is already registered to {self._by_tag[tag].cls.__qualname__}"
            )
        if cls in self._by_class:
            raise InvalidArgument(
                f"{cls.__qualname__} is already registered as {self.tag_of(cls)!r}"
            )
        params = getattr(cls, "__attrs_attrs__", ())
        if getattr(cls, "__setattr__", None) is not _FROZEN_SETATTR:
            raise InvalidArgument(f"{cls.__qualname__} must be frozen (@attrs.frozen)")
        try:
            hints = typing.get_type_hints(cls)
        except Exception as exc:
            raise InvalidArgument(
                f"cannot resolve annotations of {cls.__qualname__}: {exc}"
            ) from None
        fields: list[tuple[str, _Check, _Check, bool, object]] = []
        for field in params:
            if field.name == "t":
                raise InvalidArgument(
                    f"{cls.__qualname__} has a field named 't', reserved for the tag"
                )
            if not field.init:
                continue
            annotation = hints.get(field.name, Any)
            check, conv = self._compile(annotation, f"{cls.__qualname__}.{field.name}")
            required = field.default is attrs.NOTHING
            fields.append((field.name, check, conv, required, field.default))
        spec = _Spec(cls, tag, fields)
        self._by_tag[tag] = spec
        self._by_class[cls] = spec

    # ---- type compilation -------------------------------------------------

    def _compile(self, annotation: object, where: str) -> tuple[_Check, _Check]:
        """Return (decode check, encode conversion) for an annotation."""
        if annotation is Any or annotation is object:
            return _any, _any
        if annotation is None or annotation is type(None):
            return _none, _none
        if annotation in (int, str, bytes, bool, float):
            assert isinstance(annotation, type)
            return _scalar(annotation), _identity_for(annotation)
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType):
            parts = [self._compile(a, where) for a in args]
            return _union([p[0] for p in parts]), _union_enc(args, [p[1] for p in parts], self)
        if origin is list and len(args) == 1:
            inner, inner_enc = self._compile(args[0], where)
            return _list(inner, list), _list_enc(inner_enc)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            inner, inner_enc = self._compile(args[0], where)
            return _list(inner, tuple), _list_enc(inner_enc)
        if origin is dict and len(args) == 2 and args[0] is str:
            inner, inner_enc = self._compile(args[1], where)
            return _dict(inner), _dict_enc(inner_enc)
        if isinstance(annotation, type) and attrs.has(annotation):
            registry = self

            def check_nested(value: object, at: str) -> object:
                if not isinstance(value, dict):
                    raise _FieldError(at, f"expected a map, got {_type_name(value)}")
                return registry._decode(value, at, expect=annotation)

            def enc_nested(value: object, at: str) -> object:
                return registry.encode(value)

            return check_nested, enc_nested
        raise InvalidArgument(
            f"{where}: annotation {annotation!r} is not supported on the wire; use int, float, "
            "str, bytes, bool, None, Any, list[T], tuple[T, ...], dict[str, T], unions, "
            "or a registered attrs class"
        )

    # ---- encode / decode --------------------------------------------------

    def encode(self, message: object) -> dict[str, Any]:
        """Encode a registered message instance as a plain map with ``"t"``.

        Raises :class:`~headwater.LocalProtocolError` if the class is not
        registered or a field value does not match its annotation.
        """
        spec = self._by_class.get(type(message))
        if spec is None:
            raise LocalProtocolError(
                f"cannot send {type(message).__qualname__}: not registered in {self!r}"
            )
        out: dict[str, Any] = {"t": spec.tag}
        try:
            for name, _check, conv, _req, _default in spec.fields:
                out[name] = conv(getattr(message, name), f"{spec.cls.__qualname__}.{name}")
        except _FieldError as exc:
            raise LocalProtocolError(f"cannot send {exc.where}: {exc.message}") from None
        return out

    def decode(self, data: Mapping[str, Any]) -> Any:
        """Decode a map (with ``"t"``) into an instance of its registered class.

        Raises :class:`~headwater.RemoteProtocolError` naming the field for an
        unknown tag, a missing required field or a wrongly typed value.
        """
        try:
            return self._decode(data, "", expect=None)
        except _FieldError as exc:
            raise RemoteProtocolError(f"bad message field {exc.where}: {exc.message}") from None

    def _decode(self, data: Mapping[str, Any], where: str, *, expect: object) -> Any:
        tag = data.get("t")
        if not isinstance(tag, str):
            raise _FieldError(
                f"{where or 'message'}.t", f"expected a text tag, got {_type_name(tag)}"
            )
        spec = self._by_tag.get(tag)
        if spec is None:
            raise _FieldError(where or "message", f"unknown message tag {tag!r} in {self.name}")
        if expect is not None and spec.cls is not expect:
            raise _FieldError(where, f"expected {expect!r} message, got tag {tag!r}")
        kwargs: dict[str, object] = {}
        for name, check, _conv, required, _default in spec.fields:
            at = f"{spec.cls.__qualname__}.{name}"
            if name in data:
                kwargs[name] = check(data[name], at)
            elif required:
                raise _FieldError(at, "required field is missing")
        try:
            return spec.cls(**kwargs)
        except HeadwaterError as exc:
            raise _FieldError(spec.cls.__qualname__, f"rejected by the class: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise _FieldError(spec.cls.__qualname__, f"rejected by the class: {exc}") from None


def _identity_for(expected: type) -> _Check:
    def conv(value: object, where: str) -> object:
        if type(value) is expected:
            return value
        if expected is bytes and isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        if expected is float and type(value) is int:
            return value
        raise _FieldError(where, f"expected {expected.__name__}, got {_type_name(value)}")

    return conv


def _union(checks: list[_Check]) -> _Check:
    def check(value: object, where: str) -> object:
        problems = []
        for c in checks:
            try:
                return c(value, where)
            except _FieldError as exc:
                problems.append(exc.message)
        raise _FieldError(where, " or ".join(problems))

    return check


def _union_enc(args: tuple[object, ...], convs: list[_Check], registry: MessageRegistry) -> _Check:
    def conv(value: object, where: str) -> object:
        problems = []
        for c in convs:
            try:
                return c(value, where)
            except (_FieldError, LocalProtocolError) as exc:
                problems.append(str(getattr(exc, "message", exc)))
        raise _FieldError(where, " or ".join(problems))

    return conv


def _list(inner: _Check, make: type) -> _Check:
    def check(value: object, where: str) -> object:
        if not isinstance(value, list):
            raise _FieldError(where, f"expected an array, got {_type_name(value)}")
        return make(inner(item, f"{where}[{i}]") for i, item in enumerate(value))

    return check


def _list_enc(inner: _Check) -> _Check:
    def conv(value: object, where: str) -> object:
        if not isinstance(value, (list, tuple)):
            raise _FieldError(where, f"expected a list or tuple, got {_type_name(value)}")
        return [inner(item, f"{where}[{i}]") for i, item in enumerate(value)]

    return conv


def _dict(inner: _Check) -> _Check:
    def check(value: object, where: str) -> object:
        if not isinstance(value, dict):
            raise _FieldError(where, f"expected a map, got {_type_name(value)}")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _FieldError(where, f"map key {key!r} is not text")
            out[key] = inner(item, f"{where}[{key!r}]")
        return out

    return check


def _dict_enc(inner: _Check) -> _Check:
    def conv(value: object, where: str) -> object:
        if not isinstance(value, Mapping):
            raise _FieldError(where, f"expected a mapping, got {_type_name(value)}")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _FieldError(where, f"map key {key!r} is not text")
            out[key] = inner(item, f"{where}[{key!r}]")
        return out

    return conv


# --------------------------------------------------------------------------
# The envelope: the protocol's own frames.

ENVELOPE: Final = MessageRegistry("envelope", version=PROTOCOL_VERSIONS[-1])
"""The registry of the protocol's own frames (versions 1 and 2)."""


@ENVELOPE.message("hello")
@attrs.frozen
class Hello:
    """Client -> server, first frame: the versions the client speaks, oldest
    first, an optional token, and a free-form client description."""

    versions: list[int]
    token: str | None = None
    client: str = ""


@ENVELOPE.message("hello_ok")
@attrs.frozen
class HelloOk:
    """Server -> client: the chosen version (highest common), the server's
    description, whether an :class:`Auth` frame must follow, and the most
    requests the server accepts in flight on this connection."""

    version: int
    server: str = ""
    auth_required: bool = False
    max_in_flight: int | None = None


@ENVELOPE.message("auth")
@attrs.frozen
class Auth:
    """Client -> server: the token, when :class:`HelloOk` said ``auth_required``."""

    token: str


@ENVELOPE.message("auth_ok")
@attrs.frozen
class AuthOk:
    """Server -> client: the token was accepted; requests may follow."""


@ENVELOPE.message("req")
@attrs.frozen
class Request:
    """Client -> server: operation ``op`` with its ``body``, under correlation
    id ``id`` (unique among this connection's requests in flight)."""

    id: int
    op: str
    body: dict[str, Any] = attrs.field(factory=dict)


@ENVELOPE.message("res")
@attrs.frozen
class Response:
    """Server -> client: the successful result ``body`` of request ``id``."""

    id: int
    body: dict[str, Any] = attrs.field(factory=dict)


@ENVELOPE.message("push")
@attrs.frozen
class Push:
    """Server -> client, protocol v2 only: a message the client did not ask
    for. ``kind`` says what it is (``"group"``: a group notice, whose ``body``
    is a tagged ``membership`` map); ``sub`` names the subscription it belongs
    to for kinds that take credit (pushed fetches, next), ``None`` otherwise.
    See docs/protocol.md for the credit rules."""

    kind: str
    body: dict[str, Any] = attrs.field(factory=dict)
    sub: int | None = None


@ENVELOPE.message("error")
@attrs.frozen
class ErrorFrame:
    """Server -> client: request ``id`` failed (or, with ``id=None``, the
    connection failed and is being closed). ``code`` is the stable code of a
    :class:`~headwater.HeadwaterError` class; ``details`` carries extra data
    (``error_type``/``error_message`` for ``actor_failed``, ``supported`` for
    ``unsupported_version``)."""

    id: int | None
    code: str
    message: str
    details: dict[str, Any] = attrs.field(factory=dict)


def error_to_frame(request_id: int | None, error: BaseException) -> ErrorFrame:
    """Describe ``error`` as an :class:`ErrorFrame` for request ``request_id``.

    A :class:`~headwater.HeadwaterError` keeps its class (by ``code``) and
    message; :class:`~headwater.ActorFailed` also keeps ``error_type`` and
    ``error_message``; :class:`~headwater.UnsupportedVersionError` keeps
    ``supported``. Any other exception becomes ``actor_failed`` carrying its
    type name and message.
    """
    if isinstance(error, HeadwaterError):
        details: dict[str, Any] = {}
        if isinstance(error, ActorFailed):
            details = {"error_type": error.error_type, "error_message": error.error_message}
        elif isinstance(error, UnsupportedVersionError):
            details = {"supported": list(error.supported)}
        return ErrorFrame(request_id, type(error).code, error.message, details)
    return ErrorFrame(
        request_id,
        ActorFailed.code,
        f"{type(error).__name__}: {error}",
        {"error_type": type(error).__name__, "error_message": str(error)},
    )


def error_from_frame(frame: ErrorFrame) -> HeadwaterError:
    """Rebuild the :class:`~headwater.HeadwaterError` an :class:`ErrorFrame`
    describes (a code from a newer peer becomes a plain ``HeadwaterError``
    whose ``code`` attribute is still the one received)."""
    cls = error_class_for_code(frame.code)
    error: HeadwaterError
    if cls is ActorFailed:
        error = ActorFailed(
            frame.message,
            error_type=str(frame.details.get("error_type", "")),
            error_message=str(frame.details.get("error_message", "")),
        )
    elif cls is UnsupportedVersionError:
        supported = frame.details.get("supported", [])
        ok = [v for v in supported if type(v) is int] if isinstance(supported, list) else []
        error = UnsupportedVersionError(frame.message, supported=tuple(ok))
    else:
        try:
            error = cls(frame.message)
        except TypeError:  # a subclass with a stricter __init__
            error = HeadwaterError(frame.message)
        if cls is HeadwaterError and frame.code != HeadwaterError.code:
            error.code = frame.code  # type: ignore[misc]
    return error
