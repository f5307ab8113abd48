"""The HTTP front end over in-memory streams (h11 on both sides, MockClock):
routing, 404/401/405/400, the token as a bearer header or a console session
cookie, health without a token, server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import trio
import trio.testing

from headwater._protocol import CreateTopic
from headwater.broker import Broker, open_broker
from headwater.journal import SimulatedFileSystem
from headwater.web import COOKIE, HttpApp, serve_http_connection

DATA = "/data"
TOKEN = "s3cret-token"


class Client:
    """One keep-alive HTTP/1.1 connection to the app over a memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def _next(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            return event

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("Host", "test"), *(headers or [])]
        if body:
            all_headers.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=all_headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        response = await self._next()
        assert isinstance(response, h11.Response)
        got = b""
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                got += event.data
            else:
                assert isinstance(event, h11.EndOfMessage)
                break
        hdrs = {k.decode().lower(): v.decode() for k, v in response.headers}
        return response.status_code, hdrs, got


@asynccontextmanager
async def http(broker: Broker, token: str | None = None) -> AsyncIterator[Client]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    app = HttpApp(broker, token=token, stream_interval=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_http_connection, server_stream, app)
        yield Client(client_stream)
        nursery.cancel_scope.cancel()


async def test_unknown_paths_get_404_and_known_ones_answer(autojump_clock: trio.abc.Clock) -> None:
    """404 names the path; the console, its assets, the API and metrics answer
    on one keep-alive connection; a POST to a GET route is 405."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, http(broker) as c:
        status, _, body = await c.request("GET", "/no/such/thing")
        assert (404, {"error": "no such path '/no/such/thing'; see / for the console"}) == (
            status,
            json.loads(body),
        )
        assert 404 == (await c.request("GET", "/static/nope.js"))[0]
        assert 404 == (await c.request("GET", "/api/topics/ghost"))[0]
        assert 404 == (await c.request("GET", "/api/topics/ghost/partitions/0/events"))[0]
        status, headers, body = await c.request("GET", "/")
        assert 200 == status
        assert b"<title>Headwater console</title>" in body
        assert "script-src 'self'" in headers["content-security-policy"]
        assert 200 == (await c.request("GET", "/static/console.js"))[0]
        assert (200, b"ok\n") == (await c.request("GET", "/healthz"))[::2]
        assert 405 == (await c.request("POST", "/metrics"))[0]
        status, headers, body = await c.request("GET", "/metrics")
        assert 200 == status
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert b"headwater_partitions 0.0" in body
        status, _, body = await c.request("GET", "/api/tree")
        assert "/" == json.loads(body)["path"]


async def test_a_bad_token_gets_401_and_health_needs_none(autojump_clock: trio.abc.Clock) -> None:
    """With a token: health endpoints answer without it; every other endpoint
    wants the bearer token or a session cookie from /login, else 401."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, http(broker, TOKEN) as c:
        assert 200 == (await c.request("GET", "/healthz"))[0]
        assert 200 == (await c.request("GET", "/readyz"))[0]
        for path in ("/metrics", "/api/overview", "/api/topics", "/api/stream", "/api/tree"):
            status, _, body = await c.request("GET", path)
            assert 401 == status, path
            assert "Bearer" in json.loads(body)["error"]
        wrong = [("Authorization", "Bearer not-it")]
        assert 401 == (await c.request("GET", "/metrics", wrong))[0]
        right = [("Authorization", f"Bearer {TOKEN}")]
        assert 200 == (await c.request("GET", "/metrics", right))[0]
        # The console sends the browser to log in, then runs on an HttpOnly cookie.
        status, headers, _ = await c.request("GET", "/")
        assert (303, "/login") == (status, headers["location"])
        form = [("Content-Type", "application/x-www-form-urlencoded")]
        status, _, body = await c.request("POST", "/login", form, b"token=nope")
        assert 401 == status
        assert b"Wrong token" in body
        status, headers, _ = await c.request("POST", "/login", form, f"token={TOKEN}".encode())
        assert 303 == status
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert TOKEN not in cookie
        session = cookie.split(";")[0]
        assert session.startswith(f"{COOKIE}=")
        assert 200 == (await c.request("GET", "/api/overview", [("Cookie", session)]))[0]
        assert 200 == (await c.request("GET", "/", [("Cookie", session)]))[0]
        forged = [("Cookie", f"{COOKIE}=forged")]
        assert 401 == (await c.request("GET", "/api/overview", forged))[0]


async def test_malformed_request_gets_400_and_closes(autojump_clock: trio.abc.Clock) -> None:
    """A request line that is not HTTP gets a 400 and the connection closes."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_http_connection, server_stream, HttpApp(broker))
            await client_stream.send_all(b"NONSENSE\r\n\r\n")
            got = b""
            while True:
                data = await client_stream.receive_some(4096)
                if not data:
                    break
                got += data
        assert got.startswith(b"HTTP/1.1 400 ")


async def test_event_browser_escapes_nothing_and_decodes_values(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The events API returns stored values as decoded text (CBOR, JSON,
    text) or hex, never HTML: a script value comes back as the same text."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, http(broker) as c:
        async with broker.connect() as client:
            await client.create_topic("t", partitions=1)
            async with client.producer() as producer:
                await producer.send("t", "<script>alert(1)</script>", key="k")
                await producer.send("t", {"n": 1, "raw": b"\x00\xff"})
            async with client.producer(serializer="bytes") as producer:
                await producer.send("t", b"\xff\xfe\x00")
                await producer.send("t", b'{"a": [1, 2]}')
        status, _, body = await c.request("GET", "/api/topics/t/partitions/0/events?offset=0")
        assert 200 == status
        data = json.loads(body)
        assert [
            ("cbor", "<script>alert(1)</script>"),
            ("cbor", '{"n": 1, "raw": "h\'00ff\'"}'),
        ] == [(e["value"]["kind"], e["value"]["text"]) for e in data["events"][:2]]
        assert [("bytes", "ff fe 00"), ("json", '{"a": [1, 2]}')] == [
            (e["value"]["kind"], e["value"]["text"]) for e in data["events"][2:]
        ]
        assert ("text", "k") == (data["events"][0]["key"]["kind"], data["events"][0]["key"]["text"])
        assert 4 == data["end_offset"]
        assert 400 == (await c.request("GET", "/api/topics/t/partitions/0/events?offset=x"))[0]


async def test_stream_pushes_overviews(autojump_clock: trio.abc.Clock) -> None:
    """/api/stream is server-sent events: an overview now and one per interval,
    showing a topic created after the stream opened."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_http_connection, server_stream, HttpApp(broker))
            await client_stream.send_all(b"GET /api/stream HTTP/1.1\r\nHost: t\r\n\r\n")
            buffer = b""

            async def next_overview() -> dict[str, object]:
                nonlocal buffer
                while b"\n\n" not in buffer.partition(b"event: overview")[2]:
                    buffer += await client_stream.receive_some(65536)
                _, _, rest = buffer.partition(b"event: overview\n")
                message, _, buffer = rest.partition(b"\n\n")
                return json.loads(message.removeprefix(b"data: "))  # type: ignore[no-any-return]

            first = await next_overview()
            assert [] == first["topics"]
            await broker.handle(CreateTopic("late", partitions=1))
            second = await next_overview()
            assert ["late"] == [t["name"] for t in second["topics"]]  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()
