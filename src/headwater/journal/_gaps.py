"""Offset gaps left by a repair: the ``gaps`` file of a log directory.

Theory of operation
-------------------
``headwater repair`` (:func:`~headwater.journal.repair_log`) drops only the
damaged records of a log; the offsets they held become a *gap* that readers
skip (DECISIONS #16), never a cut of the valid records after them. Recovery
must then accept a jump in offsets where the gap is, and only there, so the
gaps are kept in a small JSON file beside the segments::

    {"version": 1, "gaps": [[first, end], ...]}    # each gap is [first, end)

It is written atomically (temporary file, fsync, rename, directory fsync).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from headwater._errors import CorruptionError
from headwater.journal._files import FileSystem, write_file_atomically

__all__ = ["GAPS_NAME", "covered", "merge_gaps", "read_gaps", "write_gaps"]

GAPS_NAME = "gaps"

Gap = tuple[int, int]


def read_gaps(fs: FileSystem, directory: str) -> list[Gap]:
    """The gaps recorded in ``directory`` (none if there is no gaps file)."""
    path = f"{directory}/{GAPS_NAME}"
    if not fs.exists(path):
        return []
    handle = fs.open(path)
    try:
        data = fs.pread(handle, fs.size(handle), 0)
    finally:
        fs.close(handle)
    try:
        doc = json.loads(data)
        gaps = [(int(a), int(b)) for a, b in doc["gaps"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptionError(
            f"{path}: unreadable gaps file ({exc}); restore it, or delete it and run "
            "`headwater repair` again"
        ) from None
    return merge_gaps(gaps)


def write_gaps(fs: FileSystem, directory: str, gaps: Iterable[Gap]) -> None:
    """Replace the gaps file of ``directory`` (atomically, directory fsynced)."""
    body = json.dumps({"version": 1, "gaps": [list(g) for g in merge_gaps(gaps)]})
    write_file_atomically(fs, f"{directory}/{GAPS_NAME}", [body.encode() + b"\n"])
    fs.fsync_dir(directory)


def merge_gaps(gaps: Iterable[Gap]) -> list[Gap]:
    """Sorted, with touching or overlapping gaps merged; empty ones dropped."""
    out: list[Gap] = []
    for first, end in sorted(g for g in gaps if g[1] > g[0]):
        if out and first <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((first, end))
    return out


def covered(gaps: Sequence[Gap], first: int, end: int) -> bool:
    """Whether every offset of ``[first, end)`` lies in one recorded gap."""
    return any(a <= first and end <= b for a, b in gaps)
