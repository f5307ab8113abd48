"""A small HTTP/1.1 server on Trio streams, driven by h11 (sans-IO).

Theory of operation
-------------------
:func:`serve_http_connection` runs one connection: it feeds received bytes to
an :class:`h11.Connection`, turns each complete request into a
:class:`Request`, awaits the application's :class:`Response` and writes it
back, keeping the connection alive between requests. A response whose body
is an async iterator (server-sent events) is streamed chunk by chunk until
the client goes away or the iterator ends. Request bodies are capped at
``MAX_BODY`` bytes (413 beyond); a client that sends nothing for
``idle_timeout`` seconds is disconnected. A malformed request gets a 400 and
the connection is closed. Nothing here knows about the broker.
"""

from __future__ import annotations

import http
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from headwater._logging import get_logger

if TYPE_CHECKING:
    import h11

__all__ = ["MAX_BODY", "Request", "Response", "serve_http_connection"]

MAX_BODY = 64 * 1024
"""The largest request body accepted (the console only posts a token)."""

_log = get_logger("headwater.web")


@attrs.frozen
class Request:
    """One HTTP request: method, path (decoded), query and lower-case headers."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    peer: str = "?"

    def cookie(self, name: str) -> str | None:
        """The value of cookie ``name``, if the request carries it."""
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return urllib.parse.unquote(value)
        return None


@attrs.frozen
class Response:
    """One HTTP response. ``body`` is bytes, or an async iterator of chunks
    (streamed, e.g. server-sent events)."""

    status: int = 200
    body: bytes | AsyncIterator[bytes] = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]

_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _parse(event: h11.Request, body: bytes, peer: str) -> Request:
    target = event.target.decode("ascii", "replace")
    split = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
    return Request(
        event.method.decode("ascii", "replace").upper(),
        urllib.parse.unquote(split.path) or "/",
        query,
        headers,
        body,
        peer,
    )


async def serve_http_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    peer: str = "?",
    idle_timeout: float = 60.0,
) -> None:
    """Serve HTTP/1.1 requests on ``stream`` with ``handler`` until the client
    closes, falls idle or breaks the protocol; then close the stream."""
    import h11  # imported on first use: `import headwater` stays quick for the CLI

    conn = h11.Connection(h11.SERVER)

    async def send(event: Any) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)

    async def next_event() -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data: bytes | bytearray = b""
            with trio.move_on_after(idle_timeout):
                data = await stream.receive_some(16384)
            conn.receive_data(bytes(data))  # b"" (idle or closed) ends the connection

    async def respond(response: Response, head_only: bool) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Server", "headwater"),
            *_SECURITY_HEADERS,
            *response.headers,
        ]
        reason = _reason(response.status)
        if isinstance(response.body, bytes):
            headers.append(("Content-Length", str(len(response.body))))
            await send(h11.Response(status_code=response.status, headers=headers, reason=reason))
            if not head_only:
                await send(h11.Data(data=response.body))
            await send(h11.EndOfMessage())
            return
        chunks = response.body
        await send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        try:
            async for chunk in chunks:
                await send(h11.Data(data=chunk))
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        await send(h11.EndOfMessage())

    try:
        while True:
            try:
                event = await next_event()
                if isinstance(event, h11.ConnectionClosed | h11.Data | h11.EndOfMessage):
                    return
                assert isinstance(event, h11.Request)
                body = bytearray()
                while True:
                    part = await next_event()
                    if isinstance(part, h11.Data):
                        body += part.data
                        if len(body) > MAX_BODY:
                            await respond(Response(413, b"request body too large\n"), False)
                            return
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    await respond(Response(status, f"bad request: {exc}\n".encode()), False)
                return
            request = _parse(event, bytes(body), peer)
            try:
                response = await handler(request)
            except Exception as exc:  # a bug: answer 500, log it, keep serving
                _log.error("http_request_failed", path=request.path, exc_info=exc)
                response = Response(500, b"internal error; see the broker's log\n")
            _log.debug(
                "http_request",
                method=request.method,
                path=request.path,
                status=response.status,
                peer=peer,
            )
            await respond(response, request.method == "HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.LocalProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)
