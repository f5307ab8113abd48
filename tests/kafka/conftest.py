"""Helpers for the Kafka front end's tests: requests built with ``kio``, sent
through the real codec, answered by a handler over an embedded broker."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kio.index import load_request_schema
from kio.serial import entity_reader, entity_writer

from headwater.broker import open_broker
from headwater.journal import SimulatedFileSystem
from headwater.kafka import KafkaConnection, KafkaHandler
from headwater.kafka._wire import build, response_class


def frame(api_key: int, version: int, values: dict[str, Any], correlation_id: int = 7) -> bytes:
    """One request frame (header v1 or v2, then the body) as a client sends it."""
    cls = load_request_schema(api_key, version)
    out = io.BytesIO()
    out.write(api_key.to_bytes(2, "big", signed=True))
    out.write(version.to_bytes(2, "big", signed=True))
    out.write(correlation_id.to_bytes(4, "big", signed=True))
    out.write(b"\x00\x04test")
    if cls.__flexible__:
        out.write(b"\x00")
    entity_writer(cls)(out, build(cls, values))
    data = out.getvalue()
    return len(data).to_bytes(4, "big") + data


class Client:
    """Sends requests through :class:`KafkaConnection` to a :class:`KafkaHandler`
    and decodes the response frame again with ``kio``."""

    def __init__(self, handler: KafkaHandler) -> None:
        self.handler = handler

    async def call(self, api_key: int, version: int, values: dict[str, Any]) -> Any:
        conn = KafkaConnection()
        conn.receive_data(frame(api_key, version, values))
        request = conn.next_request()
        assert request is not None
        body = await self.handler.handle(request)
        if body is None:
            return None
        data = conn.encode_response(request, body)
        assert len(data) - 4 == int.from_bytes(data[:4], "big")
        assert 7 == int.from_bytes(data[4:8], "big")
        cls = response_class(api_key, version if request.body is not None else 0)
        pos = 8 + (1 if cls.__flexible__ and api_key != 18 else 0)
        decoded, size = entity_reader(cls)(data, pos)
        assert len(data) == pos + size
        return decoded


@pytest.fixture
async def broker() -> AsyncIterator[Any]:
    async with open_broker("/data", fs=SimulatedFileSystem()) as b:
        yield b


@pytest.fixture
def client(broker: Any) -> Client:
    return Client(KafkaHandler(broker.service, host="127.0.0.1", port=9092))
