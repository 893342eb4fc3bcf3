"""ASGI and FastAPI apps: a misspelt option or setting stops the app where it is declared,
naming the key with a suggestion (Flask, Django, WSGI and the gateway file have their own)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from x402gate import PaymentGate
from x402gate._web.types import Receive, Scope, Send
from x402gate.errors import ConfigurationError
from x402gate.settings import SettingsError, gate_from_settings

PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
SETTINGS: dict[str, Any] = {
    "pay_to": PAY_TO,
    "network": "base",
    "facilitator_url": "http://127.0.0.1:9",  # never reached: start-up checks are off
    "store_url": "memory://",
    "startup_checks": "off",
}


@pytest.fixture
def gate() -> Iterator[PaymentGate]:
    gate = gate_from_settings(SETTINGS)
    yield gate
    gate.close()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("not called")


def test_gate_settings_name_every_unknown_key_with_a_suggestion() -> None:
    with pytest.raises(SettingsError) as refused:
        gate_from_settings({**SETTINGS, "netwrok": "base", "store": "memory://"})
    text = str(refused.value)
    assert "netwrok is not a setting (did you mean 'network'?)" in text
    assert "store is not a setting (did you mean 'store_url'?)" in text
    assert [p.key for p in refused.value.problems] == ["netwrok", "store"]


def test_gate_settings_refuse_what_belongs_to_a_middleware() -> None:
    with pytest.raises(SettingsError, match="routes is not a gate setting"):
        gate_from_settings({**SETTINGS, "routes": {"GET /paid": "$0.01"}})


def test_asgi_middleware_names_a_misspelt_option(gate: PaymentGate) -> None:
    from x402gate.asgi import PaymentMiddleware

    options: dict[str, Any] = {"discovry": True}
    with pytest.raises(ConfigurationError, match=r"'discovry' \(did you mean 'discovery'\?\)"):
        PaymentMiddleware(app, gate=gate, routes={"GET /paid": "$0.01"}, **options)


def test_asgi_middleware_names_a_misspelt_route_option(gate: PaymentGate) -> None:
    from x402gate.asgi import PaymentMiddleware

    routes = {"GET /paid": {"price": "$0.01", "payment_identifer": "off"}}
    expected = r"'payment_identifer'.*did you mean 'payment_identifier'"
    with pytest.raises(ConfigurationError, match=expected):
        PaymentMiddleware(app, gate=gate, routes=routes)


def test_fastapi_install_names_a_misspelt_option(gate: PaymentGate) -> None:
    pytest.importorskip("fastapi")
    from fastapi import FastAPI

    from x402gate.fastapi import install

    options: dict[str, Any] = {"max_body": 1024}
    with pytest.raises(ConfigurationError, match=r"'max_body' \(did you mean 'max_body_bytes'\?\)"):
        install(FastAPI(), gate, **options)


def test_fastapi_dependency_names_a_misspelt_route_option(gate: PaymentGate) -> None:
    pytest.importorskip("fastapi")
    from x402gate.fastapi import require_payment

    options: dict[str, Any] = {"mime": "text/csv"}
    with pytest.raises(ConfigurationError, match=r"'mime'.*did you mean 'mime_type'"):
        require_payment("$0.01", gate=gate, **options)


def test_fastapi_and_flask_decorators_take_the_price_first_or_by_name(gate: PaymentGate) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("flask")
    from x402gate.fastapi import require_payment as fastapi_require_payment
    from x402gate.flask import require_payment as flask_require_payment

    by_name = fastapi_require_payment(price="$0.01", gate=gate, settlement="before")
    first = fastapi_require_payment("$0.01", gate=gate, settlement="before")
    assert by_name.route_for(gate).settlement == first.route_for(gate).settlement == "before"
    assert callable(flask_require_payment(price="$0.01", description="A report"))
