"""Sign-in and session tokens are bound to the configured public origin, tokens have a hard
maximum lifetime, and no shape of sign-in, session or payment header gets a 500.

A real uvicorn server runs the ASGI middleware and the real gate with a memory ledger; the only
stand-ins are a facilitator that is never reached (nothing here is a valid payment) and a clock
the tests move.
"""

from __future__ import annotations

import base64
import collections
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route
from x402.schemas import SupportedKind, SupportedResponse

from x402gate import ConfigurationError, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.assets import Asset
from x402gate.credit import SESSION_HEADER, SessionTokens
from x402gate.demo import serve_in_thread
from x402gate.metering import PerToken, TokenPrice
from x402gate.stores.base import credit_account

ASSET = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
PAY_TO = Account.create().address
PAYER = Account.create().address
ACCOUNT = credit_account(ASSET.network, ASSET.address, PAYER)
ORIGIN = "https://api.test"
SECRET = b"s" * 32
USAGE = (
    b'data: {"choices":[],"usage":{"prompt_tokens":0,"completion_tokens":1}}\n\ndata: [DONE]\n\n'
)


class NoFacilitator:
    """Start-up asks what it supports; nothing in these tests is a payment that verifies."""

    async def supported(self) -> SupportedResponse:
        kind = SupportedKind(x402_version=2, scheme="exact", network=ASSET.network)
        return SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("no payment can verify here")

    async def settle(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("no payment can settle here")


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t


def make_gate(clock: Clock, origin: str = ORIGIN) -> PaymentGate:
    return PaymentGate(
        pay_to=PAY_TO,
        assets=ASSET,
        facilitator=NoFacilitator(),
        store="memory://",
        secret=SECRET,
        public_origin=origin,
        verify_with_facilitator=False,
        clock=clock,
    )


def make_app(gate: PaymentGate, runs: collections.Counter[str]) -> PaymentMiddleware:
    async def chat(request: Any) -> StreamingResponse:
        runs["chat"] += 1

        async def body() -> Any:
            yield USAGE

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/chat", chat)])
    price = PerToken(TokenPrice(input="$1", output="$1", per=1_000), max_output_tokens=100)
    return PaymentMiddleware(app, gate=gate, routes={"GET /chat": gate.route(price)})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, PaymentGate, Clock, collections.Counter[str]]]:
    clock = Clock()
    gate = make_gate(clock)
    runs: collections.Counter[str] = collections.Counter()
    with serve_in_thread(make_app(gate, runs)) as base_url:
        yield base_url, gate, clock, runs
    gate.close()


# -- configuration ----------------------------------------------------------------------------


def test_a_metered_route_without_a_public_origin_is_a_configuration_error() -> None:
    gate = PaymentGate(pay_to=PAY_TO, assets=ASSET, facilitator=NoFacilitator(), store="memory://")
    with pytest.raises(ConfigurationError, match="public_origin"):
        gate.route(PerToken(TokenPrice(input="$1", output="$1")))
    gate.route("$0.01")  # flat prices take no sign-in: nothing to bind


@pytest.mark.parametrize(
    ("value", "setting"),
    [
        ("api.example.com", "public_origin"),
        ("https://api.example.com/v1", "public_origin"),
        ("https://user@api.example.com", "public_origin"),
        ("ftp://api.example.com", "public_origin"),
        ("https://api.example.com?x=1", "public_origin"),
        ("https://[::1", "public_origin"),
        ([], "public_origin"),
        ([1], "public_origin"),
    ],
)
def test_bad_public_origins_name_the_setting(value: Any, setting: str) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        PaymentGate(
            pay_to=PAY_TO,
            assets=ASSET,
            facilitator=NoFacilitator(),
            store="memory://",
            public_origin=value,
        )


