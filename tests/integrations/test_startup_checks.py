"""Start-up checks: a misspelt route key or a dependency that is not there stops the start.

Served for real: uvicorn with the ASGI lifespan on (Starlette, FastAPI), waitress (Flask, WSGI).
The facilitator is a real HTTP service on loopback (:class:`FacilitatorServer`) answering
``/supported`` without any network, a loopback port nobody listens on, or the local chain.
Each test checks what a client would get: no server at all, or the 503 of a server started
anyway, and that the handler never runs for free.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import requests
import uvicorn
from eth_account import Account
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Host, Mount, Route, Router
from x402.schemas import SupportedKind, SupportedResponse

from x402gate import ConfigurationError, LocalFacilitator, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.facilitators import HTTPFacilitator
from x402gate.gate import STARTUP_CHECKS_ENV
from x402gate.testing.facilitator_server import FacilitatorServer
from x402gate.testing.servers import serve_wsgi
from x402gate.wsgi import PaymentMiddleware as WSGIPaymentMiddleware

NETWORK = "eip155:84532"  # base-sepolia
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
HINT = f"{STARTUP_CHECKS_ENV}=warn"


class Supports:
    """A facilitator backend that supports the exact scheme on ``networks`` (no chain)."""

    def __init__(self, *networks: str) -> None:
        self.networks = networks

    async def supported(self) -> SupportedResponse:
        kinds = [SupportedKind(x402_version=2, scheme="exact", network=n) for n in self.networks]
        return SupportedResponse(kinds=kinds, extensions=[], signers={})

    async def verify(self, *args: Any) -> Any:
        raise AssertionError("start-up checks never verify")

    settle = verify


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STARTUP_CHECKS_ENV, raising=False)


@pytest.fixture
def facilitator() -> Iterator[FacilitatorServer]:
    with FacilitatorServer(Supports(NETWORK)) as server:
        yield server


@pytest.fixture
def dead_url() -> str:
    """A loopback URL nobody listens on (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_gate(url: str, tmp_path: Path, **options: Any) -> PaymentGate:
    store = options.pop("store", f"sqlite:///{tmp_path / 'replay.db'}")
    return PaymentGate(
        pay_to=PAY_TO,
        network="base-sepolia",
        facilitator=HTTPFacilitator(url, timeout=5),
        store=store,
        **options,
    )


class Served:
    """What a client finds where the server was asked to start."""

    def __init__(self, url: str, server: uvicorn.Server) -> None:
        self.url = url
        self.server = server
        self.exit_code: int | None = None

    def run(self) -> None:
        try:
            self.server.run()
        except SystemExit as exc:  # uvicorn ends a failed start as a process would
            self.exit_code = int(exc.code or 0)


@contextlib.contextmanager
def serve_with_lifespan(app: Any) -> Iterator[Served]:
    """uvicorn with the lifespan on, in a thread, on a free loopback port. Yields once the
    server started, or once it gave up starting (``served.server.started`` is then False)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="error")
    server = uvicorn.Server(config)
    served = Served(f"http://127.0.0.1:{port}", server)
    thread = threading.Thread(target=served.run, name="startup-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive():
        assert time.monotonic() < deadline, "uvicorn neither started nor gave up"
        time.sleep(0.01)
    try:
        yield served
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def refused(url: str) -> bool:
    try:
        requests.get(url, timeout=5)
    except requests.ConnectionError:
        return True
    return False


def startup_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    records = caplog.records
    return [r.getMessage() for r in records if r.name == "x402gate" and r.levelname == "ERROR"]


# -- route keys that match nothing -------------------------------------------------------------


class Weather:
    """A Starlette app whose paid views count their runs."""

    def __init__(self) -> None:
        self.runs = 0

    async def weather(self, request: Request) -> JSONResponse:
        self.runs += 1
        return JSONResponse({"forecast": "sunny"})

    def app(self) -> Starlette:
        async def item(request: Request) -> JSONResponse:
            return JSONResponse({"id": request.path_params["item_id"]})

        static = Starlette(routes=[Route("/{name}", item)])
        api = Router(routes=[Route("/v2/items/{item_id:int}", item)])
        return Starlette(
            routes=[
                Route("/weather", self.weather),
                Route("/items/{item_id:int}", item, methods=["GET", "POST"]),
                Mount("/files", app=static),
                Host("api.example.com", app=api),
            ]
        )


def test_starlette_route_key_typo_stops_the_start(
    facilitator: FacilitatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shop = Weather()
    gate = make_gate(facilitator.url, tmp_path)
    app = PaymentMiddleware(shop.app(), gate=gate, routes={"GET /wether": "$0.01"})
    with serve_with_lifespan(app) as served:
        assert not served.server.started
        assert served.exit_code == 3  # uvicorn's "start-up failed"
        # The attacker's view: there is no server to get /weather from, paid or not.
        assert refused(f"{served.url}/weather")
    (message,) = startup_errors(caplog)
    assert "route 'GET /wether' matches no route of the Starlette app" in message
    assert "did you mean '/weather'?" in message
    assert shop.runs == 0
    assert facilitator.calls["supported"] == 0  # the key is checked first


def test_starlette_keys_that_match_start_and_charge(
    facilitator: FacilitatorServer, tmp_path: Path
) -> None:
    shop = Weather()
    gate = make_gate(facilitator.url, tmp_path)
    routes = {
        "GET /weather": "$0.01",
        "POST /items/{id}": "$0.02",  # a parameter, however the app names it
        "/items/7": "$0.03",  # a concrete path the app routes
        "GET /files/*": "$0.04",  # under a mount
        "GET /v2/items/3": "$0.05",  # under a host
    }
    app = PaymentMiddleware(shop.app(), gate=gate, routes=routes)
    with serve_with_lifespan(app) as served:
        assert served.server.started
        response = requests.get(f"{served.url}/weather", timeout=10)
    assert response.status_code == 402
    assert "payment-required" in response.headers
    assert shop.runs == 0
    assert facilitator.calls["supported"] == 1  # checked once, at the start


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("DELETE /weather", "matches no route"),  # the app answers GET only there
        ("GET /items/{id}/detail", "matches no route"),
        ("GET /*", None),  # a catch-all matches everything: no error
    ],
)
def test_starlette_methods_and_depth_count(
    facilitator: FacilitatorServer, tmp_path: Path, key: str, why: str | None
) -> None:
    app = PaymentMiddleware(
        Weather().app(), gate=make_gate(facilitator.url, tmp_path), routes={key: "$0.01"}
    )
    with serve_with_lifespan(app) as served:
        assert served.server.started is (why is None)


def test_fastapi_app_behind_the_middleware_is_checked_too(
    facilitator: FacilitatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("fastapi")
    import fastapi

    api = fastapi.FastAPI()
    runs = []

    @api.get("/v1/reports/{report_id}")
    def report(report_id: int) -> dict[str, int]:
        runs.append(report_id)
        return {"id": report_id}

    gate = make_gate(facilitator.url, tmp_path)
    # Registered through Starlette's own middleware list: the routes are found under it.
    api.add_middleware(PaymentMiddleware, gate=gate, routes={"GET /v1/report/{id}": "$0.01"})
    with serve_with_lifespan(api) as served:
        assert not served.server.started
        assert refused(f"{served.url}/v1/reports/1")
    assert any(
        "route 'GET /v1/report/{id}' matches no route" in m
        and "did you mean '/v1/reports/{report_id}'?" in m
        for m in startup_errors(caplog)
    )
    assert runs == []


def test_flask_route_key_typo_is_an_error_when_the_middleware_is_built(
    facilitator: FacilitatorServer, tmp_path: Path
) -> None:
    pytest.importorskip("flask")
    import flask

    app = flask.Flask(__name__)

    @app.get("/reports/<int:report_id>")
    def report(report_id: int) -> dict[str, int]:
        return {"id": report_id}

    gate = make_gate(facilitator.url, tmp_path)
    with pytest.raises(ConfigurationError) as raised:
        app.wsgi_app = WSGIPaymentMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, gate=gate, routes={"GET /report/{id}": "$0.01"}
        )
    message = str(raised.value)
    assert "route 'GET /report/{id}' matches no route of the Flask app" in message
    assert "did you mean '/reports/{report_id}'?" in message
    assert facilitator.calls["supported"] == 0

    app.wsgi_app = WSGIPaymentMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, gate=gate, routes={"GET /reports/{id}": "$0.01"}
    )
    with serve_wsgi(app) as url:
        response = requests.get(f"{url}/reports/3", timeout=10)
    assert response.status_code == 402
    assert facilitator.calls["supported"] == 1


# -- start-up truths -----------------------------------------------------------------------------


def test_unreachable_facilitator_stops_an_asgi_start_with_one_message(
    dead_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shop = Weather()
    app = PaymentMiddleware(
        shop.app(), gate=make_gate(dead_url, tmp_path), routes={"GET /weather": "$0.01"}
    )
    with serve_with_lifespan(app) as served:
        assert not served.server.started
    (message,) = startup_errors(caplog)
    assert message.startswith("x402gate start-up check failed: the facilitator HTTPFacilitator")
    assert "cannot be reached" in message
    assert HINT in message


def test_facilitator_without_the_network_stops_the_start(tmp_path: Path) -> None:
    with FacilitatorServer(Supports("eip155:8453")) as other:  # Base main net only
        gate = make_gate(other.url, tmp_path)
        with pytest.raises(ConfigurationError) as raised:
            WSGIPaymentMiddleware(lambda e, s: [], gate=gate, routes={"/paid": "$0.01"})
    assert "does not support the exact scheme on eip155:84532" in str(raised.value)
    assert HINT in str(raised.value)


def test_store_that_cannot_be_created_stops_the_start(
    facilitator: FacilitatorServer, tmp_path: Path
) -> None:
    pytest.importorskip("flask")
    import flask

    from x402gate.flask import X402Gate

    missing = tmp_path / "no-such-dir" / "replay.db"
    gate = make_gate(facilitator.url, tmp_path, store=f"sqlite:///{missing}")
    with pytest.raises(ConfigurationError) as raised:
        X402Gate(flask.Flask(__name__), gate=gate)
    message = str(raised.value)
    assert f"the directory {missing.parent} does not exist" in message
    assert HINT in message
    assert not missing.parent.exists()


def test_flask_config_can_start_anyway(dead_url: str, tmp_path: Path) -> None:
    pytest.importorskip("flask")
    import flask

    from x402gate.flask import X402Gate, require_payment

    settings = {
        "X402GATE_PAY_TO": PAY_TO,
        "X402GATE_NETWORK": "base-sepolia",
        "X402GATE_FACILITATOR_URL": dead_url,
        "X402GATE_STORE_URL": f"sqlite:///{tmp_path / 'replay.db'}",
    }
    app = flask.Flask(__name__)
    app.config.update(settings)
    with pytest.raises(ConfigurationError, match="cannot be reached"):
        X402Gate(app)

    app = flask.Flask(__name__)
    app.config.update(settings, X402GATE_STARTUP_CHECKS="warn")
    X402Gate(app)
    runs = []

    @app.get("/paid")
    @require_payment("$0.01")
    def paid() -> str:
        runs.append(1)
        return "PAID-CONTENT"

    with serve_wsgi(app) as url:
        response = requests.get(f"{url}/paid", timeout=30)
    # Started anyway, and still fail closed: the facilitator is still down.
    assert response.status_code == 503
    assert "PAID-CONTENT" not in response.text
    assert runs == []

    app = flask.Flask(__name__)
    app.config.update(settings, X402GATE_STARTUP_CHECKS="sometimes")
    with pytest.raises(ConfigurationError, match="X402GATE_STARTUP_CHECKS"):
        X402Gate(app)


def test_fastapi_install_checks_at_the_lifespan_start(
    dead_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("fastapi")
    import fastapi

    from x402gate.fastapi import install

    api = fastapi.FastAPI()
    install(api, make_gate(dead_url, tmp_path))
    with serve_with_lifespan(api) as served:
        assert not served.server.started
    assert any("cannot be reached" in m and HINT in m for m in startup_errors(caplog))


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_start_anyway_serves_free_routes_and_refuses_paid_ones(
    dead_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    if how == "environment":
        monkeypatch.setenv(STARTUP_CHECKS_ENV, "warn")
        gate = make_gate(dead_url, tmp_path)
    else:
        gate = make_gate(dead_url, tmp_path, startup_checks="warn")
    shop = Weather()
    app = PaymentMiddleware(shop.app(), gate=gate, routes={"GET /weather": "$0.01"})
    with caplog.at_level(logging.WARNING, logger="x402gate"), serve_with_lifespan(app) as served:
        assert served.server.started
        paid = requests.get(f"{served.url}/weather", timeout=30)
        free = requests.get(f"{served.url}/items/5", timeout=30)
    assert paid.status_code == 503
    assert paid.json()["error"] == "facilitator_unavailable"
    assert free.status_code == 200 and free.json() == {"id": 5}
    assert shop.runs == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("start-up check failed, starting anyway" in m for m in warned)


def test_checks_off_skip_the_facilitator(dead_url: str, tmp_path: Path) -> None:
    gate = make_gate(dead_url, tmp_path, startup_checks="off")
    WSGIPaymentMiddleware(lambda e, s: [], gate=gate, routes={"/paid": "$0.01"})
    with pytest.raises(ConfigurationError, match="startup_checks must be one of"):
        make_gate(dead_url, tmp_path, startup_checks="maybe")


def test_local_facilitator_on_an_unreachable_rpc_stops_the_start(
    dead_url: str, tmp_path: Path
) -> None:
    facilitator = LocalFacilitator(dead_url, Account.create().key.hex(), networks=NETWORK)
    try:
        gate = PaymentGate(
            pay_to=PAY_TO, network="base-sepolia", facilitator=facilitator, store="memory://"
        )
        with pytest.raises(ConfigurationError) as raised:
            WSGIPaymentMiddleware(lambda e, s: [], gate=gate, routes={"/paid": "$0.01"})
    finally:
        facilitator.close()
    assert "cannot be reached: chain unreachable during supported" in str(raised.value)


def test_local_facilitator_on_another_chain_stops_the_start(
    chain: Any, facilitator_account: Any
) -> None:
    # The node is the local chain (31337); the file says Base.
    facilitator = LocalFacilitator(
        chain.rpc_url, facilitator_account.key.hex(), networks="eip155:8453"
    )
    try:
        gate = PaymentGate(
            pay_to=PAY_TO, network="base", facilitator=facilitator, store="memory://"
        )
        with pytest.raises(ConfigurationError) as raised:
            WSGIPaymentMiddleware(lambda e, s: [], gate=gate, routes={"/paid": "$0.01"})
    finally:
        facilitator.close()
    assert "serves chain eip155:31337, not eip155:8453" in str(raised.value)


def test_local_facilitator_on_its_chain_starts(
    local_facilitator: LocalFacilitator, test_token: Any
) -> None:
    gate = PaymentGate(
        pay_to=PAY_TO, assets=test_token.asset, facilitator=local_facilitator, store="memory://"
    )
    WSGIPaymentMiddleware(lambda e, s: [], gate=gate, routes={"/paid": "$0.01"})
    assert gate._started


def test_without_a_lifespan_a_key_typo_still_serves_nothing(
    facilitator: FacilitatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from x402gate.testing.fake_llm import serve_asgi

    shop = Weather()
    gate = make_gate(facilitator.url, tmp_path)
    app = PaymentMiddleware(shop.app(), gate=gate, routes={"GET /wether": "$0.01"})
    with serve_asgi(app) as url:  # lifespan="off": the check comes with the first request
        paid = requests.get(f"{url}/weather", timeout=10)
        other = requests.get(f"{url}/items/3", timeout=10)
    assert paid.status_code == other.status_code == 503
    assert paid.json()["error"] == "payment_unavailable"
    assert shop.runs == 0
    (message,) = startup_errors(caplog)
    assert "route 'GET /wether' matches no route of the Starlette app" in message
