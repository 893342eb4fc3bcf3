"""The gateway sends signed webhooks: a call paid through it on the local chain reaches a
receiver process as an event whose signature checks and whose id is the journal row's."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from x402gate.gateway import Gateway, parse_config
from x402gate.testing.clients import paying_httpx_client

from .conftest import serve_gateway

pytestmark = pytest.mark.chain

PRICE = 10_000  # "GET /flat/*" costs $0.01
SECRET = "whsec-gateway-0123456789"
RECEIVER = Path(__file__).parents[1] / "reliability" / "webhook_receiver.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_paid_call_through_the_gateway_is_sent_signed(
    gateway_yaml: Any, payer: Any, test_token: Any, tmp_path: Path
) -> None:
    port = _free_port()
    out = tmp_path / "received.jsonl"
    receiver = subprocess.Popen(
        [sys.executable, str(RECEIVER), str(port), SECRET, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        text, env = gateway_yaml()
        text += (
            f"webhooks:\n  - url: http://127.0.0.1:{port}/hooks\n    secret: ${{HOOK_SECRET}}\n"
            "webhook_delivery:\n  poll_seconds: 0.1\n"
        )
        app = Gateway(parse_config(text, source="gateway.yaml", env={**env, "HOOK_SECRET": SECRET}))
        with serve_gateway(app) as url:
            async with paying_httpx_client(payer, asset=test_token, base_url=url) as client:
                response = await client.get("/flat/call")
                assert response.status_code == 200, response.text
            deadline = time.monotonic() + 30
            while not out.exists() or not out.read_text().strip():
                assert time.monotonic() < deadline, "no webhook arrived"
                time.sleep(0.05)
            (row,) = [r for r in app.gate.store.journal_rows() if r.outcome == "settled"]
        (line,) = [json.loads(text) for text in out.read_text().splitlines()]
        assert line["valid"] is True and line["id"] == row.id
        body = json.loads(line["body"])
        assert body["type"] == "payment.settled" and body["id"] == row.id
        assert body["data"]["amount"] == str(PRICE) and body["data"]["route"] == "GET /flat/*"
        assert body["data"]["payer"] == payer.address.lower()
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
        if receiver.stdout is not None:
            receiver.stdout.close()
