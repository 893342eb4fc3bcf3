"""The gateway on loopback in front of the fake provider, paid with the official x402 client on
the local chain: prices, forwarding, streams, failures and secrets."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from x402gate.credit import SESSION_HEADER
from x402gate.metering import Usage
from x402gate.request import RequestInfo
from x402gate.testing.clients import paying_httpx_client
from x402gate.testing.fake_llm import (
    CONTROL_HEADER,
    FakeLLM,
    anthropic_message,
    openai_completion,
    refusing_url,
)
from x402gate.testing.payments import decode_payment_required

from .conftest import IN_PRICE, OUT_PRICE, UPSTREAM_KEY, GatewayFactory

pytestmark = pytest.mark.chain

TOPUP = 500_000
ANTHROPIC = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "What is the weather like today?"}],
}
OPENAI = {
    "model": "gpt-test",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Name three colours."}],
}


def paying(payer: Any, token: Any, url: str) -> httpx.AsyncClient:
    return paying_httpx_client(payer, asset=token, base_url=url, timeout=30)


async def quote(url: str, path: str, body: Any = None, method: str = "POST") -> int:
    async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
        response = await plain.request(method, path, json=body)
    assert response.status_code == 402, response.text
    required = decode_payment_required(response.headers["payment-required"])
    return int(required.accepts[0].amount)


def charge(usage: dict[str, int]) -> int:
    inputs = usage.get("input_tokens", usage.get("prompt_tokens", 0))
    outputs = usage.get("output_tokens", usage.get("completion_tokens", 0))
    return inputs * IN_PRICE + outputs * OUT_PRICE


def no_secret_in(response: httpx.Response) -> None:
    assert UPSTREAM_KEY not in response.text
    assert all(UPSTREAM_KEY not in value for value in response.headers.values())


async def credit(url: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
        answer = await plain.get("/.well-known/x402/credit", headers={SESSION_HEADER: token})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["available"])


async def test_flat_route_charges_its_price_and_forwards_the_request_as_sent(
    gateway: GatewayFactory, llm: FakeLLM, payer: Any, test_token: Any, pay_to: str, chain: Any
) -> None:
    with gateway() as (url, _):
        assert await quote(url, "/flat/a%20b/c?x=1&y=%2F", method="GET") == 10_000
        before = test_token.balance_of(payer.address)
        async with paying(payer, test_token, url) as client:
            response = await client.get(
                "/flat/a%20b/c?x=1&y=%2F",
                headers={"x-client-note": "kept", "Connection": "keep-alive, x-hop", "x-hop": "1"},
            )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "method": "GET",
        "path": "/echo/a b/c",
        "query": "x=1&y=%2F",
        "body": "",
    }
    assert "payment-response" in response.headers
    assert test_token.balance_of(payer.address) == before - 10_000
    assert test_token.balance_of(pay_to) == 10_000
    paid = llm.requests[-1]
    assert len(llm.requests) == 1  # the 402 never reached the upstream
    assert paid.header("x-api-key") == UPSTREAM_KEY
    assert paid.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert paid.header("x-client-note") == "kept"
    # Payment and hop-by-hop headers stop at the gateway (x-hop was named by Connection).
    for dropped in ("payment-signature", "x-payment", "x-hop"):
        assert paid.header(dropped) is None, dropped
    assert "x-hop" not in (paid.header("connection") or "")
    no_secret_in(response)


@pytest.mark.parametrize(
    ("model", "price"),
    [("claude-opus-4-1", 30_000), ("claude-sonnet-4-5", 10_000), ("gpt-4o", 5_000)],
)
async def test_glob_rules_price_by_model_family(
    model: str, price: int, gateway: GatewayFactory, payer: Any, test_token: Any, pay_to: str
) -> None:
    body = {**ANTHROPIC, "model": model}
    with gateway() as (url, _):
        assert await quote(url, "/glob/v1/messages", body) == price
        async with paying(payer, test_token, url) as client:
            response = await client.post("/glob/v1/messages", json=body)
    assert response.status_code == 200
    assert response.json() == anthropic_message(body, json.dumps(body).encode()) | {
        "id": response.json()["id"]
    }
    assert test_token.balance_of(pay_to) == price


async def test_model_table_prices_exact_names_then_globs_then_the_fallback(
    gateway: GatewayFactory, payer: Any, test_token: Any, pay_to: str
) -> None:
    expected = {
        "claude-opus-4-5": 40_000,
        "claude-haiku-4-5": 2_000,
        "claude-sonnet-4-0": 12_000,
        "mistral-large": 20_000,
    }
    with gateway() as (url, _):
        for model, price in expected.items():
            assert await quote(url, "/table/v1/messages", {**ANTHROPIC, "model": model}) == price
        async with paying(payer, test_token, url) as client:
            response = await client.post(
                "/table/v1/messages", json={**ANTHROPIC, "model": "claude-haiku-4-5"}
            )
    assert response.status_code == 200
    assert test_token.balance_of(pay_to) == 2_000


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_per_token_routes_charge_the_usage_the_upstream_reports(
    provider: str,
    stream: bool,
    gateway: GatewayFactory,
    llm: FakeLLM,
    payer: Any,
    test_token: Any,
    pay_to: str,
) -> None:
    path = "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"
    body: dict[str, Any] = dict(ANTHROPIC if provider == "anthropic" else OPENAI)
    if stream:
        body["stream"] = True
        if provider == "openai":
            body["stream_options"] = {"include_usage": True}
    with gateway() as (url, _):
        assert await quote(url, path, body) == TOPUP
        async with paying(payer, test_token, url) as client:
            response = await client.post(path, json=body)
        assert response.status_code == 200, response.text
        raw = llm.requests[-1].body
        sent = json.loads(raw)
        usage = (anthropic_message if provider == "anthropic" else openai_completion)(sent, raw)[
            "usage"
        ]
        assert test_token.balance_of(pay_to) == TOPUP  # paid on chain: the top-up
        left = await credit(url, response.headers[SESSION_HEADER])
    assert left == TOPUP - charge(usage)  # charged: the tokens used; the rest is credit
    assert llm.requests[-1].header("accept-encoding") == "identity"
    no_secret_in(response)


async def test_a_second_call_is_served_from_credit_without_a_transaction(
    gateway: GatewayFactory, facilitator_account: Any, chain: Any, payer: Any, test_token: Any
) -> None:
    body = {**ANTHROPIC, "stream": True}
    with gateway() as (url, _):
        async with paying(payer, test_token, url) as client:
            first = await client.post("/v1/messages", json=body)
        token = first.headers[SESSION_HEADER]
        after_first = await credit(url, token)
        transactions = chain.tx_count(facilitator_account.address)
        async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
            second = await plain.post("/v1/messages", json=body, headers={SESSION_HEADER: token})
        assert second.status_code == 200
        assert second.content == first.content
        assert "payment-response" not in second.headers
        assert chain.tx_count(facilitator_account.address) == transactions
        assert await credit(url, token) == after_first - (TOPUP - after_first)


async def test_streams_pass_chunk_by_chunk_intact_and_in_order(
    gateway: GatewayFactory, llm: FakeLLM, payer: Any, test_token: Any
) -> None:
    body = {**ANTHROPIC, "stream": True}
    async with httpx.AsyncClient(base_url=llm.url, timeout=30) as direct:
        reference = (await direct.post("/v1/messages", json=body)).content
    with gateway() as (url, _):
        async with (
            paying(payer, test_token, url) as client,
            client.stream("POST", "/v1/messages", json=body, headers={CONTROL_HEADER: "hold"}) as r,
        ):
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            received = b""
            chunks = r.aiter_raw()
            # The upstream holds its stream after three events: they must already be here.
            while received.count(b"\n\n") < 3:
                received += await anext(chunks)
            assert received == reference[: len(received)]
            llm.release()
            async for chunk in chunks:
                received += chunk
    assert received == reference


@pytest.mark.parametrize("failure", ["status-500", "status-429", "hang", "refused"])
async def test_upstream_failures_charge_nothing(
    failure: str,
    gateway: GatewayFactory,
    llm: FakeLLM,
    payer: Any,
    test_token: Any,
    pay_to: str,
    chain: Any,
    facilitator_account: Any,
) -> None:
    before = test_token.balance_of(payer.address)
    with refusing_url() as closed:
        upstream = closed if failure == "refused" else llm.url
        with gateway(llm_url=upstream, timeout=0.5) as (url, _):
            async with paying(payer, test_token, url) as client:
                flat = await client.get("/flat/x", headers={CONTROL_HEADER: failure})
                metered = await client.post(
                    "/v1/messages", json=ANTHROPIC, headers={CONTROL_HEADER: failure}
                )
    expected = {"status-500": 500, "status-429": 429, "hang": 504, "refused": 502}[failure]
    for response in (flat, metered):
        assert response.status_code == expected, response.text
        assert "payment-response" not in response.headers
        assert SESSION_HEADER.lower() not in response.headers
        no_secret_in(response)
    if failure.startswith("status-"):
        assert metered.json()["type"] == "error"  # the upstream's own error body
    else:
        assert flat.json()["error"] == {"hang": "upstream_timeout"}.get(
            failure, "upstream_unavailable"
        )
    assert test_token.balance_of(payer.address) == before
    assert test_token.balance_of(pay_to) == 0
    assert chain.tx_count(facilitator_account.address) == 0
    if failure == "hang":
        assert all(r.disconnected.wait(5) for r in llm.requests)  # the gateway hung up


async def test_a_stream_the_upstream_breaks_off_is_cut_and_charged_what_it_reported(
    gateway: GatewayFactory, llm: FakeLLM, payer: Any, test_token: Any
) -> None:
    body = {**ANTHROPIC, "stream": True}
    with gateway() as (url, gw):
        async with paying(payer, test_token, url) as client:
            async with client.stream(
                "POST", "/v1/messages", json=body, headers={CONTROL_HEADER: "break"}
            ) as response:
                assert response.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):  # visibly cut, not short
                    async for _ in response.aiter_raw():
                        pass
            token = response.headers[SESSION_HEADER]
        left = await credit(url, token)
        raw = llm.requests[-1].body
        request = RequestInfo("POST", "/v1/messages", body=raw)
        route = gw.table.match("POST", "/v1/messages")
        assert route is not None
    # message_start reported the input; the output never came: charged at its worst case.
    inputs = anthropic_message(json.loads(raw), raw)["usage"]["input_tokens"]
    assert left == TOPUP - route.price.charge(Usage(input_tokens=inputs), request)
    quote = route.price.quote(request)
    assert isinstance(quote, int)  # a token price quotes synchronously
    assert 0 < TOPUP - left <= quote


async def test_a_client_that_leaves_closes_the_upstream_stream(
    gateway: GatewayFactory, llm: FakeLLM, payer: Any, test_token: Any
) -> None:
    body = {**OPENAI, "stream": True}
    with gateway() as (url, _):
        async with (
            paying(payer, test_token, url) as client,
            client.stream(
                "POST", "/flat/v1/chat/completions", json=body, headers={CONTROL_HEADER: "hold"}
            ) as response,
        ):
            assert response.status_code == 200
            await anext(response.aiter_raw())
            # Leaving the block closed the connection while the upstream was holding.
        assert llm.requests[-1].disconnected.wait(5)


async def test_discovery_lists_the_routes_and_no_secret(
    gateway: GatewayFactory, llm: FakeLLM
) -> None:
    with gateway() as (url, _):
        async with httpx.AsyncClient(base_url=url) as plain:
            document = await plain.get("/.well-known/x402")
            missing = await plain.get("/nowhere")
    assert document.status_code == 200
    text = document.text
    assert (
        UPSTREAM_KEY not in text
        and llm.url not in text
        and "127.0.0.1:" + llm.url.split(":")[-1] not in text
    )
    templates = {item["input"]["routeTemplate"] for item in document.json()["items"]}
    assert "/glob/v1/messages" in templates and "/flat/*" in templates
    assert missing.status_code == 404
    assert not llm.requests


async def test_settlement_before_pays_first_so_an_upstream_failure_is_charged(
    gateway: GatewayFactory, llm: FakeLLM, payer: Any, test_token: Any, pay_to: str
) -> None:
    with gateway() as (url, _):
        async with paying(payer, test_token, url) as client:
            ok = await client.post("/before/v1/messages", json=ANTHROPIC)
            failed = await client.post(
                "/before/v1/messages", json=ANTHROPIC, headers={CONTROL_HEADER: "status-500"}
            )
    assert ok.status_code == 200 and "payment-response" in ok.headers
    # Documented: with "before", the receipt goes out with the upstream's error.
    assert failed.status_code == 500 and "payment-response" in failed.headers
    assert test_token.balance_of(pay_to) == 2 * 10_000
    assert len(llm.requests) == 2


async def test_a_relayed_sign_in_and_malformed_headers_reach_neither_credit_nor_upstream(
    gateway: GatewayFactory, llm: FakeLLM, payer: Any, test_token: Any
) -> None:
    import base64

    from x402gate.testing.payments import sign_in_header

    body = {**ANTHROPIC, "stream": True}
    with gateway() as (url, _):
        async with paying(payer, test_token, url) as client:
            first = await client.post("/v1/messages", json=body)
        assert first.status_code == 200, first.text
        token = first.headers[SESSION_HEADER]
        left = await credit(url, token)
        upstream_calls = len(llm.requests)

        async def challenge(headers: dict[str, str]) -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
                answer = await plain.post("/v1/messages", json=body, headers=headers)
            assert answer.status_code == 402, answer.text
            required = decode_payment_required(answer.headers["payment-required"])
            assert required.extensions is not None
            return dict(required.extensions["sign-in-with-x"]["info"])

        spoofed = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
        info = await challenge(spoofed)
        assert (info["domain"], info["uri"]) == ("gateway.test", "https://gateway.test/v1/messages")
        network = "eip155:31337"
        relayed = sign_in_header(
            payer,
            info,
            network,
            domain="evil.example",
            uri="https://evil.example/v1/messages",
            resources=["https://evil.example/v1/messages"],
        )
        bad = [
            sign_in_header(payer, info, network, uri="http://[::1/v1/messages"),
            sign_in_header(payer, info, network, notBefore=1),
            sign_in_header(payer, info, network, resources={"a": 1}),
            base64.b64encode(b'{"domain": 5}').decode(),
        ]
        async with httpx.AsyncClient(base_url=url, timeout=30) as attacker:
            answer = await attacker.post(
                "/v1/messages", json=body, headers={**spoofed, "SIGN-IN-WITH-X": relayed}
            )
            assert (answer.status_code, answer.json()["error"]) == (402, "invalid_siwx_domain")
            assert SESSION_HEADER.lower() not in answer.headers
            for header in bad:
                answer = await attacker.post(
                    "/v1/messages", json=body, headers={"SIGN-IN-WITH-X": header}
                )
                assert answer.status_code == 402
                assert answer.json()["error"].startswith("invalid_siwx")
        assert len(llm.requests) == upstream_calls  # nothing forwarded
        assert await credit(url, token) == left  # no credit moved

        async with httpx.AsyncClient(base_url=url, timeout=30) as owner:
            genuine = await owner.post(
                "/v1/messages",
                json=body,
                headers={
                    "SIGN-IN-WITH-X": sign_in_header(payer, await challenge({}), network),
                    "X-Forwarded-For": "6.6.6.6",
                    "X-Forwarded-Host": "evil.example",
                },
            )
        assert genuine.status_code == 200, genuine.text
        assert len(llm.requests) == upstream_calls + 1
        # What the client wrote about addresses and hosts is not passed on as fact.
        assert llm.requests[-1].header("x-forwarded-for") is None
        assert llm.requests[-1].header("x-forwarded-host") is None


async def test_the_client_address_comes_from_the_trusted_proxy_entry_only(
    gateway: GatewayFactory,
) -> None:
    from x402gate.proxies import TrustedProxies

    with gateway() as (url, gw):
        assert gw.gate.trusted_proxies.trusts("127.0.0.1")  # gateway.trusted_proxies in the file
        seen: list[Any] = []
        gw.gate.on_event(lambda event: seen.append(event.request.client))
        spoofed = {"X-Forwarded-For": "6.6.6.6, 198.51.100.4"}
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await client.post("/v1/messages", json=ANTHROPIC, headers=spoofed)
            gw.gate.trusted_proxies = TrustedProxies()
            await client.post("/v1/messages", json=ANTHROPIC, headers=spoofed)
    assert seen == ["198.51.100.4", "127.0.0.1"]
