"""Headwater as a driver of the shared peer benchmark (``../shared/bench/peers.py``).

The peer harness measures every broker with one loop that calls a *driver*:
``Driver(url, topic, opts)`` with ``reset``, ``produce``, ``stored_count``,
``consume``, ``latency_prepare``, ``latency_consume`` and ``latency_produce``
(see "Driver interface" in ``peers.py``). :class:`HeadwaterDriver` is that
driver for Headwater, so ``peers.py --peer headwater.bench:HeadwaterDriver
--url URL`` measures Headwater with exactly the code that measured NATS
JetStream and Redis Streams. Each method runs its own event loop
(``trio.run``), as the peers' drivers run theirs (``asyncio.run``).

URLs: ``headwater://127.0.0.1:PORT`` (a ``headwater serve`` process, over
TCP) or ``embedded:///ABS/PATH?durability=always`` (the embedded broker,
opened in this process on that data directory for each call). ``opts``
may carry ``"clock"``, a :class:`trio.abc.Clock` for each ``trio.run``, and
``"fs"``, the embedded broker's file system (tests: a mock clock and a
simulated file system); ``"quiet_logs": False`` leaves the ``headwater``
logger's level alone (by default the driver keeps only warnings, process-wide).

Payloads start with ``HDR`` = (sequence number, send time in monotonic ns),
as the peers' do. Events go one by one through the public producer API:
``mode`` ``async`` queues each with ``send_nowait`` and keeps at most
``window`` unacknowledged (as NATS's ``publish_async``), ``sync`` awaits
``send`` per event, ``many`` hands ``batch`` events at a time to
``send_many``. A consumer reads with ``getmany(batch)`` in a new group and
commits after each batch (``ack`` ``explicit``/``all``; as Redis XACKs per
batch) with ``commit_nowait`` (as Kafka's ``commitAsync``, and as NATS acks
without waiting), so the clock stops only after a last ``commit`` has waited
for all of them; or without a group (``style="assign"``).
"""

from __future__ import annotations

import os
import struct
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from headwater._errors import HeadwaterError, InvalidArgument, NotFoundError
from headwater.client import Client, SendHandle

HDR = struct.Struct("<QQ")  # (sequence number, send time in monotonic ns), as peers.py
T = TypeVar("T")


def _quiet_logs() -> None:
    """Keep the broker's info logs out of the benchmark's output (the
    ``headwater`` logger's level; its default is WARNING already)."""
    import logging

    logging.getLogger("headwater").setLevel(logging.WARNING)


