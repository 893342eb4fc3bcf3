"""The WSGI middleware on a real chain, served by a real WSGI server (waitress).

What is checked is what an API owner and their clients would check: the 402 an official client
can pay, the content and receipt after paying, balances on chain, that nothing is charged when
the app fails, and that not one byte of content leaves before the payment is settled, whatever
way the app produces its answer (a list, a generator, a lazy ``start_response``, ``write()``).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from x402.http import decode_payment_response_header
from x402.schemas import PaymentRequirements, SettleResponse

from x402gate import LocalFacilitator, PaymentGate
from x402gate._runner import run_sync
from x402gate.facilitators import HTTPFacilitator
from x402gate.request import RequestInfo
from x402gate.testing.clients import paying_requests_session
from x402gate.testing.facilitator_server import FacilitatorServer
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment
from x402gate.testing.servers import serve_wsgi
from x402gate.wsgi import PaymentMiddleware

pytestmark = pytest.mark.chain

PRICE = 10_000  # $0.01 in USDC atomic units
CHUNKS = [b"chunk-0\n", b"chunk-1\n", b"chunk-2\n"]


class Tracked(list[bytes]):
    """A response body that records whether the server (or middleware) closed it."""

    closed = False

    def close(self) -> None:
        self.closed = True


class Shop:
    """A plain WSGI app; it counts handler runs and notes the payee's balance when content is
    first produced, so tests can tell whether settlement came before the content."""

    def __init__(self, token: Any, pay_to: str) -> None:
        self.token, self.pay_to = token, pay_to
        self.calls: Counter[str] = Counter()
        self.balance_at_content: dict[str, int] = {}
        self.bodies: list[Tracked] = []

    def _produced(self, name: str) -> None:
        self.balance_at_content.setdefault(name, self.token.balance_of(self.pay_to))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        name = environ["PATH_INFO"].strip("/")
        self.calls[name] += 1
        if name == "paid":
            payer = environ["x402gate.payment"].payer
            body = json.dumps({"content": "PAID-CONTENT", "payer": payer}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            tracked = Tracked([body])
            self.bodies.append(tracked)
            return tracked
        if name == "boom":
            raise RuntimeError("boom")
        if name == "error":
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error": "down"}']
        if name in ("stream", "stream-after"):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return self._chunks(name)
        if name == "lazy":
            return self._lazy(start_response)
        if name == "write":
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            self._produced(name)
            write(b"WRITTEN-CONTENT")
            return []
        if name == "echo":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"free"]

    def _chunks(self, name: str) -> Iterator[bytes]:
        self._produced(name)
        yield from CHUNKS

    def _lazy(self, start_response: Any) -> Iterator[bytes]:
        # start_response only once iterated: the status is unknown until content exists.
        self._produced("lazy")
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"LAZY-CONTENT"


def price_by_count(request: RequestInfo) -> Decimal:
    return Decimal((request.json() or {}).get("n", 1)) / 100


def paywall(gate: PaymentGate, app: Any, **kw: Any) -> PaymentMiddleware:
    return PaymentMiddleware(
        app,
        gate=gate,
        routes={
            "GET /paid": "$0.01",
            "GET /boom": "$0.01",
            "GET /error": "$0.01",
            "GET /stream": gate.route("$0.01", settlement="before"),
            "GET /stream-after": "$0.01",
            "GET /lazy": "$0.01",
            "GET /write": "$0.01",
            "POST /echo": price_by_count,
        },
        **kw,
    )


class RefusingSettlement:
    """A facilitator that verifies for real and then refuses to settle (an empty wallet, a
    revoked authorization, a chain reorg: anything that makes settlement fail)."""

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
            success=False,
            error_reason="insufficient_funds",
            transaction="",
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
            pay_to=pay_to,
            assets=test_token.asset,
            facilitator=facilitator,
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


def signed_header(payer: Any, base_url: str, path: str) -> dict[str, str]:
    requirements = requirements_of(requests.get(base_url + path, timeout=30))
    return {"PAYMENT-SIGNATURE": encode_payment(sign_exact_payment(payer, requirements))}


# -- the 402 and a paid call, through a real server ---------------------------------------------


def test_unpaid_request_gets_a_402_with_terms_and_free_routes_pass(
    gate: PaymentGate, shop: Shop, test_token: Any, pay_to: str
) -> None:
    with serve_wsgi(paywall(gate, shop)) as base_url:
        response = requests.get(f"{base_url}/paid", timeout=30)
        page = requests.get(f"{base_url}/paid", headers={"Accept": "text/html"}, timeout=30)
        free = requests.get(f"{base_url}/free", timeout=30)
    assert response.status_code == 402
    assert response.headers["cache-control"] == "no-store"
    assert "PAYMENT-REQUIRED" in response.headers["access-control-expose-headers"]
    required = decode_payment_required(response.headers["payment-required"])
    assert required.resource is not None and required.resource.url == f"{base_url}/paid"
    (terms,) = required.accepts
    assert (terms.scheme, terms.amount, terms.asset, terms.pay_to) == (
        "exact",
        str(PRICE),
        test_token.address,
        pay_to,
    )
    assert response.json()["error"] == "payment_required"
    assert page.status_code == 402 and page.headers["content-type"].startswith("text/html")
    assert "payment-required" in page.headers
    assert (free.status_code, free.text) == (200, "free")
    assert shop.calls == Counter({"free": 1})


def test_official_client_pays_and_gets_the_content_and_a_receipt(
    gate: PaymentGate, shop: Shop, chain: Any, test_token: Any, payer: Any, pay_to: str
) -> None:
    payer_before = test_token.balance_of(payer.address)
    with serve_wsgi(paywall(gate, shop)) as base_url:
        response = paying_requests_session(payer, asset=test_token).get(f"{base_url}/paid")
    assert response.status_code == 200, response.text
    assert response.json() == {"content": "PAID-CONTENT", "payer": payer.address}
    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert receipt.success and receipt.payer == payer.address
    assert chain.w3.eth.get_transaction_receipt(receipt.transaction)["status"] == 1
    assert "private" in response.headers["cache-control"]
    assert "PAYMENT-RESPONSE" in response.headers["access-control-expose-headers"]
    assert test_token.balance_of(payer.address) == payer_before - PRICE
    assert test_token.balance_of(pay_to) == PRICE
    assert shop.calls == Counter({"paid": 1})
    assert shop.bodies[0].closed


def test_replayed_payment_is_refused_and_nothing_moves_twice(
    gate: PaymentGate,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    with serve_wsgi(paywall(gate, shop)) as base_url:
        header = signed_header(payer, base_url, "/paid")
        first = requests.get(f"{base_url}/paid", headers=header, timeout=30)
        replay = requests.get(f"{base_url}/paid", headers=header, timeout=30)
    assert first.status_code == 200
    assert replay.status_code == 402
    assert replay.json()["error"] == "invalid_exact_evm_nonce_already_used"
    assert "PAID-CONTENT" not in replay.text
    assert chain.tx_count(facilitator.address) == 1
    assert test_token.balance_of(pay_to) == PRICE
    assert shop.calls == Counter({"paid": 1})


@pytest.mark.parametrize(("path", "status"), [("/boom", 500), ("/error", 503)])
def test_failing_app_charges_nothing_and_the_payment_can_be_used_again(
    path: str,
    status: int,
    gate: PaymentGate,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    with serve_wsgi(paywall(gate, shop)) as base_url:
        header = signed_header(payer, base_url, path)
        failed = requests.get(base_url + path, headers=header, timeout=30)
        again = requests.get(base_url + path, headers=header, timeout=30)
    assert failed.status_code == again.status_code == status
    assert "payment-response" not in failed.headers
    # the claim was released: the same authorization reached the app a second time
    assert shop.calls == Counter({path.strip("/"): 2})
    assert chain.tx_count(facilitator.address) == 0
    assert test_token.balance_of(pay_to) == 0


# -- no byte before settlement ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/stream", "/stream-after"])
def test_streamed_content_is_produced_only_after_settlement(
    path: str, gate: PaymentGate, shop: Shop, test_token: Any, payer: Any, pay_to: str
) -> None:
    with serve_wsgi(paywall(gate, shop)) as base_url:
        response = paying_requests_session(payer, asset=test_token).get(
            base_url + path, stream=True
        )
        chunks = list(response.iter_content(chunk_size=None))
    assert response.status_code == 200
    assert b"".join(chunks) == b"".join(CHUNKS)
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert shop.balance_at_content[path.strip("/")] == PRICE  # settled before the first chunk


def test_lazy_start_response_is_settled_before_anything_is_sent(
    gate: PaymentGate, shop: Shop, test_token: Any, payer: Any, pay_to: str
) -> None:
    with serve_wsgi(paywall(gate, shop)) as base_url:
        response = paying_requests_session(payer, asset=test_token).get(f"{base_url}/lazy")
    assert (response.status_code, response.text) == (200, "LAZY-CONTENT")
    assert decode_payment_response_header(response.headers["payment-response"]).success
    # the status only exists once the generator runs, so its first chunk precedes settlement,
    # but it was held: the client got it with the receipt
    assert shop.balance_at_content["lazy"] == 0
    assert test_token.balance_of(pay_to) == PRICE


@pytest.mark.parametrize("path", ["/paid", "/stream-after", "/lazy", "/write"])
def test_failed_settlement_answers_402_and_not_a_byte_of_content(
    path: str,
    make_gate: Any,
    facilitator: LocalFacilitator,
    shop: Shop,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    refusing = RefusingSettlement(facilitator)
    with serve_wsgi(paywall(make_gate(refusing), shop)) as base_url:
        header = signed_header(payer, base_url, path)
        response = requests.get(base_url + path, headers=header, timeout=30)
    assert response.status_code == 402
    assert response.json()["error"] == "insufficient_funds"
    assert not decode_payment_response_header(response.headers["payment-response"]).success
    for content in (b"PAID-CONTENT", b"chunk-", b"LAZY-CONTENT", b"WRITTEN-CONTENT"):
        assert content not in response.content
    assert response.headers["content-type"] == "application/json"
    assert refusing.settle_calls == 1 and shop.calls[path.strip("/")] == 1
    assert test_token.balance_of(pay_to) == 0
    if path == "/paid":
        assert shop.bodies[0].closed


def test_facilitator_error_at_settlement_is_a_502_without_content(
    make_gate: Any,
    facilitator: LocalFacilitator,
    shop: Shop,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    with FacilitatorServer(facilitator) as service:
        gate = make_gate(HTTPFacilitator(service.url, timeout=5.0))
        with serve_wsgi(paywall(gate, shop)) as base_url:
            header = signed_header(payer, base_url, "/stream-after")
            service.faults["settle"] = "500"
            response = requests.get(f"{base_url}/stream-after", headers=header, timeout=30)
    assert response.status_code == 502
    assert response.json()["error"] == "facilitator_error"
    assert b"chunk-" not in response.content
    assert service.calls["settle"] == 1
    assert test_token.balance_of(pay_to) == 0


# -- the request: body, size, URL ---------------------------------------------------------------


def test_price_reads_the_body_and_the_app_still_receives_it(
    gate: PaymentGate, shop: Shop, test_token: Any, payer: Any, pay_to: str
) -> None:
    body: dict[str, Any] = {"n": 3, "text": "é" * 50}
    with serve_wsgi(paywall(gate, shop)) as base_url:
        challenge = requests.post(f"{base_url}/echo", json=body, timeout=30)
        paid = paying_requests_session(payer, asset=test_token).post(f"{base_url}/echo", json=body)
    assert requirements_of(challenge).amount == str(3 * PRICE)
    assert paid.status_code == 200 and paid.json() == body
    assert test_token.balance_of(pay_to) == 3 * PRICE


def test_body_above_the_limit_is_refused_before_any_payment_work(
    gate: PaymentGate, shop: Shop
) -> None:
    with serve_wsgi(paywall(gate, shop, max_body_bytes=1000)) as base_url:
        response = requests.post(f"{base_url}/echo", data=b"x" * 1001, timeout=30)
        chunked = requests.post(f"{base_url}/echo", data=iter([b"x" * 600] * 2), timeout=30)
    assert (response.status_code, response.json()["error"]) == (413, "request_too_large")
    assert (chunked.status_code, chunked.json()["error"]) == (413, "request_too_large")
    assert shop.calls == Counter()


@pytest.mark.parametrize(
    ("trust", "expected"),
    [(False, "{base_url}/paid"), (True, "https://api.example.com/paid")],
)
def test_forwarded_headers_set_the_resource_url_only_when_trusted(
    trust: bool, expected: str, gate: PaymentGate, shop: Shop
) -> None:
    from x402gate.proxies import TrustedProxies

    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
    # The test client connects from loopback: trusted, it plays the reverse proxy.
    gate.trusted_proxies = TrustedProxies(["127.0.0.1"] if trust else [])
    with serve_wsgi(paywall(gate, shop)) as base_url:
        response = requests.get(f"{base_url}/paid", headers=forwarded, timeout=30)
    required = decode_payment_required(response.headers["payment-required"])
    assert required.resource is not None
    assert required.resource.url == expected.format(base_url=base_url)


# -- discovery --------------------------------------------------------------------------------


def test_discovery_lists_the_paid_routes_only_when_enabled(
    gate: PaymentGate, shop: Shop, test_token: Any, pay_to: str
) -> None:
    with serve_wsgi(paywall(gate, shop, discovery=True)) as base_url:
        document = requests.get(f"{base_url}/.well-known/x402", timeout=30)
    with serve_wsgi(paywall(gate, shop)) as base_url_off:
        off = requests.get(f"{base_url_off}/.well-known/x402", timeout=30)
    assert document.status_code == 200
    items = {
        (i["input"]["method"], i["input"]["routeTemplate"]): i for i in document.json()["items"]
    }
    paths = ("/paid", "/boom", "/error", "/stream", "/stream-after", "/lazy", "/write")
    assert set(items) == {("GET", p) for p in paths} | {("POST", "/echo")}
    paid = items[("GET", "/paid")]
    assert paid["resource"]["url"] == f"{base_url}/paid"
    assert paid["accepts"][0]["amount"] == str(PRICE)
    assert paid["accepts"][0]["payTo"] == pay_to
    assert paid["accepts"][0]["asset"] == test_token.address
    assert off.text == "free"  # without discovery the path is the app's own


# -- the WSGI contract, called in-process -------------------------------------------------------


def call(
    app: Any, path: str, headers: dict[str, str] | None = None
) -> tuple[str, dict[str, str], bytes, Any]:
    """Call a WSGI app as a server does: iterate, then close. Status, headers, body, iterable."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "shop.test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: list[tuple[str, dict[str, str]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, {k.lower(): v for k, v in headers}))
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return *started[-1], body, result


