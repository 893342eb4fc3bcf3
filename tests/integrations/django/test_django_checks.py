"""System checks of ``settings.X402GATE``: each id, as ``manage.py check`` reports it."""

from __future__ import annotations

import subprocess
import sys
import types
from typing import Any

import pytest
import requests
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test.utils import override_settings
from django.urls import path

from x402gate import PaymentGate

from .conftest import django_server

PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
VALID: dict[str, Any] = {
    "PAY_TO": PAY_TO,
    "NETWORK": "base-sepolia",
    "FACILITATOR_URL": "https://x402.org/facilitator",
    "ROUTES": {"GET /weather/": "$0.01", "POST view:reports-detail": {"price": "$0.05"}},
}


class Unused:
    """A facilitator that is never called: checks must not touch the network."""

    async def verify(self, *args: Any) -> Any:
        raise AssertionError("checks called the facilitator")

    settle = supported = verify


def _view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    return HttpResponse("content")


# The URLconf VALID's ROUTES name (E009 checks keys against it), whatever another test left.
URLCONF = types.ModuleType("checks_urls")
URLCONF.urlpatterns = [  # type: ignore[attr-defined]
    path("weather/", _view),
    path("reports/<int:pk>", _view, name="reports-detail"),
    path("ok", _view),
]


def ids(x402gate: Any = VALID, **overrides: Any) -> list[str]:
    overrides.setdefault("ROOT_URLCONF", URLCONF)
    with override_settings(X402GATE=x402gate, **overrides):
        return sorted(m.id for m in run_checks() if m.id and m.id.startswith("x402gate."))


def test_a_valid_configuration_passes() -> None:
    assert ids() == []
    assert ids({**VALID, "STORE_URL": "redis://localhost:6379/0", "DISCOVERY": True}) == []


@pytest.mark.parametrize(
    "change",
    [
        {"PAY_TO": None},
        {"PAY_TO": "0x1234"},
        {"PAY_TO": "0x" + "0" * 40},
        {"PAY_TO": {"base-sepolia": "not an address"}},
        {"PAY_TO": {"base": PAY_TO}},
    ],
)
def test_e001_pay_to(change: dict[str, Any]) -> None:
    assert ids({**VALID, **change}) == ["x402gate.E001"]


@pytest.mark.parametrize(
    "change",
    [{"NETWORK": None}, {"NETWORK": "solana"}, {"NETWORK": "eip155:999999"}, {"ASSETS": ["USDC"]}],
)
def test_e002_network(change: dict[str, Any]) -> None:
    settings = {**VALID, **change}
    if "ASSETS" in change:
        del settings["NETWORK"]
    assert ids(settings) == ["x402gate.E002"]


@pytest.mark.parametrize(
    "routes",
    [
        {"GET /weather/": "$-1"},
        {"GET /weather/": "cheap"},
        {"GET weather": "$0.01"},
        {"view:reports": {"price": "$0.01", "colour": "red"}},
        {"view:reports": {"settlement": "later", "price": 1}},
    ],
)
def test_e003_routes(routes: dict[str, Any]) -> None:
    assert ids({**VALID, "ROUTES": {"GET /ok": "$0.01", **routes}}) == ["x402gate.E003"]


@pytest.mark.parametrize(
    "change",
    [
        {"FACILITATOR_URL": None},
        {"FACILITATOR_URL": "ftp://f.example"},
        {"FACILITATOR_URL": "https://f.example", "FACILITATOR_TIMEOUT": 0},
        {"FACILITATOR": "no.such.module.facilitator"},
    ],
)
def test_e004_facilitator(change: dict[str, Any]) -> None:
    assert ids({**VALID, **change}) == ["x402gate.E004"]


