"""``tune_allocator``: glibc's mmap and trim thresholds for ~1 MB buffers."""

from __future__ import annotations

import sys

import pytest

from headwater.transport._malloc import (
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_THRESHOLD,
    TRIM_THRESHOLD,
    tune_allocator,
)


class FakeLibc:
    """Records mallopt calls; answers ``result`` (glibc: 1 on success)."""

    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)


def test_sets_both_thresholds() -> None:
    """The mmap threshold above a record (1 MiB) and a trim threshold above it."""
    libc = FakeLibc()
    assert tune_allocator(libc)
    assert [(M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)] == libc.calls
    assert MMAP_THRESHOLD > 1 << 20
    assert TRIM_THRESHOLD >= 2 * MMAP_THRESHOLD


def test_reports_a_refusal() -> None:
    """mallopt answering 0 (not set) is reported as False."""
    assert not tune_allocator(FakeLibc(result=0))


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's MALLOC_*_ variables are left alone: nothing is set."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    libc = FakeLibc()
    assert not tune_allocator(libc)
    assert [] == libc.calls


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_real_c_library_accepts_it() -> None:
    """On Linux with glibc the real call succeeds (no fake)."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert tune_allocator()
