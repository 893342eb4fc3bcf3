"""Drop-in base URLs: the official Anthropic and OpenAI SDKs, unchanged, pointed at the gateway
with the official x402 httpx transport paying, get the answers they get from the upstream."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from x402.http.clients import x402_httpx_transport

from x402gate.testing.clients import x402_client
from x402gate.testing.fake_llm import FakeLLM

from .conftest import UPSTREAM_KEY, GatewayFactory

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.chain

MESSAGES = [{"role": "user", "content": "Tell me about the gateway."}]


def x402_http_client(payer: Any, token: Any) -> httpx.AsyncClient:
    """What an agent builds: an httpx client whose transport pays 402s (the official x402 one)."""
    transport = x402_httpx_transport(x402_client(payer, asset=token), httpx.AsyncHTTPTransport())
    return httpx.AsyncClient(transport=transport, timeout=30)


def assert_key_injected(llm: FakeLLM) -> None:
    request = llm.requests[-1]
    assert request.header("x-api-key") == UPSTREAM_KEY  # the SDK's "unused" was replaced
    assert request.header("authorization") == f"Bearer {UPSTREAM_KEY}"


async def test_anthropic_sdk_messages_json_and_stream(
    gateway: GatewayFactory, llm: FakeLLM, payer: Any, test_token: Any, pay_to: str
) -> None:
    direct = anthropic.AsyncAnthropic(base_url=llm.url, api_key="unused")
    expected = await direct.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES
    )
    async with direct.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES
    ) as stream:
        expected_events = [event.model_dump() async for event in stream]
        expected_final = await stream.get_final_message()
    await direct.close()

    with gateway() as (url, _):
        async with x402_http_client(payer, test_token) as http:
            client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", http_client=http)
            message = await client.messages.create(
                model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES
            )
            assert_key_injected(llm)
            async with client.messages.stream(
                model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES
            ) as stream:
                events = [event.model_dump() async for event in stream]
                final = await stream.get_final_message()
            assert_key_injected(llm)
    assert message.model_dump() == expected.model_dump()
    assert message.content[0].text.startswith("Hello from claude-sonnet-4-5!")
    assert events == expected_events
    assert final.model_dump() == expected_final.model_dump()
    assert test_token.balance_of(pay_to) == 2 * 500_000  # two top-ups of the per-token route


async def test_openai_sdk_chat_completions_json_and_stream(
    gateway: GatewayFactory, llm: FakeLLM, payer: Any, test_token: Any, pay_to: str
) -> None:
    direct = openai.AsyncOpenAI(base_url=f"{llm.url}/v1", api_key="unused")
    expected = await direct.chat.completions.create(
        model="gpt-test", max_tokens=100, messages=MESSAGES
    )
    expected_chunks = [
        chunk.model_dump()
        async for chunk in await direct.chat.completions.create(
            model="gpt-test",
            max_tokens=100,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    ]
    await direct.close()

    with gateway() as (url, _):
        async with x402_http_client(payer, test_token) as http:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http)
            completion = await client.chat.completions.create(
                model="gpt-test", max_tokens=100, messages=MESSAGES
            )
            assert_key_injected(llm)
            chunks = [
                chunk.model_dump()
                async for chunk in await client.chat.completions.create(
                    model="gpt-test",
                    max_tokens=100,
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            ]
            assert_key_injected(llm)
    assert completion.model_dump() == expected.model_dump()
    assert chunks == expected_chunks
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert test_token.balance_of(pay_to) == 2 * 500_000
