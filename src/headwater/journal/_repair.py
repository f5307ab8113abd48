"""Repairing a damaged log: drop only the damaged records (DECISIONS #16).

Theory of operation
-------------------
:func:`repair_log` reads every segment of a log directory in full (index
files are not trusted here) and walks its records, checking checksums and
that offsets follow one another. At a damaged record it looks for the next
valid record further on (a record header: magic byte, version, sane fields,
a matching CRC-32C, offsets not going back). What lies between is dropped;
the offsets it held, up to the next valid record, become a *gap* recorded in
the log's ``gaps`` file (:mod:`._gaps`), which recovery accepts and readers
skip. The valid records after the damage keep their offsets.

* Damage with no valid record after it in a segment drops the rest of that
  segment; the gap runs to the next segment's base offset, or, in the last
  segment, to the highest offset known to have been stored (the clean or
  synced checkpoint, or the damaged header's own count): a new empty segment
  starts there, so acknowledged offsets are never handed out again.
* Damage past the last synced position of the last segment is *tail*
  damage: never acknowledged, it is truncated as at every open.
* A segment file that starts inside the previous one, or holds no valid
  record at all past the end of the log (a stray file), is removed whole.

With ``apply=False`` nothing is written: the report says what a repair would
drop. With ``apply=True`` each damaged segment is rewritten atomically with
its valid records (temporary file, fsync, rename), stray segments are
removed, the gaps file is written, and the directory is fsynced. The broker
must not have the log open (``headwater repair`` refuses while one does).
"""

from __future__ import annotations

from typing import Literal

import attrs

from headwater._logging import get_logger
from headwater.journal._files import FileSystem, write_file_atomically
from headwater.journal._gaps import Gap, covered, merge_gaps, read_gaps, write_gaps
from headwater.journal._record import (
    ATTR_COMPACTED,
    MAGIC,
    VERSION,
    Corrupt,
    RecordHeader,
    Short,
    decode_header,
)

__all__ = ["Damage", "RepairReport", "repair_log"]

_log = get_logger("headwater.journal")
_MARK = bytes([MAGIC, VERSION])
_MARK_AT = 8  # magic and version follow length and crc


@attrs.frozen
class Damage:
    """One damaged stretch of a segment file that a repair drops.

    ``position`` and ``length`` are bytes of ``file``; ``first_offset`` ..
    ``end_offset`` (exclusive) are the offsets the dropped records held,
    which become a gap (empty for tail damage and stray files). ``kind`` is
    ``interior`` (synced data: the offsets become a gap), ``tail`` (never
    synced: truncated, as every open does) or ``stray`` (a whole file that
    is not part of the log).
    """

    file: str
    position: int
    length: int
    first_offset: int
    end_offset: int
    reason: str
    kind: Literal["interior", "tail", "stray"]

    def describe(self) -> str:
        """One line for people."""
        if self.kind == "stray":
            return f"{self.file}: remove the whole file ({self.length} bytes): {self.reason}"
        held = (
            f"offsets {self.first_offset}..{self.end_offset - 1} become a gap"
            if self.end_offset > self.first_offset
            else "no acknowledged offsets"
        )
        return (
            f"{self.file}: drop {self.length} byte(s) at byte {self.position} "
            f"({self.kind}: {self.reason}); {held}"
        )


@attrs.frozen
class RepairReport:
    """What :func:`repair_log` found in one log directory (and did, if applied)."""

    path: str
    damages: tuple[Damage, ...]
    gaps: tuple[Gap, ...]
    applied: bool

    @property
    def clean(self) -> bool:
        """True when nothing needs repairing: no damage, or only an unsynced
        tail (never acknowledged; every open truncates it anyway)."""
        return all(d.kind == "tail" for d in self.damages)


def _segment_bases(fs: FileSystem, path: str) -> list[int]:
    return sorted(
        int(name[:-4]) for name in fs.listdir(path) if name.endswith(".log") and name[:-4].isdigit()
    )


def _read_all(fs: FileSystem, path: str) -> bytes:
    handle = fs.open(path)
    try:
        return fs.pread(handle, fs.size(handle), 0)
    finally:
        fs.close(handle)


def _resync(
    data: bytes, start: int, floor: int, ceiling: int | None
) -> tuple[int, RecordHeader] | None:
    """Position and header of the next valid record at or after byte
    ``start`` whose offsets lie in ``[floor, ceiling)``, if any."""
    at = start + _MARK_AT
    while True:
        found = data.find(_MARK, at)
        if found < 0:
            return None
        pos = found - _MARK_AT
        at = found + 1
        if pos < start:
            continue
        header = decode_header(data, pos)
        if (
            isinstance(header, RecordHeader)
            and header.base_offset >= floor
            and (ceiling is None or header.next_offset <= ceiling)
        ):
            return pos, header


def _reason(header: RecordHeader | Short | Corrupt, expected: int) -> str:
    if isinstance(header, Short):
        return f"torn record: {header.needed} byte(s) missing at the end"
    if isinstance(header, Corrupt):
        return header.reason
    return f"offset {header.base_offset} where {expected} was expected"


