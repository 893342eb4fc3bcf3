"""The dashboard in a real browser: headless Chromium, driven over the Chrome DevTools
protocol, signs in through the page's form and reads the seeded journal's figures from the
rendered page; the page loads nothing from elsewhere and weighs under 50 kB.

Skipped when no Chromium is installed, except with ``X402GATE_REQUIRE_BROWSER=1`` (CI sets
it), where a missing browser fails.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ._dashboard import PATH, TOKEN, seed_journal
from .test_dashboard import asgi_app, make_gate

MAX_PAGE_BYTES = 50_000


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("X402GATE_REQUIRE_BROWSER") == "1":
        pytest.fail("X402GATE_REQUIRE_BROWSER=1 but no Chromium is installed")
    pytest.skip("no Chromium installed (apt-get install chromium); CI requires it")


@contextlib.contextmanager
def headless_chromium() -> Iterator[int]:
    """Start headless Chromium with a fresh profile; yields its DevTools port."""
    binary = chromium()
    profile = tempfile.mkdtemp(prefix="x402gate-chromium-")
    process = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Chromium writes the port it bound to this file once DevTools listens.
        active = Path(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start (exit code {process.poll()})")
            time.sleep(0.05)
        yield int(active.read_text().split()[0])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """One browser tab over the DevTools protocol: commands, and the events they cause."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.ids = iter(range(1, 1 << 30))
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        await self.socket.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = json.loads((await self.socket.receive(timeout=30)).data)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    async def wait_for(self, method: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                self.events.remove(event)
                return event
        while True:
            message: dict[str, Any] = json.loads((await self.socket.receive(timeout=30)).data)
            if message.get("method") == method:
                return message
            self.events.append(message)

    async def load(self, action: Any) -> list[dict[str, Any]]:
        """Run ``action`` (a navigation or a form submission) and wait for the next page's
        load; the network events of that load."""
        self.events.clear()
        await action
        await self.wait_for("Page.loadEventFired")
        return list(self.events)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")


@contextlib.asynccontextmanager
async def open_page(port: int) -> AsyncIterator[Page]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as listing:
            targets = await listing.json()
        target = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            page = Page(socket)
            await page.send("Page.enable")
            await page.send("Network.enable")
            yield page


FIGURES = """JSON.stringify({
  overall: Object.fromEntries([...document.querySelectorAll('#overall [data-figure]')]
    .map(e => [e.dataset.figure, e.textContent])),
  routes: [...document.querySelectorAll('#routes tbody tr')]
    .map(tr => [tr.dataset.name, tr.querySelector('[data-figure=earned]').textContent]),
  payers: [...document.querySelectorAll('#payers tbody tr')]
    .map(tr => [tr.dataset.name, tr.querySelector('[data-figure=earned]').textContent]),
  revenueBars: (document.querySelector('#chart-revenue-0 path.bar')?.getAttribute('d') || '')
    .split('M').length - 1,
  revenueTotal: document.querySelector('#chart-revenue-0').dataset.total,
  requestTotal: document.querySelector('#chart-requests').dataset.total,
  cookies: document.cookie,
})"""


def sign_in_script(token: str) -> str:
    """Type ``token`` into the form's one field and submit it as its button would."""
    field = f"document.getElementById('token').value = {json.dumps(token)};"
    return field + " document.getElementById('sign-in').requestSubmit();"


def transferred(events: list[dict[str, Any]]) -> tuple[int, set[str]]:
    """Bytes the browser received for a load, and every URL it asked for."""
    size = sum(
        int(e["params"]["encodedDataLength"])
        for e in events
        if e.get("method") == "Network.loadingFinished"
    )
    urls = {
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    }
    return size, urls


async def test_a_browser_signs_in_and_reads_the_seeded_figures(tmp_path: Path) -> None:
    gate = make_gate(tmp_path)
    try:
        # Every day of the 30 the page shows has rows; 12 payers: more than the top ten.
        seed = seed_journal(gate.store, count=359, payers=12)
        with asgi_app(gate) as base, headless_chromium() as port:
            url = base + PATH
            async with open_page(port) as page:
                # Without the token: the sign-in form, and no figure.
                await page.load(page.send("Page.navigate", url=url))
                assert await page.evaluate("document.querySelectorAll('[data-figure]').length") == 0
                assert await page.evaluate("!!document.querySelector('form#sign-in')")

                # A wrong token is refused, still without a figure.
                submit = sign_in_script("x" * 20)
                await page.load(page.evaluate(submit))
                assert await page.evaluate("document.getElementById('note').textContent") == (
                    "Wrong token."
                )
                assert await page.evaluate("document.querySelectorAll('[data-figure]').length") == 0

                # The right token: the browser follows the redirect to the figures.
                submit = sign_in_script(TOKEN)
                await page.load(page.evaluate(submit))
                figures = json.loads(await page.evaluate(FIGURES))
                reloaded = await page.load(page.send("Page.reload", ignoreCache=True))
        size, urls = transferred(reloaded)
    finally:
        gate.close()

    assert figures["cookies"] == ""  # HttpOnly: page scripts never see the session
    assert {name: int(earned) for name, earned in figures["routes"]} == seed.earned_by_route
    assert [(name, int(earned)) for name, earned in figures["payers"]] == seed.top_payers()
    assert len(figures["payers"]) == 10
    overall = figures["overall"]
    assert int(overall["requests"]) == seed.requests
    assert int(overall["refused"]) == seed.refused
    assert int(overall["errors"]) == seed.errors
    assert overall["refusal_rate"] == f"{seed.refused / len(seed.rows):.2%}"
    # The charts: one bar per day with revenue; their sums are the journal's.
    paid_days = {
        dt.datetime.fromtimestamp(row.time, dt.UTC).date() for row in seed.rows if row.amount
    }
    assert figures["revenueBars"] == len(paid_days)
    assert int(figures["revenueTotal"]) == sum(seed.earned_by_route.values())
    assert int(figures["requestTotal"]) == len(seed.rows)
    # The signed-in page came from the dashboard alone, and is light.
    assert any(url == base + PATH for url in urls) and all(u.startswith(base) for u in urls)
    assert 0 < size < MAX_PAGE_BYTES, f"page weight {size} bytes"
    print(f"dashboard page weight: {size} bytes, {len(seed.rows)} journal rows")