@pytest.mark.parametrize("value", ["10.0.0.0/8", ["10.0.0.0/33"], ["proxy.internal"], [None]])
def test_bad_trusted_proxies_name_the_setting(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        PaymentGate(
            pay_to=PAY_TO,
            assets=ASSET,
            facilitator=NoFacilitator(),
            store="memory://",
            trusted_proxies=value,
        )


def test_public_origins_are_normalised() -> None:
    gate = PaymentGate(
        pay_to=PAY_TO,
        assets=ASSET,
        facilitator=NoFacilitator(),
        store="memory://",
        public_origin=["HTTPS://API.Example.com:443/", "http://api.example.com:8080"],
    )
    assert gate.public_origins == ("https://api.example.com", "http://api.example.com:8080")


# -- session tokens over a real server --------------------------------------------------------


def test_session_tokens_stop_renewing_at_their_maximum_lifetime(server: Any) -> None:
    base_url, gate, clock, runs = server
    before = runs["chat"]
    gate.store.credit_topup(ACCOUNT, 10_000_000, "lifetime", clock.now())
    start = clock.now()
    token = gate.session_tokens.issue(PAYER, ASSET.network, ASSET.address, start, origin=ORIGIN)
    limit = int(start) + gate.session_tokens.max_lifetime_seconds
    served = 0
    with httpx.Client(base_url=base_url, timeout=30) as client:
        # Used every 10 minutes: each answer renews the 15-minute token, but never past the hour.
        for _ in range(12):
            response = client.get("/chat", headers={SESSION_HEADER: token})
            if response.status_code != 200:
                break
            served += 1
            token = response.headers.get(SESSION_HEADER, token)
            claims = gate.session_tokens.check(token, clock.now())
            assert claims is not None and claims.started == int(start)
            assert claims.expires_at <= limit
            clock.t += 600
        balance = gate.store.credit_balance(ACCOUNT, clock.now())
        assert clock.now() >= limit
        refused = client.get("/chat", headers={SESSION_HEADER: token})
    assert served == 6  # start, +10, ..., +50 minutes; at +60 the session is over
    assert refused.status_code == 402 and refused.json()["error"] == "payment_required"
    assert SESSION_HEADER.lower() not in refused.headers
    assert gate.store.credit_balance(ACCOUNT, clock.now()).available == balance.available
    assert runs["chat"] - before == served


def test_a_token_for_another_origin_or_of_the_old_format_opens_nothing(server: Any) -> None:
    base_url, gate, clock, runs = server
    before = runs["chat"]
    gate.store.credit_topup(ACCOUNT, 1_000_000, "other-origin", clock.now())
    available = gate.store.credit_balance(ACCOUNT, clock.now()).available
    other = make_gate(clock, "https://other-service.test")  # same secret, another service
    foreign = other.session_tokens.issue(
        PAYER, ASSET.network, ASSET.address, clock.now(), origin="https://other-service.test"
    )
    other.close()
    payload = (
        base64.urlsafe_b64encode(
            json.dumps(
                {
                    "p": PAYER.lower(),
                    "n": ASSET.network,
                    "a": ASSET.address.lower(),
                    "e": int(clock.now()) + 600,
                }
            ).encode()
        )
        .decode()
        .rstrip("=")
    )
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for token in (foreign, f"v1.{payload}.AAAA"):
            answer = client.get("/chat", headers={SESSION_HEADER: token})
            assert (answer.status_code, answer.json()["error"]) == (402, "payment_required")
            status = client.get("/.well-known/x402/credit", headers={SESSION_HEADER: token})
            assert status.status_code == 401
    assert gate.store.credit_balance(ACCOUNT, clock.now()).available == available
    assert runs["chat"] == before


def test_session_token_lifetime_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="max_lifetime_seconds"):
        SessionTokens(SECRET, ttl_seconds=900, max_lifetime_seconds=600)
    assert SessionTokens(SECRET, ttl_seconds=7200).max_lifetime_seconds == 7200


# -- no header shape gets a 500 ---------------------------------------------------------------

