"""Under ``always``, the long-polling readers an fsync wakes run before the
writer waiting for that fsync returns (``wait_durable``): a broker pushes
new records to its subscribed consumers before it acknowledges them to the
producer, so the consumer's latency does not wait behind the answer.

Trio runs the tasks woken in one step in a random order, so each test
checks many records: without the rule about half of them would go the
other way. The inline-log tests use the MockClock; the writer-thread one
(``sync_here``: the waiter fsyncs the record itself) uses the real clock
with a ``fail_after`` bound, as ``test_writer.py`` does.
"""

from __future__ import annotations

import trio
import trio.testing

from headwater.journal import AsyncLog, LogConfig, SimulatedFileSystem, encode_record, open_log

DIR = "/d/log"
RECORDS = 40


def rec(i: int) -> bytes:
    return encode_record(i.to_bytes(4, "big") * 8, count=1, first_timestamp=i)


async def _reader(log: AsyncLog, seen: list[str], task_status: trio.TaskStatus[None]) -> None:
    """A long poll like a pushed subscription's: wait, read, note each record."""
    offset = 0
    task_status.started()
    while offset < RECORDS:
        await log.wait_for_data(offset)
        while offset < log.visible_end:
            seen.append(f"read {offset}")
            offset += 1


async def _writes_after_reads(log: AsyncLog, *, sync_here: bool) -> list[str]:
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(_reader, log, seen)
        for i in range(RECORDS):
            await trio.testing.wait_all_tasks_blocked()  # the reader is parked
            generation = log.generation
            header = log.write(rec(i))
            await log.wait_durable(header.next_offset, generation, sync_here=sync_here)
            seen.append(f"ack {header.base_offset}")
    return seen


def _check(seen: list[str]) -> None:
    for i in range(RECORDS):
        assert seen.index(f"read {i}") < seen.index(f"ack {i}"), seen


async def test_readers_woken_by_the_flusher_go_before_the_ack(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The flusher task's fsync wakes the reader and the writer together;
    the reader has the record before the writer's wait returns."""
    async with open_log(DIR, fs=SimulatedFileSystem()) as log:
        _check(await _writes_after_reads(log, sync_here=False))


async def test_readers_woken_by_the_writers_own_fsync_go_before_the_ack() -> None:
    """``sync_here``: the waiting writer fsyncs in its own task (writer
    thread idle, fast fsyncs) and so wakes the reader itself; the reader
    still has the record first."""
    with trio.fail_after(20):
        async with open_log(
            DIR, fs=SimulatedFileSystem(), config=LogConfig(), writer_thread=True
        ) as log:
            _check(await _writes_after_reads(log, sync_here=True))


async def test_the_readers_turn_is_not_a_cancellation_point(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Once the fsync covered the record, ``wait_durable`` returns normally
    even if the writer is cancelled while the woken readers run (the record
    is durable: the caller must not be told otherwise)."""
    async with open_log(DIR, fs=SimulatedFileSystem()) as log:
        returned: list[int] = []
        with trio.CancelScope() as writer_scope:

            async def reader() -> None:
                await log.wait_for_data(0)
                writer_scope.cancel()  # runs before the writer's wait returns

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                generation = log.generation
                header = log.write(rec(0))
                await log.wait_durable(header.next_offset, generation)
                returned.append(header.base_offset)
        assert [0] == returned
        assert 1 == log.synced_offset


async def test_a_reader_that_gave_up_does_not_hold_up_acks(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A long poll that timed out no longer counts as a waiting reader: the
    next fsync wakes no reader (so the writer's wait takes no extra turn),
    while one that a reader really waits for does."""
    async with open_log(DIR, fs=SimulatedFileSystem()) as log:
        with trio.move_on_after(1):
            await log.wait_for_data(0)
        await log.append(rec(0))
        assert 0 == log._reader_wakes
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.wait_for_data, 1)
            await trio.testing.wait_all_tasks_blocked()
            await log.append(rec(1))
        assert 1 == log._reader_wakes
