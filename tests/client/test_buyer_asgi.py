"""The buyer helper, given to the official OpenAI and Anthropic SDKs, pays a real server.

The server is the fake LLM provider behind the ASGI middleware, served by uvicorn. With channels
on, flat and per-token routes are paid by one deposit and then vouchers, a per-token call
charged the tokens it used. Without channels a per-token route takes ``exact`` and keeps the
change as credit, which the helper spends by sending the session token back. Spend limits refuse
before anything is signed: no request with a payment reaches the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate import PaymentGate
from x402gate.client import SpendLimitExceeded, async_http_client, http_client
from x402gate.credit import SESSION_HEADER
from x402gate.facilitators import LocalFacilitator
from x402gate.gate import ChannelSettings
from x402gate.metering import PerToken, TokenPrice
from x402gate.money import format_usd

from .conftest import CountingFacilitator, Recorder

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.chain

FLAT = 2_000  # $0.002
MIN_DEPOSIT = 1_000_000  # $1
IN_PRICE, OUT_PRICE = 1_000, 2_000  # micro-dollars a token: $1 / $2 per 1k
MESSAGES = [{"role": "user", "content": "Tell me about channels."}]


@contextlib.contextmanager
def _serve(
    chain: LocalChain,
    test_token: TestToken,
    facilitator_account: LocalAccount,
    pay_to: str,
    tmp_path: Any,
    *,
    channels: bool,
) -> Iterator[tuple[str, PaymentGate, CountingFacilitator]]:
    from x402gate.asgi import PaymentMiddleware
    from x402gate.demo import serve_in_thread
    from x402gate.testing.fake_llm import create_app

    authorizer = chain.new_account()
    facilitator = CountingFacilitator(
        LocalFacilitator(
            chain.rpc_url,
            facilitator_account.key.hex(),
            networks=chain.network,
            receiver_authorizer_key=authorizer.key.hex(),
        )
    )
    gate = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'gate.db'}",
        secret=b"k" * 32,
        public_origin="http://buyer.test",
        startup_checks="off",
        channels=(
            ChannelSettings(receiver_authorizer=authorizer.address, min_deposit=MIN_DEPOSIT)
            if channels
            else None
        ),
    )
    prices = TokenPrice(input="$1", output="$2", per=1_000)
    app = PaymentMiddleware(
        _strip_flat(create_app()),
        gate=gate,
        routes={
            "POST /flat/v1/chat/completions": "$0.002",
            "POST /v1/chat/completions": gate.route(PerToken({"gpt-*": prices})),
            "POST /v1/messages": gate.route(PerToken({"claude-*": prices})),
        },
    )
    with serve_in_thread(app) as url:
        yield url, gate, facilitator
    gate.close()


@pytest.fixture
def served(
    chain: LocalChain,
    test_token: TestToken,
    facilitator_account: LocalAccount,
    pay_to: str,
    tmp_path: Any,
    channel_contracts: ChannelContracts,
) -> Iterator[tuple[str, PaymentGate, CountingFacilitator]]:
    """The server with channels on."""
    with _serve(chain, test_token, facilitator_account, pay_to, tmp_path, channels=True) as server:
        yield server


@pytest.fixture
def served_exact(
    chain: LocalChain,
    test_token: TestToken,
    facilitator_account: LocalAccount,
    pay_to: str,
    tmp_path: Any,
) -> Iterator[tuple[str, PaymentGate, CountingFacilitator]]:
    """The server without channels: ``exact`` only."""
    with _serve(chain, test_token, facilitator_account, pay_to, tmp_path, channels=False) as server:
        yield server


def _strip_flat(app: Any) -> Any:
    """Serve ``/flat/v1/...`` (priced flat by the gate) by the provider's ``/v1/...``."""

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/flat/"):
            scope = {**scope, "path": path[len("/flat") :], "raw_path": None}
        await app(scope, receive, send)

    return inner


def _decode(header: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(header))
    return decoded


