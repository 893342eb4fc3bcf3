"""Logs, metrics and spans of a paid request, a refused one and a failed settlement, through a
real server of every integration (uvicorn for ASGI, FastAPI and Django's ASGI handler,
waitress for WSGI, Flask and Django) and the gateway, settled on the local chain."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from x402gate import PaymentGate
from x402gate._runner import run_sync

from ._observability import METRICS, Drain, Site, check_everything, make_gate, run_scenario

pytestmark = pytest.mark.chain

PAID = b'{"content": "PAID"}'


def serve_asgi(app: Any) -> Any:
    from x402gate.demo import serve_in_thread

    return serve_in_thread(app)


@contextmanager
def asgi_site(gate: PaymentGate, drain: Drain) -> Iterator[tuple[str, dict[str, str]]]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def paid(request: Request) -> Response:
        return Response(PAID, media_type="application/json")

    async def spend(request: Request) -> Response:
        await asyncio.to_thread(drain)
        return Response(PAID, media_type="application/json")

    app = PaymentMiddleware(
        Starlette(routes=[Route("/paid", paid), Route("/spend", spend)]),
        gate=gate,
        routes={"GET /paid": "$0.01", "GET /spend": "$0.01"},
    )
    with serve_asgi(app) as url:
        yield url, {"/paid": "GET /paid", "/spend": "GET /spend"}


@contextmanager
def fastapi_site(gate: PaymentGate, drain: Drain) -> Iterator[tuple[str, dict[str, str]]]:
    pytest.importorskip("fastapi")
    from fastapi import Depends, FastAPI

    from x402gate.fastapi import install, require_payment

    app = FastAPI()
    install(app, gate)

    @app.get("/paid", dependencies=[Depends(require_payment("$0.01"))])
    async def paid() -> dict[str, str]:
        return {"content": "PAID"}

    @app.get("/spend", dependencies=[Depends(require_payment("$0.01"))])
    async def spend() -> dict[str, str]:
        await asyncio.to_thread(drain)
        return {"content": "PAID"}

    with serve_asgi(app) as url:
        yield url, {"/paid": "/paid", "/spend": "/spend"}


@contextmanager
def wsgi_site(gate: PaymentGate, drain: Drain) -> Iterator[tuple[str, dict[str, str]]]:
    from x402gate.testing.servers import serve_wsgi
    from x402gate.wsgi import PaymentMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/spend":
            drain()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [PAID]

    paywall = PaymentMiddleware(app, gate=gate, routes={"GET /paid": "$0.01", "/spend": "$0.01"})
    with serve_wsgi(paywall) as url:
        yield url, {"/paid": "GET /paid", "/spend": "/spend"}


@contextmanager
def flask_site(gate: PaymentGate, drain: Drain) -> Iterator[tuple[str, dict[str, str]]]:
    pytest.importorskip("flask")
    from flask import Flask

    from x402gate.flask import X402Gate, require_payment
    from x402gate.testing.servers import serve_wsgi

    app = Flask(__name__)
    app.config["X402GATE_METRICS"] = METRICS  # the metrics come from the app's config
    X402Gate(app, gate=gate)

    @app.get("/paid")
    @require_payment("$0.01")
    def paid() -> dict[str, str]:
        return {"content": "PAID"}

    @app.get("/spend")
    @require_payment("$0.01")
    def spend() -> dict[str, str]:
        drain()
        return {"content": "PAID"}

    with serve_wsgi(app) as url:
        yield url, {"/paid": "/paid", "/spend": "/spend"}


SITES: dict[str, Site] = {
    "asgi": asgi_site,
    "fastapi": fastapi_site,
    "wsgi": wsgi_site,
    "flask": flask_site,
}


@pytest.mark.parametrize("site", sorted(SITES))
def test_an_operator_sees_each_outcome_in_logs_metrics_and_spans(
    site: str, chain: Any, test_token: Any, local_facilitator: Any, pay_to: str, tmp_path: Any
) -> None:
    gate = make_gate(local_facilitator, test_token, pay_to, tmp_path, metrics=site != "flask")
    try:
        outcome, logs = run_scenario(SITES[site], gate, chain, test_token)
    finally:
        run_sync(gate.aclose())
    check_everything(outcome, logs, test_token)


GATEWAY = """\
gateway:
  metrics:
    path: /metrics
    token: ${{METRICS_TOKEN}}
    port: 0
pay_to: "{pay_to}"
accepts:
  - network: "{network}"
    asset: "{token}"
    name: USD Coin
    version: "2"
facilitator:
  rpc_url: {rpc_url}
  private_key: ${{FACILITATOR_KEY}}
store: sqlite:///{tmp}/gateway.db
upstreams:
  api:
    url: {upstream}
routes:
  "GET /paid":
    upstream: api
    price: $0.01
  "GET /spend":
    upstream: api
    price: $0.01
"""


def test_the_gateway_shows_each_outcome_in_logs_metrics_and_spans(
    chain: Any, test_token: Any, facilitator_account: Any, pay_to: str, tmp_path: Any
) -> None:
    pytest.importorskip("yaml")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from x402gate.gateway import Gateway, parse_config
    from x402gate.testing.fake_llm import serve_asgi as serve_upstream

    from ._observability import TOKEN

    drains: list[Drain] = []

    async def paid(request: Request) -> Response:
        return Response(PAID, media_type="application/json")

    async def spend(request: Request) -> Response:
        await asyncio.to_thread(drains[0])
        return Response(PAID, media_type="application/json")

    upstream_app = Starlette(routes=[Route("/paid", paid), Route("/spend", spend)])

    @contextmanager
    def gateway_site(gate: PaymentGate, drain: Drain) -> Iterator[tuple[str, dict[str, str]]]:
        drains.append(drain)
        yield served["url"], {"/paid": "GET /paid", "/spend": "GET /spend"}

    served: dict[str, str] = {}
    with serve_upstream(upstream_app) as upstream:
        text = GATEWAY.format(
            pay_to=pay_to,
            network=chain.network,
            token=test_token.asset.address,
            rpc_url=chain.rpc_url,
            tmp=tmp_path,
            upstream=upstream,
        )
        env = {"FACILITATOR_KEY": facilitator_account.key.hex(), "METRICS_TOKEN": TOKEN}
        gateway = Gateway(parse_config(textwrap.dedent(text), source="gateway.yaml", env=env))
        assert gateway.metrics is not None
        with serve_upstream(gateway, lifespan="on") as url:
            served["url"] = url
            outcome, logs = run_scenario(gateway_site, gateway.gate, chain, test_token)
            (port,) = gateway.metrics.ports  # the same series on a port of their own
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            assert scraped.status_code == 200
            settled = 'x402gate_requests_total{outcome="settled",route="GET /paid"} 1.0'
            assert settled in scraped.text
        assert gateway.metrics.ports == []  # closed with the gateway
    check_everything(outcome, logs, test_token)
    # The token is a secret of the file: never in a log line either.
    assert not any(TOKEN in line for line in logs.texts)
