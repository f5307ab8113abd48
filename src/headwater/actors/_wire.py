"""Remote actor operations on the wire, sans-IO: addresses, bodies and replies.

Theory of operation
-------------------
The actors listener speaks the ordinary Headwater envelope (handshake, auth,
``req``/``res``/``error`` with correlation ids; see ``docs/protocol.md``) with
the operations of :data:`ACTOR_OPS`. This module holds the pure parts: parsing
``headwater://host:port/path`` addresses, checking request bodies (a wrong
field is a :class:`~headwater.RemoteProtocolError` naming it) and encoding
``ask`` replies. A reply is either a message of the user's registry, sent as
``{"msg": {"t": tag, ...}}``, or a plain CBOR value (null, bool, int, float,
text, bytes, and arrays / text-keyed maps of those), sent as
``{"value": v}``; anything else is refused on the side that tries to send it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from headwater._errors import InvalidArgument, LocalProtocolError, RemoteProtocolError
from headwater.transport._messages import MessageRegistry

__all__ = [
    "ACTOR_OPS",
    "ActorAddress",
    "decode_reply",
    "encode_reply",
    "field",
    "normalize_path",
    "parse_actor_url",
    "parse_listener_url",
    "timeout_field",
]

ACTOR_OPS: Final = frozenset(
    {
        "lookup",
        "tell",
        "ask",
        "monitor",
        "demonitor",
        "ping",
        "inspect",
        "get_tree",
        "kill",
        "link",
        "exit",
    }
)
"""The operations of the actors listener."""

DEFAULT_ACTORS_PORT: Final = 7701
"""The port used when an actor URL names none."""


def normalize_path(path: str) -> str:
    """``"a/b/"`` -> ``"/a/b"``; the root is ``"/"``."""
    stripped = path.strip("/")
    return "/" + stripped if stripped else "/"


@attrs.frozen
class ActorAddress:
    """A parsed ``headwater://host:port/path/to/actor`` address."""

    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        """The address written back as a URL."""
        return f"headwater://{self.host}:{self.port}{self.path}"


ACTORS_SCHEMES: Final = ("headwater", "headwater+actors")
"""URL schemes naming an actors listener; ``headwater+actors://`` says so
unambiguously (the CLI needs it to tell an application from a broker)."""


def parse_listener_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an actors listener URL,
    ``headwater+actors://host:port`` (``headwater://`` is accepted too; the
    handshake then checks the kind). Raises
    :class:`~headwater.InvalidArgument` for another scheme or a malformed URL."""
    if not isinstance(url, str):
        raise InvalidArgument(f"actors URL {url!r} is not a str")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"actors URL {url!r} is malformed: {exc}") from None
    if parts.scheme not in ACTORS_SCHEMES or not parts.hostname:
        raise InvalidArgument(
            f"actors URL {url!r} must look like headwater+actors://127.0.0.1:7701"
        )
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise InvalidArgument(
            f"actors URL {url!r} must be just headwater+actors://host:port; give the "
            "actor path as its own argument"
        )
    return parts.hostname, DEFAULT_ACTORS_PORT if port is None else port


def parse_actor_url(url: str) -> ActorAddress:
    """Parse ``headwater://host:port/path/to/actor`` (port defaults to 7701;
    ``headwater+actors://`` is the same).

    Raises :class:`~headwater.InvalidArgument` naming the URL for another
    scheme, a missing host, a bad port or a missing actor path.
    """
    if not isinstance(url, str):
        raise InvalidArgument(f"actor URL {url!r} is not a str")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"actor URL {url!r} is malformed: {exc}") from None
    if parts.scheme not in ACTORS_SCHEMES:
        raise InvalidArgument(
            f"actor URL {url!r} must start with headwater:// (like headwater://127.0.0.1:7701/a)"
        )
    if not parts.hostname:
        raise InvalidArgument(f"actor URL {url!r} names no host")
    if parts.query or parts.fragment:
        raise InvalidArgument(f"actor URL {url!r} must not have a query or fragment")
    path = normalize_path(parts.path)
    if path == "/":
        raise InvalidArgument(f"actor URL {url!r} names no actor path (like /workers/echo)")
    return ActorAddress(parts.hostname, DEFAULT_ACTORS_PORT if port is None else port, path)


def field(body: Mapping[str, Any], name: str, kind: type, op: str) -> Any:
    """Return ``body[name]``, checked to be of type ``kind``.

    Raises :class:`~headwater.RemoteProtocolError` naming the operation and
    field when it is missing or of another type.
    """
    if name not in body:
        raise RemoteProtocolError(f"{op}: required field {name!r} is missing")
    value = body[name]
    if type(value) is not kind:
        raise RemoteProtocolError(
            f"{op}: field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def timeout_field(body: Mapping[str, Any], op: str) -> float | None:
    """The optional ``timeout`` field: seconds >= 0, or null/absent for none."""
    value = body.get("timeout")
    if value is None:
        return None
    if type(value) not in (int, float) or not value >= 0 or math.isinf(value):
        raise RemoteProtocolError(f"{op}: field 'timeout' must be seconds >= 0 or null")
    return float(value)


def _is_plain(value: object, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if value is None or type(value) in (bool, int, float, str, bytes):
        return True
    if isinstance(value, list | tuple) and type(value) in (list, tuple):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return all(type(k) is str and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def encode_reply(registry: MessageRegistry, reply: object) -> dict[str, Any]:
    """Encode an ``ask`` reply as a response body (see the module docstring).

    Raises :class:`~headwater.LocalProtocolError` for a reply that is neither
    a registered message nor a plain CBOR value.
    """
    if attrs.has(type(reply)):
        return {"msg": registry.encode(reply)}
    if _is_plain(reply):
        return {"value": reply}
    raise LocalProtocolError(
        f"cannot send a reply of type {type(reply).__qualname__}: register it in "
        f"{registry!r} or reply with a plain value (None, bool, int, float, str, bytes, "
        "lists and str-keyed dicts of those)"
    )


def decode_reply(registry: MessageRegistry, body: Mapping[str, Any]) -> Any:
    """Decode an ``ask`` response body back into the reply value."""
    if "msg" in body:
        msg = body["msg"]
        if not isinstance(msg, dict):
            raise RemoteProtocolError("ask: field 'msg' must be a map")
        return registry.decode(msg)
    if "value" in body:
        value = body["value"]
        return list(value) if type(value) is tuple else value
    raise RemoteProtocolError("ask: the response has neither 'msg' nor 'value'")
