"""The HTTP front end's routes: metrics, health, the JSON API and the console.

Theory of operation
-------------------
:class:`HttpApp` maps a :class:`~headwater.web._http.Request` to a
:class:`~headwater.web._http.Response`. Reads go through
:func:`~headwater.web._snapshot.gather` (one consistent view of the broker)
or small broker calls; nothing here writes.

Authentication (when the broker has a token): ``/healthz`` and ``/readyz``
are open (probes carry no secrets, DECISIONS #28). Everything else wants the
token, as ``Authorization: Bearer <token>`` (scrapers, scripts) or as the
session cookie the console gets by posting the token to ``/login`` once: the
cookie is ``HttpOnly`` and ``SameSite=Strict`` and holds a random session
id, never the token. Anything else gets 401. Unknown paths get 404.
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
import re
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from headwater._errors import HeadwaterError
from headwater.broker._broker import Broker
from headwater.web._http import Request, Response
from headwater.web._metrics import CONTENT_TYPE, render_metrics
from headwater.web._render import render_bytes
from headwater.web._snapshot import gather, readiness

__all__ = ["COOKIE", "HttpApp"]

COOKIE = "headwater_session"
"""The console's session cookie (HttpOnly, SameSite=Strict)."""

MAX_SESSIONS = 1024
MAX_BROWSE = 200

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "login.html": "text/html; charset=utf-8",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

