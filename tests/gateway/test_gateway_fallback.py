"""Routes over several upstreams, with real fake providers (three at once) and payments on the
local chain: weighted split, fallback on every failure kind with one payment, no fallback once
an answer is under way, circuit breaking, nothing charged when every target failed, and no
upstream in the discovery document."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from x402gate.credit import SESSION_HEADER
from x402gate.testing.fake_llm import FakeLLM, refusing_url, serve_fake_llm, unresponsive_url
from x402gate.testing.payments import decode_payment_required

from .conftest import UPSTREAM_KEY, GatewayFactory
from .test_gateway_chain import ANTHROPIC, paying

pytestmark = pytest.mark.chain

SECOND_KEY = "sk-second-provider-abcdef"
FLAT = 10_000  # $0.01
PHYSICAL = "claude-physical-2"
"""The model name the second provider is sent (a rewrite of the client's)."""


@pytest.fixture(scope="module")
def _second_server() -> Iterator[FakeLLM]:
    with serve_fake_llm() as llm:
        yield llm


@pytest.fixture
def second(_second_server: FakeLLM) -> Iterator[FakeLLM]:
    """A second fake provider, running at the same time as ``llm``."""
    _second_server.clear()
    yield _second_server
    _second_server.release()


def file_text(
    first_url: str, second_url: str, *, first: str = "", second: str = "", routes: str = ""
) -> str:
    """Two more upstreams (``first``, ``second``) and routes over them and ``llm``."""
    return (
        f"""\
  first:
    url: {first_url}
    timeout: 0.5
{first}  second:
    url: {second_url}
    headers:
      x-api-key: {SECOND_KEY}
    timeout: 5
{second}routes:
  "POST /flat/v1/messages":
    path: /v1/messages
    price: $0.01
    targets:
      - first
      - {{upstream: second, model: {PHYSICAL}}}
"""
        + routes
    )


CREDIT_ROUTE = """\
  "POST /v1/messages":
    type: per-token
    models:
      "claude-*": {input: $0.001, output: $0.001, per: 1000}
    credit_topup: $0.50
    targets:
"""


@contextlib.contextmanager
def first_target(kind: str, llm: FakeLLM) -> Iterator[str]:
    """The URL of a first target that fails as ``kind`` says."""
    if kind == "refused":
        with refusing_url() as url:
            yield url
    elif kind == "connect-timeout":
        with unresponsive_url() as url:
            yield url
    else:
        llm.failure = "hang" if kind == "response-timeout" else kind
        yield llm.url


@pytest.mark.parametrize(
    "kind",
    ["refused", "connect-timeout", "response-timeout", "status-500", "status-503", "status-429"],
)
async def test_each_failure_falls_back_and_the_client_pays_once(
    kind: str,
    gateway: GatewayFactory,
    llm: FakeLLM,
    second: FakeLLM,
    payer: Any,
    test_token: Any,
    pay_to: str,
) -> None:
    with (
        first_target(kind, llm) as first_url,
        gateway(routes=file_text(first_url, second.url)) as (url, gw),
    ):
        before, received = test_token.balance_of(payer.address), test_token.balance_of(pay_to)
        async with paying(payer, test_token, url) as client:
            response = await client.post("/flat/v1/messages", json=ANTHROPIC)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == PHYSICAL  # the fallback's answer
        stats = gw.upstream_stats()
    assert test_token.balance_of(payer.address) == before - FLAT
    assert test_token.balance_of(pay_to) == received + FLAT
    # The second provider got the client's request, its model renamed, with its own key.
    assert len(second.requests) == 1
    sent = second.requests[0]
    assert json.loads(sent.body) == {**ANTHROPIC, "model": PHYSICAL}
    assert sent.header("x-api-key") == SECOND_KEY
    assert len(llm.requests) == (1 if kind.startswith(("status", "response")) else 0)
    failure = {"refused": "unavailable", "connect-timeout": "timeout"}.get(
        kind, "timeout" if kind == "response-timeout" else "status"
    )
    assert stats["first"]["failures"][failure] == 1
    assert stats["first"]["fallbacks"] == 1
    assert stats["second"]["successes"] == 1
    assert SECOND_KEY not in response.text and UPSTREAM_KEY not in response.text


async def test_no_fallback_once_the_answer_is_under_way(
    gateway: GatewayFactory, llm: FakeLLM, second: FakeLLM, payer: Any, test_token: Any
) -> None:
    llm.failure = "break"  # streams a few events, then drops the connection
    with gateway(routes=file_text(llm.url, second.url)) as (url, gw):
        async with (
            paying(payer, test_token, url) as client,
            client.stream(
                "POST", "/flat/v1/messages", json={**ANTHROPIC, "stream": True}
            ) as response,
        ):
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):  # visibly cut, not retried
                async for _ in response.aiter_raw():
                    pass
        stats = gw.upstream_stats()
    assert len(llm.requests) == 1
    assert second.requests == []
    assert stats["first"]["successes"] == 1
    assert stats["first"]["fallbacks"] == 0


