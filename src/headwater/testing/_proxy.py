"""A fault-injecting TCP proxy on loopback: network faults without ``tc netem``.

Theory of operation
-------------------
:func:`open_proxy` listens on ``127.0.0.1`` and forwards every accepted
connection to a target address. Each forwarded connection is a
:class:`ProxyLink` with two *pumps*, ``"up"`` (client to server) and
``"down"`` (server to client); each pump reads a chunk, applies the link's
:class:`NetworkFaults` as they are *at that moment*, and writes it on.
Faults are plain mutable attributes, so a test switches them at run time:

* ``delay`` (s): wait before forwarding each chunk (order is kept);
* ``bandwidth`` (bytes/s): pace chunks to this rate;
* ``hold``: directions that stop forwarding and stop reading (a network
  partition as TCP sees it: nothing arrives, the bytes stay queued, and they
  are delivered once the hold is lifted);
* ``drop``: directions whose bytes are read and thrown away (a black hole;
  the byte stream is then damaged, as after a middlebox lost it).

Every link shares the proxy's :attr:`Proxy.faults` unless it is given its
own (``link.faults = NetworkFaults(...)``), so ``proxy.faults.delay = 0.05``
slows every connection, old and new. Abrupt events are methods:
:meth:`ProxyLink.reset` (RST both sides), :meth:`ProxyLink.half_close`
(EOF in one direction, the other keeps flowing), and :attr:`Proxy.refuse`
makes the proxy reset new connections as soon as they are accepted.
Everything runs in the nursery that :func:`open_proxy` owns; leaving its
block closes every link.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import attrs
import trio

from headwater._errors import InvalidArgument

__all__ = ["Direction", "NetworkFaults", "Proxy", "ProxyLink", "open_proxy"]

Direction = Literal["up", "down"]
"""``"up"``: client to server; ``"down"``: server to client."""

_DIRECTIONS: tuple[Direction, Direction] = ("up", "down")
CHUNK = 64 * 1024
_POLL = 0.005  # how often a held pump looks whether the hold was lifted


def _directions(value: str) -> set[Direction]:
    if value == "both":
        return set(_DIRECTIONS)
    if value in _DIRECTIONS:
        return {value}
    raise InvalidArgument(f"direction {value!r}; use 'up', 'down' or 'both'")


@attrs.define
class NetworkFaults:
    """The faults a link applies to each chunk (switch them at any time).

    ``hold`` and ``drop`` are sets of directions (``"up"``, ``"down"``); see
    the module docstring for what each field does. :meth:`heal` clears all."""

    delay: float = 0.0
    bandwidth: float | None = None
    hold: set[Direction] = attrs.field(factory=set)
    drop: set[Direction] = attrs.field(factory=set)

    def heal(self) -> None:
        """Remove every fault."""
        self.delay = 0.0
        self.bandwidth = None
        self.hold.clear()
        self.drop.clear()

    def black_hole(self, direction: str = "both") -> None:
        """Hold ``direction`` (``"up"``, ``"down"`` or ``"both"``): nothing
        passes until :meth:`heal`."""
        self.hold |= _directions(direction)

    def drop_all(self, direction: str = "both") -> None:
        """Throw away every byte in ``direction`` until :meth:`heal`."""
        self.drop |= _directions(direction)


def _abort(stream: trio.SocketStream) -> None:
    """Make the next close send a TCP RST instead of a FIN."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class ProxyLink:
    """One proxied connection: the client side, the server side, two pumps."""

    def __init__(
        self,
        number: int,
        client: trio.SocketStream,
        server: trio.SocketStream,
        faults: NetworkFaults,
    ) -> None:
        self.number = number
        self.client = client
        self.server = server
        self.faults = faults
        self.bytes = {"up": 0, "down": 0}
        self.dropped = {"up": 0, "down": 0}
        self.closed = False
        self._scope = trio.CancelScope()
        self._pumps = {d: trio.CancelScope() for d in _DIRECTIONS}

    def reset(self) -> None:
        """Close both sides abruptly (RST), as a crashed middlebox would."""
        _abort(self.client)
        _abort(self.server)
        self._scope.cancel()

    def half_close(self, direction: str) -> None:
        """Stop ``direction`` and send EOF (FIN) to its receiver; the other
        direction keeps flowing."""
        for d in _directions(direction):
            self._pumps[d].cancel()

    async def _run(self) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, "up", self.client, self.server)
                    nursery.start_soon(self._pump, "down", self.server, self.client)
        finally:
            self.closed = True
            # Synchronous closes: aclose_forcefully re-raises an outer cancel.
            self.client.socket.close()
            self.server.socket.close()

    async def _pump(
        self, direction: Direction, src: trio.SocketStream, dst: trio.SocketStream
    ) -> None:
        with self._pumps[direction]:
            while True:
                while direction in self.faults.hold:  # noqa: ASYNC110 - tests flip a plain set
                    await trio.sleep(_POLL)
                try:
                    data = await src.receive_some(CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._scope.cancel()  # the peer reset: pass it on
                    _abort(dst)
                    return
                if not data:
                    break
                while direction in self.faults.hold:  # noqa: ASYNC110 - tests flip a plain set
                    await trio.sleep(_POLL)
                faults = self.faults
                if faults.delay > 0:
                    await trio.sleep(faults.delay)
                if faults.bandwidth:
                    await trio.sleep(len(data) / faults.bandwidth)
                if direction in self.faults.drop:
                    self.dropped[direction] += len(data)
                    continue
                try:
                    await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._scope.cancel()
                    _abort(src)
                    return
                self.bytes[direction] += len(data)
        # EOF from src, or half_close: pass the EOF on.
        try:
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


class Proxy:
    """A running proxy (made by :func:`open_proxy`): ``port`` to connect to,
    ``faults`` shared by its links, ``refuse`` for new connections."""

    def __init__(self, target: tuple[str, int], listener: trio.SocketListener) -> None:
        self.target = target
        self.port: int = listener.socket.getsockname()[1]
        self.faults = NetworkFaults()
        self.refuse = False
        self.links: list[ProxyLink] = []
        self.accepted = 0
        self.refused = 0
        self._listener = listener

    @property
    def url(self) -> str:
        """``headwater://127.0.0.1:<port>``: give this to ``headwater.connect``."""
        return f"headwater://127.0.0.1:{self.port}"

    @property
    def live_links(self) -> list[ProxyLink]:
        """The links still open."""
        return [link for link in self.links if not link.closed]

    def reset_all(self) -> int:
        """Reset every open link; return how many."""
        live = self.live_links
        for link in live:
            link.reset()
        return len(live)

    def half_close_all(self, direction: str) -> int:
        """Half-close ``direction`` of every open link; return how many."""
        live = self.live_links
        for link in live:
            link.half_close(direction)
        return len(live)

    def heal(self) -> None:
        """Clear the shared faults and accept connections again."""
        self.faults.heal()
        self.refuse = False

    async def _serve(self, nursery: trio.Nursery) -> None:
        while True:
            client = await self._listener.accept()
            if self.refuse:
                self.refused += 1
                _abort(client)
                client.socket.close()
                continue
            nursery.start_soon(self._open_link, client)

    async def _open_link(self, client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream(*self.target)
        except BaseException as exc:
            _abort(client)
            client.socket.close()
            if isinstance(exc, OSError):
                return  # the target is down: the client sees a reset
            raise
        self.accepted += 1
        link = ProxyLink(self.accepted, client, server, self.faults)
        self.links = [*self.live_links, link]
        await link._run()


@asynccontextmanager
async def open_proxy(target_port: int, target_host: str = "127.0.0.1") -> AsyncIterator[Proxy]:
    """A :class:`Proxy` on a free ``127.0.0.1`` port that forwards to
    ``target_host:target_port``, for the duration of the block::

        async with open_proxy(server.port) as proxy:
            async with headwater.connect(proxy.url) as client:
                proxy.faults.black_hole("down")   # answers stop arriving
                ...
                proxy.heal()

    Every link is closed when the block ends.
    """
    if type(target_port) is not int or not 0 < target_port < 65536:
        raise InvalidArgument(f"target_port={target_port!r}; give a TCP port 1..65535")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    proxy = Proxy((target_host, target_port), listeners[0])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proxy._serve, nursery)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
            for listener in listeners:
                listener.socket.close()
