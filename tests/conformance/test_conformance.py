"""One conformance suite for every adapter, each behind its real server, paid by the official
x402 clients (httpx and requests) on the local chain.

Each ``apps/<adapter>.py`` module builds the same small API (see ``apps/__init__.py``) with its
framework and serves it with a real server on loopback: uvicorn for ASGI apps, waitress for WSGI
apps. What is asserted is what a user checks: status codes, headers, bodies, handler runs,
transactions and balances on chain.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from x402.http import decode_payment_response_header

from x402gate import LocalFacilitator, PaymentGate
from x402gate.testing.clients import paying_httpx_client, paying_requests_session
from x402gate.testing.payments import (
    decode_payment_required,
    encode_payment,
    sign_exact_payment,
    sign_in_header,
)

pytestmark = pytest.mark.chain

ADAPTERS = ["starlette", "fastapi", "flask", "wsgi", "django_app"]
PRICE = 10_000
ORIGIN = "https://api.conformance.test"
"""The public origin of every conformance app: what sign-ins and session tokens are bound to."""
CHUNKS = b"chunk-0\nchunk-1\nchunk-2\n"


def _module(name: str) -> Any:
    framework = {"django_app": "django", "wsgi": "waitress", "starlette": "starlette"}.get(
        name, name
    )
    pytest.importorskip(framework)
    try:
        return importlib.import_module(f"{__package__}.apps.{name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith(name):
            pytest.fail(f"conformance app for {name} is missing")
        raise


class DrainingFacilitator:
    """A real LocalFacilitator; when ``drain`` is set, the payer empties the wallet on chain right
    before settlement (the race a payer can really play between verify and settle)."""

    def __init__(self, inner: LocalFacilitator, chain: Any, token: Any) -> None:
        self.inner, self.chain, self.token = inner, chain, token
        self.drain: Any = None

    async def supported(self) -> Any:
        return await self.inner.supported()

    async def verify(self, payload: Any, requirements: Any) -> Any:
        return await self.inner.verify(payload, requirements)

    async def settle(self, payload: Any, requirements: Any) -> Any:
        if self.drain is not None:
            payer = self.drain
            balance = self.token.balance_of(payer.address)
            sink = self.chain.new_account().address
            await asyncio.to_thread(
                self.chain.transact, payer, self.token.contract.functions.transfer(sink, balance)
            )
        return await self.inner.settle(payload, requirements)


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> Any:
    return _module(request.param)


@pytest.fixture
def facilitator(chain: Any, facilitator_account: Any, test_token: Any) -> DrainingFacilitator:
    inner = LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)
    return DrainingFacilitator(inner, chain, test_token)


@pytest.fixture
def served(
    adapter: Any, facilitator: DrainingFacilitator, test_token: Any, pay_to: str, tmp_path: Any
) -> Iterator[tuple[str, Any, PaymentGate]]:
    gate = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
        public_origin=ORIGIN,
        trusted_proxies=["127.0.0.1"],
    )
    app, calls = adapter.make_app(gate)
    with adapter.serve(app) as base_url:
        yield base_url, calls, gate
    gate.close()


async def _requirements(base_url: str, path: str = "/paid") -> Any:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.get(path)
    assert response.status_code == 402
    return decode_payment_required(response.headers["payment-required"]).accepts[0]


async def test_unpaid_request_gets_the_402_challenge(
    served: Any, test_token: Any, pay_to: str
) -> None:
    base_url, calls, _ = served
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.get("/paid")
        free = await client.get("/free")
    assert response.status_code == 402
    assert response.headers["cache-control"] == "no-store"
    assert "PAYMENT-REQUIRED" in response.headers["access-control-expose-headers"]
    required = decode_payment_required(response.headers["payment-required"])
    (req,) = required.accepts
    assert (req.amount, req.asset, req.pay_to, req.network) == (
        str(PRICE),
        test_token.address,
        pay_to,
        "eip155:31337",
    )
    assert required.resource is not None and required.resource.url.endswith("/paid")
    assert response.json()["error"] == "payment_required"
    assert free.status_code == 200 and free.text == "free"
    assert calls["paid"] == 0


async def test_paid_with_the_official_httpx_client(
    served: Any, test_token: Any, payer: Any, pay_to: str, chain: Any
) -> None:
    base_url, calls, _ = served
    before = test_token.balance_of(payer.address)
    async with paying_httpx_client(
        payer, asset=test_token, base_url=base_url, timeout=30
    ) as client:
        response = await client.get("/paid")
    assert response.status_code == 200, response.text
    assert response.json() == {"content": "PAID-CONTENT", "payer": payer.address}
    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert (
        receipt.success and chain.w3.eth.get_transaction_receipt(receipt.transaction)["status"] == 1
    )
    assert test_token.balance_of(payer.address) == before - PRICE
    assert test_token.balance_of(pay_to) == PRICE
    assert calls["paid"] == 1


def test_paid_with_the_official_requests_client(
    served: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    base_url, calls, _ = served
    session = paying_requests_session(payer, asset=test_token)
    with session:
        response = session.get(f"{base_url}/paid", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["payer"] == payer.address
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert test_token.balance_of(pay_to) == PRICE
    assert calls["paid"] == 1


@pytest.mark.parametrize("path", ["/boom", "/error"])
async def test_handler_error_settles_nothing(
    served: Any,
    path: str,
    test_token: Any,
    payer: Any,
    pay_to: str,
    chain: Any,
    facilitator: DrainingFacilitator,
) -> None:
    base_url, calls, _ = served
    payload = sign_exact_payment(payer, await _requirements(base_url, path))
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.get(path, headers={"PAYMENT-SIGNATURE": encode_payment(payload)})
    assert response.status_code in (500, 503)
    assert "payment-response" not in response.headers
    assert calls[path.strip("/")] == 1
    assert chain.tx_count(facilitator.inner.address) == 0
    assert test_token.balance_of(pay_to) == 0


@pytest.mark.parametrize("path", ["/paid", "/stream-after"])
async def test_failed_settlement_sends_a_402_and_not_one_byte_of_content(
    served: Any,
    path: str,
    test_token: Any,
    payer: Any,
    pay_to: str,
    chain: Any,
    facilitator: DrainingFacilitator,
) -> None:
    base_url, _, _ = served
    chain.set_balance(payer.address, 10**18)  # gas for the payer's own draining transfer
    payload = sign_exact_payment(payer, await _requirements(base_url, path))
    facilitator.drain = payer
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.get(path, headers={"PAYMENT-SIGNATURE": encode_payment(payload)})
    assert response.status_code == 402, response.text
    assert response.json()["error"] == "invalid_exact_evm_insufficient_balance"
    assert b"PAID-CONTENT" not in response.content and b"chunk-" not in response.content
    assert decode_payment_response_header(response.headers["payment-response"]).success is False
    assert test_token.balance_of(pay_to) == 0


async def test_replay_is_refused(served: Any, test_token: Any, payer: Any, pay_to: str) -> None:
    base_url, calls, _ = served
    header = {
        "PAYMENT-SIGNATURE": encode_payment(
            sign_exact_payment(payer, await _requirements(base_url))
        )
    }
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        first = await client.get("/paid", headers=header)
        replay = await client.get("/paid", headers=header)
    assert first.status_code == 200
    assert replay.status_code == 402
    assert replay.json()["error"] == "invalid_exact_evm_nonce_already_used"
    assert b"PAID-CONTENT" not in replay.content
    assert calls["paid"] == 1 and test_token.balance_of(pay_to) == PRICE


@pytest.mark.parametrize("path", ["/stream", "/stream-after"])
async def test_streams_are_served_only_after_settlement(
    served: Any, path: str, test_token: Any, payer: Any, pay_to: str, chain: Any
) -> None:
    base_url, _, _ = served
    async with (
        paying_httpx_client(payer, asset=test_token, base_url=base_url, timeout=30) as client,
        client.stream("GET", path) as response,
    ):
        # Headers precede the first byte of the body: the receipt being among them proves the
        # payment was settled before any content left the server.
        receipt = decode_payment_response_header(response.headers["payment-response"])
        assert receipt.success
        assert chain.w3.eth.get_transaction_receipt(receipt.transaction)["status"] == 1
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert response.status_code == 200
    assert body == CHUNKS
    assert test_token.balance_of(pay_to) == PRICE


async def test_discovery_document_lists_the_paid_routes(
    served: Any, test_token: Any, pay_to: str
) -> None:
    base_url, _, _ = served
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.get("/.well-known/x402")
    assert response.status_code == 200
    document = response.json()
    assert document["x402Version"] == 2
    items = {
        (i["input"]["method"], i["input"]["routeTemplate"].rstrip("/")): i
        for i in document["items"]
    }
    assert ("GET", "/paid") in items and ("GET", "/stream") in items
    assert not any(path.rstrip("/") == "/free" for _, path in items)
    paid = items[("GET", "/paid")]
    # Under the configured public origin, whatever Host the crawler used.
    assert paid["resource"]["url"].rstrip("/") == f"{ORIGIN}/paid"
    (accept,) = paid["accepts"]
    assert (accept["amount"], accept["payTo"], accept["asset"]) == (
        str(PRICE),
        pay_to,
        test_token.address,
    )


async def test_retry_with_the_same_payment_identifier_gets_the_stored_answer(
    served: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    base_url, calls, _ = served
    requirements = await _requirements(base_url)

    def with_id(payload: Any) -> dict[str, str]:
        ext = {
            "payment-identifier": {"info": {"required": False, "id": "pay_conformance_retry_01"}}
        }
        return {"PAYMENT-SIGNATURE": encode_payment(payload.model_copy(update={"extensions": ext}))}

    header = with_id(sign_exact_payment(payer, requirements))
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        first = await client.get("/paid", headers=header)
        retry = await client.get("/paid", headers=header)
        other = await client.get("/paid", headers=with_id(sign_exact_payment(payer, requirements)))
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json() == {"content": "PAID-CONTENT", "payer": payer.address}
    assert retry.headers["payment-response"] == first.headers["payment-response"]
    assert other.status_code == 409 and other.json()["error"] == "payment_identifier_conflict"
    assert calls["paid"] == 1
    assert test_token.balance_of(pay_to) == PRICE


async def test_metered_stream_charges_the_tokens_used_and_credit_serves_the_next_call(
    served: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    chain: Any,
    facilitator: DrainingFacilitator,
) -> None:
    from x402gate.credit import SESSION_HEADER

    from .apps import _llm

    base_url, calls, gate = served
    body = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    async with paying_httpx_client(
        payer, asset=test_token, base_url=base_url, timeout=30
    ) as client:
        first = await client.post("/llm", json=body)
    assert first.status_code == 200, first.text
    assert first.content == b"".join(_llm.sse_chunks())  # the stream arrives intact
    paid = test_token.balance_of(pay_to)
    assert paid == 500_000  # the $0.50 top-up, settled on chain
    assert await gate.balance(payer.address) == paid - _llm.CHARGE
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
        second = await plain.post(
            "/llm", json=body, headers={SESSION_HEADER: first.headers[SESSION_HEADER]}
        )
    assert second.status_code == 200 and "payment-response" not in second.headers
    assert second.content == first.content
    assert await gate.balance(payer.address) == paid - 2 * _llm.CHARGE
    assert chain.tx_count(facilitator.inner.address) == 1
    assert calls["llm"] == 2


async def test_a_payer_can_query_its_credit(served: Any, test_token: Any, payer: Any) -> None:
    from x402gate.credit import SESSION_HEADER

    from .apps import _llm

    base_url, _, _ = served
    body = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    async with paying_httpx_client(
        payer, asset=test_token, base_url=base_url, timeout=30
    ) as client:
        first = await client.post("/llm", json=body)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as plain:
        anonymous = await plain.get("/.well-known/x402/credit")
        mine = await plain.get(
            "/.well-known/x402/credit", headers={SESSION_HEADER: first.headers[SESSION_HEADER]}
        )
        forged = await plain.get(
            "/.well-known/x402/credit", headers={SESSION_HEADER: "v1.e30.AAAA"}
        )
    assert anonymous.status_code == 401 and forged.status_code == 401
    assert mine.status_code == 200
    assert mine.json() == {
        "payer": payer.address,
        "network": "eip155:31337",
        "asset": test_token.address,
        "available": str(500_000 - _llm.CHARGE),
        "reserved": "0",
    }


# -- sign-in-with-x bound to the public origin; malformed headers; proxies ----------------------

LLM_BODY = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}


def _sign_in(info: dict[str, Any], wallet: Any, **override: Any) -> str:
    return sign_in_header(wallet, info, "eip155:31337", **override)


async def _challenge_info(base_url: str, headers: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.post("/llm", json=LLM_BODY, headers=headers)
    assert response.status_code == 402, response.text
    required = decode_payment_required(response.headers["payment-required"])
    assert required.extensions is not None
    return required, dict(required.extensions["sign-in-with-x"]["info"])


async def test_a_sign_in_relayed_from_another_site_is_refused(
    served: Any, test_token: Any, payer: Any
) -> None:
    from x402gate.credit import SESSION_HEADER

    base_url, calls, gate = served
    victim = paying_httpx_client(payer, asset=test_token, base_url=base_url, timeout=30)
    async with victim as client:
        assert (await client.post("/llm", json=LLM_BODY)).status_code == 200
    credit = await gate.balance(payer.address)
    assert credit > 0 and calls["llm"] == 1

    # The attacker asks the real server for a challenge in the name of its own site.
    spoofed = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    required, info = await _challenge_info(base_url, spoofed)
    assert required.resource is not None and required.resource.url == f"{ORIGIN}/llm"
    assert (info["domain"], info["uri"], info["resources"]) == (
        "api.conformance.test",
        f"{ORIGIN}/llm",
        [f"{ORIGIN}/llm"],
    )
    # So the victim's agent, on the attacker's site, signs fields naming that site; and a
    # signature of the real challenge with a reworded statement is no better.
    evil = {
        "domain": "evil.example",
        "uri": "https://evil.example/llm",
        "resources": ["https://evil.example/llm"],
    }
    attempts = {
        "invalid_siwx_domain": _sign_in(info, payer, **evil),
        "invalid_siwx_nonce": _sign_in(info, payer, statement="Sign in to evil.example."),
    }
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as attacker:
        for code, header in attempts.items():
            relayed = await attacker.post(
                "/llm", json=LLM_BODY, headers={**spoofed, "SIGN-IN-WITH-X": header}
            )
            assert (relayed.status_code, relayed.json()["error"]) == (402, code)
            assert SESSION_HEADER.lower() not in relayed.headers
    assert await gate.balance(payer.address) == credit  # no credit moved
    assert calls["llm"] == 1  # the handler never ran

    # The genuine challenge, signed by the payer, does open its credit: the refusals above are
    # about the origin, not about sign-in failing on this adapter.
    _, fresh = await _challenge_info(base_url, {})
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as owner:
        ok = await owner.post(
            "/llm", json=LLM_BODY, headers={"SIGN-IN-WITH-X": _sign_in(fresh, payer)}
        )
    assert ok.status_code == 200, ok.text
    assert ok.headers[SESSION_HEADER].startswith("v2.")
    assert calls["llm"] == 2


async def test_malformed_sign_in_session_and_payment_headers_get_a_coded_refusal(
    served: Any, payer: Any
) -> None:
    import base64
    import json

    base_url, calls, _ = served
    _, info = await _challenge_info(base_url, {})

    def raw(document: Any) -> str:
        return base64.b64encode(json.dumps(document).encode()).decode()

    signed = json.loads(base64.b64decode(_sign_in(info, payer)))
    sign_ins = [
        _sign_in(info, payer, uri="http://[::1/llm"),  # urlsplit raises on this
        _sign_in(info, payer, notBefore=5),
        _sign_in(info, payer, resources="https://api.conformance.test/llm"),
        _sign_in(info, payer, statement=["a"]),
        _sign_in(info, payer, requestId={"x": 1}),
        _sign_in(info, payer, expirationTime=17),
        _sign_in(info, payer, issuedAt="not a time"),
        raw({**signed, "chainId": 31337}),
        raw({**signed, "signature": "0x" + "zz" * 65}),
        raw({**signed, "resources": [1, 2]}),
        raw([signed]),
        "not base64 at all!",
        "",
    ]
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for header in sign_ins:
            response = await client.post("/llm", json=LLM_BODY, headers={"SIGN-IN-WITH-X": header})
            assert response.status_code == 402, (header, response.text)
            assert response.json()["error"].startswith("invalid_siwx"), response.text
        for token in ("v2.\xe9\xe9.\xe9", "v2..", "v2." + "A" * 2000, "v1.e30.AAAA"):
            response = await client.post(
                "/llm", json=LLM_BODY, headers=[(b"X402GATE-SESSION", token.encode("latin-1"))]
            )
            assert (response.status_code, response.json()["error"]) == (402, "payment_required")
        for payment in ("e30=", raw({"x402Version": 2, "payload": []}), "\xff"):
            response = await client.post(
                "/llm", json=LLM_BODY, headers=[(b"PAYMENT-SIGNATURE", payment.encode("latin-1"))]
            )
            assert response.status_code == 400, response.text
            assert response.json()["error"], response.text
    assert calls["llm"] == 0


async def test_forwarded_for_only_counts_from_trusted_proxies(served: Any) -> None:
    from x402gate.proxies import TrustedProxies

    base_url, calls, gate = served
    seen: list[Any] = []
    gate.on_event(lambda event: seen.append(event.request.client))
    forwarded = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7", "X-Forwarded-Host": "evil.example"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        # The test client connects from 127.0.0.1, a trusted proxy here: the client is the
        # entry it appended, never what the client wrote on the left.
        via_proxy = await client.get("/paid", headers=forwarded)
        gate.trusted_proxies = TrustedProxies()  # now the peer is nobody's proxy
        direct = await client.get("/paid", headers=forwarded)
    assert seen == ["203.0.113.7", "127.0.0.1"]
    for response in (via_proxy, direct):
        required = decode_payment_required(response.headers["payment-required"])
        assert required.resource is not None and required.resource.url == f"{ORIGIN}/paid"
    assert calls["paid"] == 0
