"""Remote actors over real loopback TCP and across real processes (real clock)."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from headwater import ActorFailed, ActorNotFound, AuthenticationError, ConnectionLostError
from headwater.actors import (
    ActorRef,
    ActorSystem,
    connect_actor,
    open_actor_client,
    open_actor_system,
    serve_actors,
)
from headwater.supervision import ChildSpec
from headwater.testing import KIT_REGISTRY, check_actor_refs
from headwater.testing._actor_kit import Echo, Fail, Get, GetRef, Put, _Shared, _Target

pytestmark = pytest.mark.crash

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def tcp_refs(system: ActorSystem) -> AsyncIterator[GetRef]:
    """Remote refs to ``system`` served on a free loopback port."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_actors, system, KIT_REGISTRY))
        async with open_actor_client(KIT_REGISTRY) as client:

            async def get(path: str) -> ActorRef:
                return await client.lookup(f"headwater://127.0.0.1:{port}{path}")

            yield get
        nursery.cancel_scope.cancel()


async def test_remote_refs_over_tcp_conform() -> None:
    """RemoteActorRef over real TCP passes the actor-ref conformance kit."""
    with trio.fail_after(30):
        await check_actor_refs(tcp_refs)


@asynccontextmanager
async def peer_process(
    token: str | None = None, port: int = 0
) -> AsyncIterator[tuple[subprocess.Popen[str], int]]:
    """A peer process serving the kit's actors; yields it and its port."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    args = [sys.executable, "-m", "tests.crash.actor_peer", token or "-", str(port)]
    proc = subprocess.Popen(  # noqa: ASYNC220 -- a short spawn, then read through a thread
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = ""
        while not line.startswith("PORT "):  # structlog may print before it
            line = await trio.to_thread.run_sync(proc.stdout.readline)
            assert line, "the peer process exited before serving"
        yield proc, int(line.split()[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        await trio.to_thread.run_sync(proc.wait)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_two_processes_tell_ask_errors_and_monitor_on_sigkill() -> None:
    """Across two processes: tell/ask and errors work as locally, a wrong
    token is refused, and after SIGKILL of the peer a monitor fires
    'unreachable', a pending ask and later calls raise ConnectionLostError."""
    with trio.fail_after(30):
        async with peer_process("tok") as (proc, port):
            url = f"headwater://127.0.0.1:{port}/kit/target"
            async with open_actor_client(KIT_REGISTRY, token="bad") as bad:
                with pytest.raises(AuthenticationError):
                    await bad.lookup(url)
            async with open_actor_client(KIT_REGISTRY, token="tok") as client:
                ref = await client.lookup(url)
                with pytest.raises(ActorNotFound):
                    await client.lookup(f"headwater://127.0.0.1:{port}/kit/nobody")
                for i in range(3):
                    await ref.tell(Put(i))
                assert [0, 1, 2] == await ref.ask(Get())
                with pytest.raises(ActorFailed, match="KeyError"):
                    await ref.ask(Fail("other"))
                assert Echo("ok") == await ref.ask(Echo("ok"))
                monitor = await ref.monitor()
                await trio.sleep(0.1)
                assert monitor.down is None
                os.kill(proc.pid, signal.SIGKILL)
                down = await monitor.wait()
                assert ("unreachable", "/kit/target") == (down.reason, down.path)
                with pytest.raises(ConnectionLostError):
                    await ref.ask(Echo("gone"))
                with pytest.raises(ConnectionLostError):
                    await client.lookup(url)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_and_token(tmp_path: Path) -> None:
    """Over TLS with a token: the right client is served; a client that does
    not trust the certificate, or has the wrong token, is refused."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    untrusting = ssl.create_default_context()
    with trio.fail_after(20):
        async with (
            open_actor_system(
                "tls", children=(ChildSpec("t", lambda: _Target(_Shared())),)
            ) as system,
            trio.open_nursery() as nursery,
        ):
            serve = partial(serve_actors, system, KIT_REGISTRY, token="tok", ssl_context=server_ctx)
            port = await nursery.start(serve)
            url = f"headwater://127.0.0.1:{port}/t"
            async with connect_actor(url, KIT_REGISTRY, token="tok", ssl_context=client_ctx) as ref:
                assert Echo("secret") == await ref.ask(Echo("secret"))
            with pytest.raises(AuthenticationError):
                async with connect_actor(url, KIT_REGISTRY, token="no", ssl_context=client_ctx):
                    pass  # pragma: no cover
            with pytest.raises(ConnectionLostError):
                async with connect_actor(url, KIT_REGISTRY, token="tok", ssl_context=untrusting):
                    pass  # pragma: no cover
            with pytest.raises(ConnectionLostError):  # plain TCP to a TLS listener
                async with connect_actor(url, KIT_REGISTRY, token="tok", keepalive=0.5):
                    pass  # pragma: no cover
            nursery.cancel_scope.cancel()