@pytest.mark.parametrize(
    "x402gate",
    [
        None,
        ["PAY_TO"],
        {**VALID, "PAYTO": PAY_TO},
        {**VALID, "MAX_TIMEOUT_SECONDS": 5},
        {**VALID, "DISCOVERY": "yes"},
        {**VALID, "LIMIT_IN_FLIGHT": "yes"},
    ],
)
def test_e005_setting_shape_and_options(x402gate: Any) -> None:
    assert "x402gate.E005" in ids(x402gate)


def test_e006_store_url() -> None:
    assert ids({**VALID, "STORE_URL": "mongodb://user:secret@db/x"}) == ["x402gate.E006"]
    with override_settings(X402GATE={**VALID, "STORE_URL": "mongodb://user:secret@db/x"}):
        (message,) = [m for m in run_checks() if m.id == "x402gate.E006"]
    assert "secret" not in message.msg


def test_e007_gate() -> None:
    gate = PaymentGate(pay_to=PAY_TO, network="base", facilitator=Unused(), store="memory://")
    assert ids({"GATE": gate, "ROUTES": VALID["ROUTES"]}, DEBUG=True) == []
    assert ids({"GATE": "no.such.module.gate"}) == ["x402gate.E007"]
    assert ids({"GATE": 42}) == ["x402gate.E007"]
    assert ids({"GATE": gate, "PAY_TO": PAY_TO}) == ["x402gate.E007"]


def test_e008_middleware_missing() -> None:
    assert ids(MIDDLEWARE=[]) == ["x402gate.E008"]
    assert ids(MIDDLEWARE=["x402gate.django.middleware.PaymentMiddleware"]) == []


def test_w001_memory_store_outside_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = {**VALID, "STORE_URL": "memory://"}
    assert ids(memory, DEBUG=False) == ["x402gate.W001"]
    assert ids(memory, DEBUG=True) == []
    monkeypatch.setenv("WEB_CONCURRENCY", "4")  # several workers, even while debugging
    assert ids(memory, DEBUG=True) == ["x402gate.W001"]
    gate = PaymentGate(pay_to=PAY_TO, network="base", facilitator=Unused(), store="memory://")
    assert ids({"GATE": gate}, DEBUG=False) == ["x402gate.W001"]


def test_invalid_settings_stop_the_start() -> None:
    def free(request: HttpRequest) -> HttpResponse:
        return HttpResponse("content")

    with (
        pytest.raises(ImproperlyConfigured, match="PAY_TO is required"),
        django_server([path("free", free)], {**VALID, "PAY_TO": None}),
    ):
        pass


def test_settings_broken_after_the_start_fail_closed_at_request_time() -> None:
    def free(request: HttpRequest) -> HttpResponse:
        return HttpResponse("content")

    valid = {**VALID, "ROUTES": {}, "STARTUP_CHECKS": "off"}  # no network for x402.org here
    with (
        django_server([path("free", free)], valid) as site,
        override_settings(X402GATE={**valid, "PAY_TO": None}),
    ):
        response = requests.get(f"{site}/free", timeout=30)
    assert response.status_code == 500
    assert "content" not in response.text


def test_without_django_the_import_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['django'] = None\n"
        "try:\n    import x402gate.django\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'x402gate[django]'" in result.stdout


def test_metered_routes_need_a_public_origin_and_it_must_be_an_origin() -> None:
    from x402gate.metering import PerToken, TokenPrice

    metered = {**VALID, "ROUTES": {"POST /ok": PerToken(TokenPrice(input="$1", output="$2"))}}
    assert ids(metered) == ["x402gate.E003"]
    assert ids({**metered, "PUBLIC_ORIGIN": "https://api.example.com"}) == []
    assert ids({**VALID, "PUBLIC_ORIGIN": "https://api.example.com/v1"}) == ["x402gate.E005"]
    assert ids({**VALID, "TRUSTED_PROXIES": ["proxy.internal"]}) == ["x402gate.E005"]
    assert ids({**VALID, "TRUSTED_PROXIES": ["10.0.0.0/8"]}) == []
