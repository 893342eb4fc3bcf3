"""Paid but unanswered, behind every adapter's real server: the facilitator service settles on
chain and then loses its answer, the buyer retries the same payment.

Each conformance app (Starlette and FastAPI on uvicorn; Flask, plain WSGI and Django on
waitress) gets a gate that talks to a real facilitator HTTP service and reads the local chain
to reconcile. The official x402 client pays; its payment is lost on the way back (the service
settles, then drops the connection or answers 500). The retry of the very same payment must be
served exactly once: 200 with the content and the receipt of the transaction already on chain,
the handler run once for it, no second transfer; the retry after that is a replay (402).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from x402.http import decode_payment_response_header

from x402gate import ChainReconciler, LocalFacilitator, PaymentGate
from x402gate._runner import run_sync
from x402gate.credit import SESSION_HEADER
from x402gate.facilitators import HTTPFacilitator
from x402gate.testing.clients import paying_httpx_client, payment_recorder
from x402gate.testing.facilitator_server import FacilitatorServer
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment

from .test_conformance import ADAPTERS, ORIGIN, PRICE, _module

pytestmark = pytest.mark.chain

REPLAY = "invalid_exact_evm_nonce_already_used"
LOST = {
    "settle_then_drop": (503, "facilitator_unavailable"),
    "settle_then_500": (502, "facilitator_error"),
}


ASGI_ADAPTERS = ("starlette", "fastapi")
CLOSE_PATH = "/__close-facilitator"


def closing(app: Any, gate: PaymentGate) -> Any:
    """``app``, plus ``GET /__close-facilitator``: the facilitator's connections live on the
    server's event loop, so they are closed there, by a request, before the server stops."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == CLOSE_PATH:
            await gate.facilitator.aclose()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    return wrapped


@contextlib.contextmanager
def serve_closing(adapter: Any, app: Any, gate: PaymentGate) -> Iterator[str]:
    """Serve ``app`` with ``adapter``; on the way out, close the gate's facilitator and store on
    the loop that used them (the server's for ASGI apps, the background loop for WSGI ones)."""
    asgi = adapter.NAME in ASGI_ADAPTERS
    with adapter.serve(closing(app, gate) if asgi else app) as base_url:
        yield base_url
        if asgi:
            assert httpx.get(base_url + CLOSE_PATH, timeout=30).status_code == 204
    run_sync(gate.aclose())


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> Any:
    return _module(request.param)


@pytest.fixture
def service(chain: Any, facilitator_account: Any) -> Iterator[FacilitatorServer]:
    inner = LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)
    with FacilitatorServer(inner) as server:
        yield server
    inner.close()


@pytest.fixture
def served(
    adapter: Any,
    service: FacilitatorServer,
    chain: Any,
    test_token: Any,
    pay_to: str,
    tmp_path: Any,
) -> Iterator[tuple[str, Any, PaymentGate]]:
    gate = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=HTTPFacilitator(service.url, timeout=10),
        store=f"sqlite:///{tmp_path / 'replay.db'}",
        reconcile=chain.rpc_url,
        public_origin=ORIGIN,
    )
    app, calls = adapter.make_app(gate)
    with serve_closing(adapter, app, gate) as base_url:
        yield base_url, calls, gate


async def _pay_and_lose_the_answer(
    base_url: str,
    payer: Any,
    test_token: Any,
    service: FacilitatorServer,
    fault: str,
    method: str = "GET",
    path: str = "/paid",
    json: Any = None,
) -> tuple[httpx.Response, str]:
    """The official client pays; the service settles and loses the answer. Returns the
    client's answer and the payment header it sent."""
    recorder, payments = payment_recorder()
    service.faults["settle"] = fault
    try:
        async with paying_httpx_client(
            payer, asset=test_token, base_url=base_url, timeout=30, transport=recorder
        ) as client:
            response = await client.request(method, path, json=json)
    finally:
        service.faults.pop("settle", None)
    assert len(payments) == 1
    return response, payments[0]


