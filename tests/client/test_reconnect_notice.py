"""While the server is unreachable the client says so: the channel's
``on_reconnect`` listener hears each failed attempt and the return, and the
CLI turns that into one line per series (MockClock, memory streams)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from headwater import ConnectionLostError, HeadwaterError, cli
from headwater.broker import ServerConfig, open_broker, open_server
from headwater.client._tcp import TcpChannel, connect_channel
from headwater.journal import SimulatedFileSystem


async def test_failed_attempts_and_the_return_are_heard(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The connection drops; the next three attempts fail; the fourth works:
    the listener hears attempts 1, 2, 3 with their errors, then (3, None);
    requests made meanwhile wait and then succeed."""
    heard: list[tuple[int, str | None]] = []
    refusing = {"left": 0}
    streams: list[trio.testing.MemorySendStream] = []

    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        open_server(broker, ServerConfig(), listen=False) as server,
    ):

        async def open_stream() -> trio.abc.Stream:
            if refusing["left"]:
                refusing["left"] -= 1
                raise OSError(111, "Connection refused")
            client_end, server_end = trio.testing.memory_stream_pair()
            await server.serve_stream(server_end, "memory")
            streams.append(client_end)  # type: ignore[arg-type]
            return client_end

        def listener(attempt: int, error: HeadwaterError | None) -> None:
            heard.append((attempt, None if error is None else type(error).__name__))

        channel = TcpChannel(open_stream, address="memory", on_reconnect=listener)
        async with connect_channel(channel) as client:
            await client.create_topic("t")
            refusing["left"] = 3
            await streams[-1].aclose()  # the connection drops
            await trio.testing.wait_all_tasks_blocked()  # the channel noticed
            assert [] == await client.list_groups()  # waits for the new connection
    assert [
        (1, "ConnectionLostError"),
        (2, "ConnectionLostError"),
        (3, "ConnectionLostError"),
        (3, None),
    ] == heard


def test_the_cli_says_it_once_per_series(capsys: pytest.CaptureFixture[str]) -> None:
    """One line when a series starts, none for later attempts, one on return."""
    notice = cli._reconnect_notice("headwater://h:1")
    refused = ConnectionLostError("cannot connect to headwater://h:1: Connection refused")
    for attempt in (1, 2, 3):
        notice(attempt, refused)
    notice(3, None)
    notice(1, refused)
    again = (
        "reconnecting to headwater://h:1 (attempt 1: cannot connect to headwater://h:1: "
        "Connection refused); still trying, with backoff"
    )
    back = "reconnected to headwater://h:1 after 3 failed attempt(s)"
    assert [again, back, again] == capsys.readouterr().err.splitlines()


async def test_a_listener_that_raises_on_the_return_leaves_no_stream_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The listener raises when it hears the return: that error ends the
    channel, and the stream just connected is closed (not leaked)."""
    refusing = {"left": 0}
    streams: list[trio.abc.Stream] = []

    async with (
        open_broker("/data", fs=SimulatedFileSystem()) as broker,
        open_server(broker, ServerConfig(), listen=False) as server,
    ):

        async def open_stream() -> trio.abc.Stream:
            if refusing["left"]:
                refusing["left"] -= 1
                raise OSError(111, "Connection refused")
            client_end, server_end = trio.testing.memory_stream_pair()
            await server.serve_stream(server_end, "memory")
            streams.append(client_end)
            return client_end

        def listener(attempt: int, error: HeadwaterError | None) -> None:
            if error is None:
                raise RuntimeError("listener bug")

        channel = TcpChannel(open_stream, address="memory", on_reconnect=listener)
        with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="listener bug")):
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.run)
                refusing["left"] = 1
                await streams[-1].aclose()  # the connection drops
        assert 2 == len(streams)
        with pytest.raises(trio.ClosedResourceError):
            await streams[-1].send_all(b"x")
