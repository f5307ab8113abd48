"""Consumer and group behaviour through the public client API, run against both
the small fake broker and the real embedded broker (simulated disk), so the
client's behaviour and the broker's answers are checked to agree."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
import trio

from headwater._errors import (
    InvalidArgument,
    StaleGenerationError,
    UnknownPartitionError,
)
from headwater.client import Client, Consumer, Event, Timestamp

from .fake_broker import FakeBroker
from .real_broker import RealBroker


@pytest.fixture
async def client(broker: FakeBroker | RealBroker) -> AsyncIterator[Client]:
    """A client with topic ``t1`` (1 partition) and ``t3`` (3), 30 events each
    (timestamps 1000 + i ms, values i), sent in batches of 7."""
    async with Client(broker.channel()) as c:
        await c.create_topic("t1")
        await c.create_topic("t3", partitions=3)
        async with c.producer(max_batch_events=7) as producer:
            await producer.send_many("t1", [{"value": i, "timestamp": 1000 + i} for i in range(30)])
            await producer.send_many(
                "t3", [{"value": i, "key": f"k{i % 6}", "timestamp": 1000 + i} for i in range(30)]
            )
        yield c


async def take(consumer: Consumer, n: int) -> list[Event]:
    """The next ``n`` events of ``consumer``."""
    out = []
    async for event in consumer:
        out.append(event)
        if len(out) == n:
            break
    return out


async def test_from_earliest_reads_everything_in_order(
    client: Client, autojump_clock: object
) -> None:
    """start='earliest' reads every event; per partition in offset order."""
    async with client.consumer(["t3"]) as consumer:
        events = await take(consumer, 30)
    assert list(range(30)) == sorted(e.value for e in events)
    for partition in range(3):
        offsets = [e.offset for e in events if e.partition == partition]
        assert list(range(len(offsets))) == offsets


async def test_from_latest_waits_for_new_events(client: Client, autojump_clock: object) -> None:
    """start='latest' skips what is stored and long-polls for new events."""
    async with client.consumer("t1", start="latest") as consumer, client.producer() as producer:
        assert [] == await consumer.getmany(timeout=2)
        await producer.send("t1", "new")
        events = await consumer.getmany(timeout=2)
    assert [(30, "new")] == [(e.offset, e.value) for e in events]


async def test_from_offset_skips_inside_a_record(client: Client, autojump_clock: object) -> None:
    """An offset in the middle of a stored batch starts exactly there."""
    async with client.consumer("t1", start=10) as consumer:
        events = await take(consumer, 20)
    assert list(range(10, 30)) == [e.offset for e in events]
    assert list(range(10, 30)) == [e.value for e in events]


async def test_from_timestamp(client: Client, autojump_clock: object) -> None:
    """A Timestamp or aware datetime starts at the first event at or after it."""
    async with client.consumer("t1", start=Timestamp(1012)) as consumer:
        assert 12 == (await take(consumer, 1))[0].offset
    when = dt.datetime.fromtimestamp(1.020, tz=dt.UTC)
    async with client.consumer("t1", start=when) as consumer:
        assert 20 == (await take(consumer, 1))[0].offset


async def test_seek_and_position(client: Client, autojump_clock: object) -> None:
    """seek rereads from an offset; position is the next offset handed out."""
    async with client.consumer("t1") as consumer:
        await take(consumer, 5)
        assert 5 == consumer.position("t1", 0)
        consumer.seek("t1", 0, 2)
        assert [2, 3] == [e.offset for e in await take(consumer, 2)]
        assert 4 == consumer.position("t1", 0)
        with pytest.raises(UnknownPartitionError):
            consumer.seek("t1", 1, 0)
        with pytest.raises(InvalidArgument):
            consumer.seek("t1", 0, -1)


async def test_assign_narrows_partitions(client: Client, autojump_clock: object) -> None:
    """Without a group, assign picks the partitions read."""
    async with client.consumer("t3") as consumer:
        consumer.assign([("t3", 1)])
        events = await consumer.getmany(100, timeout=1)
        events += await consumer.getmany(100, timeout=1)
    assert events
    assert {1} == {e.partition for e in events}
    assert [e.offset for e in events] == list(range(len(events)))


async def test_commit_and_resume(client: Client, autojump_clock: object) -> None:
    """A group resumes from its committed offsets; start= no longer applies."""
    async with client.consumer("t1", group="g", start="earliest") as consumer:
        await take(consumer, 12)
        await consumer.commit()
    async with client.consumer("t1", group="g", start="latest") as consumer:
        assert 12 == (await take(consumer, 1))[0].offset
    description = await client.describe_group("g")
    assert [("t1", 0, 12, 18)] == [
        (x.topic, x.partition, x.committed, x.lag) for x in description.partitions
    ]


async def test_auto_commit(client: Client, autojump_clock: object) -> None:
    """auto_commit commits in the background and on close."""
    async with client.consumer("t1", group="g", auto_commit=True, auto_commit_interval=1) as c:
        await take(c, 7)
        await trio.sleep(1.5)
        assert [7] == [x.committed for x in (await client.describe_group("g")).partitions]
        await take(c, 3)
    assert [10] == [x.committed for x in (await client.describe_group("g")).partitions]


async def test_two_members_split_and_rebalance_on_leave(
    client: Client, autojump_clock: object
) -> None:
    """Two members split the partitions; when one leaves the other takes all
    and reads the leaver's partitions from its committed offsets."""
    config = {"group": "g", "session_timeout": 6.0}
    async with client.consumer("t3", **config) as a:
        async with client.consumer("t3", **config) as b:
            await trio.sleep(3)  # a heartbeat: a sees the new generation
            owned_a, owned_b = set(a.assignment()), set(b.assignment())
            assert not owned_a & owned_b
            assert {("t3", 0), ("t3", 1), ("t3", 2)} == owned_a | owned_b
            assert owned_a
            assert owned_b
            got_b = await b.getmany(100, timeout=1)
            got_b += await b.getmany(100, timeout=1)
            await b.commit()
        await trio.sleep(3)
        assert [("t3", 0), ("t3", 1), ("t3", 2)] == a.assignment()
        rest = await a.getmany(100, timeout=1)
        for _ in range(5):
            rest += await a.getmany(100, timeout=1)
    values = sorted(e.value for e in got_b + rest)
    assert list(range(30)) == values


