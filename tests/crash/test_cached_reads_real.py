"""``RealFileSystem.pread_cached`` on a real file: bytes just written (in the
page cache) come back as ``pread`` returns them; past the end it returns
what there is, as ``pread`` does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headwater.journal import RealFileSystem


def test_cached_bytes_read_as_pread_reads_them(tmp_path: Path) -> None:
    """Written bytes are cached: the same bytes as ``pread``."""
    if not hasattr(os, "RWF_NOWAIT"):
        pytest.skip("no RWF_NOWAIT here: pread_cached always answers None")
    fs = RealFileSystem()
    data = os.urandom(3 << 20)
    handle = fs.open(str(tmp_path / "f"))
    try:
        fs.write(handle, data)
        got = fs.pread_cached(handle, 1 << 20, 1 << 20)
        assert got is not None
        assert data[1 << 20 : 2 << 20] == bytes(got)
        tail = fs.pread_cached(handle, 1 << 20, (3 << 20) - 100)
        assert tail is not None
        assert data[-100:] == bytes(tail)
        assert fs.pread(handle, 1 << 20, 1 << 20) == data[1 << 20 : 2 << 20]
    finally:
        fs.close(handle)
