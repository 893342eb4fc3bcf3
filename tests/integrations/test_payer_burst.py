"""A wallet that can pay K times sends 50 paid requests at once, each with its own authorization.

Served for real (uvicorn for ASGI and FastAPI, waitress for Flask and WSGI), settled on the local
chain. What the attacker gets, per adapter: at most K handler runs, exactly as many settled
transfers on chain as handler runs, and a 402 with a code for every other request. With the
bound turned off the same burst runs the handler for free, which is what this bound exists for.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from x402gate import PaymentGate
from x402gate._runner import run_sync
from x402gate.facilitators import HTTPFacilitator
from x402gate.testing.burst import BurstResult, requirements_of, send_burst
from x402gate.testing.facilitator_server import FacilitatorServer

pytestmark = pytest.mark.chain

PRICE = 10_000  # $0.01
K = 3
BURST = 50
HANDLER_SECONDS = 0.2  # long enough for the whole burst to arrive while the first ones run
REFUSED = {"payments_in_flight", "insufficient_funds"}


class Counted:
    """Handler runs, counted across server threads."""

    def __init__(self) -> None:
        self.runs = 0
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.runs += 1


def serve_asgi(app: Any) -> AbstractContextManager[str]:
    from x402gate.demo import serve_in_thread

    return serve_in_thread(app)


@contextmanager
def fastapi_site(gate: PaymentGate, counted: Counted) -> Iterator[str]:
    pytest.importorskip("fastapi")
    from fastapi import Depends, FastAPI

    from x402gate.fastapi import install, require_payment

    app = FastAPI()
    install(app, gate)

    @app.get("/paid", dependencies=[Depends(require_payment("$0.01"))])
    async def paid() -> dict[str, str]:
        counted.hit()
        await asyncio.sleep(HANDLER_SECONDS)
        return {"content": "PAID"}

    with serve_asgi(app) as url:
        yield url


@contextmanager
def asgi_site(gate: PaymentGate, counted: Counted) -> Iterator[str]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def paid(request: Request) -> JSONResponse:
        counted.hit()
        await asyncio.sleep(HANDLER_SECONDS)
        return JSONResponse({"content": "PAID"})

    app = PaymentMiddleware(
        Starlette(routes=[Route("/paid", paid)]), gate=gate, routes={"GET /paid": "$0.01"}
    )
    with serve_asgi(app) as url:
        yield url


@contextmanager
def flask_site(gate: PaymentGate, counted: Counted) -> Iterator[str]:
    pytest.importorskip("flask")
    from flask import Flask

    from x402gate.flask import X402Gate, require_payment
    from x402gate.testing.servers import serve_wsgi

    app = Flask(__name__)
    X402Gate(app, gate=gate)

    @app.get("/paid")
    @require_payment("$0.01")
    def paid() -> dict[str, str]:
        counted.hit()
        time.sleep(HANDLER_SECONDS)
        return {"content": "PAID"}

    with serve_wsgi(app, threads=16) as url:
        yield url


@contextmanager
def wsgi_site(gate: PaymentGate, counted: Counted) -> Iterator[str]:
    from x402gate.testing.servers import serve_wsgi
    from x402gate.wsgi import PaymentMiddleware

    def paid(environ: Any, start_response: Any) -> list[bytes]:
        counted.hit()
        time.sleep(HANDLER_SECONDS)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"content": "PAID"}']

    app = PaymentMiddleware(paid, gate=gate, routes={"GET /paid": "$0.01"})
    with serve_wsgi(app, threads=16) as url:
        yield url


SITES: dict[str, Callable[[PaymentGate, Counted], AbstractContextManager[str]]] = {
    "fastapi": fastapi_site,
    "asgi": asgi_site,
    "flask": flask_site,
    "wsgi": wsgi_site,
}


@pytest.fixture
def facilitator_service(local_facilitator: Any) -> Iterator[FacilitatorServer]:
    with FacilitatorServer(local_facilitator) as server:
        yield server


def make_gate(
    facilitator: Any, test_token: Any, pay_to: str, tmp_path: Any, **options: Any
) -> PaymentGate:
    return PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'x402gate.db'}",
        **options,
    )


async def burst_at(site: str, gate: PaymentGate, payer: Any) -> tuple[BurstResult, Counted]:
    counted = Counted()
    with SITES[site](gate, counted) as url:
        requirements = await requirements_of(url, "/paid")
        assert int(requirements.amount) == PRICE
        result = await send_burst(url, "/paid", payer, requirements, BURST)
    return result, counted


def assert_bounded(result: BurstResult, counted: Counted, test_token: Any, pay_to: str) -> None:
    settled = result.settled(test_token)
    assert counted.runs <= K
    # Every handler run was paid for, on chain, and every paid request got its answer.
    assert settled == counted.runs == result.served
    assert test_token.balance_of(pay_to) == settled * PRICE
    refusals = result.refusals()
    assert sum(refusals.values()) == BURST - result.served
    assert {status for status, _ in refusals} == {402}, refusals
    assert {code for _, code in refusals} <= REFUSED, refusals
    assert all(
        "PAID" not in body
        for body, s in zip(result.bodies, result.statuses, strict=True)
        if s != 200
    )


@pytest.mark.parametrize("site", sorted(SITES))
async def test_a_burst_runs_the_handler_at_most_as_often_as_the_wallet_can_pay(
    site: str,
    chain: Any,
    test_token: Any,
    local_facilitator: Any,
    pay_to: str,
    tmp_path: Any,
) -> None:
    payer = chain.new_account(eth_wei=0, token=test_token, token_amount=K * PRICE)
    gate = make_gate(local_facilitator, test_token, pay_to, tmp_path)
    result, counted = await burst_at(site, gate, payer)
    assert_bounded(result, counted, test_token, pay_to)
    # The balance read on chain admits all K at once: nothing held back that could be paid.
    assert counted.runs == K
    assert test_token.balance_of(payer.address) == 0


async def test_without_the_bound_the_same_burst_runs_the_handler_for_free(
    chain: Any, test_token: Any, local_facilitator: Any, pay_to: str, tmp_path: Any
) -> None:
    payer = chain.new_account(eth_wei=0, token=test_token, token_amount=K * PRICE)
    gate = make_gate(local_facilitator, test_token, pay_to, tmp_path, limit_in_flight=False)
    result, counted = await burst_at("asgi", gate, payer)
    # What limit_in_flight=False costs: handler runs nobody paid for.
    assert result.settled(test_token) == K
    assert counted.runs > K


async def test_through_a_facilitator_service_without_a_node_one_payment_is_in_flight(
    chain: Any,
    test_token: Any,
    facilitator_service: FacilitatorServer,
    pay_to: str,
    tmp_path: Any,
) -> None:
    # No RPC URL to read balances from: the facilitator's verify vouches for one payment at a
    # time, so each payer has one request running at most.
    payer = chain.new_account(eth_wei=0, token=test_token, token_amount=K * PRICE)
    facilitator = HTTPFacilitator(facilitator_service.url, timeout=30)
    gate = make_gate(facilitator, test_token, pay_to, tmp_path)
    try:
        result, counted = await burst_at("wsgi", gate, payer)
    finally:
        run_sync(gate.aclose())  # the facilitator's connections live on the sync runner's loop
    assert_bounded(result, counted, test_token, pay_to)
    assert counted.runs >= 1


async def test_with_an_rpc_url_a_facilitator_service_setup_reads_the_balance_on_chain(
    chain: Any,
    test_token: Any,
    facilitator_service: FacilitatorServer,
    pay_to: str,
    tmp_path: Any,
) -> None:
    payer = chain.new_account(eth_wei=0, token=test_token, token_amount=K * PRICE)
    facilitator = HTTPFacilitator(facilitator_service.url, timeout=30)
    gate = make_gate(facilitator, test_token, pay_to, tmp_path, rpc_url=chain.rpc_url)
    try:
        result, counted = await burst_at("flask", gate, payer)
    finally:
        run_sync(gate.aclose())
    assert_bounded(result, counted, test_token, pay_to)
    assert counted.runs == K


async def test_a_balance_that_cannot_be_read_serves_nothing_and_burns_nothing(
    chain: Any, test_token: Any, local_facilitator: Any, payer: Any, pay_to: str, tmp_path: Any
) -> None:
    import httpx

    from x402gate.testing.fake_llm import refusing_url
    from x402gate.testing.payments import encode_payment, sign_exact_payment

    counted = Counted()
    with refusing_url() as dead:
        gate = make_gate(local_facilitator, test_token, pay_to, tmp_path, rpc_url=dead)
        with asgi_site(gate, counted) as url:
            payload = sign_exact_payment(payer, await requirements_of(url, "/paid"))
            header = {"PAYMENT-SIGNATURE": encode_payment(payload)}
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                refused = await client.get("/paid", headers=header)
    assert refused.status_code == 503
    assert refused.json()["error"] == "facilitator_unavailable"
    assert "PAID" not in refused.text and counted.runs == 0
    assert test_token.balance_of(pay_to) == 0
    # The authorization was released, not burned: once the node answers, it pays as usual.
    healthy = make_gate(local_facilitator, test_token, pay_to, tmp_path)
    with asgi_site(healthy, counted) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            paid = await client.get("/paid", headers=header)
    assert paid.status_code == 200 and counted.runs == 1
    assert test_token.balance_of(pay_to) == PRICE


async def test_a_node_answering_nonsense_serves_nothing(
    chain: Any, test_token: Any, local_facilitator: Any, payer: Any, pay_to: str, tmp_path: Any
) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate.testing.payments import encode_payment, sign_exact_payment

    async def rpc(request: Request) -> JSONResponse:
        body = await request.json()
        if body["method"] == "eth_blockNumber":
            return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "result": "0x10"})
        return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "result": "0x" + "f" * 80})

    counted = Counted()
    with serve_asgi(Starlette(routes=[Route("/", rpc, methods=["POST"])])) as node:
        gate = make_gate(local_facilitator, test_token, pay_to, tmp_path, rpc_url=node + "/")
        with asgi_site(gate, counted) as url:
            payload = sign_exact_payment(payer, await requirements_of(url, "/paid"))
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                response = await client.get(
                    "/paid", headers={"PAYMENT-SIGNATURE": encode_payment(payload)}
                )
    assert response.status_code == 502
    assert response.json()["error"] == "facilitator_error"
    assert counted.runs == 0 and test_token.balance_of(pay_to) == 0
