"""A peer process for the remote-actor crash tests: serves the conformance
kit's actors on a free loopback port, prints the port, and runs until killed.

Run as ``python -m tests.crash.actor_peer [TOKEN [PORT]]`` with ``src`` and
the repository root on ``PYTHONPATH`` (TOKEN ``-`` for none; PORT 0, the
default, for a free one).
"""

from __future__ import annotations

import sys
from functools import partial

import trio

from headwater.actors import open_actor_system, serve_actors
from headwater.supervision import ChildSpec, SupervisorSpec
from headwater.testing._actor_kit import KIT_REGISTRY, _Shared, _Target


async def main(token: str | None, port: int = 0) -> None:
    """Serve /kit/target until killed."""
    shared = _Shared()
    kit = SupervisorSpec(
        "kit", children=(ChildSpec("target", lambda: _Target(shared)),), max_restarts=100
    )
    async with open_actor_system("peer", children=(kit,)) as system, trio.open_nursery() as n:
        port = await n.start(partial(serve_actors, system, KIT_REGISTRY, token=token, port=port))
        print(f"PORT {port}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    given = sys.argv[1] if len(sys.argv) > 1 else "-"
    trio.run(main, None if given == "-" else given, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
