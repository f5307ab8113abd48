"""Network-fault rounds through :func:`open_proxy`, and the I1/I2 checker.

Theory of operation
-------------------
A *round* runs producers (idempotent, each sending numbered values with
``send_many``) and a consumer group through a :class:`~headwater.testing.Proxy`
in front of a live server, injects one fault of a given *kind* while they
run, heals it, lets everyone catch up, and returns a :class:`RoundResult`.
:func:`check_stored` then reads every partition back with a fresh client
(not through the proxy) and judges the history: every acknowledged event is
stored exactly once at its acknowledged offset (I1), offsets are contiguous
from 0 (I2), no value is stored twice ("duplicates" are stored copies, not
deliveries: consumers are at-least-once), and every acknowledged event was
delivered to the group at least once.

Used by ``tests/crash/test_network_faults.py`` and ``benchmarks/bench_faults.py``
(the README's reliability figures); real sockets and the real clock.
"""

from __future__ import annotations

import math
from collections import Counter

import attrs
import trio

from headwater._errors import HeadwaterError
from headwater.client._consumer import Consumer
from headwater.client._tcp import connect
from headwater.journal._batch import Event

from ._proxy import Proxy, open_proxy

__all__ = ["FAULT_KINDS", "Check", "RoundResult", "check_stored", "inject", "run_round"]

FAULT_KINDS = (
    "delay",
    "bandwidth",
    "black_hole",
    "drop",
    "reset",
    "half_close_up",
    "half_close_down",
    "refuse",
    "reset_storm",
)
"""Every fault kind :func:`inject` knows."""


@attrs.frozen
class RoundResult:
    """What one round did: acknowledged events, deliveries, recovery time."""

    kind: str
    acked: tuple[Event, ...]
    delivered: frozenset[tuple[int, int]]
    failed_sends: int
    recovery: float | None
    commits: tuple[tuple[int, int], ...]


@attrs.frozen
class Check:
    """The checker's verdict on a round (all counts; ``lost`` and
    ``duplicates`` must be 0, ``gaps`` too, ``undelivered`` too)."""

    acked: int
    stored: int
    lost: int
    duplicates: int
    gaps: int
    undelivered: int
    commits_backwards: int

    @property
    def ok(self) -> bool:
        """Whether every invariant held."""
        return not (
            self.lost or self.duplicates or self.gaps or self.undelivered or self.commits_backwards
        )


async def inject(proxy: Proxy, kind: str, outage: float) -> float:
    """Apply one fault of ``kind`` for about ``outage`` seconds; return the
    time (``trio.current_time()``) at which it healed."""
    faults = proxy.faults
    if kind == "delay":
        faults.delay = 0.02
    elif kind == "bandwidth":
        faults.bandwidth = 256 * 1024
    elif kind == "black_hole":
        faults.black_hole("both")
    elif kind == "drop":
        faults.drop_all("both")
    elif kind == "reset":
        proxy.reset_all()
        return trio.current_time()
    elif kind in ("half_close_up", "half_close_down"):
        proxy.half_close_all(kind.removeprefix("half_close_"))
        return trio.current_time()
    elif kind == "reset_storm":
        # A flapping network: every link reset every 50 ms for the outage.
        end = trio.current_time() + outage
        while trio.current_time() < end:
            proxy.reset_all()
            await trio.sleep(0.05)
        return trio.current_time()
    elif kind == "refuse":
        proxy.refuse = True
        proxy.reset_all()
    else:
        raise ValueError(f"unknown fault kind {kind!r}; use one of {FAULT_KINDS}")
    await trio.sleep(outage)
    proxy.heal()
    return trio.current_time()


