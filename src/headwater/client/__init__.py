"""headwater.client: the producer/consumer side (events, codec, serializers, batching)."""

from __future__ import annotations

from ._codec import PendingEvent as PendingEvent
from ._codec import decode_events as decode_events
from ._codec import encode_events as encode_events
from ._event import Event as Event

__all__ = ["Event", "PendingEvent", "decode_events", "encode_events"]
