"""The data directory: one broker at a time (an OS lock), and a directory
that cannot be used said in one line (real files, real processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import headwater
from headwater.broker import open_broker

from .server_proc import env, hw, server

pytestmark = pytest.mark.crash


def serve(data_dir: Path | str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`headwater serve` that is expected to stop by itself (it fails)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "headwater",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
    )


def failure(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The one JSON line a failed `serve` prints (and no traceback)."""
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("event") == "server_failed"]
    assert 1 == len(failed), result.stderr
    assert "exception" not in failed[0]
    return failed[0]


async def test_a_second_embedded_broker_on_one_directory_is_refused(tmp_path: Path) -> None:
    """open_broker(D) twice in one process: the second gets DataDirLockedError
    naming the directory and this pid; once the first closes, D opens again."""
    data = tmp_path / "data"
    with trio.fail_after(30):
        async with open_broker(str(data)) as first:
            with pytest.raises(headwater.DataDirLockedError) as info:
                async with open_broker(str(data)):
                    pass  # pragma: no cover - must not open
            async with first.connect() as client:
                await client.create_topic("t")  # the first broker is unharmed
        assert os.getpid() == info.value.pid
        assert str(data) == info.value.path
        assert str(data) in str(info.value)
        assert f"process {os.getpid()}" in str(info.value)
        assert "data_dir_locked" == info.value.code
        async with open_broker(str(data)) as again, again.connect() as client:
            assert ["t"] == [t.name for t in await client.list_topics()]


def test_two_servers_on_one_directory_and_no_stale_lock_after_kill_9(tmp_path: Path) -> None:
    """A second `serve` on a directory in use exits 1 with one line naming the
    directory and the holder's pid; the first keeps serving. After kill -9 of
    the holder a new server opens the directory at once (no stale lock)."""
    data = tmp_path / "data"
    with server(data) as first:
        assert 0 == hw(first.url, "topics", "create", "t").returncode
        second = serve(data)
        assert 1 == second.returncode
        line = failure(second)
        assert "data_dir_locked" == line["code"]
        assert str(data) in str(line["error"])
        assert f"process {first.pid}" in str(line["error"])
        produced = hw(first.url, "produce", "t", "--value", "still here")
        assert 0 == produced.returncode, produced.stderr
        assert f"{first.pid}\n" == (data / ".lock").read_text()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    with server(data, log_name="second.log") as after:
        consumed = hw(after.url, "consume", "t")
        assert 0 == consumed.returncode, consumed.stderr
        assert "still here\n" == consumed.stdout
        assert f"{after.pid}\n" == (data / ".lock").read_text()


def test_a_file_as_data_directory_is_one_line(tmp_path: Path) -> None:
    """--data-dir naming a file, or a path under a file: exit 1 and one line
    naming the path and the OS error, quickly."""
    a_file = tmp_path / "afile"
    a_file.write_text("not a directory")
    for path, reason in ((a_file, "it is a file"), (a_file / "sub", "Not a directory")):
        result = serve(path, timeout=20)
        assert 1 == result.returncode
        line = failure(result)
        assert "data_dir_error" == line["code"]
        assert f"cannot use {path} as the data directory: {reason}" in str(line["error"])


async def test_embedded_open_of_a_file_raises_data_dir_error(tmp_path: Path) -> None:
    """open_broker on a file, or under one: DataDirError naming the path."""
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for path in (a_file, a_file / "sub"):
        with pytest.raises(headwater.DataDirError) as info:
            async with open_broker(str(path)):
                pass  # pragma: no cover - must not open
        assert str(path) == info.value.path
        assert not isinstance(info.value, headwater.DataDirLockedError)


_READ_ONLY_SCRIPT = """
import sys, trio, headwater
from headwater.broker import open_broker
async def main():
    try:
        async with open_broker(sys.argv[1]):
            print("opened")
    except headwater.DataDirError as exc:
        print(type(exc).__name__, exc.code, exc)
trio.run(main)
"""


def _read_only(path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with ``path`` a read-only tmpfs (a private mount
    namespace: root ignores file modes, not a read-only mount)."""
    path.mkdir()
    script = f'mount -t tmpfs -o ro tmpfs "{path}" && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", *command],
        capture_output=True,
        text=True,
        timeout=30,
        env=env(),
    )


@pytest.fixture
def mount_namespace(tmp_path: Path) -> None:
    """Skip (saying why) where a private read-only mount is not permitted."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a read-only mount")
    probe = tmp_path / "probe"
    result = _read_only(probe, "true")
    probe.rmdir()
    if result.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {result.stderr.strip()}")


@pytest.mark.usefixtures("mount_namespace")
def test_a_read_only_data_directory_is_one_line(tmp_path: Path) -> None:
    """`serve` on a read-only file system: exit 1 and one line naming the path
    and EROFS; embedded open_broker raises DataDirError."""
    data = tmp_path / "ro"
    result = _read_only(
        data,
        sys.executable,
        "-m",
        "headwater",
        "serve",
        "--data-dir",
        str(data),
        "--port",
        "0",
        "--log-format",
        "json",
    )
    assert 1 == result.returncode, result.stderr
    line = failure(result)
    assert "data_dir_error" == line["code"]
    assert f"cannot use {data} as the data directory: Read-only file system (EROFS)" in str(
        line["error"]
    )
    embedded = _read_only(
        tmp_path / "ro2", sys.executable, "-c", _READ_ONLY_SCRIPT, str(tmp_path / "ro2")
    )
    assert f"DataDirError data_dir_error cannot use {tmp_path / 'ro2'} as the data directory: " in (
        embedded.stdout
    ), embedded.stderr
    assert "EROFS" in embedded.stdout