async def test_nothing_is_charged_when_every_target_failed(
    gateway: GatewayFactory,
    llm: FakeLLM,
    second: FakeLLM,
    payer: Any,
    test_token: Any,
    pay_to: str,
) -> None:
    second.failure = "status-503"
    with (
        refusing_url() as down,
        gateway(routes=file_text(down, second.url)) as (url, gw),
    ):
        before, received = test_token.balance_of(payer.address), test_token.balance_of(pay_to)
        async with paying(payer, test_token, url) as client:
            response = await client.post("/flat/v1/messages", json=ANTHROPIC)
        # The last target's own answer goes back, and the payment is released.
        assert response.status_code == 503, response.text
        assert response.json()["error"]["message"] == "fake error 503"
        stats = gw.upstream_stats()
    assert test_token.balance_of(payer.address) == before
    assert test_token.balance_of(pay_to) == received
    assert len(second.requests) == 1
    assert stats["first"]["failures"]["unavailable"] == 1
    assert stats["second"]["failures"]["status"] == 1


async def credit_session(url: str, payer: Any, test_token: Any) -> str:
    """Pay a top-up once; the session token then spends the credit with no transaction."""
    async with paying(payer, test_token, url) as client:
        response = await client.post("/v1/messages", json=ANTHROPIC)
    assert response.status_code == 200, response.text
    return response.headers[SESSION_HEADER]


async def test_weighted_split_within_five_points_over_a_thousand_requests(
    gateway: GatewayFactory, llm: FakeLLM, second: FakeLLM, payer: Any, test_token: Any
) -> None:
    routes = CREDIT_ROUTE + (
        "      - {upstream: llm, weight: 3, priority: 0}\n"
        "      - {upstream: second, weight: 1, priority: 0}\n"
    )
    with (
        refusing_url() as unused,
        gateway(routes=file_text(unused, second.url, routes=routes)) as (url, gw),
    ):
        token = await credit_session(url, payer, test_token)
        async with httpx.AsyncClient(base_url=url, timeout=30) as plain:

            async def call() -> None:
                answer = await plain.post(
                    "/v1/messages", json=ANTHROPIC, headers={SESSION_HEADER: token}
                )
                assert answer.status_code == 200, answer.text

            for _ in range(50):  # 1,000 requests served from credit, 20 at a time
                await asyncio.gather(*(call() for _ in range(20)))
        stats = gw.upstream_stats()
    served = len(llm.requests) + len(second.requests)
    assert served == 1001
    share = len(llm.requests) / served
    assert abs(share - 0.75) <= 0.05, share
    assert stats["llm"]["successes"] == len(llm.requests)
    assert stats["second"]["successes"] == len(second.requests)
    assert stats["llm"]["fallbacks"] == stats["second"]["fallbacks"] == 0


async def test_the_breaker_opens_skips_the_target_and_closes_after_a_probe(
    gateway: GatewayFactory, llm: FakeLLM, second: FakeLLM, payer: Any, test_token: Any
) -> None:
    breaker = "    breaker: {failures: 2, open_seconds: 1.5}\n"
    routes = CREDIT_ROUTE + "      - first\n      - second\n"
    with gateway(routes=file_text(llm.url, second.url, first=breaker, routes=routes)) as (
        url,
        gw,
    ):
        token = await credit_session(url, payer, test_token)
        assert (len(llm.requests), len(second.requests)) == (1, 0)
        async with httpx.AsyncClient(base_url=url, timeout=30) as plain:

            async def call() -> None:
                answer = await plain.post(
                    "/v1/messages", json=ANTHROPIC, headers={SESSION_HEADER: token}
                )
                assert answer.status_code == 200, answer.text

            llm.failure = "status-502"
            await call()
            await call()  # the second failure in a row opens the breaker
            assert gw.upstream_stats()["first"]["breaker"] == "open"
            opened = time.monotonic()
            await call()
            await call()
            assert len(llm.requests) == 3  # skipped while open
            assert len(second.requests) == 4
            assert gw.upstream_stats()["first"]["skipped"] == 2
            llm.failure = None  # the provider recovers
            await asyncio.sleep(1.5 - (time.monotonic() - opened) + 0.1)
            assert gw.upstream_stats()["first"]["breaker"] == "half-open"
            await call()  # the probe succeeds: closed again
            await call()
        stats = gw.upstream_stats()
    assert len(llm.requests) == 5
    assert len(second.requests) == 4
    assert stats["first"]["breaker"] == "closed"
    assert stats["first"]["breaker_opens"] == 1
    assert stats["first"]["failures"]["status"] == 2


