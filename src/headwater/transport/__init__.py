"""headwater.transport: the wire protocol's foundation.

A sans-IO frame codec (:class:`FrameDecoder`, :func:`encode_frame`), typed
messages (:class:`MessageRegistry` and the envelope frames), sans-IO
connection state machines (:class:`ClientConnection`,
:class:`ServerConnection`, with deadlines as ``next_deadline(now)``), one
Trio driver per side (:class:`ClientDriver`, :class:`ServerDriver`), the
accept loop the front ends share (:func:`accept_connections`,
:class:`ConnectionLimit`) and thin Trio glue (:class:`FramedStream`).
See ``docs/protocol.md``.
"""

from __future__ import annotations

from ._client import ClientDriver as ClientDriver
from ._client import Waiter as Waiter
from ._connection import DEFAULT_MAX_IN_FLIGHT as DEFAULT_MAX_IN_FLIGHT
from ._connection import AuthRequired as AuthRequired
from ._connection import ClientConnection as ClientConnection
from ._connection import ConnectionClosed as ConnectionClosed
from ._connection import ErrorReceived as ErrorReceived
from ._connection import Event as Event
from ._connection import HandshakeComplete as HandshakeComplete
from ._connection import PushReceived as PushReceived
from ._connection import RequestExpired as RequestExpired
from ._connection import RequestReceived as RequestReceived
from ._connection import ResponseReceived as ResponseReceived
from ._connection import ServerConnection as ServerConnection
from ._frames import DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE
from ._frames import FrameDecoder as FrameDecoder
from ._frames import encode_frame as encode_frame
from ._messages import ENVELOPE as ENVELOPE
from ._messages import PROTOCOL_VERSIONS as PROTOCOL_VERSIONS
from ._messages import PUSH_VERSION as PUSH_VERSION
from ._messages import Auth as Auth
from ._messages import AuthOk as AuthOk
from ._messages import ErrorFrame as ErrorFrame
from ._messages import Hello as Hello
from ._messages import HelloOk as HelloOk
from ._messages import MessageRegistry as MessageRegistry
from ._messages import Push as Push
from ._messages import Request as Request
from ._messages import Response as Response
from ._messages import error_from_frame as error_from_frame
from ._messages import error_to_frame as error_to_frame
from ._operations import OP_NAMES as OP_NAMES
from ._operations import OPERATIONS as OPERATIONS
from ._operations import decode_request as decode_request
from ._operations import decode_response as decode_response
from ._operations import encode_request as encode_request
from ._operations import encode_response as encode_response
from ._operations import op_name as op_name
from ._server import DEFERRED as DEFERRED
from ._server import INLINE as INLINE
from ._server import TASK as TASK
from ._server import ConnectionLimit as ConnectionLimit
from ._server import ServerDriver as ServerDriver
from ._server import accept_connections as accept_connections
from ._server import peer_name as peer_name
from ._stream import FramedStream as FramedStream

__all__ = [
    "OP_NAMES",
    "OPERATIONS",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "op_name",
    # framing
    "DEFAULT_MAX_FRAME_SIZE",
    "FrameDecoder",
    "encode_frame",
    # messages
    "MessageRegistry",
    "ENVELOPE",
    "PROTOCOL_VERSIONS",
    "PUSH_VERSION",
    "Push",
    "PushReceived",
    "Hello",
    "HelloOk",
    "Auth",
    "AuthOk",
    "Request",
    "Response",
    "ErrorFrame",
    "error_to_frame",
    "error_from_frame",
    # connections
    "DEFAULT_MAX_IN_FLIGHT",
    "ClientConnection",
    "ServerConnection",
    "Event",
    "HandshakeComplete",
    "AuthRequired",
    "RequestExpired",
    "RequestReceived",
    "ResponseReceived",
    "ErrorReceived",
    "ConnectionClosed",
    # drivers
    "ClientDriver",
    "Waiter",
    "ServerDriver",
    "TASK",
    "INLINE",
    "DEFERRED",
    "ConnectionLimit",
    "accept_connections",
    "peer_name",
    # trio glue
    "FramedStream",
]
