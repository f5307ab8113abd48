"""Persistent state: state journals and persistent actors survive restarts."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from headwater import CorruptionError, FsyncFailedError, InvalidArgument
from headwater.actors import PersistentActor, open_actor_system
from headwater.journal import PowerLoss, SimulatedFileSystem, open_state_journal
from headwater.supervision import ChildSpec


def add(state: dict[str, int], event: dict[str, Any]) -> dict[str, int]:
    """Pure fold: {"k": key, "n": amount}."""
    return {**state, event["k"]: state.get(event["k"], 0) + event["n"]}


async def test_replay_and_snapshot(autojump_clock: trio.abc.Clock) -> None:
    """Reopening replays every persisted event; a snapshot bounds the replay and
    frees old segments; the state stays the same either way."""
    fs = SimulatedFileSystem()
    async with open_state_journal("/s", apply=add, initial={}, fs=fs, segment_bytes=300) as j:
        for i in range(20):
            await j.persist({"k": f"k{i % 3}", "n": i})
        expected = dict(j.state)
    async with open_state_journal("/s", apply=add, initial={}, fs=fs, segment_bytes=300) as j:
        assert expected == j.state
        assert 20 == j.replayed
        await j.snapshot()
        await j.persist({"k": "k0", "n": 100})
        expected = dict(j.state)
        assert j.log.earliest_offset > 0
    async with open_state_journal("/s", apply=add, initial={}, fs=fs, segment_bytes=300) as j:
        assert expected == j.state
        assert j.replayed < 5
    with pytest.raises(InvalidArgument, match="CBOR"):
        async with open_state_journal("/s", apply=add, initial={}, fs=fs) as j:
            await j.persist({"k": object(), "n": 1})


async def test_power_loss_keeps_every_persisted_event(autojump_clock: trio.abc.Clock) -> None:
    """persist returns only after fsync: a power loss right after keeps it."""
    fs = SimulatedFileSystem()
    with pytest.raises(PowerLoss):
        async with open_state_journal("/s", apply=add, initial={}, fs=fs) as j:
            await j.persist({"k": "a", "n": 1})
            await j.persist({"k": "a", "n": 2})
            fs.crash_after(0)  # the power goes now
    fs.crash()
    async with open_state_journal("/s", apply=add, initial={}, fs=fs) as j:
        assert {"a": 3} == j.state


async def test_a_snapshot_waits_for_the_events_it_covers(autojump_clock: trio.abc.Clock) -> None:
    """Events of write_nowait may not be on disk yet when a snapshot is
    taken: the snapshot waits until they are, so a power loss right after it
    reopens to its state (it used to run ahead of the journal: "snapshot
    covers offset N but the journal holds [0, M)" at every open)."""
    fs = SimulatedFileSystem()
    with pytest.raises(PowerLoss):
        async with open_state_journal("/s", apply=add, initial={}, fs=fs, segment_bytes=200) as j:
            await j.persist({"k": "a", "n": 1})
            for _ in range(6):
                j.write_nowait([{"k": "a", "n": 10}])  # rolls: segments not synced
            await j.snapshot()
            fs.crash_after(0)  # the power goes now
    fs.crash()
    async with open_state_journal("/s", apply=add, initial={}, fs=fs, segment_bytes=200) as j:
        assert {"a": 61} == j.state
        assert 0 == j.replayed


async def test_a_snapshot_after_a_failed_fsync_of_its_events_refuses(
    autojump_clock: trio.abc.Clock,
) -> None:
    """write_nowait events an fsync failed to save are cut from the log but
    still in the state: a snapshot then raises FsyncFailedError and writes
    nothing (the log's next offset is the cut's, so waiting for it alone
    passed, and the snapshot saved the lost events)."""
    fs = SimulatedFileSystem()
    async with open_state_journal("/s", apply=add, initial={}, fs=fs) as j:
        await j.persist({"k": "a", "n": 1})
        end, generation = j.write_nowait([{"k": "a", "n": 100}])
        fs.fail_next_fsyncs(1)
        with pytest.raises(FsyncFailedError):
            await j.log.wait_durable(end, generation)
        with pytest.raises(FsyncFailedError):
            await j.snapshot()
        assert not fs.exists("/s/snapshot")
    async with open_state_journal("/s", apply=add, initial={}, fs=fs) as j:
        assert {"a": 1} == j.state


async def test_lost_snapshot_with_truncated_journal_is_an_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    """If the snapshot is gone and the journal no longer starts at 0, opening fails loudly."""
    fs = SimulatedFileSystem()
    async with open_state_journal("/s", apply=add, initial={}, fs=fs, segment_bytes=200) as j:
        for i in range(10):
            await j.persist({"k": "a", "n": i})
        await j.snapshot()
    fs.remove("/s/snapshot")
    with pytest.raises(CorruptionError, match="snapshot"):
        async with open_state_journal("/s", apply=add, initial={}, fs=fs, segment_bytes=200):
            pass


class Counter(PersistentActor):
    """Counts per key; replies with the count."""

    def initial_state(self) -> dict[str, int]:
        return {}

    def apply(self, state: dict[str, int], event: dict[str, Any]) -> dict[str, int]:
        return add(state, event)

    async def handle(self, message: Any) -> Any:
        if message == "get":
            return self.state
        await self.persist({"k": message, "n": 1})
        return self.state[message]


async def test_persistent_actor_survives_kill_and_reopen(autojump_clock: trio.abc.Clock) -> None:
    """A supervisor's restart of a persistent actor is lossless, and so is closing
    and reopening the whole system on the same data."""
    fs = SimulatedFileSystem()
    spec = ChildSpec("counter", lambda: Counter("/data/counter", fs=fs))
    async with open_actor_system(children=(spec,)) as system:
        ref = system.lookup("/counter")
        for key in ["a", "b", "a"]:
            await ref.ask(key)
        await system.kill("/counter")
        assert {"a": 2, "b": 1} == await ref.ask("get")
        assert 3 == await ref.ask("a")
    async with open_actor_system(children=(spec,)) as system:
        assert {"a": 3, "b": 1} == await system.lookup("/counter").ask("get")
