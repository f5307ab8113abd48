"""Word count: the running count of each word in topic ``text``.

Reads lines from topic ``text`` (values are UTF-8 text) and writes to topic
``word-counts`` the running count per word: key = the word, value = the count
as a decimal UTF-8 string. Exactly once (the default): outputs, the count
table's changelog and the input offsets commit in one transaction.

Run it against a server::

    headwater run examples/word_count.py --url headwater://127.0.0.1:9092

or try it in memory with ``python examples/word_count.py`` (the TestDriver:
no broker, no I/O).
"""

from __future__ import annotations

import pathlib
import sys

try:
    import headwater
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    import headwater

from headwater.processing import Job

job = Job("word-count")
counts = (
    job.stream("text", value=str)
    .flat_map(str.split)
    .group_by(lambda word: word)
    .count(name="counts")
)
counts.to_stream().to("word-counts")


async def demo() -> None:
    """Pipe three lines through the job in memory and print the results."""
    from headwater.processing import TestDriver

    driver = TestDriver(job, {"text": 2})
    for line in ["the quick brown fox", "jumps over the lazy dog", "the end"]:
        await driver.pipe("text", line)
    for word, count in driver.read("word-counts", key=str, value=str):
        print(f"{word}\t{count}")
    assert dict(driver.read("word-counts", key=str, value=str))["the"] == "3"


if __name__ == "__main__":
    import trio

    trio.run(demo)
    print("headwater", headwater.__version__, "- word count done")
