"""The share subscription core: deltas, decisions, replay (no event loop)."""

from __future__ import annotations

from typing import Any

import pytest

from headwater import ConfigError, InvalidArgument, LockLostError
from headwater.broker._share import (
    ShareCore,
    ShareSettings,
    ShareState,
    apply_delta,
    check_lock_lost,
    state_from_plain,
    state_to_plain,
)


class Harness:
    """A core whose deltas are folded in at once, and kept for replay."""

    def __init__(self, **settings: Any) -> None:
        self.settings = ShareSettings("t", **settings)
        self.state = ShareState()
        self.core = ShareCore(self.settings, self.state)
        self.log: list[dict[str, Any]] = []

    def fold(self, deltas: list[dict[str, Any]]) -> None:
        for d in deltas:
            apply_delta(self.state, d)
            self.log.append(d)
        self.core.forget_settled()

    def load(self, n: int, start: int = 0) -> None:
        self.core.load(((o, f"e{o}") for o in range(start, start + n)), start + n)

    def acquire(self, consumer: str, n: int, now: int) -> list[tuple[int, int]]:
        deltas, got = self.core.acquire(consumer, n, now)
        self.fold(deltas)
        return [(d.offset, d.delivery_count) for d in got]

    def settle(self, consumer: str, items: list[Any], now: int) -> list[tuple[int, str]]:
        deltas, refused = self.core.settle(consumer, items, now)
        self.fold(deltas)
        return refused


def test_deliver_ack_moves_floor_and_never_redelivers() -> None:
    """Acked offsets leave the state; the floor passes a contiguous acked run."""
    h = Harness()
    h.load(5)
    assert [(0, 1), (1, 1), (2, 1)] == h.acquire("a", 3, now=0)
    assert [(3, 1), (4, 1)] == h.acquire("b", 10, now=0)
    assert [] == h.settle("a", [(1, "ack", None, None), (2, "ack", None, None)], now=1)
    assert 0 == h.state.floor
    assert [] == h.settle("a", [(0, "ack", None, None)], now=1)
    assert 3 == h.state.floor
    assert {3, 4} == set(h.state.entries)
    assert [] == h.acquire("c", 10, now=10**9)  # 3, 4 are locked until expire() runs
    assert 3 == h.state.acked


def test_double_ack_is_a_noop_and_foreign_ack_is_refused() -> None:
    """A retried ack changes nothing; acking what another consumer holds is refused."""
    h = Harness()
    h.load(2)
    h.acquire("a", 1, now=0)
    h.acquire("b", 1, now=0)
    assert [] == h.settle("a", [(0, "ack", None, None)], now=1)
    assert [] == h.settle("a", [(0, "ack", None, None)], now=1)
    assert 1 == h.state.acked
    refused = h.settle("a", [(1, "ack", None, None), (7, "nack", None, None)], now=1)
    assert [1, 7] == [o for o, _ in refused]
    with pytest.raises(LockLostError, match="t/0 offsets 1, 7"):
        check_lock_lost(refused, "t", 0)


def test_lock_timeout_redelivers_after_list_backoff_then_dead_letters() -> None:
    """Each lock timeout releases with the list backoff (the last repeating);
    after max_deliveries the event is dead, never delivered again."""
    h = Harness(ack_timeout_ms=100, max_deliveries=3, backoff_ms=(10, 50))
    h.load(1)
    assert [(0, 1)] == h.acquire("a", 1, now=0)
    assert 100 == h.core.next_deadline(0)
    h.fold(h.core.expire(99))
    assert 1 == len(h.state.entries)
    assert "acquired" == h.state.entries[0].state
    h.fold(h.core.expire(100))
    assert ("available", 110) == (h.state.entries[0].state, h.state.entries[0].visible_at)
    assert 110 == h.core.next_deadline(100)
    assert [] == h.acquire("b", 1, now=109)
    assert [(0, 2)] == h.acquire("b", 1, now=110)
    h.fold(h.core.expire(210))
    assert 260 == h.state.entries[0].visible_at  # the second backoff: 50
    assert [(0, 3)] == h.acquire("c", 1, now=260)
    h.fold(h.core.expire(360))
    assert "dead" == h.state.entries[0].state
    assert "ack timeout" == h.state.entries[0].error
    [dead] = h.core.dead_letters()
    assert (0, "e0", 3) == (dead.offset, dead.payload, dead.delivery_count)
    assert [] == h.acquire("d", 1, now=10**6)
    h.fold([{"t": "archived", "o": [0]}])
    assert (1, 1, 2) == (h.state.floor, h.state.dead_lettered, h.state.redelivered)
    assert [] == h.core.dead_letters()


