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

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from x402.http import decode_payment_response_header

from x402gate import LocalFacilitator, PaymentGate
from x402gate._runner import run_sync
from x402gate.credit import SESSION_HEADER
from x402gate.facilitators import HTTPFacilitator
from x402gate.testing.clients import paying_httpx_client, payment_recorder
from x402gate.testing.facilitator_server import FacilitatorServer

from .test_conformance import ADAPTERS, PRICE, _module

pytestmark = pytest.mark.chain

REPLAY = "invalid_exact_evm_nonce_already_used"
LOST = {
    "settle_then_drop": (503, "facilitator_unavailable"),
    "settle_then_500": (502, "facilitator_error"),
}


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
    )
    app, calls = adapter.make_app(gate)
    with adapter.serve(app) as base_url:
        yield base_url, calls, gate
    # Sync adapters run the gate on the background loop: close its facilitator connections
    # there (aclose closes those of the loop it runs on), and the store.
    run_sync(gate.aclose())


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