class HeadwaterDriver:
    """The peer-benchmark driver for Headwater, embedded or over TCP (see the
    module docs for URLs and modes)."""

    def __init__(self, url: str, topic: str, opts: dict[str, Any]) -> None:
        if opts.get("quiet_logs", True):
            _quiet_logs()
        self.url = url
        self.topic = topic
        self.opts = opts
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme == "headwater":
            self.embedded = False
            self.path = ""
            self.durability = ""
        elif parsed.scheme == "embedded":
            query = urllib.parse.parse_qs(parsed.query)
            self.embedded = True
            self.path = parsed.path
            self.durability = query.get("durability", ["always"])[0]
            if not self.path:
                raise InvalidArgument(f"url={url!r}: give embedded:///ABSOLUTE/PATH")
        else:
            raise InvalidArgument(
                f"url={url!r}: use headwater://HOST:PORT or embedded:///PATH?durability=always"
            )

    # ---------------------------------------------------------------- plumbing

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[Client]:
        if self.embedded:
            from headwater.broker import open_broker

            async with (
                open_broker(
                    self.path, durability=self.durability, fs=self.opts.get("fs")
                ) as broker,
                broker.connect() as client,
            ):
                yield client
        else:
            from headwater.client import connect

            async with connect(self.url) as client:
                yield client

    def _run(self, fn: Callable[[Client], Awaitable[T]]) -> T:
        async def main() -> T:
            async with self._client() as client:
                return await fn(client)

        return trio.run(main, clock=self.opts.get("clock"))

    def info(self) -> dict[str, Any]:
        """Extra fields for the JSON lines: the client and how it is reached."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("headwater")
        except PackageNotFoundError:
            v = "source tree"
        where = f"embedded durability={self.durability}" if self.embedded else "tcp"
        return {"client": f"headwater {v} ({where})"}

    # ---------------------------------------------------------------- topic

    async def _reset(self, client: Client) -> None:
        try:
            await client.delete_topic(self.topic)
        except NotFoundError:
            pass
        await client.create_topic(self.topic, partitions=1)

    def reset(self) -> None:
        """Delete and recreate the topic (one partition), empty."""
        self._run(self._reset)

    def stored_count(self) -> int:
        """Events now in the topic."""

        async def main(client: Client) -> int:
            d = await client.describe_topic(self.topic)
            return sum(p.next_offset - p.earliest_offset for p in d.partitions)

        return self._run(main)

    # ---------------------------------------------------------------- produce

    def produce(self, payloads: list[bytes], mode: str, window: int, batch: int) -> dict[str, Any]:
        """Send every payload; time from the first send until all are acknowledged."""
        if mode not in ("async", "sync", "many"):
            raise InvalidArgument(f"mode={mode!r}; use async, sync or many")
        topic = self.topic

        async def main(client: Client) -> dict[str, Any]:
            errors = 0
            async with client.producer(serializer="bytes") as producer:
                await producer.partitions_of(topic)
                t0 = time.perf_counter()
                if mode == "sync":
                    send = producer.send
                    for p in payloads:
                        await send(topic, p)
                elif mode == "many":
                    for i in range(0, len(payloads), batch):
                        await producer.send_many(topic, payloads[i : i + batch])
                else:
                    handles: list[SendHandle] = []
                    append = handles.append
                    send_nowait = producer.send_nowait
                    w = max(1, window)
                    for i, p in enumerate(payloads):
                        if i >= w and i % w == 0:
                            await _settled(handles[i - w])
                        append(send_nowait(topic, p))
                    await producer.flush()
                secs = time.perf_counter() - t0
                if mode == "async":
                    errors = sum(1 for h in handles if _failed(h))
            return {"secs": secs, "acked": len(payloads) - errors, "errors": errors}

        return self._run(main)

    # ---------------------------------------------------------------- consume

    def consume(self, count: int, batch: int, ack: str, style: str = "group") -> dict[str, Any]:
        """Read the topic from its first event with a new consumer (a new group,
        committing after each batch, unless ``style="assign"``)."""
        if style not in ("group", "default", "assign"):
            raise InvalidArgument(f"style={style!r}; use group or assign")
        grouped = style != "assign"

        async def main(client: Client) -> dict[str, Any]:
            group = f"bench-{uuid.uuid4().hex[:12]}" if grouped else None
            got = nbytes = 0
            last_seq = -1
            async with client.consumer(
                [self.topic], group=group, start="earliest", deserializer="bytes"
            ) as consumer:
                t0 = time.perf_counter()
                while got < count:
                    events = await consumer.getmany(max_events=min(batch, count - got), timeout=10)
                    if not events:
                        raise RuntimeError(f"headwater consume timed out after {got} events")
                    for e in events:
                        nbytes += len(e.value)
                    if grouped and ack != "none":
                        consumer.commit_nowait()  # sent while the next batch is read
                    got += len(events)
                    last_seq = HDR.unpack_from(events[-1].value)[0]
                if grouped and ack != "none":
                    await consumer.commit()  # every batch's commit stored: then stop the clock
                secs = time.perf_counter() - t0
            return {"secs": secs, "received": got, "bytes": nbytes, "last_seq": last_seq}

        return self._run(main)

    # ---------------------------------------------------------------- latency

    def latency_prepare(self, variant: str) -> None:
        """Reset the topic before a latency run."""
        self.reset()

    def latency_consume(self, count: int, variant: str, ready: Any, deadline_s: float) -> list[int]:
        """Read ``count`` events as they arrive (no group, from the start of the
        fresh topic); set ``ready`` once positioned; return receive - send (ns)."""

        async def main(client: Client) -> list[int]:
            lat: list[int] = []
            async with client.consumer(
                [self.topic], start="earliest", deserializer="bytes"
            ) as consumer:
                await consumer.getmany(1, timeout=0.01)  # positioned, fetcher running
                ready.set()
                await _collect(consumer.getmany, lat, count, deadline_s)
            return lat

        return self._run(main)

    def latency_produce(self, count: int, size: int, interval_s: float) -> dict[str, Any]:
        """Send one event every ``interval_s``, waiting for each acknowledgement
        (no batching, ``linger=0``), paced with ``time.sleep`` as the peers' drivers."""
        tail = os.urandom(size - HDR.size)

        async def main(client: Client) -> dict[str, Any]:
            async with client.producer(serializer="bytes", linger=0.0) as producer:
                await producer.partitions_of(self.topic)
                t0 = time.monotonic()
                nxt = t0
                for i in range(count):
                    d = nxt - time.monotonic()
                    if d > 0:
                        time.sleep(d)  # noqa: ASYNC251 - precise pacing, as the peers' drivers
                    await producer.send(self.topic, HDR.pack(i, time.monotonic_ns()) + tail)
                    nxt += interval_s
                return {"sent": count, "secs": time.monotonic() - t0}

        return self._run(main)

    def latency_inprocess(self, count: int, size: int, interval_s: float) -> list[int]:
        """The latency workload with producer and consumer in one process and
        one event loop (the only way to share an embedded broker): the same
        sends (await each, ``linger=0``) paced with ``trio.sleep_until``."""
        tail = os.urandom(size - HDR.size)
        deadline_s = count * interval_s * 3 + 30

        async def main(client: Client) -> list[int]:
            await self._reset(client)
            lat: list[int] = []
            async with (
                client.producer(serializer="bytes", linger=0.0) as producer,
                client.consumer([self.topic], start="earliest", deserializer="bytes") as consumer,
                trio.open_nursery() as nursery,
            ):
                await producer.partitions_of(self.topic)
                await consumer.getmany(1, timeout=0.01)

                async def send() -> None:
                    start = trio.current_time()
                    for i in range(count):
                        await trio.sleep_until(start + i * interval_s)
                        await producer.send(self.topic, HDR.pack(i, time.monotonic_ns()) + tail)

                nursery.start_soon(send)
                await _collect(consumer.getmany, lat, count, deadline_s)
                nursery.cancel_scope.cancel()
            return lat

        return self._run(main)


async def _collect(
    getmany: Callable[..., Awaitable[list[Any]]], lat: list[int], count: int, deadline_s: float
) -> None:
    """Append receive - send (ns) of each event until ``count`` or the deadline;
    one clock reading per batch (every event in it arrived together)."""
    with trio.move_on_after(deadline_s):
        while len(lat) < count:
            events = await getmany(1000, timeout=0.2)
            if not events:
                continue
            now = time.monotonic_ns()
            lat.extend(now - HDR.unpack_from(e.value)[1] for e in events)


async def _settled(handle: SendHandle) -> None:
    """Wait until ``handle`` is stored or failed (failures are counted later)."""
    try:
        await handle.wait()
    except HeadwaterError:
        pass


def _failed(handle: SendHandle) -> bool:
    try:
        handle.result()
    except HeadwaterError:
        return True
    return False