def test_exponential_backoff_with_cap_on_nack_and_nack_delay() -> None:
    """nack honours the exponential backoff; nack(delay=) overrides it."""
    s = ShareSettings("t", backoff_base_ms=100, backoff_max_ms=350)
    assert [100, 200, 350, 350] == [s.backoff(n) for n in (1, 2, 3, 4)]
    h = Harness(backoff_base_ms=100, backoff_max_ms=350, max_deliveries=10)
    h.load(2)
    h.acquire("a", 2, now=0)
    h.settle("a", [(0, "nack", None, "boom"), (1, "nack", 5000, None)], now=10)
    assert (110, "boom") == (h.state.entries[0].visible_at, h.state.entries[0].error)
    assert 5010 == h.state.entries[1].visible_at
    assert [(0, 2)] == h.acquire("a", 5, now=110)
    h.settle("a", [(0, "nack", None, None)], now=110)
    assert 310 == h.state.entries[0].visible_at


def test_reject_dead_letters_at_once_with_the_error() -> None:
    """reject skips the remaining deliveries."""
    h = Harness(max_deliveries=5)
    h.load(1)
    h.acquire("a", 1, now=0)
    h.settle("a", [(0, "reject", None, "bad input")], now=1)
    assert [(0, "bad input", 1)] == [
        (d.offset, d.error, d.delivery_count) for d in h.core.dead_letters()
    ]


def test_extend_renews_the_lock() -> None:
    """extend moves the deadline to now + ack_timeout."""
    h = Harness(ack_timeout_ms=100)
    h.load(1)
    h.acquire("a", 1, now=0)
    h.settle("a", [(0, "extend", None, None)], now=90)
    assert [] == h.core.expire(100)
    assert 190 == h.core.next_deadline(100)


def test_consumer_leaving_releases_its_events_at_once() -> None:
    """Events held by a consumer that left are visible again immediately."""
    h = Harness(backoff_ms=(1000,))
    h.load(3)
    h.acquire("a", 2, now=0)
    h.acquire("b", 1, now=0)
    h.fold(h.core.release_consumer("a", now=5))
    assert [(0, 2), (1, 2)] == h.acquire("c", 5, now=5)


def test_window_bounds_loading_and_gaps_move_the_floor() -> None:
    """room() shrinks as offsets load; absent offsets (compaction) are skipped."""
    h = Harness(window=4)
    assert 4 == h.core.room()
    h.core.load([(2, "x"), (3, "y")], 4)
    assert 0 == h.core.room()
    h.fold([h.core.gap_delta() or {}])
    assert 2 == h.state.floor
    assert 2 == h.core.room()


def test_replay_and_snapshot_reproduce_the_state() -> None:
    """Folding the logged deltas into a fresh state, or a snapshot round trip,
    gives the same state (restart durability rests on this)."""
    h = Harness(ack_timeout_ms=10, max_deliveries=2)
    h.load(6)
    h.acquire("a", 4, now=0)
    h.settle("a", [(1, "ack", None, None), (2, "nack", 3, None)], now=1)
    h.fold(h.core.expire(20))
    h.acquire("b", 6, now=30)
    replayed = ShareState()
    for d in h.log:
        apply_delta(replayed, d)
    assert h.state == replayed
    assert h.state == state_from_plain(state_to_plain(h.state))


