"""Journals: durable, checksummed, append-only logs on disk.

:func:`open_log` opens a segmented :class:`Log` with a durability policy
(``always`` with group commit, ``interval``, ``never``); the record codec
(:func:`encode_record`, :func:`decode_header`) is shared with clients, which
build the records the broker stores verbatim but for offsets. All file access
goes through a :class:`FileSystem`, real or :class:`SimulatedFileSystem` (power
loss, failing fsync, full disk). See ``docs/journal.md``.
"""

from __future__ import annotations

from ._async import AsyncLog as AsyncLog
from ._async import open_log as open_log
from ._fdcache import DEFAULT_MAX_OPEN_FILES as DEFAULT_MAX_OPEN_FILES
from ._fdcache import FileCache as FileCache
from ._fdcache import fit_open_files as fit_open_files
from ._files import FileSystem as FileSystem
from ._files import PowerLoss as PowerLoss
from ._files import RealFileSystem as RealFileSystem
from ._files import SimulatedFileSystem as SimulatedFileSystem
from ._log import Durability as Durability
from ._log import Log as Log
from ._log import LogConfig as LogConfig
from ._record import HEADER_SIZE as HEADER_SIZE
from ._record import NO_PRODUCER as NO_PRODUCER
from ._record import Corrupt as Corrupt
from ._record import RecordHeader as RecordHeader
from ._record import Short as Short
from ._record import decode_header as decode_header
from ._record import encode_record as encode_record
from ._record import iter_records as iter_records
from ._record import patch_header as patch_header
from ._record import patch_record as patch_record
from ._repair import Damage as Damage
from ._repair import RepairReport as RepairReport
from ._repair import repair_log as repair_log
from ._state import StateJournal as StateJournal
from ._state import open_state_journal as open_state_journal

__all__ = [
    "open_log",
    "open_state_journal",
    "StateJournal",
    "AsyncLog",
    "Log",
    "LogConfig",
    "Durability",
    "FileSystem",
    "FileCache",
    "DEFAULT_MAX_OPEN_FILES",
    "fit_open_files",
    "RealFileSystem",
    "SimulatedFileSystem",
    "PowerLoss",
    "encode_record",
    "decode_header",
    "patch_record",
    "patch_header",
    "iter_records",
    "RecordHeader",
    "Short",
    "Corrupt",
    "Damage",
    "RepairReport",
    "repair_log",
    "HEADER_SIZE",
    "NO_PRODUCER",
]
