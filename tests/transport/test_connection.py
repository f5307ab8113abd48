"""The sans-IO connection state machines, driven without an event loop."""

from __future__ import annotations

import random

import pytest

from headwater import (
    AuthenticationError,
    ClosedError,
    ConnectionLostError,
    InvalidArgument,
    LocalProtocolError,
    NotFoundError,
    RemoteProtocolError,
    UnsupportedVersionError,
)
from headwater.transport import (
    ENVELOPE,
    AuthRequired,
    ClientConnection,
    ConnectionClosed,
    ErrorReceived,
    Event,
    HandshakeComplete,
    Push,
    PushReceived,
    Request,
    RequestReceived,
    Response,
    ResponseReceived,
    ServerConnection,
    encode_frame,
)

Conn = ClientConnection | ServerConnection


def transfer(src: Conn, dst: Conn) -> list[Event]:
    """Move src's queued bytes into dst and collect dst's events."""
    dst.receive_data(src.data_to_send())
    events = []
    while (event := dst.next_event()) is not None:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


def connected(**server_kwargs: object) -> tuple[ClientConnection, ServerConnection]:
    client = ClientConnection(client="c")
    server = ServerConnection(server="s", **server_kwargs)  # type: ignore[arg-type]
    assert [HandshakeComplete(2, "c", False)] == transfer(client, server)
    assert [HandshakeComplete(2, "s", False)] == transfer(server, client)
    return client, server


def test_handshake_picks_the_highest_common_version() -> None:
    """The server answers with the highest version both sides speak."""
    client = ClientConnection(versions=[1, 2, 3, 7])
    server = ServerConnection(versions=[2, 3, 5])
    assert [HandshakeComplete(3, "headwater-python", False)] == transfer(client, server)
    assert [HandshakeComplete(3, "headwater", False)] == transfer(server, client)
    assert (3, 3, "READY", "READY") == (client.version, server.version, client.state, server.state)


def test_no_common_version_is_an_error_frame_naming_the_supported_ones() -> None:
    """No common version: the server queues an error frame listing its versions and closes."""
    client = ClientConnection(versions=[9])
    server = ServerConnection(versions=[1, 2])
    server.receive_data(client.data_to_send())
    with pytest.raises(UnsupportedVersionError, match=r"\[1, 2\]"):
        server.next_event()
    assert "CLOSED" == server.state
    event, closed = transfer(server, client)
    assert isinstance(closed, ConnectionClosed)
    assert isinstance(event, ErrorReceived)
    assert isinstance(event.error, UnsupportedVersionError)
    assert (None, (1, 2)) == (event.id, event.error.supported)
    assert "CLOSED" == client.state


def test_pipelined_requests_answered_out_of_order() -> None:
    """Many requests in flight; responses in any order reach the right ids."""
    client, server = connected()
    ids = [client.send_request("echo", {"n": n}) for n in range(50)]
    assert len(set(ids)) == 50
    requests = transfer(client, server)
    assert [RequestReceived(i, "echo", {"n": n}) for n, i in enumerate(ids)] == requests
    order = list(range(50))
    random.Random(3).shuffle(order)
    for k in order:
        if k % 7 == 0:
            server.send_error(ids[k], NotFoundError(f"no {k}"))
        else:
            server.send_response(ids[k], {"n": k})
    events = transfer(server, client)
    assert [ids[k] for k in order] == [e.id for e in events]  # type: ignore[union-attr]
    for event in events:
        k = ids.index(event.id)  # type: ignore[union-attr,arg-type]
        if k % 7 == 0:
            assert isinstance(event, ErrorReceived)
            assert isinstance(event.error, NotFoundError)
            assert f"no {k}" == event.message
        else:
            assert ResponseReceived(ids[k], {"n": k}) == event
    assert frozenset() == client.in_flight == server.in_flight


def test_response_to_unknown_id_is_remote_protocol_error() -> None:
    """A response for an id not in flight is the server's fault."""
    client, _ = connected()
    client.receive_data(encode_frame(ENVELOPE.encode(Response(99, {}))))
    with pytest.raises(RemoteProtocolError, match="99"):
        client.next_event()
    assert "CLOSED" == client.state


def test_client_enforces_max_in_flight() -> None:
    """The client refuses to exceed max_in_flight until a response arrives."""
    client = ClientConnection(max_in_flight=2)
    server = ServerConnection()
    transfer(client, server)
    transfer(server, client)
    first = client.send_request("a")
    client.send_request("b")
    with pytest.raises(LocalProtocolError, match="max_in_flight=2"):
        client.send_request("c")
    transfer(client, server)
    server.send_response(first)
    transfer(server, client)
    client.send_request("c")


