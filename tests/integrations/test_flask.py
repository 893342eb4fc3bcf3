"""The Flask extension and ``require_payment`` on a real chain, served by waitress.

Checked as a Flask user would: the 402 an official client pays, the content and receipt after
paying, ``current_payment`` in the view, balances on chain, nothing charged when the view
fails, not one byte of a streamed body before settlement, and configuration errors that say
which setting is wrong.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

flask = pytest.importorskip("flask")

import requests  # noqa: E402
from flask import Blueprint, Flask, Response, g, request, stream_with_context  # noqa: E402
from x402.http import decode_payment_response_header  # noqa: E402
from x402.schemas import PaymentRequirements, SettleResponse  # noqa: E402

from x402gate import ConfigurationError, LocalFacilitator, PaymentGate  # noqa: E402
from x402gate._runner import run_sync  # noqa: E402
from x402gate.facilitators import HTTPFacilitator  # noqa: E402
from x402gate.flask import X402Gate, current_payment, gate_from_config, require_payment  # noqa: E402
from x402gate.request import RequestInfo  # noqa: E402
from x402gate.testing.clients import paying_requests_session  # noqa: E402
from x402gate.testing.facilitator_server import FacilitatorServer  # noqa: E402
from x402gate.testing.payments import (  # noqa: E402
    decode_payment_required,
    encode_payment,
    sign_exact_payment,
)
from x402gate.testing.servers import serve_wsgi  # noqa: E402

PRICE = 10_000  # $0.01 in USDC atomic units
CHUNKS = ["chunk-0\n", "chunk-1\n", "chunk-2\n"]


class Shop:
    """A Flask API that counts view runs and notes the payee's balance when a stream starts."""

    def __init__(self, token: Any, pay_to: str) -> None:
        self.token, self.pay_to = token, pay_to
        self.calls: Counter[str] = Counter()
        self.balance_at_first_chunk: dict[str, int] = {}
        self.seen: dict[str, Any] = {}

    def stream(self, name: str) -> Response:
        def chunks() -> Iterator[str]:
            self.balance_at_first_chunk[name] = self.token.balance_of(self.pay_to)
            yield from CHUNKS

        return Response(stream_with_context(chunks()), mimetype="text/plain")

    def app(self, gate: PaymentGate | None, **options: Any) -> Flask:
        app = Flask(__name__)
        if gate is not None:
            X402Gate(app, gate=gate, **options)
        shop = self

        @app.get("/paid")
        @require_payment("$0.01", description="Paid content")
        def paid() -> dict[str, Any]:
            shop.calls["paid"] += 1
            shop.seen["g"] = g.payment
            return {"content": "PAID-CONTENT", "payer": current_payment.payer}

        @app.get("/boom")
        @require_payment("$0.01")
        def boom() -> str:
            shop.calls["boom"] += 1
            raise RuntimeError("boom")

        @app.get("/error")
        @require_payment("$0.01")
        def error() -> tuple[dict[str, str], int]:
            shop.calls["error"] += 1
            return {"error": "down"}, 503

        @app.get("/stream")
        @require_payment("$0.01", settlement="before")
        def stream() -> Response:
            shop.calls["stream"] += 1
            return shop.stream("stream")

        @app.get("/stream-after")
        @require_payment("$0.01")
        def stream_after() -> Response:
            shop.calls["stream-after"] += 1
            return shop.stream("stream-after")

        @app.get("/twice")
        @require_payment("$0.01")
        @require_payment("$0.05")
        def twice() -> str:
            shop.calls["twice"] += 1
            return "TWICE-CONTENT"

        @app.get("/async")
        @require_payment("$0.01")
        async def async_view() -> dict[str, Any]:
            await asyncio.sleep(0)
            shop.calls["async"] += 1
            return {"content": "ASYNC-CONTENT", "payer": current_payment.payer}

        def price_by_count(info: RequestInfo) -> Decimal:
            return Decimal((info.json() or {}).get("n", 1)) / 100

        @app.post("/echo")
        @require_payment(price_by_count)
        def echo() -> Any:
            shop.calls["echo"] += 1
            return request.get_json()

        items = Blueprint("items", __name__, url_prefix="/items")

        @items.route("/<int:item_id>", methods=["GET", "POST"])
        @require_payment("$0.02", description="One item")
        def item(item_id: int) -> dict[str, int]:
            return {"item": item_id}

        app.register_blueprint(items)

        @app.get("/free")
        def free() -> str:
            shop.calls["free"] += 1
            return "free"

        return app