async def run_round(
    server_port: int,
    kind: str,
    *,
    topic: str,
    group: str,
    producers: int = 2,
    consumers: int = 2,
    warmup: float = 0.3,
    outage: float = 0.8,
    after: float = 0.4,
    request_timeout: float = 0.5,
    deadline: float = 20.0,
    batch: int = 20,
) -> RoundResult:
    """One round (see the module docstring) against the server on
    ``server_port``; the topic must exist. Raises ``trio.TooSlowError`` if
    the consumers do not see every acknowledged event within ``deadline``."""
    acked: list[Event] = []
    ack_times: list[tuple[float, float]] = []  # (send started, acknowledged)
    failed = 0
    entered = 0  # clients inside their producer/consumer blocks
    all_entered = trio.Event()

    def enter() -> None:
        nonlocal entered
        entered += 1
        if entered == producers + consumers:
            all_entered.set()

    delivered: set[tuple[int, int]] = set()
    commits: list[tuple[int, int]] = []
    members: list[Consumer] = []
    stop_producing = trio.Event()
    done_consuming = trio.Event()
    producing = producers  # producers still in their send loop
    done_producing = trio.Event()

    async with open_proxy(server_port) as proxy:

        async def produce(number: int) -> None:
            nonlocal failed, producing
            async with (
                connect(
                    proxy.url, connect_timeout=request_timeout, request_timeout=request_timeout
                ) as client,
                client.producer(
                    linger=0.002, request_timeout=request_timeout, delivery_timeout=deadline
                ) as producer,
            ):
                enter()
                i = 0
                while not stop_producing.is_set():
                    values = [f"p{number}-{i + k}" for k in range(batch)]
                    i += batch
                    started = trio.current_time()
                    try:
                        stored = await producer.send_many(topic, values)
                    except HeadwaterError:
                        failed += len(values)
                        continue
                    acked.extend(stored)
                    ack_times.append((started, trio.current_time()))
                producing -= 1
                if not producing:
                    done_producing.set()

        async def consume(number: int) -> None:
            async with (
                connect(
                    proxy.url, connect_timeout=request_timeout, request_timeout=request_timeout
                ) as client,
                client.consumer(
                    topic,
                    group=group,
                    request_timeout=request_timeout,
                    max_wait=0.1,
                    session_timeout=2.0,
                    client_id=f"c{number}",
                ) as consumer,
            ):
                members.append(consumer)
                enter()
                while not done_consuming.is_set():
                    events = await consumer.getmany(1000, timeout=0.1)
                    delivered.update((e.partition, e.offset) for e in events)
                    if events:
                        try:
                            await consumer.commit()
                        except HeadwaterError:
                            continue
                        # positions committed just now (owned partitions only)
                        for partition in {e.partition for e in events}:
                            position = consumer.position(topic, partition)
                            if position is not None:
                                commits.append((partition, position))

        recovery: float | None = None
        with trio.fail_after(deadline + warmup + outage + after + 10):
            async with trio.open_nursery() as nursery:
                for n in range(producers):
                    nursery.start_soon(produce, n)
                for n in range(consumers):
                    nursery.start_soon(consume, n)
                await all_entered.wait()  # faults hit running clients, not their setup
                await trio.sleep(warmup)
                healed = await inject(proxy, kind, outage)
                # Recovery: from the heal until a send started after it is acknowledged.
                with trio.move_on_after(deadline):
                    while not any(start >= healed for start, _ in ack_times):  # noqa: ASYNC110
                        await trio.sleep(0.001)
                    recovery = min(end for start, end in ack_times if start >= healed) - healed
                await trio.sleep(after)
                stop_producing.set()
                proxy.heal()
                with trio.move_on_after(deadline):
                    # A send on its way when told to stop may still be
                    # acknowledged: every acknowledgement counts.
                    await done_producing.wait()
                    while not {(e.partition, e.offset) for e in acked} <= delivered:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                if not {(e.partition, e.offset) for e in acked} <= delivered:
                    # Say what stalled while the consumers are still there.
                    report = await stall_report(
                        server_port, topic, group, members, acked, delivered
                    )
                    raise trio.TooSlowError(
                        f"{kind}: the group did not deliver every acknowledged event within "
                        f"{deadline}s of the producers stopping\n{report}"
                    )
                done_consuming.set()
    return RoundResult(kind, tuple(acked), frozenset(delivered), failed, recovery, tuple(commits))


