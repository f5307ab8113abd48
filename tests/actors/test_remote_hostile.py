"""Hostile requests to the actors listener: every one gets its own answer
(a response or an error frame), and the connection keeps serving."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from headwater.actors import open_actor_system, serve_actor_stream
from headwater.supervision import ChildSpec
from headwater.testing import KIT_REGISTRY
from headwater.testing._actor_kit import Echo, _Shared, _Target
from headwater.transport import (
    ClientConnection,
    ConnectionClosed,
    ErrorReceived,
    FramedStream,
    HandshakeComplete,
    ResponseReceived,
)

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
messages = st.fixed_dictionaries(
    {"t": st.sampled_from(["kit.put", "kit.get", "kit.echo", "kit.fail", "kit.sleep", "nope", 3])},
    optional={"value": plain, "text": plain, "kind": plain, "seconds": plain},
)
bodies = st.dictionaries(
    st.sampled_from(["path", "msg", "timeout", "nowait", "monitor", "extra"]),
    st.one_of(
        plain,
        messages,
        st.sampled_from(["/target", "target/", "/", "/nobody", "//target//"]),
    ),
    max_size=5,
)
requests = st.lists(
    st.tuples(st.sampled_from(["lookup", "tell", "ask", "demonitor", "ping"]), bodies),
    min_size=1,
    max_size=8,
)


async def _session(batch: list[tuple[str, dict[str, Any]]]) -> dict[int, str]:
    shared = _Shared()
    children = (ChildSpec("target", lambda: _Target(shared)),)
    async with open_actor_system("fuzz", children=children, max_restarts=1000) as system:
        client_end, server_end = trio.testing.memory_stream_pair()
        outcomes: dict[int, str] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_actor_stream, system, KIT_REGISTRY, server_end)
            framed = FramedStream(client_end)
            conn = ClientConnection()

            async def next_event() -> object:
                while True:
                    event = conn.next_event()
                    if event is not None:
                        return event
                    conn.receive_data(await framed.receive_data())

            await framed.send_data(conn.data_to_send())
            assert isinstance(await next_event(), HandshakeComplete)
            ids = [conn.send_request(op, body) for op, body in batch]
            probe = conn.send_request(
                "ask", {"path": "/target", "msg": KIT_REGISTRY.encode(Echo("alive"))}
            )
            await framed.send_data(conn.data_to_send())
            while len(outcomes) < len(ids) + 1:
                event = await next_event()
                assert not isinstance(event, ConnectionClosed), event
                assert isinstance(event, ResponseReceived | ErrorReceived)
                assert event.id is not None, event
                outcomes[event.id] = "ok" if isinstance(event, ResponseReceived) else event.code
            assert "ok" == outcomes[probe]
            await framed.aclose()
        shared.gate.set()
    return outcomes


@given(requests)
def test_every_hostile_request_is_answered_and_the_connection_survives(
    batch: list[tuple[str, dict[str, Any]]],
) -> None:
    """Random bodies for every operation: each request gets its own answer
    (never a dropped connection), then a good ask still works."""
    outcomes = trio.run(_session, batch, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(batch) + 1 == len(outcomes)
