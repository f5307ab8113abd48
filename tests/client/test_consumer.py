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
    OffsetOutOfRangeError,
    UnknownMemberError,
    UnknownPartitionError,
    UnknownTopicError,
)
from headwater.client import Client, Consumer, Event, Timestamp

from .real_broker import RealBroker


@pytest.fixture
async def client(broker: RealBroker) -> AsyncIterator[Client]:
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
    """Two members split the partitions once the first one polls (and so
    releases); when one leaves the other takes all and reads the leaver's
    partitions from its committed offsets."""
    config = {"group": "g", "session_timeout": 6.0}
    async with client.consumer("t3", **config) as a:
        assert 3 == len(a.assignment())
        async with client.consumer("t3", **config) as b:
            assert [] == b.assignment()  # a still owns everything: it has not released
            assert [] == await a.getmany(100, timeout=0)  # a poll: a releases
            got_b = await b.getmany(100, timeout=1)
            owned_a, owned_b = set(a.assignment()), set(b.assignment())
            assert not owned_a & owned_b
            assert {("t3", 0), ("t3", 1), ("t3", 2)} == owned_a | owned_b
            assert owned_a
            assert owned_b
            got_b += await b.getmany(100, timeout=1)
            await b.commit()
        rest = await a.getmany(100, timeout=1)
        assert [("t3", 0), ("t3", 1), ("t3", 2)] == a.assignment()
        for _ in range(5):
            rest += await a.getmany(100, timeout=1)
    values = sorted(e.value for e in got_b + rest)
    assert list(range(30)) == values


async def test_commit_after_a_second_member_joined_goes_through(
    client: Client, autojump_clock: object
) -> None:
    """Issue 11 point 8: the first member commits after a second joined and
    before it heard of the rebalance: the commit goes through (it still owns
    its partitions until it releases them), and so does every later one."""
    async with client.consumer("t3", group="g", session_timeout=60.0) as a:
        first = await a.getmany(5, timeout=1)
        assert 5 == len(first)
        async with client.consumer("t3", group="g", session_timeout=60.0) as b:
            await a.commit()  # used to raise StaleGenerationError
            more = await a.getmany(100, timeout=1)
            await a.commit()
            got_b = await b.getmany(100, timeout=1)
            await b.commit()
            assert got_b
            assert not {(e.partition, e.offset) for e in got_b} & {
                (e.partition, e.offset) for e in first + more
            }
    committed = {x.partition: x.committed for x in (await client.describe_group("g")).partitions}
    assert [0, 1, 2] == sorted(committed)
    assert all(c is not None for c in committed.values())


async def test_callbacks_run_in_order_around_a_handover(
    client: Client, autojump_clock: object
) -> None:
    """on_revoked runs on the old owner (and can commit) before the new
    owner's on_assigned; the new owner starts at that commit. Sync and async
    callbacks both work."""
    calls: list[tuple[str, str, list[tuple[str, int]]]] = []

    async def revoked_a(tps: list[tuple[str, int]]) -> None:
        calls.append(("a", "revoked", tps))
        await a.commit()

    async with client.consumer(
        "t3",
        group="g",
        on_assigned=lambda tps: calls.append(("a", "assigned", tps)),
        on_revoked=revoked_a,
    ) as a:
        got_a = await a.getmany(100, timeout=1)
        async with client.consumer(
            "t3",
            group="g",
            on_assigned=lambda tps: calls.append(("b", "assigned", tps)),
            on_revoked=lambda tps: calls.append(("b", "revoked", tps)),
        ) as b:
            await a.getmany(100, timeout=0)
            got_b = await b.getmany(100, timeout=1)
            moved = calls[1][2]
            assert [
                ("a", "assigned", [("t3", 0), ("t3", 1), ("t3", 2)]),
                ("a", "revoked", moved),
                ("b", "assigned", moved),
            ] == calls
            # Everything a read of the moved partitions was committed by a:
            # b starts after it, reading nothing twice.
            assert not {(e.partition, e.offset) for e in got_a} & {
                (e.partition, e.offset) for e in got_b
            }
        assert ("b", "revoked", moved) == calls[3]