async def stall_report(
    server_port: int,
    topic: str,
    group: str,
    members: list[Consumer],
    acked: list[Event],
    delivered: set[tuple[int, int]],
) -> str:
    """What a stalled round looks like: per partition what was acknowledged
    and delivered, each consumer's view (membership, owned partitions,
    positions, connection) and the group as the server describes it (asked
    directly, not through the proxy)."""
    lines: list[str] = []
    by_partition: dict[int, list[int]] = {}
    for event in acked:
        by_partition.setdefault(event.partition, []).append(event.offset)
    for partition, offsets in sorted(by_partition.items()):
        missing = sorted(off for off in offsets if (partition, off) not in delivered)
        lines.append(
            f"partition {partition}: acked {len(offsets)} (max offset {max(offsets)}), "
            f"undelivered {len(missing)}"
            + (f" (offsets {missing[0]}..{missing[-1]})" if missing else "")
        )
    lines.extend(f"consumer {c.config.client_id}: {c._debug_state()}" for c in members)
    try:
        with trio.fail_after(5):
            async with connect(f"headwater://127.0.0.1:{server_port}") as admin:
                described = await admin.describe_group(group)
        lines.append(
            f"group {group}: state={described.state} generation={described.generation} members="
            + ", ".join(
                f"{m.client_id}/{m.member_id}:" + ",".join(str(tp.partition) for tp in m.assignment)
                for m in described.members
            )
            + " committed="
            + ", ".join(
                f"{gp.partition}:{gp.committed}/{gp.end_offset}"
                for gp in described.partitions
                if gp.topic == topic
            )
        )
    except (HeadwaterError, trio.TooSlowError) as exc:
        lines.append(f"group {group}: not described ({exc!r})")
    return "\n".join(lines)


async def read_back(url: str, topic: str, timeout: float = 20.0) -> tuple[list[Event], list[int]]:
    """Every stored event of ``topic`` (a fresh client, from offset 0) and
    each partition's next offset."""
    async with connect(url) as client:
        description = await client.describe_topic(topic)
        ends = [part.next_offset for part in description.partitions]
        out: list[Event] = []
        async with client.consumer(topic) as consumer:
            with trio.fail_after(timeout):
                while len(out) < sum(ends):
                    out.extend(await consumer.getmany(10_000, timeout=0.5))
        return out, ends


def check_stored(result: RoundResult, stored: list[Event], ends: list[int]) -> Check:
    """Judge a round's history against what is stored (see the module docstring)."""
    by_position: dict[tuple[int, int], object] = {}
    for event in stored:
        by_position[(event.partition, event.offset)] = event.value
    lost = sum(
        1 for e in result.acked if by_position.get((e.partition, e.offset), _MISSING) != e.value
    )
    copies = Counter(event.value for event in stored)
    duplicates = sum(n - 1 for n in copies.values() if n > 1)
    gaps = 0
    for partition, end in enumerate(ends):
        offsets = sorted(off for (part, off) in by_position if part == partition)
        gaps += len(set(range(end)) - set(offsets))
    undelivered = sum(1 for e in result.acked if (e.partition, e.offset) not in result.delivered)
    backwards = 0
    last: dict[int, int] = {}
    for partition, offset in result.commits:
        if offset < last.get(partition, -1):
            backwards += 1
        last[partition] = max(offset, last.get(partition, -1))
    return Check(
        acked=len(result.acked),
        stored=len(stored),
        lost=lost,
        duplicates=duplicates,
        gaps=gaps,
        undelivered=undelivered,
        commits_backwards=backwards,
    )


_MISSING = object()


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank (``nan`` if empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
