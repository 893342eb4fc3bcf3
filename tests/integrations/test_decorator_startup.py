"""Routes declared by a decorator or a dependency are built, and so checked, when the app starts.

Flask's ``@require_payment`` and FastAPI's ``Depends(require_payment(...))`` describe a route
that the gate builds; an option the gate refuses (a metered price without ``public_origin``, a
``PerSecond`` maximum longer than the credit TTL allows) stops the start naming the view, instead
of failing its first paying request. Served for real: uvicorn with the lifespan on (FastAPI),
waitress (Flask); the facilitator is a loopback HTTP service answering ``/supported``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import requests

from x402gate import ConfigurationError
from x402gate.gate import STARTUP_CHECKS_ENV
from x402gate.metering import PerSecond
from x402gate.testing.facilitator_server import FacilitatorServer
from x402gate.testing.servers import serve_wsgi

from .test_startup_checks import (
    NETWORK,
    Supports,
    make_gate,
    refused,
    serve_with_lifespan,
    startup_errors,
)

ORIGIN = "https://api.example.com"
NO_ORIGIN = "metered routes accept sign-in-with-x and session tokens: set the gate's public_origin"
TOO_LONG = "must exceed PerSecond max_seconds (3600) by at least 30 seconds"

# (price, gate options, what the start-up error says)
REFUSED = [
    pytest.param(PerSecond("$0.001", max_seconds=2), {}, NO_ORIGIN, id="metered-no-origin"),
    pytest.param(
        PerSecond("$0.001", max_seconds=3600),
        {"public_origin": ORIGIN},
        TOO_LONG,
        id="per-second-longer-than-ttl",
    ),
]


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STARTUP_CHECKS_ENV, raising=False)


@pytest.fixture
def facilitator() -> Iterator[FacilitatorServer]:
    with FacilitatorServer(Supports(NETWORK)) as server:
        yield server


# -- Flask ---------------------------------------------------------------------------------------


def flask_app(price: Any, gate: Any, runs: list[str], *, views_first: bool) -> Any:
    """A Flask app with a paid ``/stream`` view and the extension set up before or after it."""
    pytest.importorskip("flask")
    import flask

    from x402gate.flask import X402Gate, require_payment

    app = flask.Flask(__name__)
    if not views_first:
        X402Gate(app, gate=gate)

    @app.get("/stream")
    @require_payment(price)
    def stream() -> str:
        runs.append("stream")
        return "PAID-CONTENT"

    if views_first:
        X402Gate(app, gate=gate)
    return app


@pytest.mark.parametrize("views_first", [True, False], ids=["views-first", "extension-first"])
@pytest.mark.parametrize(("price", "options", "why"), REFUSED)
def test_flask_decorated_view_with_refused_options_stops_the_start(
    facilitator: FacilitatorServer,
    tmp_path: Path,
    views_first: bool,
    price: Any,
    options: dict[str, Any],
    why: str,
) -> None:
    runs: list[str] = []
    gate = make_gate(facilitator.url, tmp_path, **options)
    with pytest.raises(ConfigurationError) as raised:
        flask_app(price, gate, runs, views_first=views_first)
    assert "@require_payment view 'stream' (/stream)" in str(raised.value)
    assert why in str(raised.value)
    assert runs == []


@pytest.mark.parametrize("views_first", [True, False], ids=["views-first", "extension-first"])
@pytest.mark.parametrize(
    "price", ["$0.01", PerSecond("$0.001", max_seconds=2)], ids=["exact", "metered"]
)
def test_flask_decorated_view_that_is_valid_starts_and_charges(
    facilitator: FacilitatorServer, tmp_path: Path, views_first: bool, price: Any
) -> None:
    runs: list[str] = []
    gate = make_gate(facilitator.url, tmp_path, public_origin=ORIGIN)
    app = flask_app(price, gate, runs, views_first=views_first)
    with serve_wsgi(app) as url:
        response = requests.get(f"{url}/stream", timeout=30)
    assert response.status_code == 402
    assert "payment-required" in response.headers
    assert "PAID-CONTENT" not in response.text
    assert runs == []


def test_flask_blueprint_view_is_checked_when_registered(
    facilitator: FacilitatorServer, tmp_path: Path
) -> None:
    pytest.importorskip("flask")
    import flask

    from x402gate.flask import X402Gate, require_payment

    app = flask.Flask(__name__)
    X402Gate(app, gate=make_gate(facilitator.url, tmp_path))
    api = flask.Blueprint("api", __name__, url_prefix="/api")

    @api.get("/tokens")
    @require_payment(PerSecond("$0.001", max_seconds=2))
    def tokens() -> str:
        return "PAID-CONTENT"

    with pytest.raises(ConfigurationError, match=r"view 'api\.tokens' \(/api/tokens\)"):
        app.register_blueprint(api)


# -- FastAPI -------------------------------------------------------------------------------------


def fastapi_app(price: Any, gate: Any, runs: list[str]) -> Any:
    pytest.importorskip("fastapi")
    import fastapi

    from x402gate.fastapi import install, require_payment

    api = fastapi.FastAPI()
    install(api, gate)
    router = fastapi.APIRouter(prefix="/v1")

    @router.get("/stream", dependencies=[fastapi.Depends(require_payment(price))])
    def stream() -> dict[str, str]:
        runs.append("stream")
        return {"content": "PAID-CONTENT"}

    api.include_router(router)
    return api


@pytest.mark.parametrize(("price", "options", "why"), REFUSED)
def test_fastapi_dependency_with_refused_options_stops_the_start(
    facilitator: FacilitatorServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    price: Any,
    options: dict[str, Any],
    why: str,
) -> None:
    runs: list[str] = []
    app = fastapi_app(price, make_gate(facilitator.url, tmp_path, **options), runs)
    with serve_with_lifespan(app) as served:
        assert not served.server.started
        assert served.exit_code == 3  # uvicorn's "start-up failed"
        assert refused(f"{served.url}/v1/stream")
    assert any(
        "require_payment() on GET /v1/stream" in m and "stream" in m and why in m
        for m in startup_errors(caplog)
    ), startup_errors(caplog)
    assert runs == []
    assert facilitator.calls["supported"] == 0  # the routes are built first


@pytest.mark.parametrize(
    "price", ["$0.01", PerSecond("$0.001", max_seconds=2)], ids=["exact", "metered"]
)
def test_fastapi_dependency_that_is_valid_starts_and_charges(
    facilitator: FacilitatorServer, tmp_path: Path, price: Any
) -> None:
    runs: list[str] = []
    app = fastapi_app(price, make_gate(facilitator.url, tmp_path, public_origin=ORIGIN), runs)
    with serve_with_lifespan(app) as served:
        assert served.server.started
        response = requests.get(f"{served.url}/v1/stream", timeout=30)
    assert response.status_code == 402
    assert "payment-required" in response.headers
    assert "PAID-CONTENT" not in response.text
    assert runs == []
    assert facilitator.calls["supported"] == 1


def test_fastapi_without_a_lifespan_a_refused_route_serves_nothing(
    facilitator: FacilitatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from x402gate.testing.fake_llm import serve_asgi

    runs: list[str] = []
    app = fastapi_app(
        PerSecond("$0.001", max_seconds=2), make_gate(facilitator.url, tmp_path), runs
    )
    with serve_asgi(app) as url:  # lifespan off: the route is first built at a request
        answers = [requests.get(f"{url}/v1/stream", timeout=30) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["error"] == "payment_unavailable"
        assert "PAID-CONTENT" not in answer.text
    assert runs == []
    (message,) = startup_errors(caplog)  # logged once, not with every request
    assert "require_payment() on /v1/stream" in message and NO_ORIGIN in message
