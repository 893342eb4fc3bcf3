"""``settings.X402GATE`` read through the shared settings model: keys named, suggestions given."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test.utils import override_settings
from django.urls import path

from .conftest import django_server

PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
VALID: dict[str, Any] = {
    "PAY_TO": PAY_TO,
    "NETWORK": "base-sepolia",
    "FACILITATOR_URL": "https://x402.org/facilitator",
    "STORE_URL": "memory://",
    "STARTUP_CHECKS": "off",
    "ROUTES": {"GET /paid": "$0.01"},
}


def _view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("content")


URLS = [path("paid", _view)]


def test_an_unknown_settings_key_fails_at_start_up_with_a_suggestion() -> None:
    with (
        pytest.raises(ImproperlyConfigured) as caught,
        django_server(URLS, {**VALID, "VERIFY_WITH_FACILITATR": False}),
    ):
        pass
    assert "VERIFY_WITH_FACILITATR is not a setting (did you mean 'VERIFY_WITH_FACILITATOR'?)" in (
        str(caught.value)
    )


def test_a_misspelt_route_option_fails_at_start_up_with_a_suggestion() -> None:
    routes = {"GET /paid": {"price": "$0.01", "setlement": "before"}}
    with (
        pytest.raises(ImproperlyConfigured) as caught,
        django_server(URLS, {**VALID, "ROUTES": routes}),
    ):
        pass
    message = str(caught.value)
    assert "ROUTES" in message
    assert "unknown route option 'setlement' (did you mean 'settlement'?)" in message


def test_every_problem_is_one_system_check_error_with_its_key() -> None:
    broken = {**VALID, "PAYTO": PAY_TO, "PAY_TO": None, "MAX_TIMEOUT_SECONDS": 5}
    with override_settings(X402GATE=broken, ROOT_URLCONF=None, DEBUG=True):
        found = {(m.id, m.msg) for m in run_checks() if m.id and m.id.startswith("x402gate.")}
    assert found == {
        ("x402gate.E001", "X402GATE: PAY_TO is required: the address that receives payments"),
        ("x402gate.E005", "X402GATE: PAYTO is not a setting (did you mean 'PAY_TO'?)"),
        ("x402gate.E005", "X402GATE: MAX_TIMEOUT_SECONDS must be from 10 to 86400 seconds, not 5"),
    }
