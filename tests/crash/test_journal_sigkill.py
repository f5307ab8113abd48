"""Real processes, real files, real fsync: SIGKILL a writer at random moments.

A child process appends records with durability `always` and prints each
acknowledged base offset. The parent kills it with SIGKILL at a random moment
(seeded), reopens the log, and checks that every acknowledged record is there,
in order, byte for byte, that offsets are contiguous, and that nothing was
stored that the child never wrote.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from headwater.journal import HEADER_SIZE, Log, LogConfig, RealFileSystem, iter_records

pytestmark = pytest.mark.crash

ROUNDS = 20

CHILD = textwrap.dedent(
    """
    import sys, trio
    from headwater.journal import LogConfig, encode_record, open_log

    def payload(i):
        return (b"%08d" % i) * (1 + i % 37)

    async def main(path, start):
        config = LogConfig(durability="always", segment_bytes=64 * 1024)
        async with open_log(path, config=config) as log:
            print("ready", flush=True)

            async def writer(w):
                i = start + w
                while True:
                    h = await log.append(encode_record(payload(i), count=1 + i % 3))
                    print(h.base_offset, i, flush=True)
                    i += 4

            async with trio.open_nursery() as nursery:
                for w in range(4):
                    nursery.start_soon(writer, w)

    trio.run(main, sys.argv[1], int(sys.argv[2]))
    """
)


def payload(i: int) -> bytes:
    return (b"%08d" % i) * (1 + i % 37)


def test_sigkill_never_loses_an_acknowledged_record(tmp_path: Path) -> None:
    """20 rounds of SIGKILL at random moments; every ack survives exactly once."""
    rng = random.Random(20261128)
    path = str(tmp_path / "log")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    acked: dict[int, int] = {}  # base offset -> i
    for round_no in range(ROUNDS):
        start = (round_no + 1) * 1_000_000
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, path, str(start)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert "ready" == child.stdout.readline().strip()
            time.sleep(rng.uniform(0.0, 0.15))
            child.send_signal(signal.SIGKILL)
            out, _ = child.communicate(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                acked[int(parts[0])] = int(parts[1])
        log = Log.open(path, RealFileSystem(), LogConfig(segment_bytes=64 * 1024))
        try:
            records = iter_records(log.read(log.earliest_offset, 1 << 30))
        finally:
            log.abandon()
        stored = {h.base_offset: (h, bytes(r[HEADER_SIZE:])) for h, r in records}
        expected_next = 0
        for h, _ in records:
            assert expected_next == h.base_offset, f"round {round_no}: offsets not contiguous"
            expected_next = h.next_offset
        for offset, i in acked.items():
            assert offset in stored, f"round {round_no}: acked offset {offset} lost"
            header, data = stored[offset]
            assert payload(i) == data
            assert 1 + i % 3 == header.count
        for _header, data in stored.values():
            number = int(data[:8])
            assert payload(number) == data, "a record the child never wrote"
    assert len(acked) > ROUNDS