@pytest.mark.parametrize("fault", list(LOST))
async def test_the_retry_of_a_payment_settled_but_unanswered_is_served_once(
    fault: str,
    served: tuple[str, Any, PaymentGate],
    service: FacilitatorServer,
    chain: Any,
    facilitator_account: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    base_url, calls, _ = served
    start_balance = test_token.balance_of(pay_to)
    first, payment = await _pay_and_lose_the_answer(base_url, payer, test_token, service, fault)
    status, code = LOST[fault]
    assert first.status_code == status, first.text
    assert first.json()["error"] == code
    assert "PAID-CONTENT" not in first.text
    assert calls["paid"] == 1  # policy "after": the handler ran, its answer was withheld
    assert test_token.balance_of(pay_to) == start_balance + PRICE  # the money did move
    assert chain.tx_count(facilitator_account.address) == 1

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
        retry = await plain.get("/paid", headers={"PAYMENT-SIGNATURE": payment})
        assert retry.status_code == 200, retry.text
        assert retry.json() == {"content": "PAID-CONTENT", "payer": payer.address}
        receipt = decode_payment_response_header(retry.headers["payment-response"])
        assert receipt.success and receipt.payer == payer.address
        tx = chain.w3.eth.get_transaction_receipt(receipt.transaction)
        assert tx["status"] == 1 and tx["from"] == facilitator_account.address
        assert calls["paid"] == 2

        again = await plain.get("/paid", headers={"PAYMENT-SIGNATURE": payment})
        assert again.status_code == 402
        assert again.json()["error"] == REPLAY
        assert "PAID-CONTENT" not in again.text

    assert calls["paid"] == 2
    assert service.calls["settle"] == 1  # never settled again
    assert chain.tx_count(facilitator_account.address) == 1  # one transfer on chain
    assert test_token.balance_of(pay_to) == start_balance + PRICE


async def test_a_settlement_before_the_handler_that_lost_its_answer_serves_the_retry_once(
    served: tuple[str, Any, PaymentGate],
    service: FacilitatorServer,
    chain: Any,
    facilitator_account: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    base_url, calls, _ = served
    first, payment = await _pay_and_lose_the_answer(
        base_url, payer, test_token, service, "settle_then_drop", "GET", "/stream"
    )
    assert first.status_code == 503, first.text
    assert calls["stream"] == 0  # policy "before": the handler waits for the settlement
    assert test_token.balance_of(pay_to) == PRICE

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
        retry = await plain.get("/stream", headers={"PAYMENT-SIGNATURE": payment})
        assert retry.status_code == 200, retry.text
        assert retry.content == b"chunk-0\nchunk-1\nchunk-2\n"
        assert decode_payment_response_header(retry.headers["payment-response"]).success
        again = await plain.get("/stream", headers={"PAYMENT-SIGNATURE": payment})
        assert again.status_code == 402
        assert again.json()["error"] == REPLAY
    assert calls["stream"] == 1
    assert service.calls["settle"] == 1
    assert chain.tx_count(facilitator_account.address) == 1
    assert test_token.balance_of(pay_to) == PRICE


async def test_a_metered_top_up_settled_but_unanswered_is_credited_once(
    served: tuple[str, Any, PaymentGate],
    service: FacilitatorServer,
    chain: Any,
    facilitator_account: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    from .apps import _llm

    base_url, calls, gate = served
    body = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    first, payment = await _pay_and_lose_the_answer(
        base_url, payer, test_token, service, "settle_then_drop", "POST", "/llm", body
    )
    assert first.status_code == 503, first.text
    paid = test_token.balance_of(pay_to)
    assert paid == 500_000  # the $0.50 top-up reached the chain
    assert await gate.balance(payer.address) == 0  # but nothing was credited yet

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
        retry = await plain.post("/llm", json=body, headers={"PAYMENT-SIGNATURE": payment})
        assert retry.status_code == 200, retry.text
        assert retry.content == b"".join(_llm.sse_chunks())
        assert await gate.balance(payer.address) == paid - _llm.CHARGE  # credited once
        credit = await plain.get(
            "/.well-known/x402/credit", headers={SESSION_HEADER: retry.headers[SESSION_HEADER]}
        )
        assert credit.status_code == 200
        assert credit.json()["available"] == str(paid - _llm.CHARGE)

        again = await plain.post("/llm", json=body, headers={"PAYMENT-SIGNATURE": payment})
        assert again.status_code == 402
        assert again.json()["error"] == REPLAY

    assert await gate.balance(payer.address) == paid - _llm.CHARGE  # still credited once
    assert calls["llm"] == 2
    assert service.calls["settle"] == 1
    assert chain.tx_count(facilitator_account.address) == 1


# -- what is not served, and what a retry costs ---------------------------------------------------


@pytest.fixture
def starlette_app() -> Any:
    return _module("starlette")


def _gate(service: FacilitatorServer, test_token: Any, pay_to: str, reconciler: Any) -> PaymentGate:
    return PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=HTTPFacilitator(service.url, timeout=10),
        store="memory://",
        reconcile=reconciler,
        public_origin=ORIGIN,
    )


async def _requirements(base_url: str) -> Any:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
        challenge = await plain.get("/paid")
    assert challenge.status_code == 402
    return decode_payment_required(challenge.headers["payment-required"]).accepts[0]


@pytest.mark.parametrize("other", ["recipient", "amount"])
async def test_a_nonce_spent_on_chain_by_another_authorization_is_not_served(
    other: str,
    starlette_app: Any,
    service: FacilitatorServer,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    """The payer signs the same nonce twice: to this server, and to someone else (or for less),
    and spends the second on chain while this server's settlement failed without an answer."""
    gate = _gate(service, test_token, pay_to, chain.rpc_url)
    app, calls = starlette_app.make_app(gate)
    with serve_closing(starlette_app, app, gate) as base_url:
        requirements = await _requirements(base_url)
        ours = sign_exact_payment(payer, requirements)
        header = {"PAYMENT-SIGNATURE": encode_payment(ours)}
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
            with service.fault("settle", "drop"):
                first = await plain.get("/paid", headers=header)
            assert first.status_code == 503
            nonce = ours.payload["authorization"]["nonce"]
            elsewhere = sign_exact_payment(
                payer,
                requirements,
                nonce=nonce,
                to=chain.new_account().address if other == "recipient" else None,
                value=1 if other == "amount" else None,
            )
            auth = elsewhere.payload["authorization"]
            spend = test_token.contract.get_function_by_signature(
                "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
            )
            await asyncio.to_thread(
                chain.transact,
                chain.new_account(),
                spend(
                    auth["from"],
                    auth["to"],
                    int(auth["value"]),
                    int(auth["validAfter"]),
                    int(auth["validBefore"]),
                    bytes.fromhex(auth["nonce"][2:]),
                    bytes.fromhex(elsewhere.payload["signature"][2:]),
                ),
            )
            assert test_token.authorization_state(payer.address, nonce)  # spent, not to us

            retry = await plain.get("/paid", headers=header)
        assert retry.status_code == 402
        assert retry.json()["error"] == REPLAY
        assert "PAID-CONTENT" not in retry.text
    assert calls["paid"] == 1  # the first attempt only; its answer was withheld
    expected = 1 if other == "amount" else 0
    assert test_token.balance_of(pay_to) == expected  # nothing of this payment reached us


@pytest.mark.parametrize("grace", [60.0, 0.001])
async def test_a_live_request_answers_first_unless_its_grace_ran_out(
    grace: float,
    starlette_app: Any,
    service: FacilitatorServer,
    chain: Any,
    facilitator_account: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    """The settlement is on chain, its answer slow: a retry meanwhile is a replay while the
    first request may still answer; once the grace ran out, the retry is served and the first
    request, answering late, sends nothing. Either way the payment is answered once."""
    reconciler = ChainReconciler(chain.rpc_url, min_interval_seconds=0.2, owner_grace_seconds=grace)
    gate = _gate(service, test_token, pay_to, reconciler)
    app, calls = starlette_app.make_app(gate)
    with serve_closing(starlette_app, app, gate) as base_url:
        payload = sign_exact_payment(payer, await _requirements(base_url))
        header = {"PAYMENT-SIGNATURE": encode_payment(payload)}
        nonce = payload.payload["authorization"]["nonce"]
        service.slow_seconds = 3.0
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
            with service.fault("settle", "settle_then_slow"):
                original = asyncio.create_task(plain.get("/paid", headers=header))
                deadline = time.monotonic() + 20
                while not test_token.authorization_state(payer.address, nonce):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                # The chain moves on: a later block, a second after the transfer's.
                await asyncio.to_thread(chain.rpc, "evm_increaseTime", [1])
                await asyncio.to_thread(chain.rpc, "evm_mine")
                retry = await plain.get("/paid", headers=header)
                first = await original
    answers = [first, retry]
    served = [a for a in answers if a.status_code == 200]
    assert len(served) == 1 and "PAID-CONTENT" in served[0].text
    if grace > 1:
        assert first.status_code == 200
        assert retry.status_code == 402 and retry.json()["error"] == REPLAY
        assert calls["paid"] == 1
    else:
        assert retry.status_code == 200
        assert first.status_code == 409
        assert first.json()["error"] == "payment_already_processed"
        assert "PAID-CONTENT" not in first.text
        assert calls["paid"] == 2  # the late request's handler ran, its answer withheld
    assert chain.tx_count(facilitator_account.address) == 1
    assert test_token.balance_of(pay_to) == PRICE


async def test_retries_of_a_claim_cost_one_chain_read_per_interval(
    starlette_app: Any,
    service: FacilitatorServer,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    """A payment whose settlement never reached the chain, retried in a tight loop: the chain
    is read once per interval, not once per retry."""

    class Counting(ChainReconciler):
        reads = 0

        async def find_transfer(self, **kwargs: Any) -> Any:
            Counting.reads += 1
            return await super().find_transfer(**kwargs)

    reconciler = Counting(chain.rpc_url, min_interval_seconds=60)
    gate = _gate(service, test_token, pay_to, reconciler)
    app, calls = starlette_app.make_app(gate)
    with serve_closing(starlette_app, app, gate) as base_url:
        payload = sign_exact_payment(payer, await _requirements(base_url))
        header = {"PAYMENT-SIGNATURE": encode_payment(payload)}
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
            with service.fault("settle", "drop"):
                first = await plain.get("/paid", headers=header)
            assert first.status_code == 503
            retries = [await plain.get("/paid", headers=header) for _ in range(50)]
    assert {r.status_code for r in retries} == {402}
    assert {r.json()["error"] for r in retries} == {REPLAY}
    assert Counting.reads == 1
    assert calls["paid"] == 1
    assert test_token.balance_of(pay_to) == 0


async def test_a_recovered_retry_whose_handler_fails_leaves_the_payment_to_the_next_retry(
    starlette_app: Any,
    service: FacilitatorServer,
    chain: Any,
    facilitator_account: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    state = {"fail": False, "runs": 0}

    async def flaky(request: Request) -> JSONResponse:
        state["runs"] += 1
        if state["fail"]:
            return JSONResponse({"error": "down"}, status_code=500)
        return JSONResponse({"content": "PAID-CONTENT"})

    reconciler = ChainReconciler(chain.rpc_url, min_interval_seconds=0.2)
    gate = _gate(service, test_token, pay_to, reconciler)
    app = PaymentMiddleware(
        Starlette(routes=[Route("/paid", flaky)]), gate=gate, routes={"GET /paid": "$0.01"}
    )
    with serve_closing(starlette_app, app, gate) as base_url:
        first, payment = await _pay_and_lose_the_answer(
            base_url, payer, test_token, service, "settle_then_500"
        )
        assert first.status_code == 502
        header = {"PAYMENT-SIGNATURE": payment}
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
            state["fail"] = True
            failed = await plain.get("/paid", headers=header)
            assert failed.status_code == 500  # the handler's own answer, nothing more charged
            assert "payment-response" not in failed.headers
            state["fail"] = False
            await asyncio.sleep(0.3)  # one chain read per claim per interval
            served = await plain.get("/paid", headers=header)
            assert served.status_code == 200, served.text
            assert served.json() == {"content": "PAID-CONTENT"}
            again = await plain.get("/paid", headers=header)
            assert again.status_code == 402 and again.json()["error"] == REPLAY
    assert state["runs"] == 3  # the lost answer, the failed retry, the retry served
    assert service.calls["settle"] == 1
    assert chain.tx_count(facilitator_account.address) == 1
    assert test_token.balance_of(pay_to) == PRICE


# -- the answer's delivery is recorded by every adapter -------------------------------------------


def _claim_state(gate: PaymentGate, test_token: Any, payment: str) -> str | None:
    from x402.http import decode_payment_signature_header

    from x402gate.stores import replay_key

    authorization = decode_payment_signature_header(payment).payload["authorization"]
    key = replay_key(
        test_token.asset.network, test_token.address, authorization["from"], authorization["nonce"]
    )
    return gate.store.state(key, time.time())


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/paid"), ("GET", "/stream"), ("POST", "/llm")]
)
async def test_every_adapter_records_a_delivered_answer_so_its_retry_is_a_replay(
    method: str,
    path: str,
    served: tuple[str, Any, PaymentGate],
    service: FacilitatorServer,
    chain: Any,
    test_token: Any,
    payer: Any,
) -> None:
    """A paid answer handed to the server whole marks its claim answered ("used", no longer
    "sending"): a retry of the payment, however late, is then a replay and is never served
    a second time from the chain."""
    base_url, calls, gate = served
    body = (
        {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
        if method == "POST"
        else None
    )
    recorder, payments = payment_recorder()
    async with paying_httpx_client(
        payer, asset=test_token, base_url=base_url, timeout=30, transport=recorder
    ) as client:
        first = await client.request(method, path, json=body)
    assert first.status_code == 200, first.text
    assert len(payments) == 1
    deadline = time.monotonic() + 10
    # Recorded after the last byte went to the server: the client may see it a moment earlier.
    while _claim_state(gate, test_token, payments[0]) != "used":
        assert time.monotonic() < deadline, _claim_state(gate, test_token, payments[0])
        await asyncio.sleep(0.02)
    chain.rpc("evm_increaseTime", [3600])  # far past any grace: only the record refuses it
    chain.rpc("evm_mine")
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
        retry = await plain.request(
            method, path, json=body, headers={"PAYMENT-SIGNATURE": payments[0]}
        )
    assert retry.status_code == 402, retry.text
    assert retry.json()["error"] == REPLAY
    assert calls[path.strip("/")] == 1
    assert service.calls["settle"] == 1