def test_routes_that_are_not_paid_get_the_apps_own_iterable(gate: PaymentGate) -> None:
    tracked = Tracked([b"x"])

    def app(environ: Any, start_response: Any) -> Tracked:
        start_response("200 OK", [])
        return tracked

    status, _, _, result = call(PaymentMiddleware(app, gate=gate, routes={"GET /paid": 1}), "/free")
    assert status == "200 OK" and result is tracked and tracked.closed


def test_the_apps_iterable_is_closed_and_nothing_charged_when_it_fails(
    gate: PaymentGate,
    chain: Any,
    payer: Any,
    test_token: Any,
    pay_to: str,
    facilitator: LocalFacilitator,
) -> None:
    closed: list[bool] = []

    def broken(environ: Any, start_response: Any) -> Iterator[bytes]:
        try:
            yield b"never-sent"
            raise RuntimeError("generator failed before start_response")
        finally:
            closed.append(True)

    app = PaymentMiddleware(broken, gate=gate, routes={"GET /broken": "$0.01"})
    status, headers, _, _ = call(app, "/broken")
    assert status == "402 Payment Required"
    terms = decode_payment_required(headers["payment-required"]).accepts[0]
    payload = sign_exact_payment(payer, terms)
    with pytest.raises(RuntimeError, match="before start_response"):
        call(app, "/broken", {"PAYMENT-SIGNATURE": encode_payment(payload)})
    assert closed == [True]
    assert chain.tx_count(facilitator.address) == 0
    nonce = payload.payload["authorization"]["nonce"]
    assert test_token.authorization_state(payer.address, nonce) is False


