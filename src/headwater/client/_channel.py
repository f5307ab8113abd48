"""Channels: how a client reaches a broker, embedded or over TCP.

A :class:`Channel` carries one request message (from :mod:`headwater._protocol`)
and returns its response, or raises the :class:`~headwater.HeadwaterError` the
broker raised. The embedded channel calls the broker's request handler
directly; the TCP channel sends the same messages as frames. Client code above
a channel never knows which one it has.

A channel also delivers what the broker *pushes* (group notices: a
:class:`~headwater.Membership`) to the listeners registered for that group
(:meth:`Channel.add_push_listener`). The embedded channel passes its own
dispatcher to the broker as :data:`~headwater._protocol.PUSH_SINK`; the TCP
channel dispatches ``push`` frames (protocol v2). A channel that cannot push
simply never calls the listeners: consumers then learn at heartbeat pace.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from headwater._errors import ClosedError, HeadwaterError, HeadwaterTimeoutError, InvalidArgument
from headwater._logging import get_logger
from headwater._protocol import PUSH_SINK, FetchResult, Membership
from headwater.actors._actor import as_failure

__all__ = [
    "Channel",
    "FetchSubscription",
    "Handler",
    "LocalChannel",
    "PendingRequest",
    "PushListener",
]

Handler = Callable[[Any], Awaitable[Any]]
"""A broker's request handler: takes a request message, returns its response."""

_log = get_logger("headwater.client")

PushListener = Callable[[Membership], None]
"""Takes one pushed group notice; must not block."""


def _timeout_seconds(timeout: object) -> float:
    """``timeout`` (seconds or ``None``) as a float (``inf`` for ``None``)."""
    if timeout is None:
        return math.inf
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout >= 0:
        return float(timeout)
    raise InvalidArgument(f"timeout={timeout!r} is invalid; give seconds >= 0 or None")


class Channel(abc.ABC):
    """A path from a client to a broker (see the module docstring)."""

    @abc.abstractmethod
    async def request(self, request: Any, *, timeout: float | None = None) -> Any:
        """Send ``request`` and return its response.

        Raises the broker's :class:`HeadwaterError` as itself (anything else as
        :class:`~headwater.ActorFailed`), :class:`HeadwaterTimeoutError` after
        ``timeout`` seconds, :class:`ClosedError` once the channel is closed.
        """

    async def submit(self, request: Any, *, timeout: float | None = None) -> PendingRequest:
        """Send ``request`` and return as soon as it is on its way, without
        waiting for its answer: ``await pending.result()`` gives the response
        (or raises as :meth:`request` would; ``timeout`` counts from this
        call). Requests submitted one after another reach the broker in that
        order, so their answers can overlap (pipelining). Never raises a
        :class:`HeadwaterError` itself: the result does.

        This default cannot pipeline: it runs the whole request before it
        returns (the embedded channel, whose requests run in the caller's
        task)."""
        try:
            return PendingRequest(await self.request(request, timeout=timeout))
        except HeadwaterError as exc:
            return PendingRequest(error=exc)

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the channel (idempotent). Requests in flight fail."""

    async def open_fetch_subscription(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        credit: int,
        max_bytes: int,
        isolation: str,
        timeout: float | None = None,
    ) -> FetchSubscription | None:
        """Open a pushed fetch of ``topic``/``partition`` from ``offset``
        (docs/protocol.md section 12), or return ``None`` when this channel
        cannot (embedded, or a server speaking protocol version 1): the caller
        then pulls with :class:`~headwater._protocol.Fetch`."""
        return None

    def add_push_listener(self, group: str, listener: PushListener) -> None:
        """Call ``listener`` with every group notice pushed for ``group``."""
        listeners: dict[str, list[PushListener]] = self.__dict__.setdefault("_push_listeners", {})
        listeners.setdefault(group, []).append(listener)

    def remove_push_listener(self, group: str, listener: PushListener) -> None:
        """Stop calling ``listener`` (no error if it was not registered)."""
        listeners: dict[str, list[PushListener]] = self.__dict__.get("_push_listeners", {})
        if listener in listeners.get(group, []):
            listeners[group].remove(listener)
            if not listeners[group]:
                del listeners[group]

    def deliver_push(self, message: object) -> None:
        """Hand a pushed message to its listeners (what a channel calls when
        the broker pushes; unknown kinds are ignored)."""
        if not isinstance(message, Membership):
            return
        listeners: dict[str, list[PushListener]] = self.__dict__.get("_push_listeners", {})
        for listener in list(listeners.get(message.group, ())):
            try:
                listener(message)
            except Exception as exc:  # a listener's bug must not reach the broker's task
                _log.error("push_listener_failed", group=message.group, exc_info=exc)


class PendingRequest:
    """A request sent by :meth:`Channel.submit`, its answer maybe not yet in.

    This base class is an answered one (``value`` or ``error``); a channel
    that pipelines subclasses it. ``on_done`` (if set) is called once when
    the answer arrives (it must not block: set an event)."""

    __slots__ = ("_error", "_value", "on_done")

    def __init__(self, value: Any = None, *, error: HeadwaterError | None = None) -> None:
        self._value = value
        self._error = error
        self.on_done: Callable[[], None] | None = None

    @property
    def deadline(self) -> float:
        """The Trio time when :meth:`result` stops waiting (``inf``: never)."""
        return math.inf

    def done(self) -> bool:
        """Whether the answer is in (then :meth:`result` does not wait)."""
        return True

    async def result(self) -> Any:
        """The response; raises the request's error (or a timeout)."""
        if self._error is not None:
            raise self._error
        return self._value


class FetchSubscription(abc.ABC):
    """A pushed fetch: the server sends the partition's records as they come,
    as far as the credit allows (made by :meth:`Channel.open_fetch_subscription`)."""

    @abc.abstractmethod
    async def receive(self, timeout: float) -> FetchResult:
        """The next pushed result, in order. Raises the error that ended the
        subscription (as a failed fetch would), or a retriable
        :class:`~headwater.ConnectionLostError` when the connection went away
        or nothing arrived for ``timeout`` seconds: subscribe again."""

    @abc.abstractmethod
    async def consumed(self, nbytes: int) -> None:
        """Return ``nbytes`` of credit (records handed on to the reader)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop the pushes (idempotent; does not wait for the server's answer)."""

    def take_directly(self, hook: Callable[[FetchResult], bool] | None) -> None:
        """Offer each pushed result that has nothing queued before it to
        ``hook`` first, on the task that received it (``None``: stop). A
        hook that returns True took the result: :meth:`receive` never
        returns it, and its credit counts as consumed (returned by
        :meth:`receive` once it is due). It must not block or raise. By
        default results always queue for :meth:`receive`."""
        del hook  # not offered: every result queues


class LocalChannel(Channel):
    """The embedded channel: requests go straight to ``handler`` in this task."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._closed = False

    async def request(self, request: Any, *, timeout: float | None = None) -> Any:
        """See :meth:`Channel.request`."""
        if self._closed:
            raise ClosedError("this client is closed; open a new one")
        seconds = _timeout_seconds(timeout)
        with trio.move_on_after(seconds):
            token = PUSH_SINK.set(self.deliver_push)
            try:
                return await self._handler(request)
            except HeadwaterError:
                raise
            except Exception as exc:
                # Same as over TCP: a non-Headwater error arrives as ActorFailed.
                raise as_failure(exc) from exc
            finally:
                PUSH_SINK.reset(token)
        raise HeadwaterTimeoutError(f"{type(request).__name__} got no response within {seconds}s")

    async def aclose(self) -> None:
        """See :meth:`Channel.aclose`."""
        self._closed = True
