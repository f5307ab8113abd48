"""``serve`` freezes the broker's long-lived objects out of the cyclic
collector again after topics are created, deleted or partitions restart,
and never leaks what a freeze caught and later died."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from headwater._errors import ConfigError
from headwater.broker import Broker, _server, open_broker
from headwater.broker._server import (
    BATCH_FREEZE_OBJECTS,
    FULL_REFREEZE_EVERY,
    GROWTH_FREEZE_OBJECTS,
    REFREEZE_POLL,
    YOUNG_COLLECTION_THRESHOLD,
    collector_thresholds,
    refreeze,
    refreeze_after_changes,
    unfrozen_objects,
)
from headwater.client import Client
from headwater.journal import SimulatedFileSystem


class _Junk:
    """A cycle standing for a deleted topic's objects."""

    def __init__(self) -> None:
        self.me = self


async def _settle() -> None:
    await trio.sleep(REFREEZE_POLL * 3)
    await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def _refreezing() -> AsyncIterator[tuple[Broker, Client]]:
    """A broker, a client of it, and ``refreeze_after_changes`` running
    (without its backoff) for the block."""
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        broker.connect() as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(partial(refreeze_after_changes, broker, backoff=0))
        await trio.testing.wait_all_tasks_blocked()
        yield broker, client
        nursery.cancel_scope.cancel()


@pytest.fixture
def unfreezes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count ``gc.unfreeze`` calls (full refreezes); start and end unfrozen."""
    unfrozen: list[int] = []
    real_unfreeze = gc.unfreeze

    def counting_unfreeze() -> None:
        unfrozen.append(1)
        real_unfreeze()

    monkeypatch.setattr(gc, "unfreeze", counting_unfreeze)
    gc.collect()
    real_unfreeze()
    try:
        yield unfrozen
    finally:
        real_unfreeze()
        gc.collect()


async def test_a_topic_burst_is_frozen_and_a_deleted_topics_objects_collected(
    autojump_clock: trio.abc.Clock,
) -> None:
    gc.collect()
    gc.unfreeze()
    try:
        async with _refreezing() as (broker, client):
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
    finally:
        gc.unfreeze()
        gc.collect()


async def test_a_creation_burst_freezes_only_the_new_objects(
    autojump_clock: trio.abc.Clock, unfreezes: list[int]
) -> None:
    """Topics only added: nothing frozen died, so the refreeze neither unfreezes
    nor walks the frozen heap (its pause is the burst's, not the heap's); a
    deletion makes the next one full again."""
    async with _refreezing() as (_, client):
        before = gc.get_freeze_count()
        await client.create_topic("a", partitions=4)
        await _settle()
        assert gc.get_freeze_count() > before  # the new topic is frozen
        assert unfreezes == []  # without a full collection
        junk = _Junk()
        dead = weakref.ref(junk)
        await client.create_topic("b", partitions=4)
        await _settle()
        del junk  # died while frozen
        await client.delete_topic("a")
        await _settle()
        assert unfreezes == [1]
        assert dead() is None


async def test_every_sixteenth_refreeze_is_full(
    autojump_clock: trio.abc.Clock, unfreezes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an addition-only freeze caught alive and later died is collected
    by a periodic full refreeze (while the frozen heap is not large)."""
    monkeypatch.setattr(_server, "PERIODIC_FULL_MAX_OBJECTS", 10**9)
    async with _refreezing() as (_, client):
        for t in range(FULL_REFREEZE_EVERY):
            await client.create_topic(f"t{t}", partitions=1)
            await _settle()
            assert len(unfreezes) == (t + 1) // FULL_REFREEZE_EVERY


