"""Changelog restore is complete: for random event sequences, a run that
drops every task and rebuilds it from the changelog at random points gives
exactly the outputs of a run without restarts (tables, every window kind,
stream joins, watermarks)."""

from __future__ import annotations

from collections.abc import Callable

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.processing import Job, TestDriver, hopping, session, sliding, tumbling


def jobs() -> dict[str, Callable[[], Job]]:
    def windows(spec: object, final: bool) -> Callable[[], Job]:
        def build() -> Job:
            job = Job("p")
            table = job.stream("a", key=str).window(spec).count()  # type: ignore[arg-type]
            (table.final() if final else table.current()).to("out")
            return job

        return build

    def counts() -> Job:
        job = Job("p")
        job.stream("a", key=str).group_by(lambda v: v[:1]).count().to_stream().to("out")
        return job

    def join() -> Job:
        job = Job("p")
        job.stream("a", key=str).join(
            job.stream("b", key=str), lambda x, y: x + y, within=3, grace=2
        ).to("out")
        return job

    return {
        "counts": counts,
        "tumbling": windows(tumbling(5, grace=2), True),
        "hopping": windows(hopping(6, 3, grace=1), True),
        "sliding": windows(sliding(4, grace=2), False),
        "session": windows(session(3, grace=2), True),
        "session-current": windows(session(2, grace=1), False),
        "join": join,
    }


events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["k1", "k2", "k3"]),
        st.integers(0, 40),
        st.booleans(),
    ),
    max_size=40,
)


async def run(
    build: Callable[[], Job], evs: list[tuple[str, str, int, bool]], restarts: bool
) -> list[object]:
    job = build()
    driver = TestDriver(job, dict.fromkeys(job.source_topics, 2))
    for topic, key, t, restart in evs:
        if topic in job.source_topics:
            await driver.pipe(topic, f"{key}{t}", key=key, timestamp=float(t))
        if restarts and restart:
            await driver.restart()
    return [(r.key, r.value, dict(r.headers), r.timestamp) for r in driver.output("out")] + [
        (r.key, r.value) for t in driver.topology.late_topics for r in driver.output(t)
    ]


@settings(max_examples=300)
@given(name=st.sampled_from(sorted(jobs())), evs=events)
def test_restarts_from_the_changelog_change_nothing(
    name: str, evs: list[tuple[str, str, int, bool]]
) -> None:
    """Outputs with restarts == outputs without."""
    build = jobs()[name]
    assert trio.run(run, build, evs, False) == trio.run(run, build, evs, True)