async def test_explicit_commit_with_metadata(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """commit(offsets=..., metadata=...) stores exactly those positions and
    the text; bad offsets are typed errors; partitions not owned are skipped."""
    async with client.consumer("t3", group="g") as consumer:
        await consumer.commit({("t3", 0): 5, ("t3", 2): 7}, metadata="batch 12")
        with pytest.raises(OffsetOutOfRangeError):
            await consumer.commit({("t3", 0): -1})
        with pytest.raises(InvalidArgument, match="not one of this consumer's topics"):
            await consumer.commit({("t1", 0): 1})
        with pytest.raises(InvalidArgument, match="metadata"):
            await consumer.commit(metadata=b"x")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="pairs"):
            await consumer.commit({"t3": 1})  # type: ignore[dict-item]
    description = await client.describe_group("g")
    assert [(0, 5, "batch 12"), (2, 7, "batch 12")] == [
        (x.partition, x.committed, x.metadata) for x in description.partitions
    ]


async def test_max_poll_interval_leaves_then_rejoins(
    client: Client, autojump_clock: object
) -> None:
    """A member whose app stops polling leaves after max_poll_interval, so
    the other member gets its partitions; its next commit says why it was not
    committed; its next poll joins again."""
    config = {"group": "g", "session_timeout": 3.0, "max_poll_interval": 10.0}
    revoked: list[list[tuple[str, int]]] = []
    async with (
        client.consumer("t3", on_revoked=revoked.append, **config) as a,
        client.consumer("t3", **config) as b,
    ):
        await a.getmany(100, timeout=0)  # a releases: both own partitions
        held = a.assignment()
        assert held
        revoked.clear()
        start = trio.current_time()
        while len(b.assignment()) < 3:  # b keeps polling; a is "hung"
            await b.getmany(100, timeout=1)
        assert 10.0 <= trio.current_time() - start <= 12.0
        assert [] == a.assignment()
        with pytest.raises(UnknownMemberError, match=r"max_poll_interval=10\.0"):
            await a.commit()
        await a.getmany(100, timeout=0)  # a hears what it lost, and joins again
        assert [held] == revoked
        assert a.membership is not None
        await b.getmany(100, timeout=0)  # b releases to the newcomer
        await a.getmany(100, timeout=1)
        assert a.assignment()
        assert not set(a.assignment()) & set(b.assignment())
        await a.commit()


async def test_missing_topic_is_a_typed_error(client: Client, autojump_clock: object) -> None:
    """The error leaves ``async with client.consumer(...)`` as itself."""
    with pytest.raises(UnknownTopicError):
        async with client.consumer("no-such-topic", group="g"):
            pass  # pragma: no cover
    with pytest.raises(UnknownTopicError):
        async with client.consumer("no-such-topic"):
            pass  # pragma: no cover