def test_server_enforces_max_in_flight_and_unique_ids() -> None:
    """A peer exceeding max_in_flight or reusing an id in flight is refused."""
    _, server = connected(max_in_flight=2)
    server.receive_data(b"".join(encode_frame(ENVELOPE.encode(Request(i, "x"))) for i in (1, 2, 3)))
    server.next_event()
    server.next_event()
    with pytest.raises(RemoteProtocolError, match="max_in_flight=2"):
        server.next_event()
    _, server = connected()
    server.receive_data(b"".join(encode_frame(ENVELOPE.encode(Request(5, "x"))) for _ in range(2)))
    server.next_event()
    with pytest.raises(RemoteProtocolError, match="already in flight"):
        server.next_event()
    event, _closed = transfer(server, ClientConnection())
    assert isinstance(event, ErrorReceived)
    assert "remote_protocol_error" == event.code


def test_unknown_operation_is_refused() -> None:
    """With a known set of operations, another op is a RemoteProtocolError."""
    client, server = connected(operations={"produce", "fetch"})
    client.send_request("drop_all_tables")
    server.receive_data(client.data_to_send())
    with pytest.raises(RemoteProtocolError, match="drop_all_tables"):
        server.next_event()


def test_nothing_but_hello_before_the_handshake() -> None:
    """A request before hello is refused and the connection closes with an error frame."""
    server = ServerConnection()
    server.receive_data(encode_frame(ENVELOPE.encode(Request(1, "fetch"))))
    with pytest.raises(RemoteProtocolError, match="'req' in state AWAIT_HELLO"):
        server.next_event()
    assert server.data_to_send()  # the error frame
    client = ClientConnection()
    with pytest.raises(LocalProtocolError, match="HELLO_SENT"):
        client.send_request("fetch")


def test_token_in_hello_authenticates() -> None:
    """The right token in hello completes the handshake authenticated."""
    client = ClientConnection(token="t0k")
    server = ServerConnection(token="t0k")
    assert [HandshakeComplete(2, "headwater-python", True)] == transfer(client, server)


def test_auth_gating_with_a_separate_auth_frame() -> None:
    """Without a token in hello, only auth is accepted; then requests flow."""
    client = ClientConnection()
    server = ServerConnection(token="t0k")
    assert [] == transfer(client, server)
    assert "AWAIT_AUTH" == server.state
    assert [AuthRequired(2, "headwater")] == transfer(server, client)
    with pytest.raises(LocalProtocolError):
        client.send_request("x")
    client.send_auth("t0k")
    assert [HandshakeComplete(2, "headwater-python", True)] == transfer(client, server)
    assert [HandshakeComplete(2, "headwater", True)] == transfer(server, client)
    client.send_request("x")
    assert "x" == transfer(client, server)[0].op  # type: ignore[union-attr]


def test_request_before_auth_is_refused() -> None:
    """A request while authentication is pending closes the connection."""
    server = ServerConnection(token="t0k")
    transfer(ClientConnection(), server)
    server.receive_data(encode_frame(ENVELOPE.encode(Request(1, "fetch"))))
    with pytest.raises(AuthenticationError, match="before authentication"):
        server.next_event()
    assert "CLOSED" == server.state


@pytest.mark.parametrize("in_hello", [True, False])
def test_wrong_token_is_refused(in_hello: bool) -> None:
    """A wrong token (in hello or in auth) gets authentication_failed and a close."""
    client = ClientConnection(token="nope" if in_hello else None)
    server = ServerConnection(token="t0k")
    if in_hello:
        server.receive_data(client.data_to_send())
    else:
        transfer(client, server)
        transfer(server, client)
        client.send_auth("nope")
        server.receive_data(client.data_to_send())
    with pytest.raises(AuthenticationError):
        server.next_event()
    event, closed = transfer(server, client)
    assert isinstance(event, ErrorReceived)
    assert "authentication_failed" == event.code
    assert isinstance(closed, ConnectionClosed)
    assert isinstance(closed.error, AuthenticationError)


def test_eof_with_requests_in_flight_reports_them() -> None:
    """EOF with requests in flight is a ConnectionClosed naming them, with ConnectionLostError."""
    client, _server = connected()
    a = client.send_request("x")
    b = client.send_request("y")
    client.receive_data(b"")
    event = client.next_event()
    assert isinstance(event, ConnectionClosed)
    assert isinstance(event.error, ConnectionLostError)
    assert (a, b) == event.unanswered
    assert event == client.next_event()  # closed is sticky
    with pytest.raises(ConnectionLostError):
        client.send_request("z")


