"""Produces of one connection are appended in arrival order, per partition,
even when Trio starts their tasks in another order (``broker/_order.py``)."""

from __future__ import annotations

from typing import Any

import trio
import trio.lowlevel
import trio.testing

from headwater import _protocol as p
from headwater.broker import open_broker, open_server
from headwater.broker._order import ProduceTurns
from headwater.journal import SimulatedFileSystem, iter_records
from headwater.journal._batch import decode_record_events, encode_columns
from headwater.journal._record import encode_record
from headwater.transport import ErrorReceived, ResponseReceived, encode_request

from .test_server import handshake, raw_session


async def test_turns_let_produces_append_in_arrival_order() -> None:
    """Five produces of one partition, started in reverse order, append in
    the order they arrived; another partition's produce does not wait."""
    turns = ProduceTurns()
    for request_id in range(5):
        turns.arrived(request_id, {"topic": "t", "partition": 0})
    turns.arrived(9, {"topic": "t", "partition": 1})
    appended: list[int] = []

    async def produce(request_id: int) -> None:
        turn = turns.take(request_id)
        assert turn is not None
        await turn.wait()
        appended.append(request_id)
        await trio.lowlevel.checkpoint()  # an append that yields (an ask of the partition)
        turn.release()

    async with trio.open_nursery() as nursery:
        for request_id in (9, 4, 3, 2, 1, 0):
            nursery.start_soon(produce, request_id)
            await trio.testing.wait_all_tasks_blocked()
    assert [9, 0, 1, 2, 3, 4] == appended
    assert 0 == len(turns)  # every partition's chain is gone once released


async def test_a_turn_released_unused_lets_the_next_go() -> None:
    """A produce refused before its append (its turn released at once, or
    twice) does not hold up the ones behind it; a body without a usable
    topic and partition gets no turn."""
    turns = ProduceTurns()
    turns.arrived(1, {"topic": "t", "partition": 0})
    turns.arrived(2, {"topic": "t", "partition": 0})
    turns.arrived(3, {"topic": ["not", "hashable"], "partition": 0})
    turns.arrived(4, {"topic": "t", "partition": "0"})
    assert turns.take(3) is None
    assert turns.take(4) is None
    first, second = turns.take(1), turns.take(2)
    assert first is not None
    assert second is not None
    assert turns.take(1) is None  # taken once
    first.release()
    first.release()
    with trio.move_on_after(1) as scope:
        await second.wait()
    assert not scope.cancelled_caught
    second.release()
    assert 0 == len(turns)


def _record(producer_id: int, sequence: int, value: bytes) -> bytes:
    payload = encode_columns([0], [None], [value], None)
    return encode_record(
        payload, count=1, producer_id=producer_id, producer_epoch=0, base_sequence=sequence
    )


async def test_pipelined_produces_on_one_connection_are_stored_in_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Rounds of ten produces of one idempotent producer, written in one go
    on a raw connection: every one is stored, in the order sent (a produce
    appended before the one ahead of it would be refused as a gap)."""
    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        open_server(broker, listen=False) as server,
    ):
        await broker.handle(p.CreateTopic("t", 1))
        identity = await broker.handle(p.InitProducer())
        stream = await raw_session(server)
        conn = await handshake(stream)
        sequence = 0
        for _round in range(10):
            ids = []
            for _ in range(10):
                op, body = encode_request(
                    p.Produce("t", 0, _record(identity.producer_id, sequence, b"%d" % sequence))
                )
                ids.append(conn.send_request(op, body))
                sequence += 1
            await stream.send_all(conn.data_to_send())
            answers: dict[int, Any] = {}
            while len(answers) < len(ids):
                conn.receive_data(await stream.receive_some(65536))
                while (event := conn.next_event()) is not None:
                    if isinstance(event, ResponseReceived | ErrorReceived):
                        answers[event.id] = event
            assert [ResponseReceived] * 10 == [type(answers[i]) for i in ids], answers
        result = await broker.handle(p.Fetch("t", 0, 0, 1 << 20, 0))
        values = [
            e.value
            for header, record in iter_records(result.records)
            for e in decode_record_events(header, record, topic="t", partition=0)
        ]
        assert [b"%d" % n for n in range(100)] == values