async def test_stale_generation_commit_is_rejected(client: Client, autojump_clock: object) -> None:
    """A member that has not seen the new generation cannot commit."""
    async with client.consumer("t3", group="g", session_timeout=60.0) as a:
        await take(a, 1)
        async with client.consumer("t3", group="g", session_timeout=60.0):
            with pytest.raises(StaleGenerationError):
                await a.commit()
            # The failed commit fetched the new generation: no heartbeat needed.
            await a.commit()


async def test_missed_heartbeats_rebalance(
    client: Client, broker: FakeBroker | RealBroker, autojump_clock: object
) -> None:
    """A member that stops heartbeating loses its partitions to the others."""
    async with client.consumer("t3", group="g", session_timeout=3.0) as a:
        from headwater import _protocol as p

        ghost = await broker.handle(p.JoinGroup("g", ("t3",), None, 3.0))
        await trio.sleep(1.1)
        assert len(a.assignment()) < 3
        await trio.sleep(5)
        assert [("t3", 0), ("t3", 1), ("t3", 2)] == a.assignment()
        assert ghost.member_id not in [
            m.member_id for m in (await client.describe_group("g")).members
        ]


async def test_seek_past_the_end_resets_to_start_rule(
    client: Client, autojump_clock: object
) -> None:
    """A fetch position the partition does not have resets by the start rule."""
    async with client.consumer("t1", start="earliest") as consumer:
        consumer.seek("t1", 0, 500)
        assert [0, 1] == [e.offset for e in await take(consumer, 2)]


async def test_forgotten_member_joins_again(
    client: Client, broker: FakeBroker, autojump_clock: object
) -> None:
    """A member the group dropped (as after a missed session) rejoins on its
    next heartbeat and gets partitions again."""
    if not isinstance(broker, FakeBroker):
        pytest.skip("reaches into the fake's group state")
    async with client.consumer("t3", group="g", session_timeout=3.0) as consumer:
        first = consumer.membership
        assert first is not None
        broker.groups["g"].leave(first.member_id)
        await trio.sleep(1.1)
        again = consumer.membership
        assert again is not None
        assert first.member_id != again.member_id
        assert 3 == len(consumer.assignment())
        assert 30 == len(await take(consumer, 30))