class RefusingSettlement:
    """A facilitator that verifies for real and then refuses to settle."""

    def __init__(self, inner: LocalFacilitator) -> None:
        self.inner = inner
        self.settle_calls = 0

    async def verify(self, payload: Any, requirements: PaymentRequirements) -> Any:
        return await self.inner.verify(payload, requirements)

    async def supported(self) -> Any:
        return await self.inner.supported()

    async def settle(self, payload: Any, requirements: PaymentRequirements) -> SettleResponse:
        self.settle_calls += 1
        return SettleResponse(
            success=False, error_reason="insufficient_funds", transaction="",
            network=requirements.network,
        )


@pytest.fixture
def facilitator(chain: Any, facilitator_account: Any) -> LocalFacilitator:
    return LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)


@pytest.fixture
def make_gate(
    test_token: Any, pay_to: str, tmp_path: Any
) -> Iterator[Callable[[Any], PaymentGate]]:
    gates: list[PaymentGate] = []

    def make(facilitator: Any) -> PaymentGate:
        gate = PaymentGate(
            pay_to=pay_to, assets=test_token.asset, facilitator=facilitator,
            store=f"sqlite:///{tmp_path / f'replay-{len(gates)}.db'}",
        )
        gates.append(gate)
        return gate

    yield make
    for gate in gates:
        run_sync(gate.aclose())


@pytest.fixture
def gate(make_gate: Callable[[Any], PaymentGate], facilitator: LocalFacilitator) -> PaymentGate:
    return make_gate(facilitator)


@pytest.fixture
def shop(test_token: Any, pay_to: str) -> Shop:
    return Shop(test_token, pay_to)


def requirements_of(response: requests.Response) -> PaymentRequirements:
    assert response.status_code == 402, response.text
    return decode_payment_required(response.headers["payment-required"]).accepts[0]


def signed_header(payer: Any, url: str) -> dict[str, str]:
    requirements = requirements_of(requests.get(url, timeout=30))
    return {"PAYMENT-SIGNATURE": encode_payment(sign_exact_payment(payer, requirements))}


# -- paying through a real server ---------------------------------------------------------------


@pytest.mark.chain
def test_unpaid_request_gets_a_402_with_terms(
    gate: PaymentGate, shop: Shop, test_token: Any, pay_to: str
) -> None:
    with serve_wsgi(shop.app(gate)) as base_url:
        response = requests.get(f"{base_url}/paid", timeout=30)
        page = requests.get(f"{base_url}/paid", headers={"Accept": "text/html"}, timeout=30)
        free = requests.get(f"{base_url}/free", timeout=30)
    assert response.status_code == 402
    assert response.headers["cache-control"] == "no-store"
    required = decode_payment_required(response.headers["payment-required"])
    assert required.resource is not None
    assert required.resource.url == f"{base_url}/paid"
    assert required.resource.description == "Paid content"
    (terms,) = required.accepts
    assert (terms.amount, terms.asset, terms.pay_to) == (str(PRICE), test_token.address, pay_to)
    assert response.json()["error"] == "payment_required"
    assert page.status_code == 402 and "<h1>Payment required</h1>" in page.text
    assert free.text == "free"
    assert shop.calls == Counter({"free": 1})


