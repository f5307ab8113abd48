"""Page views per page per minute, one result per minute when it closes.

Reads page-view events from topic ``page-views`` (JSON values such as
``{"page": "/home", "user": "u1"}``; the event time is the event's own
timestamp), counts them per page in tumbling one-minute windows that accept
events up to 10 seconds late, and writes one result per page and minute to
``page-views-per-minute`` when the minute closes (``.final()``): key = the
page, value = the count, headers ``hw.window.start``/``hw.window.end``.
``wall_clock=True`` closes a minute even if the partition then goes quiet.
Events later than the grace go to ``page-views-views-late``.

Run it: ``headwater run examples/page_views.py --url URL``; try it in memory:
``python examples/page_views.py``.
"""

from __future__ import annotations

import pathlib
import sys

try:
    import headwater
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    import headwater

from headwater.processing import Job, tumbling

job = Job("page-views")
(
    job.stream("page-views", value="json")
    .group_by(lambda view: view["page"])
    .window(tumbling(60, grace=10, wall_clock=True), name="views")
    .count()
    .final()
    .to("page-views-per-minute")
)


async def demo() -> None:
    """Views at 1-71 s of event time (one of them too late), then 2 idle
    minutes of wall time close the second minute."""
    from headwater.processing import TestDriver

    driver = TestDriver(job)
    views = [(1, "/home"), (20, "/home"), (30, "/about"), (65, "/home")]
    views += [(55, "/about")]  # out of order, but its minute is open until 70 (grace)
    views += [(71, "/about")]  # event time 71: the first minute closes
    views += [(5, "/about")]  # too late: its minute has closed
    for t, page in views:
        await driver.pipe("page-views", {"page": page, "user": "u"}, timestamp=t)
    await driver.advance(120)
    for record in driver.output("page-views-per-minute"):
        start = float(record.headers["hw.window.start"])
        print(f"{record.key!r} minute starting {start:.0f}s: {record.value!r} views")
    for record in driver.output("page-views-views-late"):
        print(f"late (beyond the 10 s grace): {record.value!r}")
    assert [(r.key, r.value) for r in driver.output("page-views-per-minute")] == [
        (b"/home", b"2"),
        (b"/about", b"2"),
        (b"/home", b"1"),
        (b"/about", b"1"),
    ]
    assert len(driver.output("page-views-views-late")) == 1


if __name__ == "__main__":
    import trio
    import trio.testing

    trio.run(demo, clock=trio.testing.MockClock(autojump_threshold=0))
    print("headwater", headwater.__version__, "- page views done")
