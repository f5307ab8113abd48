"""A real broker process for the console's browser test: the TCP server and
the HTTP front end on free loopback ports, printed as one JSON line on
stdout. SIGUSR1 kills the actor whose path is in $KILL_PATH (its supervisor
restarts it), so the test can watch a restart from the browser.

Usage: python console_server.py DATA_DIR TOKEN
"""

from __future__ import annotations

import json
import os
import signal
import sys

import trio

import headwater
from headwater.broker import ServerConfig, open_server


async def main(data_dir: str, token: str) -> None:
    kill_path = os.environ.get("KILL_PATH", "/broker/topics/orders/0")
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
        async with (
            headwater.open_broker(data_dir, http_port=0, http_token=token) as broker,
            open_server(
                broker, ServerConfig(data_dir=data_dir, port=0, auth_token=token)
            ) as server,
        ):
            print(json.dumps({"port": server.port, "http_port": broker.http_port}), flush=True)
            async for signum in signals:
                if signum == signal.SIGTERM:
                    break
                await broker.kill(kill_path, "killed by the browser test")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
