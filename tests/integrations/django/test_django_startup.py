"""Django: a ``ROUTES`` key that matches nothing, a priced view the middleware cannot see, and
a dependency that is not there are found before the first request.

``get_wsgi_application()`` builds the middleware, which checks (as gunicorn, uWSGI, waitress or
``runserver`` start a project); ``manage.py check`` reports the same keys with an id.
"""

from __future__ import annotations

import socket
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test.utils import override_settings
from django.urls import include, path

from x402gate.django import require_payment
from x402gate.gate import STARTUP_CHECKS_ENV
from x402gate.metering import PerSecond
from x402gate.testing.facilitator_server import FacilitatorServer

from .conftest import django_server

PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
HINT = f"{STARTUP_CHECKS_ENV}=warn"


class Supports:
    """A facilitator backend that supports the exact scheme on Base Sepolia (no chain)."""

    async def supported(self) -> Any:
        from x402.schemas import SupportedKind, SupportedResponse

        kind = SupportedKind(x402_version=2, scheme="exact", network="eip155:84532")
        return SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, *args: Any) -> Any:
        raise AssertionError("start-up checks never verify")

    settle = verify


class Site:
    """URL patterns whose views count their runs."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    def view(self, name: str) -> Any:
        def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            self.runs.append(name)
            return HttpResponse(f"{name.upper()}-CONTENT")

        view.__name__ = name
        return view

    def urls(self) -> list[Any]:
        @require_payment("$0.01")
        def priced(request: HttpRequest) -> HttpResponse:
            self.runs.append("priced")
            return HttpResponse("PRICED-CONTENT")

        reports = ([path("<int:pk>/", self.view("report"), name="detail")], "reports")
        return [
            path("weather/", self.view("weather"), name="weather"),
            path("reports/", include(reports)),
            path("priced/", priced, name="priced"),
            path("free/", self.view("free")),
        ]


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STARTUP_CHECKS_ENV, raising=False)


@pytest.fixture
def facilitator() -> Iterator[FacilitatorServer]:
    with FacilitatorServer(Supports()) as server:
        yield server


@pytest.fixture
def settings_for(facilitator: FacilitatorServer, tmp_path: Path) -> Any:
    def make(routes: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "PAY_TO": PAY_TO,
            "NETWORK": "base-sepolia",
            "FACILITATOR_URL": facilitator.url,
            "STORE_URL": f"sqlite:///{tmp_path / 'replay.db'}",
            "ROUTES": routes,
            **extra,
        }

    return make


def urlconf(patterns: list[Any]) -> types.ModuleType:
    module = types.ModuleType("startup_urls")
    module.urlpatterns = patterns  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(
    ("key", "found"),
    [
        (
            "GET /wether/",
            "route 'GET /wether/' matches no route of the URLconf (did you mean '/weather/'?)",
        ),
        (
            "GET view:wether",
            "route 'GET view:wether' names no URL pattern of the URLconf "
            "(did you mean 'view:weather'?)",
        ),
        ("GET view:report:detail", "(did you mean 'view:reports:detail'?)"),
        ("GET /reports/{pk}/edit", "route 'GET /reports/{pk}/edit' matches no route"),
    ],
)
def test_a_routes_key_that_matches_nothing_stops_the_start(
    settings_for: Any, facilitator: FacilitatorServer, key: str, found: str
) -> None:
    site = Site()
    with (
        pytest.raises(ImproperlyConfigured) as raised,
        django_server(site.urls(), settings_for({key: "$0.01"})),
    ):
        pass
    assert found in str(raised.value)
    assert site.runs == []
    assert facilitator.calls["supported"] == 0  # the keys are checked first


def test_keys_that_match_start_and_charge(
    settings_for: Any, facilitator: FacilitatorServer
) -> None:
    site = Site()
    routes = {
        "GET /weather": "$0.01",  # the trailing slash is optional either way
        "GET /reports/{id}/": "$0.02",  # a parameter, whatever the pattern calls it
        "/reports/7/": "$0.03",  # a concrete path the URLconf resolves
        "GET view:reports:detail": "$0.04",
        f"GET view:{__name__}.free": "$0.05",  # unnamed: Django names it by its dotted path
    }
    with django_server(site.urls(), settings_for(routes)) as url:
        weather = requests.get(f"{url}/weather/", timeout=10)
        free = requests.get(f"{url}/free/", timeout=10)
    assert weather.status_code == 402 and "payment-required" in weather.headers
    assert free.status_code == 402  # its dotted path is a view name Django resolves
    assert site.runs == []
    assert facilitator.calls["supported"] == 1


def test_check_reports_e009_with_the_closest_key(settings_for: Any) -> None:
    conf = urlconf(Site().urls())
    routes = {"GET /wether/": "$0.01", "GET view:priced": "$0.02", "POST view:reprts:detail": 1}
    with override_settings(ROOT_URLCONF=conf, X402GATE=settings_for(routes)):
        messages = [m for m in run_checks() if m.id and m.id.startswith("x402gate.")]
    assert [m.id for m in messages] == ["x402gate.E009"]
    text = messages[0].msg
    assert "'GET /wether/' matches no route of the URLconf (did you mean '/weather/'?)" in text
    assert "'POST view:reprts:detail' names no URL pattern" in text
    assert "did you mean 'view:reports:detail'?" in text
    assert "'GET view:priced'" not in text  # that one exists


def test_check_e010_cache_middleware_below_payment_middleware(settings_for: Any) -> None:
    conf = urlconf(Site().urls())
    payment = "x402gate.django.PaymentMiddleware"
    update = "django.middleware.cache.UpdateCacheMiddleware"
    fetch = "django.middleware.cache.FetchFromCacheMiddleware"
    with override_settings(ROOT_URLCONF=conf, X402GATE=settings_for({})):
        with override_settings(MIDDLEWARE=[payment, update]):
            below = [m.id for m in run_checks() if m.id == "x402gate.E010"]
        with override_settings(MIDDLEWARE=[update, payment, fetch]):  # as Django documents
            documented = [m.id for m in run_checks() if m.id == "x402gate.E010"]
    assert below == ["x402gate.E010"]
    assert documented == []


def test_check_e008_names_the_priced_views_left_without_middleware(settings_for: Any) -> None:
    conf = urlconf(Site().urls())
    with override_settings(ROOT_URLCONF=conf, X402GATE=settings_for({}), MIDDLEWARE=[]):
        (message,) = [m for m in run_checks() if m.id == "x402gate.E008"]
    assert "@require_payment views: /priced/" in message.msg


def test_check_e005_startup_checks_value(settings_for: Any) -> None:
    # Its own empty URLconf: the checks walk the URLconf's views, whatever another test left.
    with override_settings(
        ROOT_URLCONF=urlconf([]), X402GATE=settings_for({}, STARTUP_CHECKS="sometimes")
    ):
        ids = [m.id for m in run_checks() if m.id and m.id.startswith("x402gate.")]
    assert ids == ["x402gate.E005"]


def test_an_unreachable_facilitator_stops_the_start(settings_for: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    site = Site()
    settings = settings_for({"GET /weather/": "$0.01"}, FACILITATOR_URL=dead)
    with pytest.raises(ImproperlyConfigured) as raised, django_server(site.urls(), settings):
        pass
    message = str(raised.value)
    assert message.startswith("X402GATE: x402gate start-up check failed: the facilitator")
    assert "cannot be reached" in message and HINT in message

    # STARTUP_CHECKS: "warn" starts anyway, and fails closed while the facilitator is down.
    with django_server(site.urls(), {**settings, "STARTUP_CHECKS": "warn"}) as url:
        paid = requests.get(f"{url}/weather/", timeout=30)
        free = requests.get(f"{url}/free/", timeout=30)
    assert paid.status_code == 503 and "WEATHER-CONTENT" not in paid.text
    assert free.status_code == 200 and free.text == "FREE-CONTENT"
    assert site.runs == ["free"]


def test_a_store_that_cannot_be_created_stops_the_start(settings_for: Any, tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "replay.db"
    settings = settings_for({"GET /weather/": "$0.01"}, STORE_URL=f"sqlite:///{missing}")
    with pytest.raises(ImproperlyConfigured) as raised, django_server(Site().urls(), settings):
        pass
    assert f"the directory {missing.parent} does not exist" in str(raised.value)


# -- @require_payment views whose route the gate refuses ---------------------------------------

ORIGIN = "https://api.example.com"
NO_ORIGIN = "metered routes accept sign-in-with-x and session tokens: set the gate's public_origin"
TOO_LONG = "must exceed PerSecond max_seconds (3600) by at least 30 seconds"
REFUSED = [
    pytest.param(PerSecond("$0.001", max_seconds=2), {}, NO_ORIGIN, id="metered-no-origin"),
    pytest.param(
        PerSecond("$0.001", max_seconds=3600),
        {"PUBLIC_ORIGIN": ORIGIN},
        TOO_LONG,
        id="per-second-longer-than-ttl",
    ),
]


def metered_urls(price: Any, runs: list[str]) -> list[Any]:
    """A free view and a decorated view, ``stream``, priced ``price``."""

    @require_payment(price)
    def stream(request: HttpRequest) -> HttpResponse:
        runs.append("stream")
        return HttpResponse("PAID-CONTENT")

    def free(request: HttpRequest) -> HttpResponse:
        runs.append("free")
        return HttpResponse("FREE-CONTENT")

    return [path("stream/", stream, name="stream"), path("free/", free, name="free")]


@pytest.mark.parametrize(("price", "extra", "why"), REFUSED)
def test_a_decorated_view_the_gate_refuses_stops_the_start(
    settings_for: Any, facilitator: FacilitatorServer, price: Any, extra: Any, why: str
) -> None:
    runs: list[str] = []
    with (
        pytest.raises(ImproperlyConfigured) as raised,
        django_server(metered_urls(price, runs), settings_for({}, **extra)),
    ):
        pass
    message = str(raised.value)
    assert "@require_payment view 'stream' (GET /stream/)" in message
    assert why in message
    assert runs == []
    assert facilitator.calls["supported"] == 0  # the views are checked first


@pytest.mark.parametrize(("price", "extra", "why"), REFUSED)
def test_check_e011_names_the_decorated_view_the_gate_refuses(
    settings_for: Any, price: Any, extra: Any, why: str
) -> None:
    conf = urlconf(metered_urls(price, []))
    with override_settings(ROOT_URLCONF=conf, X402GATE=settings_for({}, **extra)):
        messages = [m for m in run_checks() if m.id and m.id.startswith("x402gate.")]
    assert [m.id for m in messages] == ["x402gate.E011"]
    assert "@require_payment view 'stream' (GET /stream/)" in messages[0].msg
    assert why in messages[0].msg


@pytest.mark.parametrize(
    "price", ["$0.01", PerSecond("$0.001", max_seconds=2)], ids=["exact", "metered"]
)
def test_a_decorated_view_the_gate_accepts_starts_and_charges(
    settings_for: Any, facilitator: FacilitatorServer, price: Any
) -> None:
    runs: list[str] = []
    settings = settings_for({}, PUBLIC_ORIGIN=ORIGIN)
    with override_settings(ROOT_URLCONF=urlconf(metered_urls(price, [])), X402GATE=settings):
        ids = [m.id for m in run_checks() if m.id and m.id.startswith("x402gate.")]
    with django_server(metered_urls(price, runs), settings) as url:
        paid = requests.get(f"{url}/stream/", timeout=30)
        free = requests.get(f"{url}/free/", timeout=30)
    assert paid.status_code == 402 and "payment-required" in paid.headers
    assert "PAID-CONTENT" not in paid.text
    assert free.status_code == 200 and free.text == "FREE-CONTENT"
    assert runs == ["free"]
    assert facilitator.calls["supported"] == 1
    assert ids == []


def test_a_refused_view_the_start_cannot_see_serves_nothing(
    settings_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from rest_framework.decorators import api_view

    runs: list[str] = []

    # Decorated below @api_view, the price is not visible on the URL pattern's view.
    @api_view(["GET"])
    @require_payment(PerSecond("$0.001", max_seconds=2))
    def hidden(request: Any) -> HttpResponse:
        runs.append("hidden")
        return HttpResponse("PAID-CONTENT")

    with django_server([path("hidden/", hidden)], settings_for({})) as url:
        answers = [requests.get(f"{url}/hidden/", timeout=30) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["error"] == "payment_unavailable"
        assert "PAID-CONTENT" not in answer.text
    assert runs == []
    logged = [r.getMessage() for r in caplog.records if r.name == "x402gate"]
    assert len([m for m in logged if "@require_payment view" in m]) == 1  # once
    assert any("hidden" in m and NO_ORIGIN in m for m in logged)
