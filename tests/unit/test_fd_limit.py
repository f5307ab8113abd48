"""Fitting the cap on open segment files to ``RLIMIT_NOFILE``
(:func:`headwater.journal.fit_open_files`), with the limits faked."""

from __future__ import annotations

import resource

import pytest

from headwater import ConfigError
from headwater.journal import DEFAULT_MAX_OPEN_FILES, fit_open_files
from headwater.journal._fdcache import FD_RESERVE, QUIET_FIT_OPEN_FILES
from headwater.testing import capture_logs


class FakeLimits:
    """``getrlimit``/``setrlimit`` for RLIMIT_NOFILE, refusing above ``hard``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> None:
        self.soft, self.hard = soft, hard
        self.set_to: list[int] = []
        monkeypatch.setattr(resource, "getrlimit", self.getrlimit)
        monkeypatch.setattr(resource, "setrlimit", self.setrlimit)

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert resource.RLIMIT_NOFILE == which
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert resource.RLIMIT_NOFILE == which
        if limits[0] > self.hard:
            raise ValueError("not allowed to raise maximum limit")
        self.soft = limits[0]
        self.set_to.append(limits[0])


def test_enough_room_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a roomy limit the cap is the one asked for and no limit moves."""
    limits = FakeLimits(monkeypatch, 65536, 65536)
    assert DEFAULT_MAX_OPEN_FILES == fit_open_files(None, connections=1024)
    assert 100 == fit_open_files(100)
    assert [] == limits.set_to


def test_a_low_soft_limit_is_raised_toward_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Soft 1,024 under hard 1,048,576 (systemd's default): the soft limit is
    raised to what the cap needs, and that is logged."""
    limits = FakeLimits(monkeypatch, 1024, 1 << 20)
    with capture_logs() as logs:
        assert DEFAULT_MAX_OPEN_FILES == fit_open_files(None, connections=1024)
    need = DEFAULT_MAX_OPEN_FILES + 1024 + FD_RESERVE
    assert [need] == limits.set_to
    assert [("fd_limit_raised", need, 1024)] == [
        (e["event"], e["rlimit_nofile"], e["was"]) for e in logs
    ]


def test_a_chosen_cap_above_the_hard_limit_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """max_open_files=5000 under a hard limit of 2,048: a ConfigError that
    names RLIMIT_NOFILE and how to raise it."""
    FakeLimits(monkeypatch, 1024, 2048)
    with pytest.raises(ConfigError, match=r"RLIMIT_NOFILE allows 2048.*ulimit -n 5256"):
        fit_open_files(5000)


def test_the_default_cap_shrinks_to_fit_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hard limit 1,024 with 16 connections: the default cap becomes what is
    left (1,024 - 16 - reserve), and a warning names the limit."""
    FakeLimits(monkeypatch, 1024, 1024)
    with capture_logs() as logs:
        cap = fit_open_files(None, connections=16)
    assert 1024 - 16 - FD_RESERVE == cap
    (warning,) = [e for e in logs if e["event"] == "fd_limit_low"]
    assert ("warning", 1024, cap) == (
        warning["log_level"],
        warning["rlimit_nofile"],
        warning["max_open_files"],
    )
    assert "ulimit -n" in warning["advice"]


def test_the_default_cap_shrunk_but_still_large_is_logged_at_info(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hard limit 8,192 (below the default's need, above the old 4,096
    default's): the default cap fits in what is left, logged at info, no
    warning."""
    FakeLimits(monkeypatch, 1024, 8192)
    with capture_logs() as logs:
        cap = fit_open_files(None, connections=1024)
    assert 8192 - 1024 - FD_RESERVE == cap
    assert QUIET_FIT_OPEN_FILES <= cap < DEFAULT_MAX_OPEN_FILES
    assert ["fd_limit_raised", "fd_limit_fitted"] == [e["event"] for e in logs]
    assert ("info", cap) == (logs[-1]["log_level"], logs[-1]["max_open_files"])


def test_a_tiny_limit_still_leaves_half_for_everything_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hard limit 256 (less than the reserve): half of it for segment files."""
    FakeLimits(monkeypatch, 256, 256)
    assert 128 == fit_open_files(None, connections=1024)
