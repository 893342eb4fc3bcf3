"""Gateways on loopback, in front of the fake LLM provider, paid on the local chain."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("yaml")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from x402gate.gateway import Gateway, parse_config
from x402gate.gateway.app import server_stack
from x402gate.testing.fake_llm import FakeLLM, serve_asgi, serve_fake_llm

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
"""The API key the gateway injects: it must reach the fake provider and never a client."""

SESSION_SECRET = "s" * 48

GATEWAY_SERVER_OPTIONS: dict[str, Any] = {
    # The settings of x402gate.gateway.app.uvicorn_config, minus host and port.
    **server_stack(),
    "lifespan": "on",
    "proxy_headers": False,
    "server_header": False,
    "date_header": False,
    "log_level": "warning",
}

# $1 per 1k input tokens, $2 per 1k output tokens: 1,000 / 2,000 micro-dollars a token.
IN_PRICE, OUT_PRICE = 1_000, 2_000

HEADER = """\
gateway:
  discovery: true
  secret: ${{SESSION_SECRET}}
  public_origin: https://gateway.test
  trusted_proxies: ["127.0.0.1"]
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
upstreams:
  llm:
    url: {llm_url}
    headers:
      x-api-key: ${{UPSTREAM_KEY}}
      authorization: Bearer ${{UPSTREAM_KEY}}
      anthropic-version: 2023-06-01
    timeout: {timeout}
"""

ROUTES = """\
routes:
  "GET /flat/*":
    upstream: llm
    path: /echo/{*}
    price: $0.01
    description: Anything under /flat, one cent
  "POST /glob/v1/messages":
    upstream: llm
    path: /v1/messages
    match:
      - when: {body.model: "claude-opus-*"}
        price: $0.03
      - when: {body.model: "claude-sonnet-*"}
        price: $0.01
    fallback: $0.005
  "POST /table/v1/messages":
    upstream: llm
    path: /v1/messages
    type: token-based
    models:
      claude-opus-4-5: $0.04
      claude-haiku-4-5: $0.002
      "claude-sonnet-*": $0.012
    fallback: $0.02
  "POST /v1/messages":
    upstream: llm
    type: per-token
    models:
      "claude-*": {input: $1, output: $2, per: 1000}
    credit_topup: $0.50
  "POST /v1/chat/completions":
    upstream: llm
    type: per-token
    models:
      "gpt-*": {input: $1, output: $2, per: 1000}
    credit_topup: $0.50
  "POST /flat/v1/chat/completions":
    upstream: llm
    path: /v1/chat/completions
    price: $0.02
  "POST /before/v1/messages":
    upstream: llm
    path: /v1/messages
    price: $0.01
    settlement: before
"""


@pytest.fixture(scope="session")
def _llm_server() -> Iterator[FakeLLM]:
    with serve_fake_llm() as llm:
        yield llm


@pytest.fixture
def llm(_llm_server: FakeLLM) -> Iterator[FakeLLM]:
    """The fake provider, with no recorded request."""
    _llm_server.clear()
    yield _llm_server
    _llm_server.release()  # a held stream left behind must not block the next test's


@contextlib.contextmanager
def serve_gateway(gateway: Gateway) -> Iterator[str]:
    """Serve ``gateway`` as ``x402gate proxy`` does, on a free loopback port."""
    with serve_asgi(gateway, **GATEWAY_SERVER_OPTIONS) as url:
        yield url


GatewayFactory = Callable[..., contextlib.AbstractContextManager[tuple[str, Gateway]]]


@pytest.fixture
def gateway_yaml(
    chain: Any, test_token: Any, facilitator_account: Any, pay_to: str, tmp_path: Path, llm: FakeLLM
) -> Callable[..., tuple[str, dict[str, str]]]:
    """``make(routes=ROUTES, llm_url=..., timeout=2)`` → the text of a gateway file for this
    chain and its environment."""

    def make(
        routes: str = ROUTES, *, llm_url: str | None = None, timeout: float = 2
    ) -> tuple[str, dict[str, str]]:
        text = HEADER.format(
            pay_to=pay_to,
            network=chain.network,
            token=test_token.asset.address,
            rpc_url=chain.rpc_url,
            tmp=tmp_path,
            llm_url=llm_url or llm.url,
            timeout=timeout,
        ) + textwrap.dedent(routes)
        env = {
            "FACILITATOR_KEY": facilitator_account.key.hex(),
            "UPSTREAM_KEY": UPSTREAM_KEY,
            "SESSION_SECRET": SESSION_SECRET,
        }
        return text, env

    return make


@pytest.fixture
def gateway(gateway_yaml: Callable[..., tuple[str, dict[str, str]]]) -> GatewayFactory:
    """``with gateway(routes=..., llm_url=...) as (url, gw)``: a gateway served on loopback."""

    @contextlib.contextmanager
    def start(**options: Any) -> Iterator[tuple[str, Gateway]]:
        text, env = gateway_yaml(**options)
        config = parse_config(text, source="gateway.yaml", env=env)
        app = Gateway(config)
        with serve_gateway(app) as url:
            yield url, app

    return start
