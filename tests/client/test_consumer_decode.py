"""Where a consumer decodes what it fetched: a chunk that arrives while the
reader is caught up is decoded on the fetcher's task (the reader is waiting
then, for data or for its commit, so the decode leaves the reader's path);
chunks that queue up behind a slow reader stay raw (the smaller form, so
prefetch memory stays what it was); a value the deserializer refuses is
still raised by the reader's ``getmany``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from headwater._errors import SerializationError
from headwater.client import Client
from headwater.client import _consumer as consumer_module

from .real_broker import RealBroker


@pytest.fixture
async def client(broker: RealBroker) -> AsyncIterator[Client]:
    """A client with topic ``t`` (1 partition): 40 events in 4 records of 10."""
    async with Client(broker.channel()) as c:
        await c.create_topic("t")
        async with c.producer(max_batch_events=10, linger=0) as producer:
            for start in range(0, 40, 10):
                await producer.send_many("t", list(range(start, start + 10)))
        yield c


@pytest.fixture
def decoders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the task that decoded each record, in order."""
    names: list[str] = []
    real = consumer_module.decode_record_events

    def spy(*args: Any, **kwargs: Any) -> Any:
        names.append(trio.lowlevel.current_task().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(consumer_module, "decode_record_events", spy)
    return names


async def test_a_chunk_is_decoded_by_the_fetcher_while_the_reader_waits(
    client: Client, decoders: list[str], autojump_clock: trio.abc.Clock
) -> None:
    """A reader that has taken everything fetched finds the next chunk
    decoded already, by the fetcher's task, not its own."""
    async with client.consumer("t", max_bytes=1) as consumer:  # one record per fetch
        got = await consumer.getmany(10, timeout=1)
        assert list(range(10)) == [e.value for e in got]
        await trio.testing.wait_all_tasks_blocked()
        assert 4 == len(decoders)  # the three fetched while the reader was away, too
        got = await consumer.getmany(10, timeout=1)
        assert list(range(10, 20)) == [e.value for e in got]
        assert 4 == len(decoders)  # the reader decoded nothing more
    assert all(name.endswith("Consumer._fetcher") for name in decoders[1:]), decoders


async def test_chunks_queued_behind_a_slow_reader_stay_raw(
    client: Client, decoders: list[str], autojump_clock: trio.abc.Clock
) -> None:
    """With every record fetched and none taken, only as many chunks were
    decoded ahead as the bound allows (max_bytes when pulling: here one);
    the reader decodes the others itself, all in order."""
    async with client.consumer("t", max_bytes=1, fetch_credit=0, prefetch=8) as consumer:
        await trio.testing.wait_all_tasks_blocked()
        assert 1 == len(decoders)
        seen: list[int] = []
        while len(seen) < 40:
            seen.extend(e.value for e in await consumer.getmany(100, timeout=1))
        assert list(range(40)) == seen
        assert 4 == len(decoders)


async def test_an_applications_deserializer_runs_in_the_readers_task(
    client: Client, autojump_clock: trio.abc.Clock
) -> None:
    """A deserializer of the application's own is never run ahead by a
    fetcher (it may need the reader's context); one that fails does so on the
    reader's ``getmany`` as a SerializationError naming the partition."""

    class Refusing:
        name = "refusing"

        def serialize(self, value: object) -> bytes:
            raise NotImplementedError

        def deserialize(self, data: bytes) -> object:
            tasks.append(trio.lowlevel.current_task())
            raise ValueError("not for me")

    tasks: list[object] = []

    async with client.consumer("t", deserializer=Refusing()) as consumer:
        await trio.testing.wait_all_tasks_blocked()
        assert [] == tasks
        with pytest.raises(SerializationError, match="t/0"):
            await consumer.getmany(10, timeout=1)
        assert [trio.lowlevel.current_task()] == tasks


async def test_chunks_up_to_the_credit_are_decoded_ahead(
    client: Client, decoders: list[str], autojump_clock: trio.abc.Clock
) -> None:
    """Within the bound (the fetch credit), every chunk fetched while the
    reader is away is decoded by the fetcher; the reader decodes none."""
    async with client.consumer("t", max_bytes=1, prefetch=8) as consumer:
        await trio.testing.wait_all_tasks_blocked()
        assert 4 == len(decoders)
        seen: list[int] = []
        while len(seen) < 40:
            seen.extend(e.value for e in await consumer.getmany(100, timeout=1))
        assert list(range(40)) == seen
    assert all(name.endswith("Consumer._fetcher") for name in decoders), decoders
