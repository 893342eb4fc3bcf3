"""Webhooks from Django settings (``X402GATE["WEBHOOKS"]``) under waitress, paid on the local
chain through an HTTP facilitator: the paid request reaches a receiver process as one signed
event whose id is the journal row's."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.urls import path

from x402gate import LocalFacilitator
from x402gate.stores import open_store
from x402gate.testing.clients import paying_requests_session
from x402gate.testing.facilitator_server import FacilitatorServer

from .conftest import django_server

pytestmark = pytest.mark.chain

PRICE = 10_000
SECRET = "whsec-django-0123456789"
RECEIVER = Path(__file__).parents[2] / "reliability" / "webhook_receiver.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_django_settings_send_signed_events(
    facilitator: LocalFacilitator, test_token: Any, payer: Any, pay_to: str, tmp_path: Path
) -> None:
    port = _free_port()
    out = tmp_path / "received.jsonl"
    receiver = subprocess.Popen(
        [sys.executable, str(RECEIVER), str(port), SECRET, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def paid(request: HttpRequest) -> HttpResponse:
        return HttpResponse("PAID-CONTENT")

    store_url = f"sqlite:///{tmp_path / 'django.db'}"
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        with FacilitatorServer(facilitator) as service:
            settings = {
                "PAY_TO": pay_to,
                "ASSETS": [test_token.asset],
                "FACILITATOR_URL": service.url,
                "STORE_URL": store_url,
                "ROUTES": {"GET /paid": "$0.01"},
                "WEBHOOKS": [{"url": f"http://127.0.0.1:{port}/hooks", "secret": SECRET}],
                "WEBHOOK_DELIVERY": {"poll_seconds": 0.05},
            }
            with django_server([path("paid", paid)], settings) as site:
                session = paying_requests_session(payer, asset=test_token)
                response = session.get(f"{site}/paid", timeout=60)
                assert response.status_code == 200 and response.text == "PAID-CONTENT"
                deadline = time.monotonic() + 30
                while not out.exists() or not out.read_text().strip():
                    assert time.monotonic() < deadline, "no webhook arrived"
                    time.sleep(0.05)
        with open_store(store_url) as store:
            (row,) = [r for r in store.journal_rows() if r.outcome == "settled"]
        (line,) = [json.loads(text) for text in out.read_text().splitlines()]
        assert line["valid"] is True and line["id"] == row.id
        body = json.loads(line["body"])
        assert body["type"] == "payment.settled" and body["data"]["amount"] == str(PRICE)
        assert body["data"]["payer"] == payer.address.lower()
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
        if receiver.stdout is not None:
            receiver.stdout.close()
