"""State journals: an actor's state kept as events, replayed on restart.

Theory of operation
-------------------
A state journal is a directory holding a :class:`~headwater.journal.Log` of
events (one CBOR-encoded event per record, durability ``always``) and at most
one snapshot file. The state is never written directly: ``persist(event)``
appends the event durably, then folds it into the state with the pure
``apply(state, event) -> state``. Opening replays: it loads the snapshot (the
state as of some offset) and applies every later event.

``snapshot()`` writes the current state with the offset it covers to a new
file, makes it durable (fsync, rename, directory fsync), then deletes the log
segments wholly below that offset. So snapshots bound replay time and disk use.
Snapshot file layout: ``b"HWSS"``, version (1 byte), covered offset (8 bytes),
CRC-32C of the CBOR body (4 bytes), then the CBOR body. A damaged snapshot is
ignored when the log still holds every event; otherwise opening fails with
:class:`~headwater.CorruptionError` rather than start from a wrong state.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import cbor2
import crc32c
import trio

from headwater._errors import CorruptionError, InvalidArgument
from headwater._logging import get_logger
from headwater.journal._async import AsyncLog, open_log, run_blocking
from headwater.journal._files import FileSystem, RealFileSystem, write_file_atomically
from headwater.journal._log import LogConfig
from headwater.journal._record import HEADER_SIZE, encode_record, iter_records

__all__ = ["StateJournal", "open_state_journal", "start_state_journal"]

_log = get_logger("headwater.journal")
_SNAP: Final = struct.Struct(">4sBqI")
_MAGIC: Final = b"HWSS"

Apply = Callable[[Any, Any], Any]


class StateJournal:
    """A state kept as a journal of events (made by :func:`open_state_journal`)."""

    def __init__(
        self,
        log: AsyncLog,
        path: str,
        fs: FileSystem,
        apply: Apply,
        snapshot_every: int,
        to_plain: Callable[[Any], Any] = lambda state: state,
        from_plain: Callable[[Any], Any] = lambda plain: plain,
    ) -> None:
        self._to_plain = to_plain
        self._from_plain = from_plain
        self.log = log
        self.path = path
        self.fs = fs
        self._apply = apply
        self.state: Any = None
        self.snapshot_every = snapshot_every
        self.replayed = 0
        self._since_snapshot = 0
        self._lock = trio.Lock()
        # (end offset, generation) of write_nowait events not yet known to
        # be durable, in the generation of the oldest of them: a snapshot
        # checks them first (after a failed fsync cut them, the log's
        # next_offset is the cut's, and waiting for it would pass).
        self._nowait: tuple[int, int] | None = None

    def _encode(self, event: Any) -> bytes:
        try:
            payload = cbor2.dumps(event)
        except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"state event {event!r} is not CBOR-encodable ({exc}); use plain data"
            ) from None
        return encode_record(payload, count=1)

    async def persist(self, event: Any) -> Any:
        """Append ``event`` durably, then apply it; returns the new state.

        Raises ``InvalidArgument`` for an event CBOR cannot encode (nothing is
        written) and storage errors from the disk (the state is unchanged).
        """
        return await self.persist_many([event])

    async def persist_many(self, events: list[Any]) -> Any:
        """Append several events (one fsync for all), then apply them in order."""
        records = [self._encode(e) for e in events]
        async with self._lock:
            generation = self.log.generation
            end = 0
            for record in records:
                end = self.log.write(record).next_offset
            await self.log.wait_durable(end, generation)
            state = self.state
            for event in events:
                state = self._apply(state, event)
            self.state = state
            self._since_snapshot += len(events)
        if self.snapshot_every and self._since_snapshot >= self.snapshot_every:
            await self.snapshot()
        return self.state

    def write_nowait(self, events: list[Any]) -> tuple[int, int]:
        """Append ``events`` and apply them at once, *without* waiting for
        the fsync; returns ``(end_offset, generation)`` for
        ``log.wait_durable``. For an actor that must not block on the disk
        (appends of concurrent callers then share one fsync): nothing may
        act on the new state outside the process before ``wait_durable``
        returns, and when the log's generation moved (a failed fsync) the
        in-memory state is ahead of the disk and the journal must be
        reopened. Never blocks."""
        records = [self._encode(e) for e in events]
        generation = self.log.generation
        end = self.log.next_offset
        for record in records:
            end = self.log.write(record).next_offset
        if self._nowait is None or self._nowait[1] == generation:
            self._nowait = (end, generation)
        state = self.state
        for event in events:
            state = self._apply(state, event)
        self.state = state
        self._since_snapshot += len(events)
        return end, generation

    @property
    def snapshot_due(self) -> bool:
        """Whether ``snapshot_every`` events were written since the last snapshot."""
        return bool(self.snapshot_every) and self._since_snapshot >= self.snapshot_every

    async def snapshot(self) -> None:
        """Write the current state as a snapshot and drop the events it covers.

        The state is taken at once, and its snapshot written only once the
        events it covers are durable (events of :meth:`write_nowait` may
        still be on their way to the disk): a snapshot never runs ahead of
        the journal. Raises :class:`~headwater.FsyncFailedError` (no
        snapshot written) if that fsync failed, or an earlier one cut
        events of :meth:`write_nowait` (the state is ahead of the disk:
        reopen the journal)."""
        async with self._lock:
            generation = self.log.generation
            offset = self.log.next_offset
            body = cbor2.dumps(self._to_plain(self.state))
            earlier = self._nowait
            if earlier is not None:
                await self.log.wait_durable(*earlier)  # raises if they were cut
                if self._nowait == earlier:
                    self._nowait = None
            await self.log.wait_durable(offset, generation)
            data = _SNAP.pack(_MAGIC, 1, offset, crc32c.crc32c(body)) + body
            await run_blocking(self.fs, self._write_snapshot, data)
            self.log.log.delete_before(offset)
            self._since_snapshot = 0
        _log.info("state_snapshot", path=self.path, offset=offset, bytes=len(data))

    def _write_snapshot(self, data: bytes) -> None:
        write_file_atomically(self.fs, f"{self.path}/snapshot", [data])
        self.fs.fsync_dir(self.path)

    def _read_snapshot(self) -> tuple[int, Any] | None:
        path = f"{self.path}/snapshot"
        if not self.fs.exists(path):
            return None
        handle = self.fs.open(path)
        try:
            data = self.fs.pread(handle, self.fs.size(handle), 0)
        finally:
            self.fs.close(handle)
        if len(data) < _SNAP.size:
            return None
        magic, version, offset, crc = _SNAP.unpack_from(data)
        body = data[_SNAP.size :]
        if magic != _MAGIC or version != 1 or crc32c.crc32c(body) != crc:
            return None
        return offset, self._from_plain(cbor2.loads(body))

    async def _replay(self, initial: Any) -> None:
        snap = self._read_snapshot()
        log = self.log.log
        if snap is None:
            if log.earliest_offset > 0:
                raise CorruptionError(
                    f"{self.path}: the snapshot is missing or damaged and the journal "
                    f"starts at offset {log.earliest_offset}, so the state cannot be "
                    "rebuilt; restore the snapshot file"
                )
            offset, state = 0, initial
        else:
            offset, state = snap
            if offset < log.earliest_offset or offset > log.next_offset:
                raise CorruptionError(
                    f"{self.path}: snapshot covers offset {offset} but the journal holds "
                    f"[{log.earliest_offset}, {log.next_offset}); restore the files"
                )
        while offset < log.next_offset:
            data = log.read(offset, 1 << 20)
            for header, record in iter_records(data):
                if header.base_offset < offset:
                    continue
                state = self._apply(state, cbor2.loads(record[HEADER_SIZE:]))
                self.replayed += 1
                offset = header.next_offset
            await trio.lowlevel.checkpoint()
        self.state = state


@asynccontextmanager
async def open_state_journal(
    path: str,
    *,
    apply: Apply,
    initial: Any = None,
    fs: FileSystem | None = None,
    snapshot_every: int = 10_000,
    segment_bytes: int = 4 * 1024 * 1024,
    to_plain: Callable[[Any], Any] | None = None,
    from_plain: Callable[[Any], Any] | None = None,
) -> AsyncIterator[StateJournal]:
    """Open the state journal at ``path``, replaying snapshot and events.

    ``apply(state, event) -> state`` must be pure; ``initial`` is the state of
    an empty journal. Every ``snapshot_every`` events a snapshot is taken
    automatically (0: only when you call ``snapshot()``). A state that is not
    plain CBOR data needs ``to_plain`` / ``from_plain`` for its snapshots.
    """
    fs = fs if fs is not None else RealFileSystem()
    await run_blocking(fs, fs.makedirs, path)
    config = LogConfig(durability="always", segment_bytes=segment_bytes, segment_ms=None)
    async with open_log(f"{path}/log", config=config, fs=fs) as log:
        journal = StateJournal(
            log,
            path,
            fs,
            apply,
            snapshot_every,
            to_plain or (lambda state: state),
            from_plain or (lambda plain: plain),
        )
        await journal._replay(initial)
        yield journal


async def start_state_journal(nursery: trio.Nursery, path: str, **options: Any) -> StateJournal:
    """Open the state journal at ``path`` (as :func:`open_state_journal`, same
    keyword ``options``) for as long as ``nursery`` runs, and return it once
    replayed. Actors pass their incarnation's nursery, so the journal closes
    cleanly when the actor stops or restarts."""

    async def hold(task_status: trio.TaskStatus[StateJournal]) -> None:
        async with open_state_journal(path, **options) as journal:
            task_status.started(journal)
            await trio.sleep_forever()

    journal: StateJournal = await nursery.start(hold)
    return journal
