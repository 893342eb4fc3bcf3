"""Every billing unit through the gateway, paid on the local chain by the buyer helper: the
official OpenAI SDK for images, speech, transcription and embeddings, and both official SDKs for
text priced from the built-in model table.

The gateway is built from its file in front of the fake LLM provider and served by uvicorn as
``x402gate proxy`` serves it; the buyer deposits once into a payment channel and pays every call
with a voucher. Each test computes what each call must cost from what the SDK got back (images
returned, characters sent, audio seconds uploaded, tokens reported) and the prices of the file
or the table, and checks the gateway charged exactly that.
"""

from __future__ import annotations

import base64
import contextlib
import json
import textwrap
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate.client import http_client
from x402gate.metering import builtin_prices
from x402gate.testing.fake_media import DIMENSIONS, mp3_bytes, wav_bytes

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

MIN_DEPOSIT = 1_000_000  # $1
HD_IMAGE = 80_000  # $0.08
SPEECH_PER_CHAR = 15  # $15 per million characters
WHISPER_PER_MINUTE = 6_000  # $0.006
EMBEDDING_PER_TOKEN = 100  # $100 per million tokens: the route's override of the table

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
channels:
  receiver_authorizer_key: ${{AUTHORIZER_KEY}}
  min_deposit: {floor}
upstreams:
  llm:
    url: {upstream}
routes:
  "POST /v1/chat/completions":
    upstream: llm
    type: token-based
    price_table: builtin
  "POST /v1/messages":
    upstream: llm
    type: token-based
    price_table: builtin
  "POST /v1/images/generations":
    upstream: llm
    type: images
    sizes:
      "1024x1024": {{standard: $0.04, hd: $0.08}}
    max_images: 4
  "POST /v1/audio/speech":
    upstream: llm
    type: speech
    models: {{"tts-*": $15}}
  "POST /v1/audio/transcriptions":
    upstream: llm
    type: transcription
    models: {{whisper-1: $0.006}}
    min_bitrate: 8000
  "POST /v1/embeddings":
    upstream: llm
    type: embeddings
    price_table: builtin
    models: {{text-embedding-3-small: $100}}
