"""Facilitator faults, through a real facilitator HTTP service, with secrets in play.

``tests/test_gate_chain.py`` already checks the status code of the plain faults (500, malformed,
drop, timeout at verify and settle; pending at settle) and recovery. This module runs the whole
matrix once more with what an operator cares about on top:

* the facilitator is called with ``Authorization: Bearer SECRET-...``, and every log record at
  DEBUG (x402gate, the x402 SDK, httpx, web3, ...), every answer's headers and body are searched
  for that value and for the private keys of the facilitator and the payer;
* a fault is logged (the detail goes to the logs, not to the client);
* served content implies a settlement on chain, checked on chain, in every case;
* the faults the stock server lacks: *slow beyond the timeout* (the facilitator settles after the
  gate gave up) and *answer lost after a real settlement* (settle, then drop the connection or
  answer 500), where money moves but the outcome is unknown to the gate;
* recovery once the fault clears: a payment refused before the handler can be used again; one
  whose settlement outcome is unknown stays blocked (it may be on chain) and a fresh one pays;
  with the gate reading the chain (``reconcile``), the retry of a payment that did reach the
  chain is served once, without a second transfer, and its next retry is a replay.

``pending`` exists only at settle: a verify answer has no pending state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from x402.http import decode_payment_response_header

from x402gate import LocalFacilitator, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.facilitators import HTTPFacilitator
from x402gate.testing.facilitator_server import FacilitatorServer
from x402gate.testing.payments import decode_payment_required, sign_exact_payment

from ._support import payment_headers, pending_nonce, transactions

pytestmark = pytest.mark.chain

PRICE = 10_000
CONTENT = "the paid content"
TIMEOUT = 1.0  # the gate's facilitator timeout, seconds


# The stock test facilitator has the faults where the settlement *did* happen as well:
# ``settle_then_drop`` and ``settle_then_500`` settle on chain, then lose the answer.
FaultyFacilitatorServer = FacilitatorServer


# (op, fault, slow seconds, expected status, expected code, settlement outcome)
#   outcome "none": nothing reached the chain; "later": the facilitator settles after the
#   gate gave up; "done": settled and answered; "lost": settled, answer lost.
CASES = [
    ("verify", "500", 0, 502, "facilitator_error", "none"),
    ("verify", "malformed", 0, 502, "facilitator_error", "none"),
    ("verify", "drop", 0, 503, "facilitator_unavailable", "none"),
    ("verify", "timeout", 0, 503, "facilitator_unavailable", "none"),
    ("verify", "slow", 0.3, 200, None, "done"),
    ("verify", "slow", 1.6, 503, "facilitator_unavailable", "none"),
    ("settle", "500", 0, 502, "facilitator_error", "none"),
    ("settle", "malformed", 0, 502, "facilitator_error", "none"),
    ("settle", "drop", 0, 503, "facilitator_unavailable", "none"),
    ("settle", "timeout", 0, 503, "facilitator_unavailable", "none"),
    ("settle", "slow", 0.3, 200, None, "done"),
    ("settle", "slow", 1.6, 503, "facilitator_unavailable", "later"),
    ("settle", "pending", 0, 503, "settlement_pending", "none"),
    ("settle", "settle_then_drop", 0, 503, "facilitator_unavailable", "lost"),
    ("settle", "settle_then_500", 0, 502, "facilitator_error", "lost"),
]


def _case_id(case: tuple[Any, ...]) -> str:
    op, fault, slow = case[:3]
    return f"{op}-{fault}" + (f"-{slow}s" if slow else "")


class Shop:
    def __init__(self) -> None:
        self.runs = 0

    def app(self, gate: PaymentGate) -> PaymentMiddleware:
        async def paid(request: Request) -> JSONResponse:
            self.runs += 1
            return JSONResponse({"secret": CONTENT})

        return PaymentMiddleware(
            Starlette(routes=[Route("/paid", paid)]), gate=gate, routes={"GET /paid": "$0.01"}
        )


@pytest.fixture
def facilitator(chain: Any, facilitator_account: Any) -> LocalFacilitator:
    return LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)


@pytest.fixture
def service(facilitator: LocalFacilitator) -> Iterator[FaultyFacilitatorServer]:
    with FaultyFacilitatorServer(facilitator, hang_seconds=2 * TIMEOUT) as server:
        yield server


@pytest.fixture
def auth_secret() -> str:
    return f"SECRET-{secrets.token_hex(16)}"


@pytest.fixture(params=["blind", "reconciling"])
async def gate(
    request: pytest.FixtureRequest,
    service: FaultyFacilitatorServer,
    auth_secret: str,
    chain: Any,
    test_token: Any,
    pay_to: str,
    tmp_path: Any,
) -> AsyncIterator[PaymentGate]:
    g = PaymentGate(
        reconcile=chain.rpc_url if request.param == "reconciling" else False,
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=HTTPFacilitator(
            service.url, headers={"Authorization": f"Bearer {auth_secret}"}, timeout=TIMEOUT
        ),
        store=f"sqlite:///{tmp_path / 'replay.db'}",
    )
    yield g
    await g.aclose()


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    return httpx.AsyncClient(transport=transport, base_url="http://shop.test")


async def _fresh_payment(client: httpx.AsyncClient, payer: Any) -> Any:
    challenge = await client.get("/paid")
    assert challenge.status_code == 402
    required = decode_payment_required(challenge.headers["payment-required"])
    return sign_exact_payment(payer, required.accepts[0])


async def _wait_until(condition: Any, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _secrets_found(texts: list[str], needles: list[str]) -> list[str]:
    haystack = "\n".join(texts).lower()
    return [n for n in needles if n.lower() in haystack]


def _key_hex(account: Any) -> str:
    return bytes(account.key).hex()


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
async def test_facilitator_fault_serves_nothing_unpaid_leaks_nothing_and_recovers(
    case: tuple[Any, ...],
    caplog: pytest.LogCaptureFixture,
    gate: PaymentGate,
    service: FaultyFacilitatorServer,
    auth_secret: str,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    op, fault, slow, status, code, outcome = case
    caplog.set_level(logging.DEBUG)
    shop = Shop()
    app = shop.app(gate)
    first_block = chain.block_number() + 1
    answers: list[httpx.Response] = []
    async with _client(app) as client:
        payload = await _fresh_payment(client, payer)
        nonce = payload.payload["authorization"]["nonce"]
        if slow:
            service.slow_seconds = slow
        service.faults[op] = fault
        try:
            response = await client.get("/paid", headers=payment_headers(payload))
        finally:
            service.faults.pop(op, None)
        answers.append(response)

        assert response.status_code == status, response.text
        if code is not None:
            assert response.json()["error"] == code
            assert CONTENT not in response.text
            assert "retry-after" in response.headers
            # The operator gets the detail in the logs.
            assert any(
                r.name.startswith("x402gate") and r.levelno >= logging.WARNING
                for r in caplog.records
            )
        if outcome == "later":
            # The facilitator finishes the settlement after the gate stopped waiting.
            assert await _wait_until(lambda: test_token.authorization_state(payer.address, nonce))
        settled_first = test_token.authorization_state(payer.address, nonce)
        assert settled_first is (outcome in ("done", "later", "lost"))
        if CONTENT in response.text:
            receipt = decode_payment_response_header(response.headers["payment-response"])
            assert receipt.success and settled_first

        # The fault clears.
        again = await client.get("/paid", headers=payment_headers(payload))
        answers.append(again)
        recovered = gate.reconciler is not None and outcome in ("later", "lost")
        if recovered:
            # Paid on chain, never answered: the retry is served, once, from the chain.
            assert again.status_code == 200 and CONTENT in again.text, again.text
            receipt = decode_payment_response_header(again.headers["payment-response"])
            assert receipt.success and receipt.transaction.startswith("0x")
            replay = await client.get("/paid", headers=payment_headers(payload))
            answers.append(replay)
            assert replay.status_code == 402
            assert replay.json()["error"] == "invalid_exact_evm_nonce_already_used"
        elif op == "verify" and outcome == "none":
            # Refused before the handler ran: the claim was released, the payment is good.
            assert again.status_code == 200 and CONTENT in again.text
        else:
            # Settled (a replay), or an outcome unknown to the gate: the authorization stays
            # blocked, it may be on chain.
            assert again.status_code == 402
            assert again.json()["error"] == "invalid_exact_evm_nonce_already_used"
        fresh = await client.get(
            "/paid", headers=payment_headers(await _fresh_payment(client, payer))
        )
        answers.append(fresh)
        assert fresh.status_code == 200 and CONTENT in fresh.text

    # On chain: one successful transfer per settled payment, no reverted or stuck transaction.
    served = sum(CONTENT in r.text for r in answers)
    settlements = served + (1 if outcome in ("later", "lost") and not recovered else 0)
    assert test_token.balance_of(pay_to) == PRICE * settlements
    mined = transactions(chain, first_block)
    assert [tx["status"] for tx in mined] == [1] * settlements
    assert pending_nonce(chain, facilitator_account.address) == settlements
    # The handler ran for every answer served, plus once for a request whose settlement then
    # failed (policy "after": the handler runs first, its content is withheld).
    assert shop.runs == served + (1 if op == "settle" and status != 200 else 0)

    needles = [auth_secret, _key_hex(facilitator_account), _key_hex(payer)]
    logged = [caplog.text, *(r.getMessage() for r in caplog.records)]
    sent = [f"{r.headers!r} {r.text}" for r in answers]
    assert _secrets_found(logged, needles) == []
    assert _secrets_found(sent, [*needles, service.url]) == []
    assert len(caplog.records) > 10  # DEBUG capture really was on (httpx, web3, ...)


# -- what a facilitator answers is not trusted to be free of secrets ----------------------------


class _ReflectingFacilitator:
    """A facilitator (or a proxy in front of one) whose error page echoes the request headers,
    as debug pages and some API gateways do: ``401 {"error": ..., "authorization": <header>}``."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                body = json.dumps(
                    {"error": "unauthorized", "authorization": self.headers.get("authorization")}
                ).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _ReflectingFacilitator:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


