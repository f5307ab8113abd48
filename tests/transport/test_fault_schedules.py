"""Hypothesis-generated fault schedules over the real codec and connections."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from headwater.testing import FaultyStream
from headwater.transport import (
    ClientConnection,
    FramedStream,
    RequestReceived,
    ResponseReceived,
    ServerConnection,
)


async def _session(chunk: int, delay: float, bodies: list[bytes], window: int) -> list[bytes]:
    left, right = trio.testing.memory_stream_pair()
    faulty_client, faulty_server = FaultyStream(left), FaultyStream(right)
    faulty_client.receive_chunk = faulty_server.receive_chunk = chunk
    faulty_client.send_delay = delay
    a, b = FramedStream(faulty_client), FramedStream(faulty_server)

    async def serve() -> None:
        server = ServerConnection()
        while True:
            while (event := server.next_event()) is not None:
                if isinstance(event, RequestReceived):
                    server.send_response(event.id, {"echo": event.body["data"]})
            if out := server.data_to_send():
                await b.send_data(out)
            data = await b.receive_data()
            if not data:
                return
            server.receive_data(data)

    client = ClientConnection(max_in_flight=window)
    answers: dict[int, bytes] = {}
    ids: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await a.send_data(client.data_to_send())
        ready = False
        pending = list(bodies)
        while len(answers) < len(bodies):
            event = client.next_event()
            if event is None:
                while ready and pending and len(client.in_flight) < window:
                    ids.append(client.send_request("echo", {"data": pending.pop(0)}))
                if out := client.data_to_send():
                    await a.send_data(out)
                client.receive_data(await a.receive_data())
            elif isinstance(event, ResponseReceived):
                answers[event.id] = event.body["echo"]
            else:
                ready = True
        await a.aclose()
    return [answers[i] for i in ids]


@given(
    chunk=st.integers(1, 64),
    delay=st.sampled_from([0.0, 0.01, 1.0]),
    bodies=st.lists(st.binary(max_size=200), min_size=1, max_size=12),
    window=st.integers(1, 5),
)
def test_pipelined_echo_survives_any_chunking_and_delay(
    chunk: int, delay: float, bodies: list[bytes], window: int
) -> None:
    """Whatever the receive chunking, send delay and window, every request gets
    its own answer."""
    result = trio.run(
        _session, chunk, delay, bodies, window, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    assert bodies == result
