"""``headwater repair``: find and drop damaged records in a stopped broker's
data directory (issue 11 point 3, DECISIONS #16).

Each partition directory ``<data-dir>/topics/<topic>/<partition>`` is one log;
:func:`repair_data_dir` runs :func:`~headwater.journal.repair_log` on each
(or on the one asked for), as a dry run unless ``apply`` is set. It works
offline, on files: the broker must be stopped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import attrs

from headwater._errors import (
    ConfigError,
    DataDirLockedError,
    UnknownPartitionError,
    UnknownTopicError,
)
from headwater.broker._broker import LOCK_FILE
from headwater.journal._files import FileSystem, LockHeld, RealFileSystem
from headwater.journal._repair import RepairReport, repair_log

__all__ = ["PartitionRepair", "repair_data_dir"]


@attrs.frozen
class PartitionRepair:
    """The repair report of one partition's log."""

    topic: str
    partition: int
    report: RepairReport


def _numbers(fs: FileSystem, path: str) -> list[int]:
    return sorted(int(n) for n in fs.listdir(path) if n.isdigit())


@contextlib.contextmanager
def _offline(fs: FileSystem, data_dir: str) -> Iterator[None]:
    """Hold the data directory's lock (the one a running broker holds) while
    repairing, or raise :class:`~headwater.DataDirLockedError`."""
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        handle = fs.lock(path)
    except LockHeld as exc:
        holder = f"process {exc.pid}" if exc.pid is not None else "another process"
        raise DataDirLockedError(
            f"data directory {data_dir} is in use by a broker ({holder} holds {path}); "
            "stop it before repairing",
            path=data_dir,
            pid=exc.pid,
        ) from None
    try:
        yield
    finally:
        fs.close(handle)


def repair_data_dir(
    data_dir: str,
    *,
    topic: str | None = None,
    partition: int | None = None,
    apply: bool = False,
    fs: FileSystem | None = None,
) -> list[PartitionRepair]:
    """Check (and with ``apply``, repair) every partition log under
    ``data_dir``, or only ``topic`` (and ``partition``). Blocking: run it in
    a thread from async code. The broker must not be running on ``data_dir``."""
    fs = fs if fs is not None else RealFileSystem()
    if partition is not None and topic is None:
        raise ConfigError("--partition needs --topic")
    topics_dir = os.path.join(data_dir, "topics")
    if not fs.exists(data_dir):
        raise ConfigError(f"data directory {data_dir} does not exist")
    names = sorted(fs.listdir(topics_dir)) if fs.exists(topics_dir) else []
    if topic is not None:
        if topic not in names:
            shown = ", ".join(names[:10]) + (
                f" and {len(names) - 10} more" if len(names) > 10 else ""
            )
            raise UnknownTopicError(
                f"no topic {topic!r} in {topics_dir} (there: {shown or 'none'})"
            )
        names = [topic]
    out: list[PartitionRepair] = []
    with _offline(fs, data_dir):
        for name in names:
            out.extend(_repair_topic(fs, topics_dir, name, partition, apply))
    return out


def _repair_topic(
    fs: FileSystem, topics_dir: str, name: str, partition: int | None, apply: bool
) -> list[PartitionRepair]:
    tdir = os.path.join(topics_dir, name)
    parts = _numbers(fs, tdir)
    if partition is not None:
        if partition not in parts:
            raise UnknownPartitionError(
                f"topic {name!r} has no partition {partition} in {tdir} "
                f"(there: {', '.join(map(str, parts)) or 'none'})"
            )
        parts = [partition]
    return [
        PartitionRepair(name, p, repair_log(os.path.join(tdir, str(p)), fs, apply=apply))
        for p in parts
    ]