def test_openai_sdk_pays_n_calls_by_one_deposit_and_vouchers(
    served: Any, payer: LocalAccount, test_token: TestToken, channel_contracts: ChannelContracts
) -> None:
    """A flat route: n vouchers of its price after one deposit."""
    url, gate, facilitator = served
    recorder = Recorder(httpx.HTTPTransport())
    http = http_client(
        payer.key.hex(),
        max_per_request="$0.01",
        max_deposit="$2",
        max_total="$1",
        assets=test_token.asset,
        transport=recorder,
    )
    client = openai.OpenAI(base_url=f"{url}/flat/v1", api_key="unused", http_client=http)
    payer_before = test_token.balance_of(payer.address)
    n = 4
    for _ in range(n):
        answer = client.chat.completions.create(model="gpt-test", max_tokens=20, messages=MESSAGES)
        assert answer.choices[0].message.content
    http.close()
    schemes = [_decode(h)["accepted"]["scheme"] for h in recorder.payments]
    assert schemes == ["batch-settlement"] * n
    # One deposit, the only thing settled on chain: the payer's balance moved by it alone.
    assert facilitator.settled == {"batch-settlement": 1}
    deposit = payer_before - test_token.balance_of(payer.address)
    assert deposit == MIN_DEPOSIT
    channel_id = recorder.channel_ids()[-1]
    stored = gate.store.channel_get(channel_id)
    assert stored is not None
    assert stored.charged == n * FLAT
    assert channel_contracts.channel(channel_id).balance == deposit


async def _quote(url: str, path: str, body: dict[str, Any]) -> int:
    async with httpx.AsyncClient(base_url=url) as plain:
        challenge = await plain.post(path, json=body)
    assert challenge.status_code == 402
    accepts = _decode(challenge.headers["payment-required"])["accepts"]
    assert [offer["scheme"] for offer in accepts] == ["batch-settlement", "exact"]
    return int(accepts[0]["amount"])


async def test_openai_sdk_on_a_per_token_route_pays_the_tokens_used_from_one_deposit(
    served: Any, payer: LocalAccount, test_token: TestToken
) -> None:
    url, gate, facilitator = served
    quote = await _quote(
        url,
        "/v1/chat/completions",
        {"model": "gpt-test", "max_tokens": 100, "messages": MESSAGES},
    )
    recorder = Recorder(httpx.HTTPTransport())
    # Two quotes in all: enough only because each call gives back what it did not use.
    http = http_client(
        payer.key.hex(),
        max_per_request="$1",
        max_deposit="$2",
        max_total=format_usd(2 * quote),
        assets=test_token.asset,
        transport=recorder,
    )
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http)
    payer_before = test_token.balance_of(payer.address)
    used = 0
    n = 5
    for _ in range(n):
        answer = await asyncio.to_thread(
            client.chat.completions.create,
            model="gpt-test",
            max_tokens=100,
            messages=MESSAGES,
        )
        assert answer.usage is not None
        used += answer.usage.prompt_tokens * IN_PRICE + answer.usage.completion_tokens * OUT_PRICE
    http.close()
    assert [_decode(h)["accepted"]["scheme"] for h in recorder.payments] == ["batch-settlement"] * n
    assert facilitator.settled == {"batch-settlement": 1}
    assert payer_before - test_token.balance_of(payer.address) == MIN_DEPOSIT
    # Each answer's charge is the tokens it used; the seller earned exactly their sum.
    charges = [int(r["extra"]["chargedAmount"]) for r in recorder.receipts]
    assert len(charges) == n and all(0 < c < quote for c in charges)
    stored = gate.store.channel_get(recorder.channel_ids()[-1])
    assert stored is not None
    assert stored.earned == stored.charged == sum(charges) == used


async def test_anthropic_sdk_streams_on_a_per_token_route_from_one_deposit(
    served: Any, payer: LocalAccount, test_token: TestToken
) -> None:
    url, gate, facilitator = served
    recorder = Recorder(httpx.AsyncHTTPTransport())
    http = async_http_client(
        payer.key.hex(),
        max_per_request="$1",
        max_deposit="$2",
        max_total="$2",
        assets=test_token.asset,
        transport=recorder,
    )
    client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", http_client=http)
    used = 0
    n = 3
    for i in range(n):
        if i % 2:
            async with client.messages.stream(
                model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES
            ) as stream:
                message = await stream.get_final_message()
        else:
            message = await client.messages.create(
                model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES
            )
        used += message.usage.input_tokens * IN_PRICE + message.usage.output_tokens * OUT_PRICE
    await http.aclose()
    assert len(recorder.payments) == n
    assert facilitator.settled == {"batch-settlement": 1}
    stored = gate.store.channel_get(recorder.channel_ids()[-1])
    assert stored is not None
    # The seller earns the tokens used, streamed or not.
    assert stored.earned == used


