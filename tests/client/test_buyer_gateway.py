"""The buyer helper with the official OpenAI and Anthropic SDKs through the gateway.

The gateway is built from its file (per-token routes without a top-up, ``channels:`` on unless
a test turns them off) in front of the fake LLM provider and served by uvicorn as ``x402gate
proxy`` serves it; the chain is the local anvil with our channel contracts at the canonical
addresses.
"""

from __future__ import annotations

import base64
import contextlib
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate.client import SpendLimitExceeded, async_http_client, http_client

from .conftest import Recorder

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.gateway import Gateway
    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
pytest.importorskip("yaml")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.chain

FLAT = 2_000  # $0.002
MIN_DEPOSIT = 1_000_000  # $1
IN_PRICE, OUT_PRICE = 1_000, 2_000  # micro-dollars a token: $1 / $2 per 1k
MESSAGES = [{"role": "user", "content": "Tell me about the gateway."}]

GATEWAY = """\
gateway:
  secret: ${{SESSION_SECRET}}
  public_origin: https://gateway.test
pay_to: "{pay_to}"
accepts:
  - network: "{network}"
    asset: "{token}"
    name: USD Coin
    version: "2"
facilitator:
  rpc_url: {rpc_url}
  private_key: ${{FACILITATOR_KEY}}
store: sqlite:///{tmp}/gateway.db
{channels}
upstreams:
  llm:
    url: {upstream}
routes:
  "POST /flat/v1/chat/completions":
    upstream: llm
    path: /v1/chat/completions
    price: $0.002
  "POST /v1/chat/completions":
    upstream: llm
    type: per-token
    models:
      "gpt-*": {{input: $1, output: $2, per: 1000}}
  "POST /v1/messages":
    upstream: llm
    type: per-token
    models:
      "claude-*": {{input: $1, output: $2, per: 1000}}
"""


CHANNELS = """\
channels:
  receiver_authorizer_key: ${{AUTHORIZER_KEY}}
  min_deposit: {floor}"""


@pytest.fixture(params=["channels"])
def served(
    request: pytest.FixtureRequest,
    chain: LocalChain,
    test_token: TestToken,
    facilitator_account: LocalAccount,
    pay_to: str,
    tmp_path: Path,
    channel_contracts: ChannelContracts,
) -> Iterator[tuple[str, Gateway]]:
    """The gateway; ``@pytest.mark.parametrize("served", ["exact"], indirect=True)`` turns its
    channels off."""
    from x402gate.gateway import Gateway, parse_config
    from x402gate.gateway.app import server_stack
    from x402gate.testing.fake_llm import serve_asgi, serve_fake_llm

    authorizer = chain.new_account()
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(serve_fake_llm())
        channels = CHANNELS.format(floor=MIN_DEPOSIT) if request.param == "channels" else ""
        text = GATEWAY.format(
            channels=channels,
            pay_to=pay_to,
            network=chain.network,
            token=test_token.asset.address,
            rpc_url=chain.rpc_url,
            tmp=tmp_path,
            upstream=upstream.url,
        )
        env = {
            "SESSION_SECRET": "s" * 48,
            "FACILITATOR_KEY": facilitator_account.key.hex(),
            "AUTHORIZER_KEY": authorizer.key.hex(),
        }
        gateway = Gateway(parse_config(textwrap.dedent(text), source="gateway.yaml", env=env))
        options = {**server_stack(), "lifespan": "on", "log_level": "warning"}
        url = stack.enter_context(serve_asgi(gateway, **options))
        yield url, gateway


def _decode(header: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(header))
    return decoded


def test_openai_sdk_through_the_gateway_pays_a_flat_route_by_one_deposit(
    served: Any,
    chain: LocalChain,
    payer: LocalAccount,
    test_token: TestToken,
    facilitator_account: LocalAccount,
    channel_contracts: ChannelContracts,
) -> None:
    url, gateway = served
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
    n = 5
    for _ in range(n):
        answer = client.chat.completions.create(model="gpt-test", max_tokens=20, messages=MESSAGES)
        assert answer.choices[0].message.content
    http.close()
    assert [_decode(h)["accepted"]["scheme"] for h in recorder.payments] == ["batch-settlement"] * n
    # One transaction on chain, the deposit, and only it left the payer's wallet.
    assert chain.tx_count(facilitator_account.address) == 1
    assert payer_before - test_token.balance_of(payer.address) == MIN_DEPOSIT
    channel_id = recorder.channel_ids()[-1]
    stored = gateway.gate.store.channel_get(channel_id)
    assert stored is not None and stored.charged == n * FLAT
    assert channel_contracts.channel(channel_id).balance == MIN_DEPOSIT