@pytest.mark.chain
def test_official_client_pays_and_the_view_sees_the_payment(
    gate: PaymentGate, shop: Shop, chain: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    payer_before = test_token.balance_of(payer.address)
    with serve_wsgi(shop.app(gate)) as base_url:
        response = paying_requests_session(payer, asset=test_token).get(f"{base_url}/paid")
    assert response.status_code == 200, response.text
    assert response.json() == {"content": "PAID-CONTENT", "payer": payer.address}
    assert shop.seen["g"].payer == payer.address and shop.seen["g"].amount == PRICE
    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert receipt.success and receipt.payer == payer.address
    assert chain.w3.eth.get_transaction_receipt(receipt.transaction)["status"] == 1
    assert "private" in response.headers["cache-control"]
    assert "PAYMENT-RESPONSE" in response.headers["access-control-expose-headers"]
    assert test_token.balance_of(payer.address) == payer_before - PRICE
    assert test_token.balance_of(pay_to) == PRICE
    assert shop.calls == Counter({"paid": 1})


@pytest.mark.chain
def test_replayed_payment_is_refused(
    gate: PaymentGate, shop: Shop, chain: Any, test_token: Any, payer: Any, pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    with serve_wsgi(shop.app(gate)) as base_url:
        header = signed_header(payer, f"{base_url}/paid")
        first = requests.get(f"{base_url}/paid", headers=header, timeout=30)
        replay = requests.get(f"{base_url}/paid", headers=header, timeout=30)
    assert first.status_code == 200
    assert replay.status_code == 402
    assert replay.json()["error"] == "invalid_exact_evm_nonce_already_used"
    assert "PAID-CONTENT" not in replay.text
    assert chain.tx_count(facilitator.address) == 1
    assert shop.calls == Counter({"paid": 1})


@pytest.mark.chain
@pytest.mark.parametrize(("path", "status"), [("/boom", 500), ("/error", 503)])
def test_failing_view_charges_nothing_and_releases_the_payment(
    path: str, status: int, gate: PaymentGate, shop: Shop, chain: Any, test_token: Any,
    payer: Any, pay_to: str, facilitator: LocalFacilitator,
) -> None:
    with serve_wsgi(shop.app(gate)) as base_url:
        header = signed_header(payer, base_url + path)
        failed = requests.get(base_url + path, headers=header, timeout=30)
        again = requests.get(base_url + path, headers=header, timeout=30)
    assert failed.status_code == again.status_code == status
    assert "payment-response" not in failed.headers
    assert shop.calls == Counter({path.strip("/"): 2})
    assert chain.tx_count(facilitator.address) == 0
    assert test_token.balance_of(pay_to) == 0


@pytest.mark.chain
@pytest.mark.parametrize("path", ["/stream", "/stream-after"])
def test_streamed_body_is_generated_only_after_settlement(
    path: str, gate: PaymentGate, shop: Shop, test_token: Any, payer: Any, pay_to: str
) -> None:
    with serve_wsgi(shop.app(gate)) as base_url:
        response = paying_requests_session(payer, asset=test_token).get(
            base_url + path, stream=True
        )
        body = b"".join(response.iter_content(chunk_size=None))
    assert response.status_code == 200
    assert body.decode() == "".join(CHUNKS)
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert shop.balance_at_first_chunk[path.strip("/")] == PRICE


@pytest.mark.chain
@pytest.mark.parametrize("path", ["/paid", "/stream-after"])
def test_failed_settlement_answers_402_without_a_byte_of_content(
    path: str, make_gate: Any, facilitator: LocalFacilitator, shop: Shop, test_token: Any,
    payer: Any, pay_to: str,
) -> None:
    refusing = RefusingSettlement(facilitator)
    with serve_wsgi(shop.app(make_gate(refusing))) as base_url:
        header = signed_header(payer, base_url + path)
        response = requests.get(base_url + path, headers=header, timeout=30)
    assert response.status_code == 402
    assert response.json()["error"] == "insufficient_funds"
    assert b"PAID-CONTENT" not in response.content and b"chunk-" not in response.content
    assert refusing.settle_calls == 1
    assert shop.balance_at_first_chunk == {}  # the stream was closed before it ever ran
    assert test_token.balance_of(pay_to) == 0


@pytest.mark.chain
def test_facilitator_error_at_settlement_is_a_502_without_content(
    make_gate: Any, facilitator: LocalFacilitator, shop: Shop, test_token: Any, payer: Any,
    pay_to: str,
) -> None:
    with FacilitatorServer(facilitator) as service:
        app = shop.app(make_gate(HTTPFacilitator(service.url, timeout=5.0)))
        with serve_wsgi(app) as base_url:
            header = signed_header(payer, f"{base_url}/paid")
            service.faults["settle"] = "500"
            response = requests.get(f"{base_url}/paid", headers=header, timeout=30)
    assert response.status_code == 502
    assert response.json()["error"] == "facilitator_error"
    assert b"PAID-CONTENT" not in response.content
    assert test_token.balance_of(pay_to) == 0


@pytest.mark.chain
def test_a_view_decorated_twice_is_charged_once_at_the_outer_price(
    gate: PaymentGate, shop: Shop, chain: Any, test_token: Any, payer: Any, pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    with serve_wsgi(shop.app(gate)) as base_url:
        challenge = requests.get(f"{base_url}/twice", timeout=30)
        response = paying_requests_session(payer, asset=test_token).get(f"{base_url}/twice")
    assert requirements_of(challenge).amount == str(PRICE)
    assert (response.status_code, response.text) == (200, "TWICE-CONTENT")
    assert chain.tx_count(facilitator.address) == 1
    assert test_token.balance_of(pay_to) == PRICE
    assert shop.calls == Counter({"twice": 1})


@pytest.mark.chain
def test_async_view_is_paid_like_a_sync_one(
    gate: PaymentGate, shop: Shop, test_token: Any, payer: Any, pay_to: str
) -> None:
    with serve_wsgi(shop.app(gate)) as base_url:
        response = paying_requests_session(payer, asset=test_token).get(f"{base_url}/async")
    assert response.status_code == 200, response.text
    assert response.json() == {"content": "ASYNC-CONTENT", "payer": payer.address}
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert test_token.balance_of(pay_to) == PRICE


@pytest.mark.chain
def test_price_reads_the_body_and_the_view_reads_it_too(
    gate: PaymentGate, shop: Shop, test_token: Any, payer: Any, pay_to: str
) -> None:
    body: dict[str, Any] = {"n": 3, "text": "é" * 50}
    with serve_wsgi(shop.app(gate, max_body_bytes=1000)) as base_url:
        challenge = requests.post(f"{base_url}/echo", json=body, timeout=30)
        paid = paying_requests_session(payer, asset=test_token).post(f"{base_url}/echo", json=body)
        too_big = requests.post(f"{base_url}/echo", json={"n": 1, "text": "x" * 1000}, timeout=30)
    assert requirements_of(challenge).amount == str(3 * PRICE)
    assert paid.status_code == 200 and paid.json() == body
    assert (too_big.status_code, too_big.json()["error"]) == (413, "request_too_large")
    assert test_token.balance_of(pay_to) == 3 * PRICE
    assert shop.calls == Counter({"echo": 1})


@pytest.mark.chain
def test_discovery_lists_every_paid_view_with_its_rule(
    gate: PaymentGate, shop: Shop, test_token: Any, pay_to: str
) -> None:
    with serve_wsgi(shop.app(gate, discovery=True)) as base_url:
        response = requests.get(f"{base_url}/.well-known/x402", timeout=30)
    assert response.status_code == 200
    items = {
        (i["input"]["method"], i["input"]["routeTemplate"]): i for i in response.json()["items"]
    }
    assert set(items) == {
        ("GET", "/paid"), ("GET", "/boom"), ("GET", "/error"), ("GET", "/stream"),
        ("GET", "/stream-after"), ("GET", "/twice"), ("GET", "/async"), ("POST", "/echo"),
        ("GET", "/items/{item_id}"), ("POST", "/items/{item_id}"),
    }
    item = items[("GET", "/items/{item_id}")]
    assert item["resource"] == {"url": f"{base_url}/items/{{item_id}}", "description": "One item"}
    assert item["accepts"][0]["amount"] == str(2 * PRICE)
    assert item["accepts"][0]["payTo"] == pay_to
    echo = items[("POST", "/echo")]  # priced from the body: described, not quoted
    assert echo["price"] == {"type": "dynamic"} and "amount" not in echo["accepts"][0]


def test_discovery_is_off_unless_asked(shop: Shop) -> None:
    gate = gate_from_config(config(X402GATE_STORE_URL="memory://"))
    assert shop.app(gate).test_client().get("/.well-known/x402").status_code == 404


@pytest.mark.chain
def test_an_explicit_gate_needs_no_extension(
    gate: PaymentGate, test_token: Any, payer: Any, pay_to: str
) -> None:
    app = Flask(__name__)

    @app.get("/report")
    @require_payment("$0.02", gate=gate)
    def report() -> str:
        return f"REPORT for {current_payment.payer}"

    with serve_wsgi(app) as base_url:
        response = paying_requests_session(payer, asset=test_token).get(f"{base_url}/report")
    assert (response.status_code, response.text) == (200, f"REPORT for {payer.address}")
    assert test_token.balance_of(pay_to) == 2 * PRICE


# -- wiring: in-process, nothing to pay --------------------------------------------------------


def test_without_the_extension_a_paid_view_fails_closed(shop: Shop) -> None:
    app = shop.app(None)
    app.testing = False
    response = app.test_client().get("/paid")
    assert response.status_code == 500
    assert shop.calls == Counter()


def test_current_payment_outside_a_paid_view_is_an_error() -> None:
    app = Flask(__name__)
    with app.test_request_context("/"), pytest.raises(RuntimeError, match="require_payment"):
        _ = current_payment.payer


def test_the_decorated_view_keeps_its_signature_and_name() -> None:
    def view(item_id: int, *, verbose: bool = False) -> str:
        return str(item_id)

    wrapped = require_payment("$0.01")(view)
    assert wrapped.__name__ == "view"
    assert inspect.signature(wrapped) == inspect.signature(view)


def test_bad_decorator_arguments_fail_at_import_time() -> None:
    with pytest.raises(ConfigurationError, match="settlement"):
        require_payment("$0.01", settlement="later")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        require_payment("-1")


def test_import_without_flask_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flask", None)  # what an absent package looks like
    for name in ("x402gate.flask", "x402gate.integrations.flask"):
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"pip install 'x402gate\[flask\]'"):
        importlib.import_module("x402gate.flask")


# -- configuration from app.config -------------------------------------------------------------

PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"


def config(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "X402GATE_PAY_TO": PAY_TO,
        "X402GATE_NETWORK": "base-sepolia",
        "X402GATE_FACILITATOR_URL": "https://x402.org/facilitator",
        "X402GATE_STORE_URL": "memory://",
        # The tests have no network: x402.org is never reached, so the app starts without it.
        "X402GATE_STARTUP_CHECKS": "off",
    }
    settings.update(overrides)
    return {k: v for k, v in settings.items() if v is not None}


def test_gate_is_built_from_app_config() -> None:
    app = Flask(__name__)
    app.config.update(config(X402GATE_MAX_TIMEOUT_SECONDS="120"))
    extension = X402Gate(app)
    with app.app_context():
        gate = extension.gate
    assert app.extensions["x402gate"].gate is gate
    assert [a.network for a in gate.assets] == ["eip155:84532"]
    assert gate.pay_to == {"eip155:84532": PAY_TO}
    assert gate.max_timeout_seconds == 120
    assert gate.limit_in_flight is True
    assert isinstance(gate.facilitator, HTTPFacilitator)
    assert gate.facilitator.urls == ["https://x402.org/facilitator"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"X402GATE_PAY_TO": None}, "X402GATE_PAY_TO"),
        ({"X402GATE_PAY_TO": "0x123"}, "X402GATE_PAY_TO"),
        ({"X402GATE_PAY_TO": "0x" + "0" * 40}, "X402GATE_PAY_TO"),
        ({"X402GATE_PAY_TO": {"base": PAY_TO}}, "X402GATE_PAY_TO"),
        ({"X402GATE_NETWORK": None}, "X402GATE_NETWORK"),
        ({"X402GATE_NETWORK": "dogecoin"}, "X402GATE_NETWORK"),
        ({"X402GATE_ASSETS": ["USDC"]}, "X402GATE_ASSETS"),
        ({"X402GATE_FACILITATOR_URL": None}, "X402GATE_FACILITATOR_URL"),
        ({"X402GATE_FACILITATOR_URL": "ftp://facilitator"}, "X402GATE_FACILITATOR_URL"),
        ({"X402GATE_STORE_URL": "mongodb://db"}, "X402GATE_STORE_URL"),
        ({"X402GATE_MAX_TIMEOUT_SECONDS": "5m"}, "X402GATE_MAX_TIMEOUT_SECONDS"),
        ({"X402GATE_MAX_TIMEOUT_SECONDS": 5}, "X402GATE_MAX_TIMEOUT_SECONDS"),
        ({"X402GATE_LIMIT_IN_FLIGHT": "no"}, "X402GATE_LIMIT_IN_FLIGHT"),
        ({"X402GATE_RPC_URL": "ws://node"}, "X402GATE_RPC_URL"),
    ],
)
def test_missing_or_invalid_settings_name_the_key(overrides: dict[str, Any], key: str) -> None:
    app = Flask(__name__)
    app.config.update(config(**overrides))
    with pytest.raises(ConfigurationError, match=key):
        X402Gate(app)
    assert "x402gate" not in app.extensions