async def test_an_error_body_reflecting_the_auth_header_does_not_put_it_in_the_logs(
    caplog: pytest.LogCaptureFixture,
    auth_secret: str,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    with _ReflectingFacilitator() as reflecting:
        facilitator = HTTPFacilitator(
            reflecting.url, headers={"Authorization": f"Bearer {auth_secret}"}, timeout=TIMEOUT
        )
        # Only verify and settle are in question: take /supported from the real chain.
        local = LocalFacilitator(chain.rpc_url, "0x" + "11" * 32, networks=chain.network)
        facilitator.supported = local.supported  # type: ignore[method-assign]
        gate = PaymentGate(
            pay_to=pay_to, assets=test_token.asset, facilitator=facilitator, store="memory://"
        )
        async with _client(Shop().app(gate)) as client:
            response = await client.get(
                "/paid", headers=payment_headers(await _fresh_payment(client, payer))
            )
        await gate.aclose()
    assert response.status_code == 502
    assert auth_secret not in response.text
    assert _secrets_found([caplog.text], [auth_secret]) == []


async def test_credentials_in_the_facilitator_url_are_not_logged(
    caplog: pytest.LogCaptureFixture,
    service: FaultyFacilitatorServer,
    auth_secret: str,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = service.url.replace("http://", f"http://merchant:{auth_secret}@")
    gate = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=HTTPFacilitator(url, timeout=TIMEOUT),
        store="memory://",
    )
    async with _client(Shop().app(gate)) as client:
        payload = await _fresh_payment(client, payer)
        with service.fault("verify", "drop"):
            response = await client.get("/paid", headers=payment_headers(payload))
    await gate.aclose()
    assert response.status_code == 503
    assert _secrets_found([caplog.text], [auth_secret]) == []
