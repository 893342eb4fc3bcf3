"""Webhooks from the WSGI middleware and the Flask extension, served by waitress and paid on
the local chain: each paid request reaches a receiver process as one signed event, whose id is
the journal row's, after the answer went out (the answer never waits for the receiver)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from x402gate import LocalFacilitator, PaymentGate
from x402gate.testing.clients import paying_requests_session
from x402gate.testing.servers import serve_wsgi

pytestmark = pytest.mark.chain

PRICE = 10_000
SECRET = "whsec-adapters-0123456789"
RECEIVER = Path(__file__).parents[1] / "reliability" / "webhook_receiver.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A receiver process (answers 204 after a second, so a slow receiver is what the paid
    answer would wait for, if it waited); yields its URL and the file of what it received."""
    port = _free_port()
    out = tmp_path / "received.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(RECEIVER), str(port), SECRET, str(out), "204", "1.0"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}/hooks", out
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _wsgi_app(gate: PaymentGate) -> Any:
    from x402gate.wsgi import PaymentMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"PAID-CONTENT"]

    return PaymentMiddleware(app, gate=gate, routes={"GET /paid": "$0.01"})


def _flask_app(gate: PaymentGate) -> Any:
    from flask import Flask

    from x402gate.flask import X402Gate, require_payment

    app = Flask(__name__)
    X402Gate(app, gate=gate)

    @app.get("/paid")
    @require_payment("$0.01")
    def paid() -> str:
        return "PAID-CONTENT"

    return app


ADAPTERS: dict[str, Callable[[PaymentGate], Any]] = {"wsgi": _wsgi_app, "flask": _flask_app}


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_a_paid_request_is_sent_signed_without_waiting_for_the_receiver(
    adapter: str,
    receiver: tuple[str, Path],
    chain: Any,
    facilitator_account: Any,
    test_token: Any,
    pay_to: str,
    payer: Any,
    tmp_path: Path,
) -> None:
    if adapter == "flask":
        pytest.importorskip("flask")
    url, out = receiver
    gate = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=LocalFacilitator(
            chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
        ),
        store=f"sqlite:///{tmp_path / 'store.db'}",
        webhooks=[{"url": url, "secret": SECRET}],
        webhook_delivery={"poll_seconds": 0.05},
    )
    try:
        with serve_wsgi(ADAPTERS[adapter](gate)) as base:
            session = paying_requests_session(payer, asset=test_token)
            response = session.get(f"{base}/paid", timeout=60)
            answered = time.time()
            assert response.status_code == 200 and response.text == "PAID-CONTENT"
            deadline = time.monotonic() + 30
            while not out.exists() or not out.read_text().strip():
                assert time.monotonic() < deadline, "no webhook arrived"
                time.sleep(0.05)
        (row,) = [r for r in gate.store.journal_rows() if r.outcome == "settled"]
        (line,) = [json.loads(text) for text in out.read_text().splitlines()]
        assert line["valid"] is True and line["id"] == row.id
        body = json.loads(line["body"])
        assert body["type"] == "payment.settled" and body["data"]["amount"] == str(PRICE)
        assert body["data"]["payer"] == payer.address.lower()
        # The receiver answers a second after the event arrived; the paid answer was back
        # before that: it did not wait for the receiver.
        assert answered < line["at"] + 1.0
    finally:
        gate.close()