@pytest.mark.chain
def test_a_gate_built_from_config_takes_real_payments(
    facilitator: LocalFacilitator, shop: Shop, test_token: Any, payer: Any, pay_to: str,
    tmp_path: Any,
) -> None:
    with FacilitatorServer(facilitator) as service:
        settings = config(
            X402GATE_PAY_TO=pay_to.lower(),
            X402GATE_NETWORK=None,
            X402GATE_ASSETS=[test_token.asset],
            X402GATE_FACILITATOR_URL=service.url,
            X402GATE_STORE_URL=f"sqlite:///{tmp_path / 'flask.db'}",
        )
        app = shop.app(None)
        app.config.update(settings)
        X402Gate(app)
        try:
            with serve_wsgi(app) as base_url:
                response = paying_requests_session(payer, asset=test_token).get(
                    f"{base_url}/paid"
                )
        finally:
            run_sync(app.extensions["x402gate"].gate.aclose())
    assert response.status_code == 200, response.text
    assert test_token.balance_of(pay_to) == PRICE
    assert service.calls["settle"] == 1


# -- the example -------------------------------------------------------------------------------


@pytest.mark.chain
@pytest.mark.slow
def test_the_example_serves_and_takes_a_payment(local_chain: Any) -> None:
    check = Path(__file__).resolve().parents[2] / "examples" / "flask" / "check.py"
    result = subprocess.run(
        [sys.executable, str(check)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("paid /weather: 200")


def test_an_unknown_settings_key_fails_at_start_up_with_a_suggestion() -> None:
    app = Flask(__name__)
    app.config.update(config(X402GATE_PAYTO=PAY_TO, X402GATE_PAY_TO=None))
    with pytest.raises(ConfigurationError) as caught:
        X402Gate(app)
    message = str(caught.value)
    assert "X402GATE_PAYTO is not a setting (did you mean 'X402GATE_PAY_TO'?)" in message
    assert "X402GATE_PAY_TO is required" in message  # every problem at once
    assert "x402gate" not in app.extensions


def test_a_misspelt_route_option_in_settings_fails_at_start_up_with_a_suggestion() -> None:
    app = Flask(__name__)
    routes = {"GET /report": {"price": "$0.01", "setlement": "before"}}
    app.config.update(config(X402GATE_ROUTES=routes))
    expected = r"X402GATE_ROUTES.*'setlement' \(did you mean 'settlement'\?\)"
    with pytest.raises(ConfigurationError, match=expected):
        X402Gate(app)
