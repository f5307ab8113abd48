"""Persistent actors: state kept as a journal of events.

A :class:`PersistentActor` keeps its state in a
:class:`~headwater.journal.StateJournal` under its own directory. Its
``started`` hook opens the journal and replays it (from the latest snapshot)
before the first message is taken, so a restart by a supervisor, or closing
and reopening the data directory, is lossless: the state after a restart is
the fold of every event whose ``persist`` returned.
"""

from __future__ import annotations

from typing import Any

from headwater.actors._actor import Actor
from headwater.journal._files import FileSystem
from headwater.journal._state import StateJournal, start_state_journal

__all__ = ["PersistentActor"]


class PersistentActor(Actor):
    """An actor whose state survives restarts (subclass it).

    Override :meth:`initial_state` and the pure :meth:`apply`; change state
    only through ``await self.persist(event)``. ``self.state`` is the current
    state. ``journal_dir`` is this actor's own directory (one per actor).
    """

    snapshot_every: int = 10_000

    def __init__(self, journal_dir: str, *, fs: FileSystem | None = None) -> None:
        self.journal_dir = journal_dir
        self._fs = fs
        self._journal: StateJournal | None = None

    def initial_state(self) -> Any:
        """The state of an empty journal."""
        return None

    def apply(self, state: Any, event: Any) -> Any:
        """Fold one event into the state (pure: no I/O, no clock)."""
        raise NotImplementedError(f"{type(self).__name__} must define apply(state, event)")

    @property
    def state(self) -> Any:
        """The state as of the last persisted event."""
        if self._journal is None:
            return self.initial_state()
        return self._journal.state

    @property
    def journal(self) -> StateJournal:
        """The open state journal (after ``started``)."""
        assert self._journal is not None, "the journal opens in started()"
        return self._journal

    async def started(self) -> None:
        """Open and replay the journal; subclasses call ``await super().started()``."""

        self._journal = await start_state_journal(
            self.context.nursery,
            self.journal_dir,
            apply=self.apply,
            initial=self.initial_state(),
            fs=self._fs,
            snapshot_every=self.snapshot_every,
        )

    async def persist(self, event: Any) -> Any:
        """Append ``event`` durably and apply it; returns the new state."""
        return await self.journal.persist(event)

    async def snapshot(self) -> None:
        """Snapshot the state now (bounds replay time, frees old segments)."""
        await self.journal.snapshot()
