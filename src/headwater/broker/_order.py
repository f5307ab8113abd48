"""Produce order on one connection: appends in arrival order (DECISIONS #13).

Theory of operation
-------------------
The server handles the requests of one connection in tasks of their own, and
Trio may start tasks of one batch in any order. A producer with several
batches of one partition in flight needs them appended in the order it sent
them: the broker refuses a sequence gap (``broker/_idempotence.py``), so a
batch appended before the one ahead of it would fail.

:class:`ProduceTurns` (one per connection) hands each ``produce`` request a
:class:`Turn` when it is read, chained behind the last turn of the same
partition. The produce handler awaits :meth:`Turn.wait` just before it
appends and calls :meth:`Turn.release` right after (before waiting for
durability), so appends keep arrival order while fsyncs and answers overlap.
A turn whose predecessor is already released waits for nothing (no task
switch); an event is made only when a turn really has to wait.
"""

from __future__ import annotations

import trio

__all__ = ["ProduceTurns", "Turn"]


class Turn:
    """One produce request's place in its partition's arrival order."""

    __slots__ = ("_key", "_owner", "_previous", "_waiter", "released")

    def __init__(self, owner: ProduceTurns, key: tuple[str, int], previous: Turn | None) -> None:
        self._owner = owner
        self._key = key
        self._previous = previous
        self._waiter: trio.Event | None = None
        self.released = False

    async def wait(self) -> None:
        """Return once every earlier produce of this partition on this
        connection has appended (or failed). No checkpoint when none is
        pending."""
        previous = self._previous
        self._previous = None
        if previous is not None and not previous.released:
            if previous._waiter is None:
                previous._waiter = trio.Event()
            await previous._waiter.wait()

    def release(self) -> None:
        """This request has appended (or failed): the next may go. Idempotent."""
        if self.released:
            return
        self.released = True
        self._previous = None
        if self._waiter is not None:
            self._waiter.set()
        self._owner._released(self._key, self)


class ProduceTurns:
    """The produce turns of one connection, by partition."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], Turn] = {}
        self._by_request: dict[int, Turn] = {}

    def arrived(self, request_id: int, body: dict[str, object]) -> None:
        """A ``produce`` request was read (call in arrival order): give it a
        turn behind the partition's last one. A body without a str topic and
        an int partition gets none (the handler refuses it anyway)."""
        topic = body.get("topic")
        partition = body.get("partition")
        if not isinstance(topic, str) or type(partition) is not int:
            return
        key = (topic, partition)
        turn = Turn(self, key, self._last.get(key))
        self._last[key] = turn
        self._by_request[request_id] = turn

    def take(self, request_id: int) -> Turn | None:
        """The turn of request ``request_id`` (once), if it has one."""
        return self._by_request.pop(request_id, None)

    def _released(self, key: tuple[str, int], turn: Turn) -> None:
        if self._last.get(key) is turn:
            del self._last[key]

    def __len__(self) -> int:
        """Partitions with a produce not yet appended."""
        return len(self._last)
