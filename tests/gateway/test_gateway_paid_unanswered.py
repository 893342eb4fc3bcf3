"""``x402gate proxy`` with a facilitator service that settles and then loses its answer: the
gateway reads the chain (``facilitator.chain_rpc_url``) and serves the buyer's retry of the same
payment once, forwarding it upstream once; a metered top-up is credited once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from x402.http import decode_payment_response_header

from x402gate import LocalFacilitator
from x402gate.credit import SESSION_HEADER
from x402gate.gateway import Gateway, parse_config
from x402gate.testing.clients import paying_httpx_client, payment_recorder
from x402gate.testing.facilitator_server import FacilitatorServer
from x402gate.testing.fake_llm import FakeLLM

from .conftest import serve_gateway
from .test_gateway_chain import OPENAI, TOPUP, charge, credit

pytestmark = pytest.mark.chain

REPLAY = "invalid_exact_evm_nonce_already_used"


@pytest.fixture
def service(chain: Any, facilitator_account: Any) -> Iterator[FacilitatorServer]:
    inner = LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)
    with FacilitatorServer(inner) as server:
        yield server
    inner.close()


@pytest.fixture
def served(
    gateway_yaml: Callable[..., tuple[str, dict[str, str]]],
    service: FacilitatorServer,
    chain: Any,
) -> Iterator[tuple[str, Gateway]]:
    text, env = gateway_yaml()
    local = f"  rpc_url: {chain.rpc_url}\n  private_key: ${{FACILITATOR_KEY}}\n"
    assert local in text
    text = text.replace(
        local, f"  url: {service.url}\n  timeout: 10\n  chain_rpc_url: {chain.rpc_url}\n"
    )
    app = Gateway(parse_config(text, source="gateway.yaml", env=env))
    assert app.gate.reconciler is not None
    with serve_gateway(app) as url:
        yield url, app


async def _pay_and_lose_the_answer(
    url: str,
    payer: Any,
    test_token: Any,
    service: FacilitatorServer,
    method: str,
    path: str,
    body: Any = None,
) -> tuple[httpx.Response, str]:
    recorder, payments = payment_recorder()
    service.faults["settle"] = "settle_then_drop"
    try:
        async with paying_httpx_client(
            payer, asset=test_token, base_url=url, timeout=30, transport=recorder
        ) as client:
            response = await client.request(method, path, json=body)
    finally:
        service.faults.pop("settle", None)
    assert len(payments) == 1
    return response, payments[0]


async def test_the_gateway_serves_the_retry_of_a_payment_settled_but_unanswered_once(
    served: tuple[str, Gateway],
    service: FacilitatorServer,
    llm: FakeLLM,
    chain: Any,
    facilitator_account: Any,
    payer: Any,
    test_token: Any,
    pay_to: str,
) -> None:
    url, _ = served
    first, payment = await _pay_and_lose_the_answer(
        url, payer, test_token, service, "GET", "/flat/x"
    )
    assert first.status_code == 503, first.text
    assert first.json()["error"] == "facilitator_unavailable"
    assert test_token.balance_of(pay_to) == 10_000  # paid on chain
    # Policy "after": the upstream answered once; its answer was withheld.
    assert len(llm.requests) == 1

    async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
        retry = await plain.get("/flat/x", headers={"PAYMENT-SIGNATURE": payment})
        assert retry.status_code == 200, retry.text
        assert retry.json()["path"] == "/echo/x"
        receipt = decode_payment_response_header(retry.headers["payment-response"])
        assert receipt.success
        again = await plain.get("/flat/x", headers={"PAYMENT-SIGNATURE": payment})
        assert again.status_code == 402
        assert again.json()["error"] == REPLAY
    assert len(llm.requests) == 2  # forwarded once more, for the retry served
    assert service.calls["settle"] == 1
    assert chain.tx_count(facilitator_account.address) == 1
    assert test_token.balance_of(pay_to) == 10_000


async def test_the_gateway_credits_a_metered_top_up_settled_but_unanswered_once(
    served: tuple[str, Gateway],
    service: FacilitatorServer,
    llm: FakeLLM,
    chain: Any,
    facilitator_account: Any,
    payer: Any,
    test_token: Any,
    pay_to: str,
) -> None:
    import json

    from x402gate.testing.fake_llm import openai_completion

    url, gateway = served
    path = "/v1/chat/completions"
    first, payment = await _pay_and_lose_the_answer(
        url, payer, test_token, service, "POST", path, OPENAI
    )
    assert first.status_code == 503, first.text
    assert test_token.balance_of(pay_to) == TOPUP
    assert await gateway.gate.balance(payer.address) == 0

    async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
        retry = await plain.post(path, json=OPENAI, headers={"PAYMENT-SIGNATURE": payment})
        assert retry.status_code == 200, retry.text
        raw = llm.requests[-1].body
        usage = openai_completion(json.loads(raw), raw)["usage"]
        left = await credit(url, retry.headers[SESSION_HEADER])
        assert left == TOPUP - charge(usage)  # the top-up credited once, charged once
        again = await plain.post(path, json=OPENAI, headers={"PAYMENT-SIGNATURE": payment})
        assert again.status_code == 402
        assert again.json()["error"] == REPLAY
        assert await credit(url, retry.headers[SESSION_HEADER]) == left
    assert service.calls["settle"] == 1
    assert chain.tx_count(facilitator_account.address) == 1


@pytest.mark.parametrize(("method", "path"), [("GET", "/flat/x"), ("POST", "/v1/chat/completions")])
async def test_the_gateway_records_a_forwarded_answer_as_delivered(
    method: str,
    path: str,
    served: tuple[str, Gateway],
    llm: FakeLLM,
    chain: Any,
    payer: Any,
    test_token: Any,
) -> None:
    """Once the upstream's answer was relayed whole, the claim is answered ("used", no longer
    "sending"): a retry of the payment, however late, is a replay and is not forwarded again."""
    import asyncio
    import time

    from x402.http import decode_payment_signature_header

    from x402gate.stores import replay_key

    url, gateway = served
    recorder, payments = payment_recorder()
    async with paying_httpx_client(
        payer, asset=test_token, base_url=url, timeout=30, transport=recorder
    ) as client:
        first = await client.request(method, path, json=OPENAI if method == "POST" else None)
    assert first.status_code == 200, first.text
    authorization = decode_payment_signature_header(payments[0]).payload["authorization"]
    key = replay_key(
        test_token.asset.network, test_token.address, payer.address, authorization["nonce"]
    )
    deadline = time.monotonic() + 10
    while gateway.gate.store.state(key, time.time()) != "used":
        assert time.monotonic() < deadline, gateway.gate.store.state(key, time.time())
        await asyncio.sleep(0.02)
    chain.rpc("evm_increaseTime", [3600])  # far past any grace: only the record refuses it
    chain.rpc("evm_mine")
    forwarded = len(llm.requests)
    async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
        again = await plain.request(
            method,
            path,
            json=OPENAI if method == "POST" else None,
            headers={"PAYMENT-SIGNATURE": payments[0]},
        )
    assert again.status_code == 402, again.text
    assert again.json()["error"] == REPLAY
    assert len(llm.requests) == forwarded
