"""Regressions the deterministic simulation found (issue 7), each pinned down."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from headwater import ClosedError, CorruptionError, StorageError
from headwater._protocol import ListOffset
from headwater.broker import open_broker
from headwater.journal import LogConfig, SimulatedFileSystem, encode_record, open_log
from headwater.journal._log import Log

DATA = "/data"


async def test_consumer_keeps_reading_across_a_partition_restart(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A fetch long-polling on a partition that restarts gets a retriable
    error (not ClosedError, which killed the consumer), so the consumer goes on
    and sees what is produced after the restart."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, broker.connect() as client:
        await client.create_topic("t")
        seen: list[Any] = []
        async with client.consumer(["t"], start="earliest", max_wait=5.0) as consumer:
            async with client.producer() as producer:
                await producer.send("t", b"before")
                seen += await consumer.getmany(timeout=1)
                await trio.sleep(0.5)  # the next fetch now long-polls
                await broker.kill("/broker/topics/t/0")
                await producer.send("t", b"after")
            with trio.move_on_after(10):
                while len(seen) < 2:
                    seen += await consumer.getmany(timeout=1)
        assert [b"before", b"after"] == [e.value for e in seen]


async def test_producer_cancelled_while_flushing_exits_cleanly(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Cancelling a producer's exit while it flushes still exits its nursery
    (it used to skip it and corrupt Trio's nursery stack)."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, broker.connect() as client:
        await client.create_topic("t")
        with trio.CancelScope() as scope:
            async with client.producer(linger=30.0) as producer:
                await producer.partitions_of("t")
                handle = producer.send_nowait("t", b"x")
                scope.cancel()
        assert scope.cancelled_caught
        with pytest.raises(ClosedError):
            await handle
        async with client.producer() as producer:  # the client still works
            # "x" was never sent (its linger had not run out): "y" is first.
            assert 0 == (await producer.send("t", b"y")).offset
        assert 1 == (await broker.handle(ListOffset("t", 0, "latest"))).offset


def test_failed_open_leaves_no_file_open() -> None:
    """A log whose recovery fails (interior corruption) closes what it opened."""
    fs = SimulatedFileSystem()
    log = Log.open("/d", fs, LogConfig())
    for i in range(5):
        log.write(encode_record(bytes([i]) * 50, count=1))
    log.sync()
    log.abandon()  # no clean close: the next open scans
    fs.corrupt("/d/00000000000000000000.log", 40)
    with pytest.raises(CorruptionError):
        Log.open("/d", fs, LogConfig())
    assert [] == fs.open_paths()


async def test_failed_close_leaves_no_file_open(autojump_clock: trio.abc.Clock) -> None:
    """Closing a log whose final fsync fails raises, and still closes its files."""
    fs = SimulatedFileSystem()
    with pytest.raises(StorageError, match="fsync of /d failed"):
        async with open_log("/d", fs=fs) as log:
            log.write(encode_record(b"x", count=1))
            fs.fail_next_fsyncs(10)
    assert [] == fs.open_paths()


async def test_group_actor_comes_back_after_its_supervisor_restarts(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Group actors are started on demand; when /broker/groups restarts they
    are started again (adopting their cells), so group requests are served
    instead of timing out on a cell that waits for ever (simulation seed 101:
    a full disk crashed the group actor until its supervisor gave up)."""
    async with open_broker(DATA, fs=SimulatedFileSystem()) as broker, broker.connect() as client:
        await client.create_topic("t")
        async with client.producer() as producer:
            await producer.send("t", b"x")
        async with client.consumer(["t"], group="g", request_timeout=5.0) as consumer:
            assert 1 == len(await consumer.getmany(timeout=1))
            await consumer.commit()
            await broker.kill("/broker/groups")
            await consumer.commit()  # used to time out: the group cell never came back
            await consumer.poll_group()
        desc = await client.describe_group("g")
        assert "g" == desc.group


async def test_producer_start_rides_out_a_failed_registry_fsync(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A producer's InitProducer that meets a failed fsync of the topic
    registry (a retriable FsyncFailedError) is retried instead of failing the
    producer (641 producers died this way in a 200-seed soak)."""
    fs = SimulatedFileSystem()
    async with open_broker(DATA, fs=fs) as broker, broker.connect() as client:
        await client.create_topic("t")
        fs.fail_next_fsyncs(1)
        async with client.producer() as producer:
            assert 0 == (await producer.send("t", b"x")).offset