# -- the example -------------------------------------------------------------------------------


@pytest.mark.chain
@pytest.mark.slow
def test_the_example_serves_and_takes_a_payment(local_chain: Any) -> None:
    check = Path(__file__).resolve().parents[2] / "examples" / "wsgi" / "check.py"
    result = subprocess.run(
        [sys.executable, str(check)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("paid /weather: 200")


def test_a_utf8_path_is_matched_decoded_and_written_percent_encoded(gate: PaymentGate) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"file"]

    paywalled = PaymentMiddleware(app, gate=gate, routes={"GET /files/*": "$0.01"})
    # a WSGI server hands the raw UTF-8 bytes of the path over as latin-1 (PEP 3333)
    raw_path = "/files/café".encode().decode("latin-1")
    status, headers, _, _ = call(paywalled, raw_path)
    assert status == "402 Payment Required"
    required = decode_payment_required(headers["payment-required"])
    assert required.resource is not None
    assert required.resource.url == "http://shop.test/files/caf%C3%A9"


def test_a_misspelt_route_option_stops_the_middleware_at_construction(gate: PaymentGate) -> None:
    from x402gate.errors import ConfigurationError

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"x"]

    routes = {"GET /paid": {"price": "$0.01", "setlement": "before"}}
    expected = r"route 'GET /paid'.*'setlement' \(did you mean 'settlement'\?\)"
    with pytest.raises(ConfigurationError, match=expected):
        PaymentMiddleware(app, gate=gate, routes=routes, check_at_startup=False)


def test_a_misspelt_middleware_option_is_named_with_a_suggestion(gate: PaymentGate) -> None:
    from x402gate.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"'discovry' \(did you mean 'discovery'\?\)"):
        PaymentMiddleware(
            lambda environ, start_response: [],
            gate=gate,
            routes={"GET /paid": "$0.01"},
            discovry=True,  # type: ignore[call-arg]
        )