"""


@pytest.fixture
def served(
    chain: LocalChain,
    test_token: TestToken,
    facilitator_account: LocalAccount,
    pay_to: str,
    tmp_path: Path,
    channel_contracts: ChannelContracts,
) -> Iterator[tuple[str, Gateway]]:
    from x402gate.gateway import Gateway, parse_config
    from x402gate.gateway.app import server_stack
    from x402gate.testing.fake_llm import serve_asgi, serve_fake_llm

    authorizer = chain.new_account()
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(serve_fake_llm())
        text = GATEWAY.format(
            floor=MIN_DEPOSIT,
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
        yield stack.enter_context(serve_asgi(gateway, **options)), gateway


def _paying(payer: LocalAccount, token: TestToken, recorder: Recorder) -> httpx.Client:
    return http_client(
        payer.key.hex(),
        max_per_request="$0.50",
        max_deposit="$2",
        max_total="$2",
        assets=token.asset,
        transport=recorder,
    )


def _check_one_deposit_paid_exactly(
    recorder: Recorder,
    gateway: Gateway,
    expected: list[int],
    chain: LocalChain,
    facilitator: LocalAccount,
    payer_spent: int,
) -> None:
    schemes = [json.loads(base64.b64decode(h))["accepted"]["scheme"] for h in recorder.payments]
    assert schemes == ["batch-settlement"] * len(expected)
    charged = [int(r["extra"]["chargedAmount"]) for r in recorder.receipts]
    assert charged == expected
    # One transaction, the deposit: the calls moved no money on chain.
    assert chain.tx_count(facilitator.address) == 1
    assert payer_spent == MIN_DEPOSIT
    stored = gateway.gate.store.channel_get(recorder.channel_ids()[-1])
    assert stored is not None and stored.charged == sum(expected)


def test_openai_sdk_pays_images_speech_transcription_and_embeddings_by_their_units(
    served: Any,
    chain: LocalChain,
    payer: LocalAccount,
    test_token: TestToken,
    facilitator_account: LocalAccount,
) -> None:
    url, gateway = served
    recorder = Recorder(httpx.HTTPTransport())
    http = _paying(payer, test_token, recorder)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http)
    before = test_token.balance_of(payer.address)
    expected: list[int] = []

    # Images: n and quality from the request, the count from the answer.
    images = client.images.generate(model="dall-e-3", prompt="a fox", n=2, quality="hd")
    assert len(images.data) == 2 and images.data[0].b64_json
    expected.append(len(images.data) * HD_IMAGE)
    # The provider filtered one of three images out: two are charged, not the three quoted.
    fewer = client.images.generate(
        model="dall-e-3",
        prompt="a fox",
        n=3,
        quality="hd",
        extra_headers={"x-fake-llm": "fewer-images"},
    )
    assert len(fewer.data) == 2
    expected.append(len(fewer.data) * HD_IMAGE)

    # Speech: the characters of the input.
    text = "The gateway sells speech by the character."
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input=text)
    assert speech.content.startswith(b"RIFF")
    expected.append(len(text) * SPEECH_PER_CHAR)

    # Transcription: the uploaded file's duration, WAV and MP3.
    for name, audio, seconds in (
        ("speech.wav", wav_bytes(30), Fraction(30)),
        ("speech.mp3", mp3_bytes(2297, xing_frames=2297), Fraction(2297 * 1152, 44100)),
    ):
        answer = client.audio.transcriptions.create(model="whisper-1", file=(name, audio))
        assert answer.text == f"{len(audio)} bytes of {name}"
        cost = seconds * WHISPER_PER_MINUTE / 60
        expected.append(-(-cost.numerator // cost.denominator))

    # Embeddings: the tokens the answer reports, at the route's override of the table.
    vectors = client.embeddings.create(
        model="text-embedding-3-small", input=["paid embeddings", "by input token"]
    )
    assert [len(item.embedding) for item in vectors.data] == [DIMENSIONS, DIMENSIONS]
    expected.append(vectors.usage.prompt_tokens * EMBEDDING_PER_TOKEN)
    http.close()

    spent = before - test_token.balance_of(payer.address)
    _check_one_deposit_paid_exactly(recorder, gateway, expected, chain, facilitator_account, spent)


def _table_cost(model: str, input_tokens: int, output_tokens: int) -> int:
    row = builtin_prices().lookup(model)
    assert row is not None, model
    return -(-(input_tokens * row.input + output_tokens * row.output) // 1_000_000)


def test_both_sdks_pay_text_at_the_built_in_table_prices(
    served: Any,
    chain: LocalChain,
    payer: LocalAccount,
    test_token: TestToken,
    facilitator_account: LocalAccount,
) -> None:
    url, gateway = served
    recorder = Recorder(httpx.HTTPTransport())
    http = _paying(payer, test_token, recorder)
    gpt = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http)
    claude = anthropic.Anthropic(base_url=url, api_key="unused", http_client=http)
    before = test_token.balance_of(payer.address)
    messages = [{"role": "user", "content": "Price this answer from the table, please."}]
    expected: list[int] = []
    for model in ("gpt-4o-mini", "gpt-4.1", "gemini-2.5-flash"):
        completion = gpt.chat.completions.create(model=model, max_tokens=50, messages=messages)
        assert completion.usage is not None
        usage = completion.usage
        expected.append(_table_cost(model, usage.prompt_tokens, usage.completion_tokens))
    for model in ("claude-sonnet-4-5", "claude-haiku-4-5"):
        message = claude.messages.create(model=model, max_tokens=50, messages=messages)
        usage = message.usage
        expected.append(_table_cost(model, usage.input_tokens, usage.output_tokens))
    # A model the table does not know is refused before any payment.
    with pytest.raises(openai.BadRequestError):
        gpt.chat.completions.create(model="mystery-1", max_tokens=50, messages=messages)
    http.close()

    spent = before - test_token.balance_of(payer.address)
    _check_one_deposit_paid_exactly(recorder, gateway, expected, chain, facilitator_account, spent)
