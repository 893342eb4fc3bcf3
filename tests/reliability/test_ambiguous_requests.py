"""The price is computed from the same reading of the request as the handler's, on every adapter.

Each adapter serves ``POST /chat`` behind its real server (uvicorn for Starlette and FastAPI,
waitress for Flask, plain WSGI and Django), priced $0.20 when ``query.tier``, ``header.x-tier``
or ``body.model`` says ``opus`` and $0.01 otherwise; the handler answers what its framework
reads. A request that could be read two ways (a repeated parameter, a repeated JSON key, a body
in UTF-16, compressed or sent as a form) used to be priced at $0.01 while the handler served
``opus``; it is now refused (400/415) before any payment, and a payment signed for the cheap
reading is refused too: no handler run, no transfer.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import types
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from x402gate import MatchRules, PaymentGate
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment

try:  # FastAPI resolves the handler's annotations in this module's namespace
    from fastapi import Request as FastAPIRequest
except ImportError:  # pragma: no cover - the FastAPI cases are skipped
    FastAPIRequest = Any  # type: ignore[misc,assignment]

pytestmark = pytest.mark.chain

ADAPTERS = ["starlette", "fastapi", "flask", "wsgi", "django"]
ASGI = {"starlette", "fastapi"}
CHEAP, DEAR = 10_000, 200_000
JSON = {"content-type": "application/json"}


def pricing() -> MatchRules:
    return MatchRules(
        [
            {"match": {"query.tier": "opus"}, "price": "$0.20"},
            {"match": {"header.x-tier": "opus"}, "price": "$0.20"},
            {"match": {"body.model": "opus"}, "price": "$0.20"},
        ],
        fallback="$0.01",
    )


def _reading(tier: Any, header: Any, body: bytes) -> dict[str, Any]:
    try:
        model = json.loads(body).get("model") if body else None
    except ValueError:
        model = None
    return {"tier": tier, "header": header, "model": model}


def _starlette(gate: PaymentGate, runs: collections.Counter[str]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def chat(request: Request) -> JSONResponse:
        runs["chat"] += 1
        reading = _reading(
            request.query_params.get("tier"), request.headers.get("x-tier"), await request.body()
        )
        return JSONResponse(reading)

    app = Starlette(routes=[Route("/chat", chat, methods=["POST"])])
    return PaymentMiddleware(app, gate=gate, routes={"POST /chat": pricing()})


def _fastapi(gate: PaymentGate, runs: collections.Counter[str]) -> Any:
    from fastapi import Depends, FastAPI

    from x402gate.fastapi import install, require_payment

    app = FastAPI()
    install(app, gate)

    @app.post("/chat", dependencies=[Depends(require_payment(pricing()))])
    async def chat(request: FastAPIRequest) -> dict[str, Any]:
        runs["chat"] += 1
        body = await request.body()
        return _reading(request.query_params.get("tier"), request.headers.get("x-tier"), body)

    return app


def _flask(gate: PaymentGate, runs: collections.Counter[str]) -> Any:
    from flask import Flask, request

    from x402gate.flask import X402Gate, require_payment

    app = Flask(__name__)
    X402Gate(app, gate=gate)

    @app.post("/chat")
    @require_payment(pricing())
    def chat() -> dict[str, Any]:
        runs["chat"] += 1
        return _reading(request.args.get("tier"), request.headers.get("x-tier"), request.data)

    return app


def _wsgi(gate: PaymentGate, runs: collections.Counter[str]) -> Any:
    from urllib.parse import parse_qs

    from x402gate.integrations.wsgi import PaymentMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs["chat"] += 1
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        tiers = parse_qs(environ.get("QUERY_STRING", "")).get("tier")
        reading = _reading(tiers[-1] if tiers else None, environ.get("HTTP_X_TIER"), body)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(reading).encode()]

    return PaymentMiddleware(app, gate=gate, routes={"POST /chat": pricing()})


_django_live: Any = None


def _django(gate: PaymentGate, runs: collections.Counter[str]) -> Any:
    global _django_live
    import django
    from django.conf import settings

    if not settings.configured:  # the same base settings as the Django conformance app
        settings.configure(
            DEBUG=False,
            SECRET_KEY="x402gate-tests",
            ALLOWED_HOSTS=["*"],
            INSTALLED_APPS=["x402gate.django"],
            MIDDLEWARE=["x402gate.django.PaymentMiddleware"],
            ROOT_URLCONF=None,
            USE_TZ=True,
        )
        django.setup()
    from django.core.wsgi import get_wsgi_application
    from django.http import HttpRequest, JsonResponse
    from django.test.utils import override_settings
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    @csrf_exempt
    def chat(request: HttpRequest) -> JsonResponse:
        runs["chat"] += 1
        reading = _reading(request.GET.get("tier"), request.headers.get("x-tier"), request.body)
        return JsonResponse(reading)

    urls = types.ModuleType("ambiguity_urls")
    urls.urlpatterns = [path("chat", chat)]  # type: ignore[attr-defined]
    if _django_live is not None:
        _django_live.disable()
    _django_live = override_settings(
        ROOT_URLCONF=urls,
        MIDDLEWARE=["x402gate.django.PaymentMiddleware"],
        X402GATE={"GATE": gate, "ROUTES": {"POST /chat": pricing()}},
    )
    _django_live.enable()
    return get_wsgi_application()


BUILDERS = {
    "starlette": ("starlette", _starlette),
    "fastapi": ("fastapi", _fastapi),
    "flask": ("flask", _flask),
    "wsgi": ("waitress", _wsgi),
    "django": ("django", _django),
}


@contextlib.contextmanager
def _serve(name: str, app: Any) -> Iterator[str]:
    if name in ASGI:
        from x402gate.demo import serve_in_thread

        with serve_in_thread(app) as url:
            yield url
    else:
        from x402gate.testing.servers import serve_wsgi

        with serve_wsgi(app) as url:
            yield url


@pytest.fixture(params=ADAPTERS)
def served(
    request: pytest.FixtureRequest, local_facilitator: Any, test_token: Any, pay_to: str
) -> Iterator[tuple[str, str, collections.Counter[str]]]:
    name = request.param
    module, build = BUILDERS[name]
    pytest.importorskip(module)
    gate = PaymentGate(
        pay_to=pay_to, assets=test_token.asset, facilitator=local_facilitator, store="memory://"
    )
    runs: collections.Counter[str] = collections.Counter()
    with _serve(name, build(gate, runs)) as url:
        yield name, url, runs
    gate.close()


def _price(response: httpx.Response) -> int:
    assert response.status_code == 402, response.text
    required = decode_payment_required(response.headers["payment-required"])
    return int(required.accepts[0].amount)


ATTACKS: dict[str, tuple[dict[str, Any], int, str]] = {
    "repeated query parameter": (
        {"params": [("tier", "mini"), ("tier", "opus")]},
        400,
        "ambiguous_request",
    ),
    "repeated JSON key": (
        {"content": b'{"model": "mini", "model": "opus"}', "headers": JSON},
        400,
        "invalid_body",
    ),
    "UTF-16 JSON with a BOM": (
        {"content": '{"model": "opus"}'.encode("utf-16"), "headers": JSON},
        400,
        "invalid_body",
    ),
    "UTF-32 JSON without a BOM": (
        {"content": '{"model": "opus"}'.encode("utf-32-le"), "headers": JSON},
        400,
        "invalid_body",
    ),
    "UTF-8 JSON with a BOM": (
        {"content": b'\xef\xbb\xbf{"model": "opus"}', "headers": JSON},
        400,
        "invalid_body",
    ),
    "gzip body": (
        {
            "content": gzip.compress(b'{"model": "opus"}'),
            "headers": {**JSON, "content-encoding": "gzip"},
        },
        415,
        "unsupported_body",
    ),
    "urlencoded form": (
        {
            "content": b"model=opus",
            "headers": {"content-type": "application/x-www-form-urlencoded"},
        },
        415,
        "unsupported_body",
    ),
    "multipart form": ({"files": {"model": (None, "opus")}}, 415, "unsupported_body"),
    "deep nesting": ({"content": b"[" * 200_000, "headers": JSON}, 400, "invalid_body"),
    "number of 5000 digits": (
        {"content": b'{"model": "opus", "n": ' + b"7" * 5000 + b"}", "headers": JSON},
        400,
        "invalid_body",
    ),
}


async def test_each_ambiguous_request_is_refused_before_payment(served: Any) -> None:
    name, url, runs = served
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        # What an honest client pays: the readings agree.
        assert _price(await client.post("/chat", params={"tier": "mini"})) == CHEAP
        assert _price(await client.post("/chat", params={"tier": "opus"})) == DEAR
        assert _price(await client.post("/chat", json={"model": "opus"})) == DEAR
        for attack, (request, status, code) in ATTACKS.items():
            response = await client.post("/chat", **request)
            assert (response.status_code, response.json().get("error")) == (status, code), (
                attack,
                response.text,
            )
            assert "payment-required" not in response.headers, attack
        if name in ASGI:
            # A repeated header: Starlette hands the handler the first. WSGI servers join them
            # into one value before the adapter and the handler see them, the same for both.
            response = await client.post("/chat", headers=[("x-tier", "mini"), ("x-tier", "opus")])
            assert (response.status_code, response.json()["error"]) == (400, "ambiguous_request")
    assert runs["chat"] == 0


async def test_a_payment_for_the_cheap_reading_buys_nothing_else(
    served: Any, payer: Any, test_token: Any, pay_to: str
) -> None:
    _, url, runs = served
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        challenge = await client.post("/chat", params={"tier": "mini"})
        requirements = decode_payment_required(challenge.headers["payment-required"])
        payment = encode_payment(sign_exact_payment(payer, requirements.accepts[0]))
        attack = await client.post(
            "/chat",
            params=[("tier", "mini"), ("tier", "opus")],
            headers={"PAYMENT-SIGNATURE": payment},
        )
        assert (attack.status_code, attack.json()["error"]) == (400, "ambiguous_request")
        assert runs["chat"] == 0
        assert test_token.balance_of(pay_to) == 0
        # The same payment still buys what it was signed for: the refusal burnt nothing.
        honest = await client.post(
            "/chat", params={"tier": "mini"}, headers={"PAYMENT-SIGNATURE": payment}
        )
    assert honest.status_code == 200, honest.text
    assert honest.json() == {"tier": "mini", "header": None, "model": None}
    assert runs["chat"] == 1
    assert test_token.balance_of(pay_to) == CHEAP