def test_clean_eof_and_local_close() -> None:
    """EOF between frames with nothing in flight is clean; after close(), sends raise
    ClosedError."""
    client, server = connected()
    server.receive_data(b"")
    assert ConnectionClosed(None, ()) == server.next_event()
    client.close()
    with pytest.raises(ClosedError):
        client.send_request("x")


def test_eof_mid_frame_is_connection_lost() -> None:
    """EOF inside a frame is reported as a lost connection."""
    client, server = connected()
    client.send_request("x", {"pad": bytes(100)})
    server.receive_data(client.data_to_send()[:30])
    server.receive_data(b"")
    event = server.next_event()
    assert isinstance(event, ConnectionClosed)
    assert isinstance(event.error, ConnectionLostError)


def test_answering_an_unknown_id_is_local_protocol_error() -> None:
    """The server cannot answer a request that is not in flight."""
    _, server = connected()
    with pytest.raises(LocalProtocolError, match="not in flight"):
        server.send_response(42)


def test_server_only_frames_from_a_client_are_refused() -> None:
    """A server receiving 'res' (a server-only frame) refuses it."""
    _, server = connected()
    server.receive_data(encode_frame(ENVELOPE.encode(Response(1))))
    with pytest.raises(RemoteProtocolError, match="'res'"):
        server.next_event()


def test_bad_arguments() -> None:
    """Invalid limits and versions are InvalidArgument."""
    with pytest.raises(InvalidArgument):
        ClientConnection(versions=[])
    with pytest.raises(InvalidArgument):
        ServerConnection(max_in_flight=0)


@pytest.mark.parametrize(
    ("frame", "handshake_first", "needle"),
    [
        ({"t": "bogus"}, False, "unknown message tag 'bogus'"),
        ({"t": "hello", "versions": "1"}, False, "Hello.versions"),
        ({"t": "hello", "versions": [1], "token": 5}, False, "Hello.token"),
        ({"t": "req", "id": "x", "op": "a"}, True, "Request.id"),
        ({"t": "req", "id": 1, "op": "a", "body": [1]}, True, "Request.body"),
        ({"t": "req", "id": 1}, True, "Request.op"),
        ({"t": "hello", "versions": [1]}, True, "'hello' in state READY"),
    ],
)
def test_hostile_frames_close_the_server_connection(
    frame: dict[str, object], handshake_first: bool, needle: str
) -> None:
    """Unknown tags, wrong field types and out-of-place frames are RemoteProtocolError."""
    server = connected()[1] if handshake_first else ServerConnection()
    server.receive_data(encode_frame(frame))
    with pytest.raises(RemoteProtocolError) as info:
        server.next_event()
    assert needle in str(info.value)
    assert "CLOSED" == server.state
    assert server.data_to_send().startswith(b"\x00\x00")  # an error frame is queued


def test_server_fail_sends_a_connection_error_and_closes() -> None:
    """fail() queues an id-less error frame; the client sees it, then the close."""
    client, server = connected()
    rid = client.send_request("x")
    transfer(client, server)
    server.fail(NotFoundError("shutting down"))
    event, closed = transfer(server, client)
    assert ErrorReceived(None, "not_found", "shutting down", event.error) == event  # type: ignore[union-attr]
    assert isinstance(closed, ConnectionClosed)
    assert (rid,) == closed.unanswered
    with pytest.raises(ClosedError):
        server.send_response(rid)


def test_version_2_server_pushes_and_the_client_sees_them() -> None:
    """From version 2 the server may push frames the client did not ask for;
    they take no correlation id and do not disturb requests in flight."""
    client, server = connected()
    request_id = client.send_request("op", {})
    transfer(client, server)
    server.send_push("group", {"t": "membership", "x": 1})
    server.send_response(request_id, {"ok": True})
    assert [
        PushReceived("group", {"t": "membership", "x": 1}),
        ResponseReceived(request_id, {"ok": True}),
    ] == transfer(server, client)
    assert server.can_push


def test_version_1_peers_never_push() -> None:
    """A v1 client gets version 1: the server cannot push to it, and a v1
    client that receives a push frame closes as the peer's fault."""
    client = ClientConnection(versions=[1])
    server = ServerConnection()
    assert [HandshakeComplete(1, "headwater-python", False)] == transfer(client, server)
    transfer(server, client)
    assert not server.can_push
    with pytest.raises(LocalProtocolError, match="version 1"):
        server.send_push("group", {})
    client.receive_data(encode_frame(ENVELOPE.encode(Push("group", {}))))
    with pytest.raises(RemoteProtocolError, match="version 1"):
        client.next_event()
    assert "CLOSED" == client.state