Route = Callable[["HttpApp", Request, "re.Match[str]"], Awaitable[Response]]


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, default=str, separators=(",", ":")).encode()
    return Response(status, body, "application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _static(name: str) -> bytes:
    return (importlib.resources.files("headwater.web") / "static" / name).read_bytes()


class HttpApp:
    """The routes of the HTTP front end for one broker (see the module docstring).

    ``token`` is the broker's auth token (``None``: no authentication);
    ``stream_interval`` is the seconds between live updates of the console.
    """

    def __init__(
        self, broker: Broker, *, token: str | None = None, stream_interval: float = 1.0
    ) -> None:
        self.broker = broker
        self.token = token
        self.stream_interval = stream_interval
        self._sessions: set[str] = set()
        self._files = {name: _static(name) for name in _STATIC}

    # ----------------------------------------------------------- auth

    def _authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            return True
        session = request.cookie(COOKIE)
        return session is not None and session in self._sessions

    async def _login(self, request: Request, _m: re.Match[str]) -> Response:
        if request.method != "POST":
            return self._file("login.html", csp=True)
        form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        if self.token is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            return Response(
                401,
                self._files["login.html"].replace(b"<!--error-->", b"Wrong token; try again."),
                _STATIC["login.html"],
                (("Content-Security-Policy", _CSP),),
            )
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop()
        session = secrets.token_urlsafe(32)
        self._sessions.add(session)
        cookie = f"{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/"
        return Response(303, b"", headers=(("Location", "/"), ("Set-Cookie", cookie)))

    # ----------------------------------------------------------- routes

    def _file(self, name: str, *, csp: bool = False) -> Response:
        headers = (("Content-Security-Policy", _CSP),) if csp else ()
        return Response(200, self._files[name], _STATIC[name], headers)

    async def _index(self, request: Request, _m: re.Match[str]) -> Response:
        if not self._authorized(request):
            return Response(303, b"", headers=(("Location", "/login"),))
        return self._file("index.html", csp=True)

    async def _asset(self, request: Request, m: re.Match[str]) -> Response:
        name = m["name"]
        if name not in _STATIC or name.endswith(".html"):
            return _error(404, f"no such file {name!r}")
        return self._file(name)

    async def _healthz(self, request: Request, _m: re.Match[str]) -> Response:
        return Response(200, b"ok\n")

    async def _readyz(self, request: Request, _m: re.Match[str]) -> Response:
        state = readiness(await gather(self.broker))
        return _json(state, 200 if state["ready"] else 503)

    async def _metrics(self, request: Request, _m: re.Match[str]) -> Response:
        return Response(200, render_metrics(await gather(self.broker)), CONTENT_TYPE)

    async def _overview(self, request: Request, _m: re.Match[str]) -> Response:
        return _json((await gather(self.broker)).as_json())

    async def _topics(self, request: Request, _m: re.Match[str]) -> Response:
        return _json((await gather(self.broker)).topics)

    async def _topic(self, request: Request, m: re.Match[str]) -> Response:
        for topic in (await gather(self.broker)).topics:
            if topic["name"] == m["topic"]:
                return _json(topic)
        return _error(404, f"topic {m['topic']!r} does not exist")

    async def _groups(self, request: Request, _m: re.Match[str]) -> Response:
        return _json((await gather(self.broker)).groups)

    async def _group(self, request: Request, m: re.Match[str]) -> Response:
        for group in (await gather(self.broker)).groups:
            if group["group"] == m["group"]:
                return _json(group)
        return _error(404, f"consumer group {m['group']!r} does not exist")

    async def _connections(self, request: Request, _m: re.Match[str]) -> Response:
        return _json([c.as_dict() for c in self.broker.service.stats.connections.values()])

    async def _tree(self, request: Request, _m: re.Match[str]) -> Response:
        return _json(self.broker.tree().as_dict())

    async def _events(self, request: Request, m: re.Match[str]) -> Response:
        try:
            offset = int(request.query.get("offset", "-1"))
            limit = min(max(int(request.query.get("limit", "50")), 1), MAX_BROWSE)
        except ValueError:
            return _error(400, "offset and limit must be integers")
        topic, partition = m["topic"], int(m["partition"])
        service = self.broker.service
        if topic not in service.topic_configs():
            return _error(404, f"topic {topic!r} does not exist")
        if partition >= service.topic_configs()[topic].partitions:
            return _error(404, f"topic {topic!r} has no partition {partition}")
        try:
            if offset < 0:  # the latest `limit` events
                _, earliest, end = await service.read_events(topic, partition, 1 << 62, 0)
                offset = max(earliest, end - limit)
            events, earliest, end = await service.read_events(topic, partition, offset, limit)
        except HeadwaterError as exc:
            return _error(503, str(exc))
        return _json(
            {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "earliest_offset": earliest,
                "end_offset": end,
                "events": [
                    {
                        "offset": e.offset,
                        "timestamp": e.timestamp,
                        "key": render_bytes(e.key.encode() if isinstance(e.key, str) else e.key),
                        "value": render_bytes(e.value),
                        "headers": [
                            [str(k), render_bytes(v.encode() if isinstance(v, str) else v)]
                            for k, v in (e.headers or ())
                        ],
                    }
                    for e in events
                ],
            }
        )

    async def _stream(self, request: Request, _m: re.Match[str]) -> Response:
        return Response(
            200,
            self._updates(),
            "text/event-stream",
            (("X-Accel-Buffering", "no"),),
        )

    async def _updates(self) -> AsyncIterator[bytes]:
        """Server-sent events: the overview now, then every ``stream_interval``."""
        yield b"retry: 1000\n\n"
        while True:
            view = (await gather(self.broker)).as_json()
            data = json.dumps(view, default=str, separators=(",", ":"))
            yield f"event: overview\ndata: {data}\n\n".encode()
            await trio.sleep(self.stream_interval)

    _routes: tuple[tuple[str, re.Pattern[str], Route, bool], ...] = (
        ("GET", re.compile(r"/"), _index, False),
        ("GET", re.compile(r"/static/(?P<name>[\w.-]+)"), _asset, False),
        ("GET", re.compile(r"/healthz"), _healthz, False),
        ("GET", re.compile(r"/readyz"), _readyz, False),
        ("*", re.compile(r"/login"), _login, False),
        ("GET", re.compile(r"/metrics"), _metrics, True),
        ("GET", re.compile(r"/api/overview"), _overview, True),
        ("GET", re.compile(r"/api/stream"), _stream, True),
        ("GET", re.compile(r"/api/topics"), _topics, True),
        ("GET", re.compile(r"/api/topics/(?P<topic>[^/]+)"), _topic, True),
        (
            "GET",
            re.compile(r"/api/topics/(?P<topic>[^/]+)/partitions/(?P<partition>\d{1,6})/events"),
            _events,
            True,
        ),
        ("GET", re.compile(r"/api/groups"), _groups, True),
        ("GET", re.compile(r"/api/groups/(?P<group>[^/]+)"), _group, True),
        ("GET", re.compile(r"/api/connections"), _connections, True),
        ("GET", re.compile(r"/api/tree"), _tree, True),
    )

    async def __call__(self, request: Request) -> Response:
        """Answer one request."""
        for method, pattern, route, private in self._routes:
            m = pattern.fullmatch(request.path)
            if m is None:
                continue
            if method != "*" and request.method not in (method, "HEAD"):
                return Response(405, b"method not allowed\n", headers=(("Allow", method),))
            if private and not self._authorized(request):
                return _error(
                    401,
                    "this endpoint needs the broker's token: send 'Authorization: Bearer "
                    "<token>' or log in to the console at /login",
                )
            return await route(self, request, m)
        return _error(404, f"no such path {request.path!r}; see / for the console")
