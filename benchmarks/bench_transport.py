"""Transport benchmark: frame codec throughput and request round trips.

Figures: frames/s encode+decode for small request frames; MB/s for frames
carrying 64 KiB and 1 MiB byte payloads (encode and decode separately); round
trips/s through ClientConnection/ServerConnection over a memory stream pair
and over loopback TCP, in one process, with ``max_in_flight`` requests
pipelined and with one request at a time.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import trio
import trio.testing

from headwater.transport import (
    ENVELOPE,
    ClientConnection,
    FrameDecoder,
    FramedStream,
    HandshakeComplete,
    Request,
    RequestReceived,
    ResponseReceived,
    ServerConnection,
    encode_frame,
)

BENCH = "transport"


def fig(case: str, metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"bench": BENCH, "case": case, "metric": metric, "value": round(value, 2), "unit": unit}


def timed(fn: Callable[[], None], seconds: float) -> tuple[int, float]:
    """Call fn repeatedly for about `seconds`; return (calls, elapsed)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        calls += 1
        if calls % 16 == 0 and time.perf_counter() >= deadline:
            break
    return calls, time.perf_counter() - start


def codec_figures(quick: bool) -> Iterator[dict[str, Any]]:
    seconds = 0.5 if quick else 2.0
    small = ENVELOPE.encode(Request(12345, "produce", {"topic": "orders", "partition": 3}))
    data = encode_frame(small)
    decoder = FrameDecoder()

    def small_round() -> None:
        decoder.feed(encode_frame(small))
        decoder.next_frame()

    calls, elapsed = timed(small_round, seconds)
    yield fig(f"request/{len(data)}B", "frames_per_s_encode_decode", calls / elapsed, "frames/s")

    for label, size in (("64KiB", 64 << 10), ("1MiB", 1 << 20)):
        payload = random.Random(size).randbytes(size)
        frame = {"t": "req", "id": 1, "op": "produce", "body": {"batch": payload}}
        encoded = encode_frame(frame)
        dec = FrameDecoder()

        def enc(frame: dict[str, Any] = frame) -> None:
            encode_frame(frame)

        def dec_one(dec: FrameDecoder = dec, encoded: bytes = encoded) -> None:
            dec.feed(encoded)
            dec.next_frame()

        calls, elapsed = timed(enc, seconds)
        yield fig(f"bytes/{label}", "encode_mb_per_s", calls * size / elapsed / 1e6, "MB/s")
        yield fig(f"bytes/{label}", "encode_us_per_frame", elapsed / calls * 1e6, "us")
        calls, elapsed = timed(dec_one, seconds)
        yield fig(f"bytes/{label}", "decode_mb_per_s", calls * size / elapsed / 1e6, "MB/s")
        yield fig(f"bytes/{label}", "decode_us_per_frame", elapsed / calls * 1e6, "us")
        copy_calls, copy_elapsed = timed(lambda p=payload: bytes(bytearray(p)), seconds / 2)  # type: ignore[misc]
        yield fig(
            f"bytes/{label}", "memcpy_mb_per_s", copy_calls * size / copy_elapsed / 1e6, "MB/s"
        )


async def _serve(framed: FramedStream) -> None:
    server = ServerConnection()
    while True:
        while (event := server.next_event()) is not None:
            if isinstance(event, RequestReceived):
                server.send_response(event.id, event.body)
            elif not isinstance(event, HandshakeComplete):
                return
        out = server.data_to_send()
        if out:  # one write for every answer ready now (batching)
            await framed.send_data(out)
        server.receive_data(await framed.receive_data())


async def _client(framed: FramedStream, total: int, window: int) -> None:
    client = ClientConnection(max_in_flight=max(window, 1))
    await framed.send_data(client.data_to_send())
    sent = done = 0
    ready = False
    while done < total:
        event = client.next_event()
        if event is None:
            if ready:
                while sent < total and len(client.in_flight) < window:
                    client.send_request("echo", {"n": sent})
                    sent += 1
                out = client.data_to_send()
                if out:
                    await framed.send_data(out)
            client.receive_data(await framed.receive_data())
            continue
        if isinstance(event, ResponseReceived):
            done += 1
        else:
            ready = True
    await framed.aclose()


async def _round_trips(make: Callable[[], Any], total: int, window: int) -> float:
    async with make() as (a, b), trio.open_nursery() as nursery:
        nursery.start_soon(_serve, b)
        start = time.perf_counter()
        await _client(a, total, window)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return total / elapsed


class _MemoryPair:
    async def __aenter__(self) -> tuple[FramedStream, FramedStream]:
        left, right = trio.testing.memory_stream_pair()
        self.pair = (FramedStream(left), FramedStream(right))
        return self.pair

    async def __aexit__(self, *exc: object) -> None:
        for f in self.pair:
            await f.aclose()


class _TcpPair:
    async def __aenter__(self) -> tuple[FramedStream, FramedStream]:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        accepted: list[trio.abc.Stream] = []
        async with trio.open_nursery() as nursery:

            async def accept() -> None:
                accepted.append(await listener.accept())

            nursery.start_soon(accept)
            client = await trio.open_tcp_stream("127.0.0.1", port)
        await listener.aclose()
        self.pair = (FramedStream(client), FramedStream(accepted[0]))
        return self.pair

    async def __aexit__(self, *exc: object) -> None:
        for f in self.pair:
            await f.aclose()


def round_trip_figures(quick: bool) -> Iterator[dict[str, Any]]:
    total = 5_000 if quick else 50_000
    for name, make in (("memory", _MemoryPair), ("tcp", _TcpPair)):
        for window in (1, 64):
            rate = trio.run(_round_trips, make, total if window > 1 else total // 5, window)
            yield fig(f"round_trip/{name}/in_flight={window}", "round_trips_per_s", rate, "req/s")


def run(quick: bool) -> Iterator[dict[str, Any]]:
    """Yield the transport figures."""
    yield from codec_figures(quick)
    yield from round_trip_figures(quick)


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv):
        print(figure)
