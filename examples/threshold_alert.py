"""A threshold alert: act when a sensor's reading stays high.

Reads readings from topic ``readings`` (key = the sensor id, JSON values such
as ``{"celsius": 71.5}``), keeps each sensor's average over sliding 30-second
windows (``.current()``: every update), and when an average goes over 70 degrees
calls ``alert()`` (``foreach``: here it prints and records; in real life it
would page someone or call a webhook) and writes the alert to topic ``alerts``.
With exactly-once processing the *topics* are exactly once; a ``foreach``
action is at least once (a batch that aborts is processed again), so make it
idempotent (the alert carries the window, usable as a deduplication key).

Run it: ``headwater run examples/threshold_alert.py --url URL``; try it in
memory: ``python examples/threshold_alert.py``.
"""

from __future__ import annotations

import pathlib
import sys
from collections import deque
from typing import Any

try:
    import headwater
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    import headwater

from headwater.processing import Job, Windowed, sliding

LIMIT = 70.0
ALERTS: deque[str] = deque(maxlen=100)  # the latest alerts, for the demo


def alert(window: Windowed, average: float) -> None:
    """The action: here, print and remember it."""
    message = (
        f"sensor {window.key}: average {average:.1f} C over {window.start:.0f}-{window.end:.0f}s"
    )
    ALERTS.append(message)
    print("ALERT", message)


def add(acc: list[float], reading: dict[str, Any]) -> list[float]:
    """Fold a reading into [sum, count]."""
    return [acc[0] + reading["celsius"], acc[1] + 1]


job = Job("threshold-alert", on_error="dead_letter")
averages = (
    job.stream("readings", key=str, value="json")
    .window(sliding(30, grace=5), name="averages")
    .aggregate([0.0, 0], add)
    .current()
    .map(lambda acc: acc[0] / acc[1])
    .filter(lambda average: average > LIMIT)
)
averages.foreach(alert, with_key=True)
averages.to("alerts")


async def demo() -> None:
    """A sensor warming up, another staying cool."""
    from headwater.processing import TestDriver

    driver = TestDriver(job)
    for t, sensor, celsius in [(0, "s1", 65), (10, "s1", 72), (20, "s1", 78), (21, "s2", 20)]:
        await driver.pipe("readings", {"celsius": celsius}, key=sensor, timestamp=t)
    assert len(ALERTS) == 1, ALERTS
    assert [r.key for r in driver.output("alerts")] == [b"s1"]


if __name__ == "__main__":
    import trio

    trio.run(demo)
    print("headwater", headwater.__version__, "- threshold alert done")
