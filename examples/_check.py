"""What every ``examples/<name>/check.py`` does: start the example with ``--local`` (its real
server on a local chain), check the 402, pay one request with the official client, stop it.

The example prints one JSON line when it is ready: ``url``, ``buyer_key`` (a funded test key on
the local chain), ``asset`` (the test token) and ``pay_to``.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

STARTUP_SECONDS = 30


class CheckFailed(SystemExit):
    """The example did not behave: the message says how (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"check failed: {message}")


def start_example(app: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start ``app --local --port 0``; return the process and its ready line (JSON)."""
    process = subprocess.Popen(
        [sys.executable, str(app), "--local", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        return process, json.loads(lines.get(timeout=STARTUP_SECONDS))
    except (queue.Empty, ValueError):
        stop(process)
        raise CheckFailed(f"{app} did not start (exit code {process.poll()})") from None


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM: the example stops its server and its anvil; kill only if it hangs."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def pay_one(ready: dict[str, Any], path: str) -> str:
    """Pay ``path`` with the official client; returns a one-line report."""
    import requests
    from x402.http import decode_payment_response_header

    from x402gate import Asset
    from x402gate.testing.clients import paying_requests_session

    url = ready["url"] + path
    unpaid = requests.get(url, timeout=30)
    if unpaid.status_code != 402 or "payment-required" not in unpaid.headers:
        raise CheckFailed(f"expected a 402 challenge without payment, got {unpaid.status_code}")
    session = paying_requests_session(ready["buyer_key"], asset=Asset(**ready["asset"]))
    paid = session.get(url, timeout=30)
    if paid.status_code != 200:
        raise CheckFailed(f"expected 200 after paying, got {paid.status_code}: {paid.text}")
    receipt = decode_payment_response_header(paid.headers["payment-response"])
    if not receipt.success:
        raise CheckFailed(f"the receipt says the payment failed: {receipt}")
    return f"paid {path}: {paid.status_code} {paid.text.strip()} (tx {receipt.transaction})"


def check_example(app: Path, path: str) -> int:
    """Start ``app``, pay ``path`` once, stop it; 0 on success, ``CheckFailed`` otherwise."""
    process, ready = start_example(app)
    try:
        print(pay_one(ready, path))
    finally:
        stop(process)
    return 0
