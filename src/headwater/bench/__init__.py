"""headwater.bench: Headwater side by side with NATS JetStream and Redis Streams.

:class:`HeadwaterDriver` plugs Headwater into the shared peer benchmark's
driver interface; :func:`run_peers` runs the whole comparison (the engine of
``benchmarks/run.py peers`` and of ``headwater bench``).
"""

from __future__ import annotations

from ._driver import HeadwaterDriver as HeadwaterDriver

__all__ = ["HeadwaterDriver"]