async def test_missed_heartbeats_rebalance(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """A member that stops heartbeating loses its partitions to the others."""
    async with client.consumer("t3", group="g", session_timeout=3.0) as a:
        from headwater import _protocol as p

        ghost = await broker.handle(p.JoinGroup("g", ("t3",), None, 3.0))
        await a.getmany(100, timeout=0)  # a poll: a releases what the ghost gets
        assert len(a.assignment()) < 3
        with trio.fail_after(5):
            while len(a.assignment()) < 3:  # the ghost's session expires
                await a.getmany(100, timeout=1)
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
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """A member the group dropped (as after a missed session) rejoins on its
    next heartbeat and gets partitions again."""
    from headwater import _protocol as p

    async with client.consumer("t3", group="g", session_timeout=3.0) as consumer:
        first = consumer.membership
        assert first is not None
        await broker.handle(p.LeaveGroup("g", first.member_id))  # as if it had expired
        await consumer.poll_group()  # the heartbeat hears so: it joins again
        again = consumer.membership
        assert again is not None
        assert first.member_id != again.member_id
        assert 3 == len(consumer.assignment())
        assert 30 == len(await take(consumer, 30))


async def test_without_push_members_follow_at_heartbeat_pace(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """A channel that cannot take pushes (as a protocol v1 connection): the
    members learn of the rebalance from their heartbeats, and the handover
    still waits for the release, with every commit going through."""
    from headwater import _protocol as p
    from headwater.client import LocalChannel

    async def no_push(request: object) -> object:
        p.PUSH_SINK.set(None)
        return await broker.handle(request)

    async with Client(LocalChannel(no_push)) as quiet:
        config = {"group": "g", "session_timeout": 3.0}
        async with quiet.consumer("t3", **config) as a, quiet.consumer("t3", **config) as b:
            start = trio.current_time()
            while not b.assignment():
                await a.getmany(5, timeout=0.1)
                await a.commit()
                await b.getmany(5, timeout=0.1)
                await b.commit()
            assert 1.0 <= trio.current_time() - start <= 2.5  # a heartbeat or two
            assert not set(a.assignment()) & set(b.assignment())
            assert 3 == len(a.assignment()) + len(b.assignment())


async def _release_then_read(
    client: Client, a: Consumer, revoked: list[list[tuple[str, int]]]
) -> tuple[list[Event], list[Event]]:
    """``a`` (reading everything of t3, then waiting in short polls) meets a
    second member ``b``; returns what each read once ``b`` has every event of
    the partitions ``a`` handed it (within 20 s: the handover must not wait
    for ``a``'s rebalance timeout, max_poll_interval, 300 s)."""
    got_a = await take(a, 30)
    ends = [part.next_offset for part in (await client.describe_topic("t3")).partitions]
    got_b: list[Event] = []
    async with trio.open_nursery() as nursery:

        async def poll_a() -> None:
            while True:  # an app polling with a short timeout, as run_round's
                got_a.extend(await a.getmany(100, timeout=0.1))

        nursery.start_soon(poll_a)
        await trio.sleep(0.05)  # a waits inside a poll when b's join is pushed
        async with client.consumer("t3", group="g", session_timeout=6.0) as b:
            with trio.fail_after(20):
                while not b.assignment() or len(got_b) < sum(ends[n] for _, n in b.assignment()):
                    got_b.extend(await b.getmany(100, timeout=0.5))
            assert not set(a.assignment()) & set(b.assignment())
            assert 3 == len(a.assignment()) + len(b.assignment())
            assert [sorted(b.assignment())] == revoked  # on_revoked ran once
            nursery.cancel_scope.cancel()
    return got_a, got_b


async def test_a_release_cut_off_by_the_poll_timeout_still_goes_through(
    client: Client, broker: RealBroker, autojump_clock: object
) -> None:
    """The old owner hears of the rebalance while it waits inside a poll with
    a short timeout, and its ReleasePartitions takes longer than that (a slow
    link): the release is not cut off midway (which left the partition
    stopped, unreleased and never tried again, so nobody read it until the
    rebalance timeout); the new owner reads the partition at once."""
    from headwater import _protocol as p
    from headwater.client import LocalChannel

    async def slow_release(request: object) -> object:
        if isinstance(request, p.ReleasePartitions):
            await trio.sleep(0.5)  # longer than the poll's timeout
        return await broker.handle(request)

    revoked: list[list[tuple[str, int]]] = []
    async with (
        Client(LocalChannel(slow_release)) as slow,
        slow.consumer("t3", group="g", session_timeout=6.0, on_revoked=revoked.append) as a,
    ):
        await _release_then_read(client, a, revoked)


@pytest.mark.parametrize("heard", [False, True], ids=["lost_request", "lost_answer"])
async def test_a_failed_release_is_tried_again_at_the_next_poll(
    client: Client, broker: RealBroker, autojump_clock: object, heard: bool
) -> None:
    """The old owner's ReleasePartitions fails with a lost connection (the
    coordinator heard it, or not): the poll does not raise it, the partition
    stays stopped, and a later poll releases it again (or learns that it is
    released) without a second on_revoked; the new owner reads it."""
    from headwater import _protocol as p
    from headwater._errors import ConnectionLostError
    from headwater.client import LocalChannel

    failures = [1]

    async def flaky_release(request: object) -> object:
        if isinstance(request, p.ReleasePartitions) and failures:
            failures.pop()
            if heard:
                await broker.handle(request)
            raise ConnectionLostError("connection lost with this request in flight")
        return await broker.handle(request)

    revoked: list[list[tuple[str, int]]] = []
    async with (
        Client(LocalChannel(flaky_release)) as flaky,
        flaky.consumer("t3", group="g", session_timeout=6.0, on_revoked=revoked.append) as a,
    ):
        got_a, got_b = await _release_then_read(client, a, revoked)
    assert not failures
    assert list(range(30)) == sorted({e.value for e in got_a + got_b})