def test_delivery_counts_never_go_back_under_any_schedule() -> None:
    """A seeded random schedule of operations: counts only grow, an acked
    offset is never delivered again, nothing exceeds max_deliveries."""
    import random

    rng = random.Random(7)
    h = Harness(ack_timeout_ms=50, max_deliveries=4, backoff_ms=(5, 20), window=64)
    total = 300
    counts: dict[int, int] = {}
    acked: set[int] = set()
    now = 0
    loaded = 0
    while len(acked) + h.state.dead_lettered < total and now < 1_000_000:
        now += rng.randint(0, 20)
        room = min(h.core.room(), total - loaded)
        if room:
            h.load(room, start=loaded)
            loaded += room
        h.fold(h.core.expire(now))
        for dl in h.core.dead_letters():
            h.fold([{"t": "archived", "o": [dl.offset]}])
        consumer = rng.choice("abc")
        for offset, count in h.acquire(consumer, rng.randint(0, 8), now):
            assert offset not in acked
            assert count == counts.get(offset, 0) + 1 <= 4
            counts[offset] = count
            roll = rng.random()
            if roll < 0.6:
                h.settle(consumer, [(offset, "ack", None, None)], now)
                acked.add(offset)
            elif roll < 0.8:
                h.settle(consumer, [(offset, "nack", None, None)], now)
    assert total == len(acked) + h.state.dead_lettered
    assert total == h.state.floor


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "round_robin"},
        {"max_deliveries": 0},
        {"ack_timeout_ms": 0},
        {"backoff_ms": (5, -1)},
        {"window": 0},
        {"start": 3},
    ],
)
def test_bad_settings_are_config_errors(bad: dict[str, Any]) -> None:
    """Each bad setting raises ConfigError naming it."""
    with pytest.raises(ConfigError):
        ShareSettings("t", **bad)


def test_unknown_outcome_and_bad_delay() -> None:
    """An outcome outside ack/nack/reject/extend, or a negative delay, is refused."""
    h = Harness()
    h.load(1)
    h.acquire("a", 1, 0)
    with pytest.raises(InvalidArgument, match="outcome 'maybe'"):
        h.core.settle("a", [(0, "maybe", None, None)], 0)
    with pytest.raises(InvalidArgument, match="delay=-1"):
        h.core.settle("a", [(0, "nack", -1, None)], 0)


def test_key_shared_deals_a_key_to_its_owner_in_order() -> None:
    """key_shared: an event goes only to its key's owner, and the next event
    of a key waits until the earlier one is settled; keys without an owner
    change stay put when a consumer leaves (only the leaver's keys move)."""
    settings = ShareSettings("t", mode="key_shared")
    state = ShareState()
    core = ShareCore(settings, state, key_of=lambda payload: payload)
    keys = [b"a", b"b", b"a", b"c", b"b", b"a", None]
    core.load(enumerate(keys), len(keys))
    members = ("c1", "c2", "c3")
    owners = {k: core.owner(k, members) for k in (b"a", b"b", b"c")}
    got: dict[str, list[int]] = {}
    for m in members:
        deltas, chosen = core.acquire(m, 10, 0, members)
        for d in deltas:
            apply_delta(state, d)
        got[m] = [c.offset for c in chosen]
    first = {0: b"a", 1: b"b", 3: b"c"}
    for m, offsets in got.items():
        assert {o for o in offsets if o in first} == {o for o, k in first.items() if owners[k] == m}
    assert 6 in {o for offsets in got.values() for o in offsets}  # no key: anyone
    assert not {2, 4, 5} & {o for offsets in got.values() for o in offsets}
    owner_a = owners[b"a"]
    deltas, _ = core.settle(owner_a, [(0, "ack", None, None)], 1)
    for d in deltas:
        apply_delta(state, d)
    core.forget_settled()
    deltas, chosen = core.acquire(owner_a, 10, 1, members)
    assert 2 in [c.offset for c in chosen]
    assert 5 not in [c.offset for c in chosen]
    for leaver in members:  # only the leaver's keys move
        remaining = tuple(m for m in members if m != leaver)
        for k, o in owners.items():
            assert o == core.owner(k, remaining) or o == leaver