async def test_anthropic_sdk_spends_the_credit_an_exact_payment_left(
    served_exact: Any, payer: LocalAccount, test_token: TestToken, pay_to: str
) -> None:
    url, gate, facilitator = served_exact
    # The 402 says where the change of an exact payment goes, and how to spend it.
    body = {"model": "claude-sonnet-4-5", "max_tokens": 200, "messages": MESSAGES}
    async with httpx.AsyncClient(base_url=url) as plain:
        challenge = await plain.post("/v1/messages", json=body)
    assert challenge.status_code == 402
    assert SESSION_HEADER in challenge.json()["credit"]
    offer = _decode(challenge.headers["payment-required"])["accepts"][0]
    assert offer["scheme"] == "exact"
    assert offer["extra"]["change"] == "credit"
    assert offer["extra"]["sessionHeader"] == SESSION_HEADER

    recorder = Recorder(httpx.AsyncHTTPTransport())
    http = async_http_client(
        payer.key.hex(),
        max_per_request="$1",
        max_deposit="$1",
        max_total="$2",
        assets=test_token.asset,
        transport=recorder,
    )
    client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", http_client=http)
    used = 0
    n = 4
    for _ in range(n):
        message = await client.messages.create(
            model="claude-sonnet-4-5", max_tokens=200, messages=MESSAGES
        )
        used += message.usage.input_tokens * IN_PRICE + message.usage.output_tokens * OUT_PRICE
    await http.aclose()
    paid = test_token.balance_of(pay_to)
    credit = await gate.balance(payer.address)
    # Everything paid is either charged for the tokens used or still the payer's credit...
    assert paid == used + credit
    # ... and the credit was spent: the first payment's change served the next calls, which
    # paid only what it lacked, if anything.
    first = _decode(recorder.payments[0])
    assert first["accepted"]["scheme"] == "exact"
    quote = int(first["accepted"]["amount"])
    assert paid < n * quote
    assert credit < quote
    # The first request and its paid retry had no token yet; every later one carried it.
    assert recorder.sessions[:2] == [None, None]
    assert all(token is not None for token in recorder.sessions[2:])
    # Each payment is one exact transfer; after the first, each asked only for what the
    # credit lacked.
    amounts = [int(_decode(p)["accepted"]["amount"]) for p in recorder.payments]
    assert facilitator.settled == {"exact": len(amounts)}
    assert sum(amounts) == paid
    assert all(amount < quote for amount in amounts[1:])


def test_spend_limits_refuse_before_anything_is_signed(
    served: Any, payer: LocalAccount, test_token: TestToken
) -> None:
    url, _, facilitator = served

    def client_with(**limits: Any) -> tuple[Any, Recorder, httpx.Client]:
        recorder = Recorder(httpx.HTTPTransport())
        options: dict[str, Any] = {
            "max_per_request": "$1",
            "max_deposit": "$2",
            "max_total": "$1",
            **limits,
        }
        http = http_client(payer.key.hex(), assets=test_token.asset, transport=recorder, **options)
        sdk = openai.OpenAI(
            base_url=f"{url}/flat/v1", api_key="unused", http_client=http, max_retries=0
        )
        return sdk, recorder, http

    def refused(sdk: Any) -> SpendLimitExceeded:
        with pytest.raises(openai.APIConnectionError) as caught:
            sdk.chat.completions.create(model="gpt-test", max_tokens=20, messages=MESSAGES)
        cause = caught.value.__cause__
        assert isinstance(cause, SpendLimitExceeded), cause
        return cause

    # Per request: the flat route costs $0.002.
    sdk, recorder, http = client_with(max_per_request="$0.001")
    assert refused(sdk).limit == "max_per_request"
    assert recorder.payments == [] and len(recorder.requests) == 1
    http.close()
    # Per deposit: the server's floor is $1.
    sdk, recorder, http = client_with(max_deposit="$0.50")
    assert refused(sdk).limit == "max_deposit"
    assert recorder.payments == []
    http.close()
    # In total: two calls fit in $0.004, the third does not.
    sdk, recorder, http = client_with(max_total="$0.004")
    for _ in range(2):
        sdk.chat.completions.create(model="gpt-test", max_tokens=20, messages=MESSAGES)
    assert refused(sdk).limit == "max_total"
    assert len(recorder.payments) == 2
    http.close()
    assert facilitator.settled == {"batch-settlement": 1}