async def test_a_long_creation_burst_is_frozen_in_batches_while_it_runs(
    autojump_clock: trio.abc.Clock, unfreezes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Topics created one after another, never holding still for a poll: once
    many objects wait unfrozen they are frozen (partially) during the burst,
    not all at once after it; those batches are never full refreezes and do
    not bring the periodic full one closer."""
    batch, every = 5_000, 3
    monkeypatch.setattr(_server, "BATCH_FREEZE_OBJECTS", batch)
    monkeypatch.setattr(_server, "FULL_REFREEZE_EVERY", every)
    gc.collect()
    gc.freeze()  # the baseline, as serve freezes after starting
    try:
        async with _refreezing() as (_, client):
            await _settle()
            before = gc.get_freeze_count()
            held: list[_Junk] = []
            for t in range(2 * every):
                # Each creation brings many long-lived objects with it.
                held.extend(_Junk() for _ in range(batch))
                await client.create_topic(f"t{t}", partitions=1)
                await trio.sleep(REFREEZE_POLL * 0.9)
                assert unfrozen_objects() < 3 * batch  # never the whole burst
            assert gc.get_freeze_count() >= before + len(held) - 2 * batch  # frozen mid-burst
            assert unfreezes == []  # only additions: batches are partial, never full
            await _settle()
            assert unfreezes == []  # nor counted: the refreeze once it held still is partial
            del held
    finally:
        gc.unfreeze()
        gc.collect()


async def test_a_burst_with_a_deletion_is_batched_then_fully_refrozen(
    autojump_clock: trio.abc.Clock, unfreezes: list[int]
) -> None:
    """Objects died while frozen (a topic deleted early in a burst): the burst
    is still frozen in partial batches while it runs, and the refreeze once it
    held still is full and collects them."""
    async with _refreezing() as (_, client):
        await client.create_topic("gone", partitions=1)
        await _settle()
        junk = _Junk()
        dead = weakref.ref(junk)
        gc.freeze()
        del junk  # died while frozen
        await client.delete_topic("gone")
        held = [_Junk() for _ in range(2 * BATCH_FREEZE_OBJECTS)]
        for t in range(3):
            await client.create_topic(f"t{t}", partitions=1)
            await trio.sleep(REFREEZE_POLL * 0.9)
        assert unfrozen_objects() < BATCH_FREEZE_OBJECTS  # frozen by a batch
        assert unfreezes == []  # partial
        assert dead() is not None
        await _settle()
        assert unfreezes == [1]
        assert dead() is None
        del held


async def test_the_periodic_full_refreeze_is_off_for_a_large_frozen_heap(
    autojump_clock: trio.abc.Clock, unfreezes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above :data:`PERIODIC_FULL_MAX_OBJECTS` frozen objects additions never
    make a refreeze full (it would walk the whole heap); a deletion still does."""
    monkeypatch.setattr(_server, "PERIODIC_FULL_MAX_OBJECTS", 0)
    async with _refreezing() as (_, client):
        for t in range(FULL_REFREEZE_EVERY + 1):
            await client.create_topic(f"t{t}", partitions=1)
            await _settle()
        assert unfreezes == []
        await client.delete_topic("t0")
        await _settle()
        assert unfreezes == [1]


async def test_the_backoff_after_a_full_refreeze_delays_only_full_ones(
    autojump_clock: trio.abc.Clock, unfreezes: list[int]
) -> None:
    """While backing off after a full refreeze, a burst is still frozen in
    partial batches; the next full refreeze waits for the backoff."""
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        broker.connect() as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(partial(refreeze_after_changes, broker, backoff=1e6))
        await client.create_topic("gone", partitions=1)
        await _settle()
        await client.delete_topic("gone")
        await _settle()
        assert unfreezes == [1]  # full, then backing off for a long time
        held = [_Junk() for _ in range(2 * BATCH_FREEZE_OBJECTS)]
        for t in range(3):
            await client.create_topic(f"t{t}", partitions=1)
            await trio.sleep(REFREEZE_POLL * 0.9)
        assert unfrozen_objects() < BATCH_FREEZE_OBJECTS  # a partial batch ran
        await client.delete_topic("t0")
        await _settle()
        assert unfreezes == [1]  # the full one waits
        nursery.cancel_scope.cancel()
        del held


async def test_many_new_long_lived_objects_are_frozen_without_a_shape_change(
    autojump_clock: trio.abc.Clock,
) -> None:
    """State made by touching partitions (not by creating them) leaves the
    oldest generation's collections once there is a lot of it."""
    gc.collect()
    gc.freeze()  # what the process holds so far is the baseline, as serve freezes after starting
    try:
        async with _refreezing():
            await _settle()
            before = gc.get_freeze_count()
            few = [_Junk() for _ in range(1_000)]
            gc.collect()  # an oldest-generation collection keeps them
            await _settle()
            assert gc.get_freeze_count() == before  # few: left to the collector
            many = [_Junk() for _ in range(GROWTH_FREEZE_OBJECTS)]
            gc.collect()
            await _settle()
            assert gc.get_freeze_count() >= before + GROWTH_FREEZE_OBJECTS
            del few, many
    finally:
        gc.unfreeze()
        gc.collect()


def test_a_refreeze_counts_what_it_froze_not_the_whole_frozen_heap() -> None:
    """The count ``gc_refrozen`` logs is the refreeze's own (found without
    walking every frozen object); a partial one leaves the frozen heap be."""
    gc.collect()
    gc.freeze()
    try:
        heap = [_Junk() for _ in range(2_000)]
        objects, _seconds = refreeze(full=False)
        assert objects >= len(heap)
        frozen = gc.get_freeze_count()
        more = [_Junk() for _ in range(500)]
        objects, _seconds = refreeze(full=False)
        assert objects == gc.get_freeze_count() - frozen
        assert len(more) <= objects < frozen
        del heap, more
        objects, _seconds = refreeze(full=True)
        assert objects == gc.get_freeze_count()  # full: everything again
    finally:
        gc.unfreeze()
        gc.collect()


def test_serve_collects_the_youngest_generation_less_often() -> None:
    """Only the youngest generation's threshold is raised; the others keep
    theirs (whatever the process set)."""
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 7, 3)
        assert collector_thresholds() == (YOUNG_COLLECTION_THRESHOLD, 7, 3)
        assert YOUNG_COLLECTION_THRESHOLD > 700
        assert collector_thresholds(5_000) == (5_000, 7, 3)
    finally:
        gc.set_threshold(*saved)


def test_serve_runs_with_those_thresholds_and_restores_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """``run_server`` serves with :func:`collector_thresholds` and puts the
    process's own back when it returns (here: a broker that fails to open)."""
    seen: list[tuple[int, int, int]] = []

    @asynccontextmanager
    async def failing_broker(*_args: object, **_kwargs: object) -> AsyncIterator[Broker]:
        seen.append(gc.get_threshold())
        raise ConfigError("no broker in this test")
        yield  # pragma: no cover

    monkeypatch.setattr(_server, "open_broker", failing_broker)
    monkeypatch.setattr(_server, "configure_logging", lambda *_a, **_k: None)
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        config = _server.ServerConfig(data_dir=str(tmp_path), port=0)
        assert _server.run_server(config) == 2
        assert seen == [(YOUNG_COLLECTION_THRESHOLD, 10, 10)]
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*saved)
