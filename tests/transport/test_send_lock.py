"""SendLock: a connection's send lock taken without a yield when free
(issue 17: one pass of the event loop less before each frame leaves), FIFO
when contended, like the trio.StrictFIFOLock it wraps."""

from __future__ import annotations

import trio
import trio.testing

from headwater.transport._stream import SendLock


async def test_a_free_send_lock_is_taken_without_a_checkpoint() -> None:
    lock = SendLock()
    with trio.testing.assert_no_checkpoints():
        async with lock:
            assert lock.locked()
    assert not lock.locked()


async def test_a_held_send_lock_serves_its_waiters_in_order() -> None:
    lock = SendLock()
    order: list[int] = []
    release = trio.Event()

    async def sender(i: int) -> None:
        async with lock:
            order.append(i)
            if i == 0:
                await release.wait()
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(sender, i)
            await trio.testing.wait_all_tasks_blocked()
        assert [0] == order  # the others wait their turn
        release.set()
    assert [0, 1, 2, 3] == order
    assert not lock.locked()


async def test_a_cancelled_waiter_leaves_the_lock_to_the_next() -> None:
    lock = SendLock()
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        await lock.__aenter__()

        async def waiter(name: str, scope: trio.CancelScope) -> None:
            with scope:
                async with lock:
                    got.append(name)

        first = trio.CancelScope()
        nursery.start_soon(waiter, "cancelled", first)
        nursery.start_soon(waiter, "next", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        await lock.__aexit__(None, None, None)
    assert ["next"] == got
    assert not lock.locked()
