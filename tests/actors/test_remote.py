"""Remote actors over a memory stream pair (MockClock): the conformance kit,
unregistered messages, lost connections, auth, and the wire helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

from headwater import (
    ActorNotFound,
    AuthenticationError,
    ConnectionLostError,
    InvalidArgument,
    LocalProtocolError,
    RemoteProtocolError,
)
from headwater.actors import (
    ActorAddress,
    ActorClient,
    ActorRef,
    ActorSystem,
    open_actor_client,
    parse_actor_url,
    serve_actor_stream,
)
from headwater.actors._wire import decode_reply, encode_reply
from headwater.testing import KIT_REGISTRY, check_actor_refs
from headwater.testing._actor_kit import GetRef, Put


@asynccontextmanager
async def local_refs(system: ActorSystem) -> AsyncIterator[GetRef]:
    """Refs straight from the system."""

    async def get(path: str) -> ActorRef:
        return system.lookup(path)

    yield get


@attrs.define
class MemoryLink:
    """Serves a system over memory stream pairs; can cut every link."""

    system: ActorSystem
    nursery: trio.Nursery
    token: str | None = None
    streams: list[trio.abc.Stream] = attrs.field(factory=list)

    async def open(self, host: str, port: int) -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        self.streams.append(client_end)
        self.nursery.start_soon(
            lambda: serve_actor_stream(self.system, KIT_REGISTRY, server_end, token=self.token)
        )
        return client_end

    async def cut(self) -> None:
        for stream in self.streams:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def memory_client(
    system: ActorSystem, *, token: str | None = None, server_token: str | None = None
) -> AsyncIterator[tuple[ActorClient, MemoryLink]]:
    """An ActorClient whose connections are memory stream pairs to ``system``."""
    async with trio.open_nursery() as nursery:
        link = MemoryLink(system, nursery, server_token)
        async with open_actor_client(KIT_REGISTRY, token=token, opener=link.open) as client:
            yield client, link
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def memory_refs(system: ActorSystem) -> AsyncIterator[GetRef]:
    """Remote refs over a memory stream pair."""
    async with memory_client(system) as (client, _link):

        async def get(path: str) -> ActorRef:
            return await client.lookup(f"headwater://mem:1{path}")

        yield get


async def test_local_refs_conform(autojump_clock: trio.abc.Clock) -> None:
    """LocalActorRef passes the actor-ref conformance kit."""
    await check_actor_refs(local_refs)


async def test_remote_refs_over_memory_conform(autojump_clock: trio.abc.Clock) -> None:
    """RemoteActorRef over a memory stream pair passes the same kit."""
    await check_actor_refs(memory_refs)
