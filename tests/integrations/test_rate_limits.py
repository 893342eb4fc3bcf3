"""Rate limits under real servers, paid on the local chain.

Every adapter (FastAPI, ASGI, Flask, WSGI, Django on WSGI and ASGI) serves two routes priced
$0.01: ``/paid`` allows one request per payer every 3 seconds, ``/ip`` two requests per client
address every 3 seconds. What a user checks: the request over a limit is answered 429 with
``Retry-After`` and the RateLimit headers, its payment moved no money (balances and the
authorization's state read from the chain), the store holds no claim of it, the facilitator
(the real local one, its calls counted) was not called, ``Retry-After`` counts down, and once
the window passed the very same authorization is accepted and settled. On Redis, two instances
share the counters.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("limits")

from x402gate import PaymentGate
from x402gate._runner import run_sync
from x402gate.protocol import PAYMENT_REQUIRED, PAYMENT_SIGNATURE
from x402gate.ratelimit import RateLimit
from x402gate.stores import replay_key
from x402gate.testing.burst import requirements_of
from x402gate.testing.payments import encode_payment, sign_exact_payment

pytestmark = pytest.mark.chain

PRICE = 10_000  # $0.01
PER_PAYER = RateLimit(per_payer="1 per 3 seconds")
PER_IP = "2 per 3 seconds"
Site = Callable[[PaymentGate], AbstractContextManager[str]]


def serve_asgi(app: Any) -> AbstractContextManager[str]:
    from x402gate.demo import serve_in_thread

    return serve_in_thread(app)


def routes() -> dict[str, Any]:
    """The route table of the middlewares: options as dicts, beside the price."""
    return {
        "GET /paid": {"price": "$0.01", "rate_limit": PER_PAYER},
        "GET /ip": {"price": "$0.01", "rate_limit": PER_IP},
    }


@contextmanager
def fastapi_site(gate: PaymentGate) -> Iterator[str]:
    pytest.importorskip("fastapi")
    from fastapi import Depends, FastAPI

    from x402gate.fastapi import install, require_payment

    app = FastAPI()
    install(app, gate)

    @app.get("/paid", dependencies=[Depends(require_payment("$0.01", rate_limit=PER_PAYER))])
    async def paid() -> dict[str, str]:
        return {"content": "PAID"}

    @app.get("/ip", dependencies=[Depends(require_payment("$0.01", rate_limit=PER_IP))])
    async def ip() -> dict[str, str]:
        return {"content": "PAID"}

    with serve_asgi(app) as url:
        yield url


@contextmanager
def asgi_site(gate: PaymentGate) -> Iterator[str]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def paid(request: Request) -> JSONResponse:
        return JSONResponse({"content": "PAID"})

    app = PaymentMiddleware(
        Starlette(routes=[Route("/paid", paid), Route("/ip", paid)]), gate=gate, routes=routes()
    )
    with serve_asgi(app) as url:
        yield url


@contextmanager
def flask_site(gate: PaymentGate) -> Iterator[str]:
    pytest.importorskip("flask")
    from flask import Flask

    from x402gate.flask import X402Gate, require_payment
    from x402gate.testing.servers import serve_wsgi

    app = Flask(__name__)
    X402Gate(app, gate=gate)

    @app.get("/paid")
    @require_payment("$0.01", rate_limit=PER_PAYER)
    def paid() -> dict[str, str]:
        return {"content": "PAID"}

    @app.get("/ip")
    @require_payment("$0.01", rate_limit=PER_IP)
    def ip() -> dict[str, str]:
        return {"content": "PAID"}

    with serve_wsgi(app) as url:
        yield url


@contextmanager
def wsgi_site(gate: PaymentGate) -> Iterator[str]:
    from x402gate.testing.servers import serve_wsgi
    from x402gate.wsgi import PaymentMiddleware

    def paid(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"content": "PAID"}']

    with serve_wsgi(PaymentMiddleware(paid, gate=gate, routes=routes())) as url:
        yield url


def django_site(asgi: bool) -> Site:
    @contextmanager
    def site(gate: PaymentGate) -> Iterator[str]:
        pytest.importorskip("django")
        from django.http import HttpRequest, JsonResponse
        from django.urls import path

        from .django.conftest import django_server

        def paid(request: HttpRequest) -> JsonResponse:
            return JsonResponse({"content": "PAID"})

        # The settings form: a mapping where the code gives a RateLimit.
        settings = {
            "GATE": gate,
            "ROUTES": {
                "GET /paid": {"price": "$0.01", "rate_limit": {"per_payer": "1 per 3 seconds"}},
                "GET /ip": {"price": "$0.01", "rate_limit": PER_IP},
            },
        }
        with django_server([path("paid", paid), path("ip", paid)], settings, asgi=asgi) as url:
            yield url

    return site


SITES: dict[str, Site] = {
    "fastapi": fastapi_site,
    "asgi": asgi_site,
    "flask": flask_site,
    "wsgi": wsgi_site,
    "django-wsgi": django_site(False),
    "django-asgi": django_site(True),
}


class CountedFacilitator:
    """The real local facilitator, with its verify and settle calls counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    async def verify(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["verify"] += 1
        return await self.inner.verify(*args, **kwargs)

    async def settle(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["settle"] += 1
        return await self.inner.settle(*args, **kwargs)

    async def supported(self, *args: Any, **kwargs: Any) -> Any:
        return await self.inner.supported(*args, **kwargs)


@pytest.fixture
def facilitator(local_facilitator: Any) -> CountedFacilitator:
    return CountedFacilitator(local_facilitator)


@pytest.fixture
def make_gate(
    facilitator: CountedFacilitator, chain: Any, test_token: Any, pay_to: str
) -> Iterator[Callable[..., PaymentGate]]:
    """``make_gate(store=..., **options)``: gates on the counted facilitator, closed after."""
    gates: list[PaymentGate] = []

    def make(store: str, **options: Any) -> PaymentGate:
        gate = PaymentGate(
            pay_to=pay_to,
            assets=test_token.asset,
            facilitator=facilitator,
            store=store,
            rpc_url=chain.rpc_url,
            trusted_proxies=["127.0.0.1"],
            **options,
        )
        gates.append(gate)
        return gate

    yield make
    for gate in gates:
        run_sync(gate.aclose())


def signed(payer: Any, requirements: Any) -> tuple[dict[str, str], str]:
    """A fresh authorization's header, and its nonce."""
    payload = sign_exact_payment(payer, requirements)
    return {PAYMENT_SIGNATURE: encode_payment(payload)}, payload.payload["authorization"]["nonce"]


async def get(url: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await client.get(path, headers=headers or {})


def assert_limited(response: httpx.Response, limit: int, window: int) -> int:
    """The 429 a user expects; returns its ``Retry-After``."""
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "rate_limited"
    assert "PAID" not in response.text
    assert PAYMENT_REQUIRED not in response.headers
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= window
    assert response.headers["ratelimit-limit"] == str(limit)
    assert response.headers["ratelimit-remaining"] == "0"
    assert response.headers["ratelimit-reset"] == str(retry_after)
    assert response.headers["ratelimit-policy"] == f"{limit};w={window}"
    exposed = response.headers["access-control-expose-headers"]
    assert "Retry-After" in exposed and "RateLimit-Reset" in exposed
    return retry_after


@pytest.mark.parametrize("site", sorted(SITES))
async def test_a_payer_over_its_limit_gets_a_429_that_moves_no_money(
    site: str,
    make_gate: Callable[..., PaymentGate],
    facilitator: CountedFacilitator,
    payer: Any,
    test_token: Any,
    pay_to: str,
    tmp_path: Any,
) -> None:
    gate = make_gate(f"sqlite:///{tmp_path / 'x402gate.db'}")
    start = test_token.balance_of(payer.address)
    with SITES[site](gate) as url:
        requirements = await requirements_of(url, "/paid")
        first, _ = signed(payer, requirements)
        answer = await get(url, "/paid", first)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"content": "PAID"}
        assert test_token.balance_of(payer.address) == start - PRICE
        calls = dict(facilitator.calls)
        assert calls["settle"] == 1

        second, nonce = signed(payer, requirements)
        retry_after = assert_limited(await get(url, "/paid", second), 1, 3)
        # Nothing moved, nothing was claimed, the facilitator never heard of it.
        assert test_token.balance_of(payer.address) == start - PRICE
        assert test_token.balance_of(pay_to) == PRICE
        assert not test_token.authorization_state(payer.address, nonce)
        key = replay_key(requirements.network, requirements.asset, payer.address, nonce)
        assert gate.store.state(key, time.time()) is None
        assert dict(facilitator.calls) == calls

        await asyncio.sleep(1.1)
        later = assert_limited(await get(url, "/paid", second), 1, 3)
        assert later < retry_after  # counts down

        await asyncio.sleep(later + 0.1)
        # The window passed: the very authorization that was refused is taken and settled.
        answer = await get(url, "/paid", second)
        assert answer.status_code == 200, answer.text
        assert test_token.authorization_state(payer.address, nonce)
    assert test_token.balance_of(payer.address) == start - 2 * PRICE
    assert test_token.balance_of(pay_to) == 2 * PRICE


@pytest.mark.parametrize("site", sorted(SITES))
async def test_a_client_address_over_its_limit_gets_a_429_before_any_payment_work(
    site: str,
    make_gate: Callable[..., PaymentGate],
    facilitator: CountedFacilitator,
    payer: Any,
    test_token: Any,
    tmp_path: Any,
) -> None:
    gate = make_gate(f"sqlite:///{tmp_path / 'x402gate.db'}")
    start = test_token.balance_of(payer.address)
    with SITES[site](gate) as url:
        requirements = await requirements_of(url, "/ip")  # 1 of 2
        assert (await get(url, "/ip")).status_code == 402  # 2 of 2
        calls = dict(facilitator.calls)
        header, nonce = signed(payer, requirements)
        assert_limited(await get(url, "/ip", header), 2, 3)
        assert test_token.balance_of(payer.address) == start
        assert not test_token.authorization_state(payer.address, nonce)
        assert dict(facilitator.calls) == calls
        # Behind the trusted proxy (127.0.0.1) the client is the forwarded address: another
        # client has its own count; a client cannot escape its own by writing the header.
        other = await get(url, "/ip", {"X-Forwarded-For": "203.0.113.7"})
        assert other.status_code == 402
        assert (await get(url, "/ip", {"X-Forwarded-For": "203.0.113.7"})).status_code == 402
        again = await get(url, "/ip", {"X-Forwarded-For": "203.0.113.7"})
        assert_limited(again, 2, 3)


@pytest.mark.parametrize(
    ("strategy", "own_url"),
    [("moving-window", False), ("fixed-window", False), ("moving-window", True)],
    ids=["moving-store-redis", "fixed-store-redis", "moving-own-redis"],
)
async def test_two_instances_on_one_redis_share_the_counters(
    strategy: str,
    own_url: bool,
    make_gate: Callable[..., PaymentGate],
    facilitator: CountedFacilitator,
    redis_url: str,
    payer: Any,
    test_token: Any,
    tmp_path: Any,
) -> None:
    if own_url:
        # Stores of their own (SQLite files), counters in the Redis named for them.
        one = make_gate(f"sqlite:///{tmp_path / 'one.db'}", rate_limit_storage=redis_url)
        two = make_gate(f"sqlite:///{tmp_path / 'two.db'}", rate_limit_storage=redis_url)
    else:
        # No rate_limit_storage: the counters live in the store's Redis.
        one = make_gate(redis_url, rate_limit_strategy=strategy)
        two = make_gate(redis_url, rate_limit_strategy=strategy)
    assert one.rate_limit_storage == two.rate_limit_storage == redis_url
    start = test_token.balance_of(payer.address)
    with asgi_site(one) as first_url, wsgi_site(two) as second_url:
        requirements = await requirements_of(first_url, "/paid")
        header, _ = signed(payer, requirements)
        assert (await get(first_url, "/paid", header)).status_code == 200
        calls = dict(facilitator.calls)
        header, nonce = signed(payer, requirements)
        assert_limited(await get(second_url, "/paid", header), 1, 3)
        assert dict(facilitator.calls) == calls
        assert not test_token.authorization_state(payer.address, nonce)
    assert test_token.balance_of(payer.address) == start - PRICE