_SIWX_KEYS = [
    "domain",
    "address",
    "uri",
    "version",
    "chainId",
    "nonce",
    "issuedAt",
    "signature",
    "expirationTime",
    "notBefore",
    "statement",
    "resources",
    "requestId",
    "type",
]
_PAYMENT_KEYS = [
    "x402Version",
    "payload",
    "accepted",
    "resource",
    "extensions",
    "scheme",
    "network",
    "signature",
    "authorization",
    "from",
    "to",
    "value",
    "validAfter",
    "validBefore",
    "nonce",
]
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "http://[::1",
            "https://api.test/chat",
            "eip155:84532",
            "1",
            "2026-01-01T00:00:00Z",
            "0x" + "1" * 40,
            "0x" + "ab" * 65,
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_SIWX_KEYS + _PAYMENT_KEYS), inner, max_size=6)
    ),
    max_leaves=12,
)


def _shaped(keys: list[str]) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.sampled_from(keys), _json_values, max_size=len(keys)) | _json_values


def _b64(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


_headers = st.one_of(
    _shaped(_SIWX_KEYS).map(lambda d: ("SIGN-IN-WITH-X", _b64(d))),
    _shaped(_PAYMENT_KEYS).map(lambda d: ("PAYMENT-SIGNATURE", _b64(d))),
    _shaped(_PAYMENT_KEYS).map(lambda d: ("X-PAYMENT", _b64(d))),
    _shaped(["p", "n", "a", "o", "s", "e"]).map(
        lambda d: (SESSION_HEADER, "v2." + _b64(d).rstrip("=") + ".AAAA")
    ),
    st.tuples(
        st.sampled_from(["SIGN-IN-WITH-X", SESSION_HEADER, "PAYMENT-SIGNATURE"]),
        # DEL (127) is no header character: uvicorn refuses it before the app sees it.
        st.text(
            st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"),
            max_size=200,
        ),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=_headers)
def test_no_header_shape_gets_a_server_error(server: Any, header: tuple[str, str]) -> None:
    base_url, _, _, runs = server
    before = runs["chat"]
    name, value = header
    with httpx.Client(base_url=base_url, timeout=30) as client:
        raw = [(name.encode("latin-1"), value.strip().encode("latin-1"))]
        response = client.get("/chat", headers=raw)
    assert response.status_code in (400, 402), (header, response.text)
    assert isinstance(response.json().get("error"), str) and response.json()["error"]
    assert runs["chat"] == before


# -- claims are checked after the MAC -----------------------------------------------------------

_GOOD_CLAIMS = {"p": PAYER.lower(), "n": ASSET.network, "a": ASSET.address.lower(), "o": ORIGIN}


def _claims_text(**changes: Any) -> str:
    """The JSON of a token's claims, valid unless ``changes`` say otherwise (a value of ``...``
    drops the key; a ``str`` for ``e`` or ``s`` is put in as raw JSON, e.g. ``1e999``)."""
    now = int(time.time())
    claims: dict[str, Any] = {**_GOOD_CLAIMS, "s": now, "e": now + 600}
    raw: dict[str, str] = {}
    for key, value in changes.items():
        if value is ...:
            claims.pop(key)
        elif key in ("e", "s") and isinstance(value, str):
            raw[key] = value
            claims[key] = f"@{key}@"
        else:
            claims[key] = value
    text = json.dumps(claims)
    for key, value in raw.items():
        text = text.replace(f'"@{key}@"', value)
    return text


def _signed(tokens: SessionTokens, text: str) -> str:
    """A token carrying ``text`` as its claims under ``tokens``' own key: what only the key's
    holder, or code issuing tokens for claims of its own, can make."""
    payload = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    return f"v2.{payload}.{tokens._mac(payload)}"


_MALFORMED_CLAIMS = {
    "payer-empty": _claims_text(p=""),
    "payer-not-an-address": _claims_text(p="0x"),
    "payer-not-hex": _claims_text(p="0x" + "g" * 40),
    "payer-too-long": _claims_text(p="0x" + "a" * 300),
    "payer-a-number": _claims_text(p=1),
    "payer-missing": _claims_text(p=...),
    "network-empty": _claims_text(n=""),
    "network-not-caip2": _claims_text(n="n"),
    "network-chain-zero": _claims_text(n="eip155:0"),
    "network-unbounded": _claims_text(n="eip155:" + "9" * 40),
    "network-with-a-bar": _claims_text(n="eip155:1|x"),
    "network-a-number": _claims_text(n=84532),
    "asset-not-an-address": _claims_text(a="0x"),
    "asset-too-long-for-the-store": _claims_text(a="0x" + "a" * 300),
    "origin-a-number": _claims_text(o=5),
    "origin-unbounded": _claims_text(o="https://" + "a" * 400),
    "origin-with-spaces": _claims_text(o="https://api.test x"),
    "origin-missing": _claims_text(o=...),
    "expiry-infinite": _claims_text(e="1e999"),
    "expiry-a-float": _claims_text(e=str(int(time.time()) + 600.5)),
    "expiry-a-string": _claims_text(e=json.dumps(str(int(time.time()) + 600))),
    "expiry-true": _claims_text(e="true"),
    "expiry-beyond-year-9999": _claims_text(e=str(10**30)),
    "expiry-huge-integer": _claims_text(e="9" * 4000),
    "start-negative": _claims_text(s="-5"),
    "start-after-expiry": _claims_text(s=str(int(time.time()) + 700)),
    "start-missing": _claims_text(s=...),
    "not-an-object": "[1, 2]",
    "a-string": '"v2"',
    "not-json": "{",
    "deep": "[" * 100_000,
}


@pytest.mark.parametrize("text", _MALFORMED_CLAIMS.values(), ids=_MALFORMED_CLAIMS.keys())
def test_a_token_signed_for_malformed_claims_is_no_token(text: str) -> None:
    tokens = SessionTokens(SECRET)
    now = time.time()
    good = tokens.check(_signed(tokens, _claims_text()), now)  # the same way, well-formed
    assert good is not None and good.payer == PAYER.lower() and good.origin == ORIGIN
    assert tokens.check(_signed(tokens, text), now) is None  # and never raises


def test_claims_as_issued_are_accepted() -> None:
    tokens = SessionTokens(SECRET)
    now = time.time()
    for origin in (ORIGIN, ""):
        token = tokens.issue(PAYER, ASSET.network, ASSET.address, now, origin=origin)
        claims = tokens.check(token, now)
        assert claims is not None
        assert (claims.payer, claims.network, claims.asset, claims.origin) == (
            PAYER.lower(),
            ASSET.network,
            ASSET.address.lower(),
            origin,
        )
    # Claims no payment gives are issued (the caller's business) but never accepted.
    assert tokens.check(tokens.issue("", "", "", now, origin=ORIGIN), now) is None


_SERVED_CLAIMS = [
    "payer-not-an-address",
    "network-empty",
    "asset-too-long-for-the-store",
    "expiry-infinite",
    "expiry-a-float",
    "origin-unbounded",
]


@pytest.mark.parametrize("name", _SERVED_CLAIMS)
def test_tokens_for_malformed_claims_open_nothing_and_get_no_server_error(
    server: Any, name: str
) -> None:
    base_url, gate, clock, runs = server
    before = runs["chat"]
    gate.store.credit_topup(ACCOUNT, 1_000_000, f"malformed-{name}", clock.now())
    available = gate.store.credit_balance(ACCOUNT, clock.now()).available
    token = _signed(gate.session_tokens, _MALFORMED_CLAIMS[name])
    with httpx.Client(base_url=base_url, timeout=30) as client:
        answer = client.get("/chat", headers={SESSION_HEADER: token})
        status = client.get("/.well-known/x402/credit", headers={SESSION_HEADER: token})
    assert (answer.status_code, answer.json()["error"]) == (402, "payment_required")
    assert SESSION_HEADER.lower() not in answer.headers
    assert (status.status_code, status.json()["error"]) == (401, "session_required")
    assert gate.store.credit_balance(ACCOUNT, clock.now()).available == available
    assert runs["chat"] == before
