"""A topic delete survives a power loss once acknowledged, and a delete
killed midway never brings the old events back into a topic created again
under the same name (found by a review of the broker's crash ordering)."""

from __future__ import annotations

import pytest
import trio

from headwater import SubscriptionConflictError
from headwater._protocol import (
    CreateTopic,
    DeleteTopic,
    ListOffset,
    ListTopics,
    Produce,
    ShareSubscribe,
)
from headwater.broker import open_broker
from headwater.journal import SimulatedFileSystem, encode_record
from headwater.testing import capture_logs

DATA = "/data"


class Killed(BaseException):
    """The broker's process dies here (its writes stay in the page cache)."""


class KilledAt(SimulatedFileSystem):
    """A disk whose process dies at operation ``kill_at``."""

    kill_at: int | None = None

    def _op(self) -> None:
        super()._op()
        if self.kill_at is not None and self.ops > self.kill_at:
            raise Killed(self.ops)


def killed(exc: BaseException) -> bool:
    if isinstance(exc, Killed):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(killed(e) for e in exc.exceptions)
    cause = exc.__cause__ or exc.__context__
    return cause is not None and killed(cause)


async def ends(fs: SimulatedFileSystem) -> tuple[list[str], list[int]]:
    """Topics after a restart, then the end offsets of ``t`` (created again
    if the delete went through). The share subscription ``s`` of ``t``
    lives exactly as long as ``t``: a subscribe with other settings is
    refused while it exists, and takes the name once it is gone."""
    async with open_broker(DATA, fs=fs) as broker:
        topics = sorted(t.name for t in (await broker.handle(ListTopics())).topics)
        if "t" in topics:
            with pytest.raises(SubscriptionConflictError):
                await broker.handle(ShareSubscribe("t", "s", max_deliveries=9))
        else:
            await broker.handle(ShareSubscribe("u", "s"))
            await broker.handle(CreateTopic("t", 2))
        return topics, [(await broker.handle(ListOffset("t", p, "latest"))).offset for p in (0, 1)]


async def written(fs: SimulatedFileSystem) -> None:
    async with open_broker(DATA, fs=fs) as broker:
        await broker.handle(CreateTopic("t", 2))
        await broker.handle(Produce("t", 0, encode_record(b"old", count=1)))
        await broker.handle(ShareSubscribe("t", "s"))
        await broker.handle(CreateTopic("u", 1))


async def test_an_acknowledged_delete_survives_a_power_loss(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The removed directories' parents are fsynced before the answer: after
    a power loss the topic stays deleted, its subscription too, and the name
    starts empty (the old log and share state used to come back)."""
    fs = SimulatedFileSystem()
    await written(fs)
    async with open_broker(DATA, fs=fs) as broker:
        await broker.handle(DeleteTopic("t"))
        fs.crash()
    assert not fs.exists(f"{DATA}/topics/t")
    assert not fs.exists(f"{DATA}/meta/shares/s/config")
    topics, offsets = await ends(fs)
    assert "t" not in topics
    assert [0, 0] == offsets


async def test_a_delete_killed_at_any_point_never_revives_old_events(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Killed at each file operation of a delete: after a restart the topic
    either still exists with its events (the delete never happened) or,
    created again, starts empty (a kill after the delete was recorded and
    before its files were gone used to bring them back)."""
    outcomes = set()
    n = 0
    while True:
        fs = KilledAt()
        await written(fs)
        fs.kill_at = fs.ops + n
        try:
            async with open_broker(DATA, fs=fs) as broker:
                await broker.handle(DeleteTopic("t"))
            done = True
        except BaseException as exc:
            if not killed(exc):
                raise
            done = False
        fs.kill_at = None
        left = fs.exists(f"{DATA}/topics/t")
        with capture_logs() as logs:
            topics, offsets = await ends(fs)
        orphaned = [e for e in logs if e["event"] == "topic_directory_orphaned"]
        # Files a delete left behind are named at start, never removed there.
        assert (left and "t" not in topics) == bool(orphaned), n
        if "t" in topics:
            assert [1, 0] == offsets, n
        else:
            assert [0, 0] == offsets, n
        outcomes.add("t" in topics)
        if done:
            break
        n += 1
    assert {True, False} == outcomes
