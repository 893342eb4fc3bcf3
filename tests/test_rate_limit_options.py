"""The ``rate_limit`` route option and the gate's rate limit settings: the forms each place takes,
the mistakes refused by name, where counters live by default, and a storage that fails closed."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

pytest.importorskip("limits")

from x402gate import PaymentGate, RateLimit
from x402gate.errors import ConfigurationError
from x402gate.facilitators import HTTPFacilitator
from x402gate.ratelimit import as_rate_limit, default_storage_url
from x402gate.settings import SettingsError, build_gate, read_flask_config

PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"


def make_gate(**options: Any) -> PaymentGate:
    # Never reached: no request here carries a payment.
    return PaymentGate(
        pay_to=PAY_TO,
        network="base",
        facilitator=HTTPFacilitator("http://127.0.0.1:9"),
        store=options.pop("store", "memory://"),
        startup_checks="off",
        **options,
    )


def test_a_rate_alone_is_per_client_address_and_a_mapping_names_both() -> None:
    alone = as_rate_limit("10/minute")
    assert alone == RateLimit(per_ip="10/minute")
    assert [(i.amount, i.get_expiry()) for i in alone.ip_items] == [(10, 60)]
    both = as_rate_limit({"per_ip": "5/second;200/day", "per_payer": "1 per 3 seconds"})
    assert both is not None
    assert [(i.amount, i.get_expiry()) for i in both.ip_items] == [(5, 1), (200, 86_400)]
    assert [(i.amount, i.get_expiry()) for i in both.payer_items] == [(1, 3)]
    assert as_rate_limit(None) is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("lots", "'lots' is not a rate"),
        ("0/minute", "allows no request at all"),
        ({"per_ip": "1/second", "per_payr": "1/second"}, "did you mean 'per_payer'?"),
        ({}, "needs per_ip, per_payer or both"),
        (10, "not int"),
        ({"per_payer": 5}, "must be a rate like '10/minute'"),
    ],
)
def test_a_wrong_rate_limit_is_refused_when_the_route_is_built(value: Any, fragment: str) -> None:
    gate = make_gate()
    with pytest.raises(ConfigurationError) as refused:
        gate.route("$0.01", rate_limit=value)
    assert fragment in str(refused.value)
    gate.close()


def test_the_route_keeps_its_limit_and_the_gate_its_counter() -> None:
    gate = make_gate(rate_limit_strategy="fixed-window")
    assert gate.rate_limiter is None  # a gate without limits needs no counter
    route = gate.route("$0.01", rate_limit={"per_payer": "10/minute", "scope": "reports"})
    assert route.rate_limit == RateLimit(per_payer="10/minute", scope="reports")
    assert gate.rate_limiter is not None
    assert gate.rate_limiter.strategy == "fixed-window"
    gate.close()


def test_counters_live_in_the_stores_redis_by_default_and_in_memory_otherwise() -> None:
    url = "redis://127.0.0.1:6379/2?key_prefix=shop&socket_timeout=2"
    assert default_storage_url(url) == "redis://127.0.0.1:6379/2?socket_timeout=2"
    assert default_storage_url("sqlite:///x402gate.db") == "memory://"
    assert default_storage_url("memory://") == "memory://"
    assert make_gate().rate_limit_storage == "memory://"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"rate_limit_storage": "memcached://127.0.0.1"}, "not memcached://"),
        ({"rate_limit_strategy": "sliding"}, "moving-window, fixed-window"),
    ],
)
def test_the_gate_refuses_an_unknown_storage_or_strategy(
    options: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        make_gate(**options)
    assert fragment in str(refused.value)


def test_flask_config_names_the_storage_and_the_strategy() -> None:
    config = {
        "X402GATE_PAY_TO": PAY_TO,
        "X402GATE_NETWORK": "base",
        "X402GATE_FACILITATOR_URL": "http://127.0.0.1:9",
        "X402GATE_STORE_URL": "memory://",
        "X402GATE_STARTUP_CHECKS": "off",
        "X402GATE_RATE_LIMIT_STORAGE": "redis://127.0.0.1:6379/3",
        "X402GATE_RATE_LIMIT_STRATEGY": "fixed-window",
        "X402GATE_ROUTES": {"GET /a": {"price": "$0.01", "rate_limit": {"per_ip": "9/minute"}}},
    }
    settings = read_flask_config(config)
    gate, _ = build_gate(settings)
    assert gate.rate_limit_storage == "redis://127.0.0.1:6379/3"
    assert gate.rate_limit_strategy == "fixed-window"
    gate.close()
    with pytest.raises(SettingsError) as refused:
        read_flask_config({**config, "X402GATE_RATE_LIMIT_STRATEGY": "leaky"})
    assert "X402GATE_RATE_LIMIT_STRATEGY" in str(refused.value)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def chain_gate(facilitator: Any, token: Any, **options: Any) -> PaymentGate:
    return PaymentGate(
        pay_to=PAY_TO, assets=token.asset, facilitator=facilitator, store="memory://", **options
    )


@pytest.mark.chain
async def test_a_storage_that_cannot_be_reached_fails_closed(
    local_facilitator: Any, test_token: Any
) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("redis")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware
    from x402gate.demo import serve_in_thread

    runs: list[str] = []

    async def paid(request: Request) -> JSONResponse:
        runs.append(request.url.path)
        return JSONResponse({"content": "PAID"})

    storage = f"redis://127.0.0.1:{closed_port()}/0?socket_timeout=1"
    gate = chain_gate(local_facilitator, test_token, rate_limit_storage=storage)
    routes = {"GET /paid": {"price": "$0.01", "rate_limit": "5/minute"}}
    app = PaymentMiddleware(Starlette(routes=[Route("/paid", paid)]), gate=gate, routes=routes)
    with serve_in_thread(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            answer = await client.get("/paid")
    gate.close()
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "store_unavailable"
    assert "PAID" not in answer.text
    assert "127.0.0.1" not in answer.text  # the storage's address stays in the logs
    assert runs == []


@pytest.mark.chain
async def test_unpaid_requests_over_the_per_ip_limit_get_429_without_a_challenge(
    local_facilitator: Any, test_token: Any
) -> None:
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware
    from x402gate.demo import serve_in_thread

    async def paid(request: Request) -> JSONResponse:
        return JSONResponse({"content": "PAID"})

    gate = chain_gate(local_facilitator, test_token)
    routes = {"GET /paid/*": {"price": "$0.01", "rate_limit": "3/minute"}, "GET /free": "$0.01"}
    app = PaymentMiddleware(
        Starlette(routes=[Route("/paid/{name}", paid), Route("/free", paid)]),
        gate=gate,
        routes=routes,
    )
    with serve_in_thread(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            # Every path under the key counts against the key's one limit.
            statuses = [(await client.get(f"/paid/{n}")).status_code for n in range(5)]
            limited = await client.get("/paid/x", headers={"Accept": "text/html"})
            unlimited = [(await client.get("/free")).status_code for _ in range(5)]
    gate.close()
    assert statuses == [402, 402, 402, 429, 429]
    assert limited.status_code == 429
    assert "payment-required" not in limited.headers
    assert int(limited.headers["retry-after"]) <= 60
    assert unlimited == [402] * 5
