"""``serve`` freezes the broker's long-lived objects out of the cyclic
collector again after topics are created, deleted or partitions restart,
and never leaks what a freeze caught and later died."""

from __future__ import annotations

import gc
import weakref

import trio
import trio.testing

from headwater.broker import open_broker
from headwater.broker._server import REFREEZE_POLL, refreeze_after_changes
from headwater.journal import SimulatedFileSystem


class _Junk:
    """A cycle standing for a deleted topic's objects."""

    def __init__(self) -> None:
        self.me = self


async def _settle() -> None:
    await trio.sleep(REFREEZE_POLL * 3)
    await trio.testing.wait_all_tasks_blocked()


async def test_a_topic_burst_is_frozen_and_a_deleted_topics_objects_collected(
    autojump_clock: trio.abc.Clock,
) -> None:
    gc.collect()
    gc.unfreeze()
    try:
        async with (
            open_broker("/data", fs=SimulatedFileSystem()) as broker,
            broker.connect() as client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(refreeze_after_changes, broker)
            await trio.testing.wait_all_tasks_blocked()
            before = gc.get_freeze_count()
            junk = _Junk()
            dead = weakref.ref(junk)
            for t in range(3):
                await client.create_topic(f"t{t}", partitions=4)
            await _settle()
            assert gc.get_freeze_count() > before  # the new topics are frozen
            del junk  # dies while frozen: no collection sees it
            gc.collect()
            assert dead() is not None
            await client.delete_topic("t2")
            await _settle()
            assert dead() is None  # the refreeze after the delete collected it
            frozen = gc.get_freeze_count()
            junk2 = _Junk()
            dead2 = weakref.ref(junk2)
            await _settle()
            assert gc.get_freeze_count() == frozen  # nothing changed: no refreeze
            await broker.kill("/broker/topics/t0/1")
            await _settle()
            del junk2
            gc.collect()
            assert dead2() is not None  # frozen by the refreeze after the restart
            nursery.cancel_scope.cancel()
    finally:
        gc.unfreeze()
        gc.collect()
