"""The web console in a real headless browser (Debian's chromium driven by
Playwright; Playwright's own browser download is never used).

One real broker process, real clock. The test logs in with the token, then
sees, without reloading the page: a topic created after the page opened, a
consumer group's lag change while its consumer works, a killed partition
actor restart in the supervision tree, and an event value of
``<script>alert(1)</script>`` shown as text (never run).

With ``HEADWATER_SCREENSHOTS=DIR`` it saves the main views as PNG files there
(the README's pictures come from ``HEADWATER_SCREENSHOTS=docs/images``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import headwater

from .server_proc import ROOT, env

pytestmark = pytest.mark.crash

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "console-test-token"
SCRIPT = "<script>alert(1)</script>"
EVENTS = 100
WAIT_MS = 15_000


def _browser_missing() -> str | None:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        return f"Debian's chromium is not installed ({CHROMIUM}); apt-get install chromium"
    return None


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The broker process; yields its ports and pid."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "crash" / "console_server.py"),
            str(tmp_path / "d"),
            TOKEN,
        ],
        stdout=subprocess.PIPE,
        bufsize=0,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    drain: threading.Thread | None = None
    try:
        assert proc.stdout is not None
        while True:  # skip log lines an unconfigured structlog prints to stdout
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the broker process exited before listening")
            if line.startswith(b'{"port"'):
                break
        info = json.loads(line)
        # Keep reading its stdout, so its log lines never fill the pipe.
        drain = threading.Thread(target=proc.stdout.read, daemon=True)
        drain.start()
        info["pid"] = proc.pid
        info["url"] = f"headwater://127.0.0.1:{info['port']}"
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if drain is not None:
            drain.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


def run(fn: Any, *args: Any) -> Any:
    """Run one async client step to completion, bounded."""

    async def bounded() -> Any:
        with trio.fail_after(30):
            return await fn(*args)

    return trio.run(bounded)


async def create_topic(url: str) -> None:
    async with headwater.connect(url, token=TOKEN) as client:
        await client.create_topic("orders", partitions=2)


async def produce(url: str) -> int:
    """EVENTS events, then the script value; returns the script's partition."""
    async with headwater.connect(url, token=TOKEN) as client, client.producer() as producer:
        for i in range(EVENTS):
            await producer.send("orders", {"order": i}, key=f"k{i}")
        stored = await producer.send("orders", SCRIPT, key="xss")
        return int(stored.partition)


def consume_in_two_steps(url: str, half_done: threading.Event, go_on: threading.Event) -> None:
    """Consume and commit half the events, wait for ``go_on``, then the rest."""

    async def main() -> None:
        with trio.fail_after(60):
            async with (
                headwater.connect(url, token=TOKEN) as client,
                client.consumer("orders", group="billing") as consumer,
            ):
                seen = 0
                async for _event in consumer:
                    seen += 1
                    if seen == EVENTS // 2:
                        await consumer.commit()
                        half_done.set()
                        await trio.to_thread.run_sync(go_on.wait)
                    if seen == EVENTS + 1:
                        await consumer.commit()
                        return

    trio.run(main)


def test_console_live_view(broker_process: dict[str, Any], tmp_path: Path) -> None:
    """Login, live topic list, lag moving, a restart in the tree, escaped values."""
    missing = _browser_missing()
    if missing is not None:
        print(f"SKIPPED: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import expect, sync_playwright

    shots = os.environ.get("HEADWATER_SCREENSHOTS")
    shot_dir = Path(shots) if shots else tmp_path
    shot_dir.mkdir(parents=True, exist_ok=True)
    url = broker_process["url"]
    base = f"http://127.0.0.1:{broker_process['http_port']}"
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(WAIT_MS)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            # Log in: the console trades the token for an HttpOnly cookie.
            page.goto(base + "/")
            expect(page).to_have_url(base + "/login")
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            expect(page.locator("#status")).to_contain_text("live")
            cookie = next(c for c in page.context.cookies() if c["name"] == "headwater_session")
            assert cookie["httpOnly"]
            assert TOKEN not in cookie["value"]

            # A topic created after the page opened appears without reload.
            run(create_topic, url)
            expect(page.locator('tr[data-topic="orders"]')).to_be_visible()
            script_partition = run(produce, url)
            expect(page.locator('tr[data-topic="orders"] td').nth(2)).to_have_text(str(EVENTS + 1))

            # Lag changes while a consumer works.
            half_done, go_on = threading.Event(), threading.Event()
            worker = threading.Thread(
                target=consume_in_two_steps, args=(url, half_done, go_on), daemon=True
            )
            worker.start()
            page.click('nav a[data-view="groups"]')
            assert half_done.wait(30)
            lag = page.locator('[data-group="billing"] [data-total-lag]')
            expect(lag).to_have_text(str(EVENTS + 1 - EVENTS // 2))
            page.screenshot(path=str(shot_dir / "console-groups.png"))
            go_on.set()
            expect(lag).to_have_text("0")
            worker.join(30)
            assert not worker.is_alive()

            # A killed partition actor restarts, and the tree shows it.
            page.click('nav a[data-view="tree"]')
            node = page.locator('li[data-path="/broker/topics/orders/0"]')
            expect(node).to_have_attribute("data-restarts", "0")
            os.kill(broker_process["pid"], signal.SIGUSR1)
            expect(node).to_have_attribute("data-restarts", "1")
            expect(node).to_have_attribute("data-state", "running")
            expect(node.locator(".node-failure").first).to_contain_text(
                "killed by the browser test"
            )
            page.screenshot(path=str(shot_dir / "console-tree.png"), full_page=True)

            # Event content is shown as text, never executed.
            page.click('nav a[data-view="topics"]')
            page.click('tr[data-topic="orders"]')
            page.click(f'button[data-browse="{script_partition}"]')
            cell = page.locator("#events-table pre.value", has_text=SCRIPT)
            expect(cell).to_have_count(1)
            assert SCRIPT == cell.text_content()
            assert "&lt;script&gt;" in cell.inner_html()
            assert 0 == page.locator("#events-table script").count()
            # For the picture: the newest few events, the script value among them.
            end = page.evaluate("state.browse.end")
            page.fill("#browse-offset", str(max(0, end - 6)))
            page.click("#browse-form button[type=submit]")
            expect(page.locator("#events-table tbody tr")).to_have_count(min(6, end))
            page.screenshot(path=str(shot_dir / "console-topics.png"))
            assert [] == dialogs
        finally:
            browser.close()