def repair_log(path: str, fs: FileSystem, *, apply: bool) -> RepairReport:
    """Find (and with ``apply``, drop) the damaged records of the log at
    ``path``; see the module docstring. Returns what was found."""
    from headwater.journal._log import Log, LogConfig, _name

    path = path.rstrip("/")
    bases = _segment_bases(fs, path)
    checkpoint = Log(path, fs, LogConfig(), lambda: 0)._read_checkpoint()
    known = read_gaps(fs, path)
    new_gaps: list[Gap] = []
    damages: list[Damage] = []
    rewrites: dict[int, list[tuple[int, int]]] = {}
    removals: list[int] = []
    new_segment: int | None = None

    def is_gap(first: int, end: int) -> bool:
        return covered(merge_gaps([*known, *new_gaps]), first, end)

    expected: int | None = None
    for i, base in enumerate(bases):
        last = i == len(bases) - 1
        later = bases[i + 1] if not last else None
        seg_path = f"{path}/{_name(base, 'log')}"
        data = _read_all(fs, seg_path)
        if expected is not None and base < expected:
            damages.append(
                Damage(
                    seg_path,
                    0,
                    len(data),
                    expected,
                    expected,
                    f"it starts at offset {base}, inside the previous segment",
                    "stray",
                )
            )
            removals.append(base)
            continue
        if last and checkpoint is not None and checkpoint[1] == base:
            tail_from = checkpoint[2]
        elif last:
            tail_from = 0 if checkpoint is None or checkpoint[1] < base else len(data)
        else:
            tail_from = len(data)
        if (
            i > 0
            and data
            and _resync(data, 0, base, later) is None
            and (not last or tail_from == 0)
        ):
            # Not one valid record: a stray file, not a segment of this log.
            damages.append(
                Damage(seg_path, 0, len(data), base, base, "no valid record in it", "stray")
            )
            removals.append(base)
            continue
        if expected is not None and base > expected and not is_gap(expected, base):
            damages.append(
                Damage(
                    seg_path,
                    0,
                    0,
                    expected,
                    base,
                    f"the segment starts at offset {base}, but {expected} was expected "
                    "(records are missing)",
                    "interior",
                )
            )
            new_gaps.append((expected, base))
        nxt = base
        pos = 0
        keep: list[tuple[int, int]] = []
        damaged = False
        while pos < len(data):
            header = decode_header(data, pos)
            if isinstance(header, RecordHeader) and (
                header.base_offset == nxt
                or (
                    header.base_offset > nxt
                    and (header.attributes & ATTR_COMPACTED or is_gap(nxt, header.base_offset))
                )
            ):
                if keep and keep[-1][1] == pos:
                    keep[-1] = (keep[-1][0], pos + header.length)
                else:
                    keep.append((pos, pos + header.length))
                nxt = header.next_offset
                pos += header.length
                continue
            damaged = True
            reason = _reason(header, nxt)
            if last and pos >= tail_from:
                damages.append(Damage(seg_path, pos, len(data) - pos, nxt, nxt, reason, "tail"))
                break
            resynced = _resync(data, pos + 1, nxt, later)
            if resynced is not None:
                found, valid = resynced
                damages.append(
                    Damage(seg_path, pos, found - pos, nxt, valid.base_offset, reason, "interior")
                )
                if valid.base_offset > nxt:
                    new_gaps.append((nxt, valid.base_offset))
                pos = found
                continue
            # Nothing valid after the damage in this segment.
            if later is not None:
                end = later
            else:
                end = nxt
                loose = decode_header(data, pos, check_crc=False)
                if isinstance(loose, RecordHeader) and loose.base_offset == nxt:
                    end = max(end, loose.next_offset)
                if checkpoint is not None and checkpoint[1] == base:
                    end = max(end, checkpoint[0])
            damages.append(Damage(seg_path, pos, len(data) - pos, nxt, end, reason, "interior"))
            if end > nxt:
                new_gaps.append((nxt, end))
                if later is None:
                    new_segment = end
            nxt = end
            break
        if damaged:
            rewrites[base] = keep
        expected = nxt

    report = RepairReport(path, tuple(damages), tuple(merge_gaps(new_gaps)), apply)
    if not apply or not damages:
        return report
    if new_gaps:
        # First: a repair killed midway and run again must find the gaps of
        # the segments it rewrote (or it resyncs past their valid records).
        write_gaps(fs, path, [*known, *new_gaps])
    for base, keep in rewrites.items():
        seg_path = f"{path}/{_name(base, 'log')}"
        data = _read_all(fs, seg_path)
        write_file_atomically(fs, seg_path, [data[a:b] for a, b in keep])
        for ext in ("index", "timeindex"):
            index = f"{path}/{_name(base, ext)}"
            if fs.exists(index):
                fs.remove(index)
    for base in removals:
        for ext in ("log", "index", "timeindex"):
            p = f"{path}/{_name(base, ext)}"
            if fs.exists(p):
                fs.remove(p)
    if new_segment is not None:
        fs.close(fs.open(f"{path}/{_name(new_segment, 'log')}"))
    fs.fsync_dir(path)
    for damage in damages:
        _log.warning(
            "journal_repaired",
            file=damage.file,
            position=damage.position,
            bytes_dropped=damage.length,
            kind=damage.kind,
            gap=[damage.first_offset, damage.end_offset],
            reason=damage.reason,
        )
    return report
