"""The client protocol's operations on the wire (sans-IO).

Theory of operation
-------------------
Every request message of :mod:`headwater._protocol` is one *operation*: its
``op`` name is the snake_case class name (``CreateTopic`` -> ``create_topic``)
and its ``req`` body is the message's fields. The answer is a ``res`` whose
body is the response message as a tagged map (``{"t": "produce_result",
...}``), or an ``error`` frame. :data:`OPERATIONS` is the registry of both
sets (requests tagged by their op name, responses by theirs), so every field
is type-checked on the way in, in both directions.

``bytes`` fields (a produced batch, fetched records) pass through as CBOR
byte strings, untouched: the server never re-encodes events.

A request body that does not fit its operation (a missing field, a wrong
type) is that request's failure (:class:`~headwater.InvalidArgument`), not
the connection's: other requests in flight carry on.
"""

from __future__ import annotations

import re
from typing import Any, Final

from headwater import _protocol as p
from headwater._errors import InvalidArgument, RemoteProtocolError

from ._messages import MessageRegistry

__all__ = [
    "OPERATIONS",
    "OP_NAMES",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "op_name",
]


def op_name(cls: type) -> str:
    """The wire name of a protocol message class (``CreateTopic`` -> ``create_topic``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


OPERATIONS: Final = MessageRegistry("client-protocol", version=p.PROTOCOL_VERSION)
"""Request and response messages of the client protocol, by wire name."""

for _cls in (*p.REQUEST_TYPES, *p.RESPONSE_TYPES):
    OPERATIONS.register(_cls, op_name(_cls))

OP_NAMES: Final = frozenset(op_name(c) for c in p.REQUEST_TYPES)
"""Every operation a server answers."""

_REQUEST_CLASSES: Final = {op_name(c): c for c in p.REQUEST_TYPES}
_RESPONSE_CLASSES: Final = frozenset(p.RESPONSE_TYPES)


def encode_request(request: Any) -> tuple[str, dict[str, Any]]:
    """``(op, body)`` for a request message (the body without its tag)."""
    body = OPERATIONS.encode(request)
    return body.pop("t"), body


def decode_request(op: str, body: dict[str, Any]) -> Any:
    """The request message for ``op`` and ``body``.

    Raises :class:`~headwater.InvalidArgument` naming the operation and the
    field for an unknown operation or a body that does not fit it.
    """
    if op not in _REQUEST_CLASSES:
        raise InvalidArgument(f"unknown operation {op!r}; known: {', '.join(sorted(OP_NAMES))}")
    try:
        return OPERATIONS.decode({**body, "t": op})
    except RemoteProtocolError as exc:
        raise InvalidArgument(f"operation {op!r}: {exc.message}") from None


def encode_response(response: Any) -> dict[str, Any]:
    """The ``res`` body for a response message (a tagged map)."""
    return OPERATIONS.encode(response)


def decode_response(body: dict[str, Any]) -> Any:
    """The response message in a ``res`` body.

    Raises :class:`~headwater.RemoteProtocolError` if the server sent
    something that is not a known response (the server is at fault).
    """
    response = OPERATIONS.decode(body)
    if type(response) not in _RESPONSE_CLASSES:
        raise RemoteProtocolError(
            f"server answered with {type(response).__name__}, which is not a response"
        )
    return response
