"""The producer's direct path: ``send`` with ``linger=0`` on an idle
partition encodes and sends from the caller's task (no flusher, no sender
task), keeps order with queued sends, and hands a cancelled send to a sender
task that stores it once."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from headwater.broker import open_broker, open_server
from headwater.client import Client, TcpChannel, connect_channel
from headwater.journal import SimulatedFileSystem
from headwater.testing import FaultyStream


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.counting = False
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counting:
            self.steps += 1


async def _read_all(client: Client, topic: str) -> list[Any]:
    async with client.consumer(topic, deserializer="bytes") as consumer:
        return await consumer.getmany(10_000, timeout=1)


async def test_an_idle_partition_send_takes_few_task_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One awaited send with linger 0 to an idle partition of an embedded
    broker runs 3 Trio task steps (4 while send still awaited the handle it
    knew was answered; 10 through the flusher and a sender task before the
    direct path)."""
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        async with (
            open_broker("/d", fs=SimulatedFileSystem()) as broker,
            broker.connect() as client,
        ):
            await client.create_topic("t")
            async with client.producer(linger=0.0, serializer="bytes") as producer:
                await producer.send("t", b"warm")
                counts = []
                for _ in range(9):
                    await trio.testing.wait_all_tasks_blocked()
                    steps.counting, steps.steps = True, 0
                    await producer.send("t", b"x")
                    steps.counting = False
                    counts.append(steps.steps)
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert sorted(counts)[4] <= 3, counts


async def test_direct_and_queued_sends_keep_partition_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Eight tasks send 50 events each to one partition, half awaiting each
    send (direct path) and half queueing with send_nowait: every event is
    stored once, and each task's events have increasing offsets."""
    async with open_broker("/d", fs=SimulatedFileSystem()) as broker, broker.connect() as client:
        await client.create_topic("t")
        offsets: dict[int, list[int]] = {}
        async with client.producer(linger=0.0, serializer="bytes") as producer:
            await producer.partitions_of("t")

            async def sender(n: int) -> None:
                got = offsets[n] = []
                for i in range(50):
                    value = f"{n}:{i}".encode()
                    if n % 2:
                        got.append((await producer.send("t", value)).offset)
                    else:
                        got.append((await producer.send_nowait("t", value)).offset)

            async with trio.open_nursery() as nursery:
                for n in range(8):
                    nursery.start_soon(sender, n)
        events = await _read_all(client, "t")
        assert 400 == len(events) == len({e.value for e in events})
        for n, got in offsets.items():
            assert got == sorted(got), n
            values = [e.value for e in events if e.value.startswith(f"{n}:".encode())]
            assert [f"{n}:{i}".encode() for i in range(50)] == values


async def test_a_cancelled_direct_send_is_delivered_once_by_a_sender_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The caller of a direct send is cancelled while its batch is being
    sent (the stream is slow): a sender task takes the batch over, the
    producer's flush waits for it, and the event is stored exactly once."""
    async with (
        open_broker("/d", fs=SimulatedFileSystem()) as broker,
        open_server(broker, listen=False) as server,
    ):
        streams: list[FaultyStream] = []

        async def open_stream() -> trio.abc.Stream:
            client_end, server_end = trio.testing.memory_stream_pair()
            await server.serve_stream(server_end, "faulty")
            stream = FaultyStream(client_end)
            streams.append(stream)
            return stream

        channel = TcpChannel(open_stream, address="memory", connect_timeout=5)
        async with connect_channel(channel) as client:
            await client.create_topic("t")
            async with client.producer(linger=0.0, serializer="bytes") as producer:
                await producer.send("t", b"first")
                streams[-1].send_delay = 1.0
                with trio.move_on_after(0.5) as scope:
                    await producer.send("t", b"cancelled")
                assert scope.cancelled_caught
                streams[-1].send_delay = 0.0
                await producer.flush()
                after = await producer.send("t", b"after")
            events = await _read_all(client, "t")
        assert [b"first", b"cancelled", b"after"] == [e.value for e in events]
        assert 2 == after.offset


async def test_a_send_over_a_connection_takes_no_more_task_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same send through the server and the client drivers (memory
    streams): 14 task steps at most, each time (13-14 as Trio orders a
    batch; 15-16 while send awaited the handle it knew was answered; 16-17
    while a request with a free slot in its connection's window still took
    a step to take it; 22-23 before the drivers were one per side)."""
    from headwater.testing import connect_in_memory

    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        async with (
            open_broker("/d", fs=SimulatedFileSystem()) as broker,
            open_server(broker, listen=False) as server,
            connect_in_memory(server) as client,
        ):
            await client.create_topic("t")
            async with client.producer(linger=0.0, serializer="bytes") as producer:
                await producer.send("t", b"warm")
                counts = []
                for _ in range(9):
                    await trio.testing.wait_all_tasks_blocked()
                    steps.counting, steps.steps = True, 0
                    await producer.send("t", b"x")
                    steps.counting = False
                    counts.append(steps.steps)
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert max(counts) <= 14, counts


async def test_direct_sends_between_pipelined_batches_keep_partition_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over a connection (batches pipelined, up to 5 in flight): tasks that
    await each send (the direct path when the partition is idle, else queued
    behind the batches in flight) and tasks that queue bursts with
    send_nowait, on one partition. Every event is stored once; each task's
    events are stored in its order; each handle's offset is where its event
    is."""
    from headwater.testing import connect_in_memory

    async with (
        open_broker("/d", fs=SimulatedFileSystem()) as broker,
        open_server(broker, listen=False) as server,
        connect_in_memory(server) as client,
    ):
        await client.create_topic("t")
        offsets: dict[bytes, int] = {}
        async with client.producer(linger=0.0, serializer="bytes", max_batch_events=7) as producer:
            await producer.partitions_of("t")

            async def direct(n: int) -> None:
                for i in range(40):
                    value = b"d%d:%d" % (n, i)
                    offsets[value] = (await producer.send("t", value)).offset
                    await trio.sleep(0.001 * (i % 3))  # now and then the partition idles

            async def bursts(n: int) -> None:
                for burst in range(4):
                    handles = [
                        producer.send_nowait("t", b"q%d:%d" % (n, burst * 10 + i))
                        for i in range(10)
                    ]
                    for handle in handles:
                        offsets[handle.value] = (await handle.wait()).offset
                    await trio.sleep(0.002 * n)

            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(direct, n)
                    nursery.start_soon(bursts, n)
        events = await _read_all(client, "t")
    assert 240 == len(events) == len({e.value for e in events})
    assert {e.value: e.offset for e in events} == offsets
    for prefix in (b"d0:", b"d1:", b"d2:", b"q0:", b"q1:", b"q2:"):
        mine = [int(e.value[3:]) for e in events if e.value.startswith(prefix)]
        assert list(range(40)) == mine, prefix