async def test_a_route_whose_every_target_is_open_answers_503_and_charges_nothing(
    gateway: GatewayFactory,
    llm: FakeLLM,
    second: FakeLLM,
    payer: Any,
    test_token: Any,
    pay_to: str,
) -> None:
    breaker = "    breaker: {failures: 1, open_seconds: 60}\n"
    second.failure = "status-500"
    with (
        refusing_url() as down,
        gateway(routes=file_text(down, second.url, first=breaker, second=breaker)) as (url, gw),
    ):
        before, received = test_token.balance_of(payer.address), test_token.balance_of(pay_to)
        async with paying(payer, test_token, url) as client:
            failed = await client.post("/flat/v1/messages", json=ANTHROPIC)
            assert failed.status_code == 500
            stats = gw.upstream_stats()
            assert stats["first"]["breaker"] == stats["second"]["breaker"] == "open"
            skipped = await client.post("/flat/v1/messages", json=ANTHROPIC)
        assert skipped.status_code == 503
        assert skipped.json()["error"] == "upstream_unavailable"
        stats = gw.upstream_stats()
    assert len(second.requests) == 1  # not tried again while open
    assert stats["first"]["skipped"] == stats["second"]["skipped"] == 1
    assert test_token.balance_of(payer.address) == before
    assert test_token.balance_of(pay_to) == received


async def test_discovery_lists_the_route_and_its_price_not_the_upstreams(
    gateway: GatewayFactory, llm: FakeLLM, second: FakeLLM
) -> None:
    with gateway(routes=file_text(llm.url, second.url)) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
            document = await plain.get("/.well-known/x402")
            terms = await plain.post("/flat/v1/messages", json=ANTHROPIC)
    assert document.status_code == 200
    assert terms.status_code == 402
    required = decode_payment_required(terms.headers["payment-required"])
    assert int(required.accepts[0].amount) == FLAT  # the logical route's price
    text = document.text + terms.text + json.dumps(required.model_dump(mode="json"))
    assert "/flat/v1/messages" in document.text
    for secret in (llm.url, second.url, SECOND_KEY, UPSTREAM_KEY, PHYSICAL):
        assert secret.removeprefix("http://") not in text


async def test_targets_by_model_send_each_model_to_its_own_upstreams(
    gateway: GatewayFactory,
    llm: FakeLLM,
    second: FakeLLM,
    payer: Any,
    test_token: Any,
) -> None:
    routes = f"""\
  "POST /by-model/v1/messages":
    path: /v1/messages
    price: $0.01
    targets_by_model:
      claude-sonnet-4-5: [{{upstream: second, model: {PHYSICAL}}}, llm]
      "*": [llm]
  "POST /only-sonnet/v1/messages":
    path: /v1/messages
    price: $0.01
    targets_by_model:
      claude-sonnet-4-5: [llm]
"""
    with (
        refusing_url() as unused,
        gateway(routes=file_text(unused, second.url, routes=routes)) as (
            url,
            _,
        ),
    ):
        before = test_token.balance_of(payer.address)
        async with paying(payer, test_token, url) as client:
            sonnet = await client.post("/by-model/v1/messages", json=ANTHROPIC)
            haiku = await client.post(
                "/by-model/v1/messages", json={**ANTHROPIC, "model": "claude-haiku-4-5"}
            )
            unknown = await client.post(
                "/only-sonnet/v1/messages", json={**ANTHROPIC, "model": "claude-haiku-4-5"}
            )
        assert sonnet.status_code == haiku.status_code == 200
        assert sonnet.json()["model"] == PHYSICAL
        assert haiku.json()["model"] == "claude-haiku-4-5"
        assert unknown.status_code == 400
        assert unknown.json()["error"] == "unknown_model"
    assert [json.loads(r.body)["model"] for r in second.requests] == [PHYSICAL]
    assert [json.loads(r.body)["model"] for r in llm.requests] == ["claude-haiku-4-5"]
    assert test_token.balance_of(payer.address) == before - 2 * FLAT  # the unknown model: free


async def test_the_metrics_count_each_upstreams_fallbacks_and_never_name_its_url(
    gateway_yaml: Any, llm: FakeLLM, second: FakeLLM, payer: Any, test_token: Any
) -> None:
    from x402gate.gateway import Gateway, parse_config

    from .conftest import serve_gateway

    with refusing_url() as first_url:
        text, env = gateway_yaml(routes=file_text(first_url, second.url))
        text = text.replace("gateway:\n", "gateway:\n  metrics: {path: /metrics}\n", 1)
        app = Gateway(parse_config(text, source="gateway.yaml", env=env))
        with serve_gateway(app) as url:
            async with paying(payer, test_token, url) as client:
                response = await client.post("/flat/v1/messages", json=ANTHROPIC)
                assert response.status_code == 200, response.text
            async with httpx.AsyncClient(base_url=url, timeout=30) as plain:
                scrape = await plain.get("/metrics")
    assert scrape.status_code == 200
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scrape.text.splitlines()
        if line.startswith("x402gate_upstream_")
    }
    assert samples['x402gate_upstream_failures_total{kind="unavailable",upstream="first"}'] == 1
    assert samples['x402gate_upstream_fallbacks_total{upstream="first"}'] == 1
    assert samples['x402gate_upstream_successes_total{upstream="second"}'] == 1
    assert samples['x402gate_upstream_breaker_state{state="closed",upstream="first"}'] == 1
    assert samples['x402gate_upstream_latency_seconds_mean{upstream="second"}'] > 0
    # Upstreams by name only: no URL, no key.
    for secret in (first_url, second.url, SECOND_KEY, UPSTREAM_KEY):
        assert secret not in scrape.text
