"""The dashboard over HTTP on every integration's real server (uvicorn for ASGI and FastAPI,
waitress for WSGI and Flask): refused without the token, the seeded journal's figures with the
bearer token, the browser's cookie sign-in, a cross-site sign-in refused, never charged."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from x402gate import PaymentGate
from x402gate.dashboard import Dashboard
from x402gate.demo import serve_in_thread
from x402gate.facilitators import HTTPFacilitator
from x402gate.settings import SettingsError
from x402gate.settings.building import gate_from_flask_config
from x402gate.testing.servers import serve_wsgi

from ._dashboard import PATH, TOKEN, check_served_dashboard, seed_journal

PAY_TO = "0x" + "11" * 20


def make_gate(tmp_path: Path) -> PaymentGate:
    return PaymentGate(
        pay_to=PAY_TO,
        network="base-sepolia",
        facilitator=HTTPFacilitator("http://127.0.0.1:9"),
        store=f"sqlite:///{tmp_path}/journal.db",
        startup_checks="off",
        dashboard=Dashboard(TOKEN),
    )


@contextlib.contextmanager
def asgi_app(gate: PaymentGate) -> Iterator[str]:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def paid(request: Any) -> PlainTextResponse:
        return PlainTextResponse("paid")

    app = Starlette(routes=[Route("/paid", paid)])
    with serve_in_thread(PaymentMiddleware(app, gate=gate, routes={"GET /paid": 0.01})) as url:
        yield url


@contextlib.contextmanager
def fastapi_app(gate: PaymentGate) -> Iterator[str]:
    from fastapi import Depends, FastAPI

    from x402gate.fastapi import install, require_payment

    app = FastAPI()
    install(app, gate)

    @app.get("/paid", dependencies=[Depends(require_payment("$0.01"))])
    def paid() -> str:
        return "paid"

    with serve_in_thread(app) as url:
        yield url


@contextlib.contextmanager
def wsgi_app(gate: PaymentGate) -> Iterator[str]:
    from x402gate.wsgi import PaymentMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"paid"]

    paywall = PaymentMiddleware(app, gate=gate, routes={"GET /paid": 0.01})
    with serve_wsgi(paywall) as url:
        yield url


@contextlib.contextmanager
def flask_app(gate: PaymentGate) -> Iterator[str]:
    from flask import Flask

    from x402gate.flask import X402Gate, require_payment

    app = Flask(__name__)
    X402Gate(app, gate=gate)

    @app.get("/paid")
    @require_payment(0.01)
    def paid() -> str:
        return "paid"

    with serve_wsgi(app) as url:
        yield url


SERVERS: dict[str, Callable[[PaymentGate], contextlib.AbstractContextManager[str]]] = {
    "asgi": asgi_app,
    "fastapi": fastapi_app,
    "wsgi": wsgi_app,
    "flask": flask_app,
}


@pytest.mark.parametrize("integration", list(SERVERS))
def test_the_dashboard_on_a_real_server(integration: str, tmp_path: Path) -> None:
    gate = make_gate(tmp_path)
    try:
        seed = seed_journal(gate.store)
        with SERVERS[integration](gate) as url:
            check_served_dashboard(url, seed)
            # Never charged: its requests left no payment, refusal or failure in the journal.
            kept = sorted(row.id for row in gate.store.journal_rows())
            assert kept == sorted(row.id for row in seed.rows)
    finally:
        gate.close()


def test_no_dashboard_unless_configured(tmp_path: Path) -> None:
    gate = PaymentGate(
        pay_to=PAY_TO,
        network="base-sepolia",
        facilitator=HTTPFacilitator("http://127.0.0.1:9"),
        store=f"sqlite:///{tmp_path}/journal.db",
        startup_checks="off",
    )
    try:
        with wsgi_app(gate) as url:
            answer = requests.get(url + PATH, headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status_code == 200 and answer.text == "paid"  # the app's own answer
    finally:
        gate.close()


def test_settings_configure_the_dashboard(tmp_path: Path) -> None:
    base = {
        "X402GATE_PAY_TO": PAY_TO,
        "X402GATE_NETWORK": "base-sepolia",
        "X402GATE_FACILITATOR_URL": "https://x402.org/facilitator",
        "X402GATE_STORE_URL": "memory://",
    }
    gate = gate_from_flask_config(
        {**base, "X402GATE_DASHBOARD_TOKEN": TOKEN, "X402GATE_DASHBOARD_PATH": "/ops"}
    )
    try:
        assert gate.dashboard is not None and gate.dashboard.path == "/ops"
        assert TOKEN not in repr(gate.dashboard)
    finally:
        gate.close()
    with pytest.raises(SettingsError, match="X402GATE_DASHBOARD_TOKEN must be a string of at"):
        gate_from_flask_config({**base, "X402GATE_DASHBOARD_TOKEN": "short"})
