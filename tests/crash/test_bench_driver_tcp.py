"""headwater.bench over real TCP: ``headwater_server`` starts ``headwater serve``
on a free port and the peer-benchmark driver produces, consumes and measures
latency through it (real clock; each call bounded by the driver's timeouts)."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from headwater.bench import HeadwaterDriver, headwater_server
from headwater.bench._driver import HDR

pytestmark = pytest.mark.crash


def test_driver_over_tcp_round_trip_and_latency(tmp_path: Path) -> None:
    """Every event produced over TCP is consumed back in order; the two-process
    latency methods (run here in two threads) see every event; SIGTERM stops
    the server."""
    with headwater_server(str(tmp_path / "data"), "always") as (url, pid):
        d = HeadwaterDriver(url, "bench", {"quiet_logs": False})
        d.reset()
        payloads = [HDR.pack(i, 0) + os.urandom(84) for i in range(2000)]
        assert 0 == d.produce(payloads, "async", 500, 1000)["errors"]
        assert 2000 == d.stored_count()
        got = d.consume(2000, 1000, "explicit")
        assert (2000, 1999) == (got["received"], got["last_seq"])

        d.latency_prepare("default")
        ready = multiprocessing.Event()
        samples: list[int] = []
        consumer = threading.Thread(
            target=lambda: samples.extend(d.latency_consume(50, "default", ready, 20.0))
        )
        consumer.start()
        assert ready.wait(20)
        assert 50 == d.latency_produce(50, 100, 0.001)["sent"]
        consumer.join(30)
        assert 50 == len(samples)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: the server is gone
