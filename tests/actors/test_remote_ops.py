"""Remote inspect, get_tree and kill; the wrong-listener check; monitors
that see a remote actor come back (memory streams under MockClock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from headwater import (
    ActorKilled,
    ActorNotFound,
    ClosedError,
    ConnectionLostError,
    InvalidArgument,
    WrongListenerError,
)
from headwater.actors import Down, Up, open_actor_client
from headwater.testing import KIT_REGISTRY
from headwater.testing._actor_kit import Get, Put
from headwater.transport import ServerConnection

from .test_remote import kit_system, memory_client


async def test_remote_inspect_tree_and_kill(autojump_clock: trio.abc.Clock) -> None:
    """inspect() over the wire returns the actor's inspect() output; tree()
    returns the same snapshot as system.tree(); kill() crashes the actor
    there (its supervisor restarts it); unknown paths raise ActorNotFound."""
    async with kit_system() as system, memory_client(system) as (client, _link):
        ref = await client.lookup("headwater://mem:1/kit/target")
        await ref.tell(Put(7))
        shown = await ref.inspect()
        assert (["shared", "values"], "[7]") == (sorted(shown), shown["values"])
        tree = await client.tree("headwater+actors://mem:1")
        assert system.tree() == tree
        target = tree.walk()[2]
        assert ("/kit/target", 2) == (target.path, target.handled)  # put, inspect
        await client.kill("headwater://mem:1/kit/target", "poke")
        await trio.testing.wait_all_tasks_blocked()
        node = system.tree().walk()[2]
        assert (1, "ActorKilled: actor /kit/target was killed: poke") == (
            node.restarts,
            node.last_failure,
        )
        assert [] == await ref.ask(Get())
        with pytest.raises(ActorNotFound, match="/kit/ghost"):
            await client.kill("headwater://mem:1/kit/ghost")
        with pytest.raises(InvalidArgument, match="headwater\\+actors://"):
            await client.tree("http://mem:1")
        with pytest.raises(InvalidArgument, match="just headwater\\+actors://host:port"):
            await client.tree("headwater+actors://mem:1/kit")
    assert ActorKilled.code == "actor_killed"


async def test_a_broker_port_is_the_wrong_listener(autojump_clock: trio.abc.Clock) -> None:
    """A peer whose handshake says it is a broker ("headwater") is refused
    with WrongListenerError before any request."""

    async def broker_like(host: str, port: int) -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()

        async def serve() -> None:
            conn = ServerConnection(server="headwater")
            while True:
                data = await server_end.receive_some()
                if not data:
                    return
                conn.receive_data(data)
                while conn.next_event() is not None:
                    pass
                out = conn.data_to_send()
                if out:
                    await server_end.send_all(out)

        nursery.start_soon(serve)
        return client_end

    async with trio.open_nursery() as nursery:
        async with open_actor_client(KIT_REGISTRY, opener=broker_like) as client:
            with pytest.raises(WrongListenerError, match="not an actors listener"):
                await client.tree("headwater+actors://mem:7700")
            with pytest.raises(WrongListenerError):
                await client.lookup("headwater://mem:7700/kit/target")
        nursery.cancel_scope.cancel()


async def test_reconnect_monitor_fires_unreachable_once_then_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A monitor(reconnect=True) fires 'unreachable' once when the link is cut,
    then, once connections are accepted again, Up with a fresh monitor that
    watches on; a plain monitor cannot wait_up."""
    async with kit_system() as system, memory_client(system) as (client, link):
        ref = await client.lookup("headwater://mem:1/kit/target")
        monitor = await ref.monitor(reconnect=True)
        plain = await ref.monitor()
        link.refuse = True
        await link.cut()
        down = await monitor.wait()
        assert isinstance(down, Down)
        assert "unreachable" == down.reason
        assert "unreachable" == (await plain.wait()).reason
        with pytest.raises(ClosedError, match="reconnect=True"):
            await plain.wait_up()
        await trio.sleep(2)
        assert monitor.up is None
        link.refuse = False
        start = trio.current_time()
        up = await monitor.wait_up()
        assert isinstance(up, Up)
        assert "/kit/target" == up.path
        assert trio.current_time() - start <= 5.0  # within the backoff cap
        assert up.monitor.active
        assert up.monitor.reconnect
        await system.stop_child("/kit/target")
        assert "stopped" == (await up.monitor.wait()).reason


async def test_cancelled_reconnect_monitor_stops_waiting(autojump_clock: trio.abc.Clock) -> None:
    """Cancelling a reconnect monitor after its 'unreachable' ends wait_up
    with ClosedError and no Up ever fires."""
    async with kit_system() as system, memory_client(system) as (client, link):
        ref = await client.lookup("headwater://mem:1/kit/target")
        monitor = await ref.monitor(reconnect=True)
        link.refuse = True
        await link.cut()
        await monitor.wait()
        monitor.cancel()
        with pytest.raises(ClosedError):
            await monitor.wait_up()
        # A refused attempt already under way ends first (else it could
        # succeed once the peer accepts again, as any use of the ref would).
        await trio.testing.wait_all_tasks_blocked()
        link.refuse = False
        await trio.sleep(10)
        assert monitor.up is None
        with pytest.raises(ConnectionLostError):
            ref.tell_nowait(Put(1))