def _usage_charge(usage: Any) -> int:
    if hasattr(usage, "prompt_tokens"):
        return int(usage.prompt_tokens * IN_PRICE + usage.completion_tokens * OUT_PRICE)
    return int(usage.input_tokens * IN_PRICE + usage.output_tokens * OUT_PRICE)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_sdks_through_the_gateway_on_per_token_routes_pay_the_tokens_used(
    sdk: str,
    served: Any,
    chain: LocalChain,
    payer: LocalAccount,
    test_token: TestToken,
    facilitator_account: LocalAccount,
    channel_contracts: ChannelContracts,
) -> None:
    """N calls, one deposit, the charged total equal to the tokens used."""
    url, gateway = served
    recorder = Recorder(httpx.AsyncHTTPTransport())
    http = async_http_client(
        payer.key.hex(),
        max_per_request="$0.50",
        max_deposit="$2",
        max_total="$2",
        assets=test_token.asset,
        transport=recorder,
    )
    payer_before = test_token.balance_of(payer.address)
    used = 0
    n = 4
    for _ in range(n):
        if sdk == "openai":
            gpt = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http)
            answer = await gpt.chat.completions.create(
                model="gpt-test", max_tokens=100, messages=MESSAGES
            )
            used += _usage_charge(answer.usage)
        else:
            claude = anthropic.AsyncAnthropic(base_url=url, api_key="unused", http_client=http)
            message = await claude.messages.create(
                model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES
            )
            used += _usage_charge(message.usage)
    await http.aclose()
    assert [_decode(h)["accepted"]["scheme"] for h in recorder.payments] == ["batch-settlement"] * n
    # One deposit: the only transaction, the only money that left the payer's wallet.
    assert chain.tx_count(facilitator_account.address) == 1
    assert payer_before - test_token.balance_of(payer.address) == MIN_DEPOSIT
    channel_id = recorder.channel_ids()[-1]
    assert channel_contracts.channel(channel_id).balance == MIN_DEPOSIT
    stored = gateway.gate.store.channel_get(channel_id)
    assert stored is not None
    assert stored.earned == stored.charged == used
    assert sum(int(r["extra"]["chargedAmount"]) for r in recorder.receipts) == used


@pytest.mark.parametrize("served", ["exact"], indirect=True)
async def test_anthropic_sdk_through_the_gateway_strands_no_credit(
    served: Any, payer: LocalAccount, test_token: TestToken, pay_to: str
) -> None:
    """Without channels, per-token routes take exact: the session token spends the change."""
    url, gateway = served
    recorder = Recorder(httpx.AsyncHTTPTransport())
    http = async_http_client(
        payer.key.hex(),
        max_per_request="$1",
        max_deposit="$1",
        max_total="$3",
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
    credit = await gateway.gate.balance(payer.address)
    assert paid == used + credit
    amounts = [int(_decode(h)["accepted"]["amount"]) for h in recorder.payments]
    assert sum(amounts) == paid
    # After the first payment, each call paid only what the credit lacked.
    assert all(amount < amounts[0] for amount in amounts[1:])
    assert credit < amounts[0]


def test_spend_limits_refuse_before_the_gateway_sees_a_payment(
    served: Any,
    chain: LocalChain,
    payer: LocalAccount,
    test_token: TestToken,
    facilitator_account: LocalAccount,
) -> None:
    url, _ = served
    recorder = Recorder(httpx.HTTPTransport())
    http = http_client(
        payer.key.hex(),
        max_per_request="$0.10",  # a per-token quote of 200 output tokens is above $0.40
        max_deposit="$2",
        max_total="$1",
        assets=test_token.asset,
        transport=recorder,
    )
    client = anthropic.Anthropic(base_url=url, api_key="unused", http_client=http, max_retries=0)
    with pytest.raises(anthropic.APIConnectionError) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=200, messages=MESSAGES)
    http.close()
    cause = caught.value.__cause__
    assert isinstance(cause, SpendLimitExceeded) and cause.limit == "max_per_request"
    assert len(recorder.requests) == 1 and recorder.payments == []
    assert chain.tx_count(facilitator_account.address) == 0
