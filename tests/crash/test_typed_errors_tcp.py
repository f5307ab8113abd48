"""Typed errors over real sockets (issue 11, point 6): the remote client and
the actor server helpers raise HeadwaterErrors as themselves."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

import headwater
from headwater.actors import open_actor_system, serve_actors
from headwater.testing import KIT_REGISTRY

from .server_proc import server

pytestmark = pytest.mark.crash


async def test_serve_actors_on_a_taken_port_is_a_config_error() -> None:
    """``serve_actors`` on a port already bound raises ConfigError naming
    the address (not an OSError inside an ExceptionGroup)."""
    with trio.fail_after(20):
        async with open_actor_system() as system, trio.open_nursery() as nursery:
            port = await nursery.start(serve_actors, system, KIT_REGISTRY)
            with pytest.raises(headwater.ConfigError, match=f"127.0.0.1:{port}"):
                await nursery.start(partial(serve_actors, system, KIT_REGISTRY, port=port))
            nursery.cancel_scope.cancel()


async def test_remote_producer_and_client_raise_typed_errors(tmp_path: Path) -> None:
    """Against a real server: a send to a missing topic leaves
    ``client.producer()`` as UnknownTopicError itself (the client stays
    usable), and the same error crosses ``headwater.connect(url)`` too."""
    with server(tmp_path / "data") as proc, trio.fail_after(30):
        async with headwater.connect(proc.url) as client:
            with pytest.raises(headwater.UnknownTopicError) as info:
                async with client.producer() as producer:
                    await producer.send("no-such-topic", b"x")
            assert type(info.value) is headwater.UnknownTopicError
            await client.create_topic("t")
        with pytest.raises(headwater.UnknownTopicError):
            async with headwater.connect(proc.url) as client, client.producer() as producer:
                await producer.send("no-such-topic", b"x")
