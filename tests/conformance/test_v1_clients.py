"""x402 v1 buyers pay every adapter and the gateway: the npm clients ``x402-fetch`` 1.x and
``x402-axios`` 0.x, run by node, against real servers on a local chain whose chain id is Base
Sepolia's (84532), so the route's network is configured as ``base-sepolia``, as in production.

v1 clients read the terms from the 402's JSON body (``maxAmountRequired``, ``resource``,
``description``, ``mimeType``, network names), pay with ``X-PAYMENT`` and read the receipt from
``X-PAYMENT-RESPONSE``. What is asserted is what the buyer and the seller see: statuses, content,
the receipt and its network name, transactions and balances on chain, handler and upstream runs.
The v2 header and v2 clients keep working on the same route.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from x402.http import decode_payment_response_header

from x402gate import Asset, LocalFacilitator, PaymentGate
from x402gate.testing.chain import LocalChain, TestToken
from x402gate.testing.clients import paying_httpx_client
from x402gate.testing.payments import decode_payment_required

from .test_conformance import ADAPTERS, ORIGIN, PRICE, DrainingFacilitator, _module

pytestmark = pytest.mark.chain

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SCRIPT = Path(__file__).with_name("x402_v1_client.cjs")
BASE_SEPOLIA_CHAIN_ID = 84532
CLIENTS = ("x402-fetch", "x402-axios")
NODE_TIMEOUT_SECONDS = 120


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        # CI (X402GATE_REQUIRE_CHAIN=1) has node, as the chain needs it: never skip there.
        if os.environ.get("X402GATE_REQUIRE_CHAIN") == "1":
            pytest.fail("node is not installed (X402GATE_REQUIRE_CHAIN=1)", pytrace=False)
        pytest.skip("node is not installed: the x402 v1 clients are npm packages")
    for package in ("x402-fetch", "x402-axios"):
        if not (ROOT / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"npm package {package} is missing: run `npm ci` in {ROOT}", pytrace=False)
    return node


def pay_with_v1_clients(
    key: bytes | str, url: str, method: str = "GET", body: Any = None
) -> dict[str, dict[str, Any]]:
    """Pay ``url`` once with x402-fetch, then once with x402-axios; their outcomes by name.

    ``key`` is the buyer's private key as bytes (or hex), handed over in the environment."""
    key = "0x" + (bytes(key).hex() if isinstance(key, bytes) else key.removeprefix("0x"))
    command = [_node(), str(CLIENT_SCRIPT), "fetch,axios", method, url]
    if body is not None:
        command.append(json.dumps(body))
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "X402_V1_PAYER_KEY": key},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outcomes = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    by_client = {outcome["client"]: outcome for outcome in outcomes}
    assert set(by_client) == set(CLIENTS), done.stdout + done.stderr
    return by_client


# -- a chain with Base Sepolia's chain id --------------------------------------------------------


@pytest.fixture(scope="module")
def sepolia_chain(local_chain: LocalChain) -> Iterator[LocalChain]:
    """A second anvil with chain id 84532 (``local_chain`` first: it skips or fails the test
    the same way when anvil is missing)."""
    with LocalChain(local_chain.anvil, chain_id=BASE_SEPOLIA_CHAIN_ID) as node:
        yield node


@pytest.fixture(scope="module")
def sepolia_token(sepolia_chain: LocalChain) -> TestToken:
    """The test USDC with Base Sepolia USDC's EIP-712 domain ("USDC", version "2")."""
    return sepolia_chain.deploy_token(name="USDC", symbol="USDC", version="2")


@pytest.fixture
def sepolia(sepolia_chain: LocalChain, sepolia_token: TestToken) -> Iterator[LocalChain]:
    snapshot_id = sepolia_chain.snapshot()
    yield sepolia_chain
    sepolia_chain.revert(snapshot_id)


@pytest.fixture
def asset(sepolia_token: TestToken) -> Asset:
    """The accepted token, configured by the network's v1 name as a user would."""
    return Asset(network="base-sepolia", address=sepolia_token.address, name="USDC", version="2")


@pytest.fixture
def buyer(sepolia: LocalChain, sepolia_token: TestToken) -> Any:
    return sepolia.new_account(eth_wei=0, token=sepolia_token, token_amount=1_000_000)


@pytest.fixture
def seller() -> str:
    from eth_account import Account

    address: str = Account.create().address
    return address


@pytest.fixture
def settler(sepolia: LocalChain) -> Iterator[LocalFacilitator]:
    account = sepolia.new_account(eth_wei=100 * 10**18)
    facilitator = LocalFacilitator(sepolia.rpc_url, account.key.hex(), networks=sepolia.network)
    try:
        yield facilitator
    finally:
        facilitator.close()


def assert_paid_on_chain(
    outcome: dict[str, Any], chain: LocalChain, payer: str, content: Any
) -> str:
    """One v1 client's outcome: 200 with the content, a v1 receipt naming base-sepolia whose
    transaction is mined; returns the transaction hash."""
    assert outcome.get("error") is None, outcome
    assert outcome["status"] == 200, outcome
    assert json.loads(outcome["body"]) == content
    receipt = outcome["paymentResponse"]
    assert receipt is not None, "no X-PAYMENT-RESPONSE header"
    assert receipt["success"] is True and receipt["network"] == "base-sepolia", receipt
    assert receipt["payer"] == payer
    # The v1 receipt carries the v1 fields only.
    assert set(receipt) <= {"success", "errorReason", "payer", "transaction", "network"}
    assert chain.w3.eth.get_transaction_receipt(receipt["transaction"])["status"] == 1
    transaction: str = receipt["transaction"]
    return transaction


# -- every adapter -------------------------------------------------------------------------------


@pytest.fixture
def draining(
    settler: LocalFacilitator, sepolia: LocalChain, sepolia_token: TestToken
) -> DrainingFacilitator:
    """The real facilitator; with ``drain`` set, the payer empties its wallet right before
    settlement (so the settlement really fails on chain)."""
    return DrainingFacilitator(settler, sepolia, sepolia_token)


@pytest.fixture(params=ADAPTERS)
def served(
    request: pytest.FixtureRequest,
    draining: DrainingFacilitator,
    asset: Asset,
    seller: str,
    tmp_path: Path,
) -> Iterator[tuple[str, Any]]:
    adapter = _module(request.param)
    gate = PaymentGate(
        pay_to=seller,
        assets=asset,
        facilitator=draining,
        store=f"sqlite:///{tmp_path / 'r.db'}",
        public_origin=ORIGIN,  # the conformance apps have a metered route too
    )
    app, calls = adapter.make_app(gate)
    with adapter.serve(app) as base_url:
        yield base_url, calls
    gate.close()


def test_the_402_body_is_the_v1_document_and_the_header_stays_v2(
    served: tuple[str, Any], asset: Asset, seller: str
) -> None:
    base_url, calls = served
    response = httpx.get(f"{base_url}/paid", timeout=30)
    assert response.status_code == 402
    body = response.json()
    assert body["x402Version"] == 1 and body["error"] == "payment_required"
    (terms,) = body["accepts"]
    assert terms == {
        "scheme": "exact",
        "network": "base-sepolia",
        "maxAmountRequired": str(PRICE),
        "resource": f"{ORIGIN}/paid",  # the configured origin, never the Host header
        "description": terms["description"],
        "mimeType": terms["mimeType"],
        "payTo": seller,
        "maxTimeoutSeconds": 300,
        "asset": asset.address,
        "extra": {"name": "USDC", "version": "2"},
    }
    assert isinstance(terms["description"], str) and isinstance(terms["mimeType"], str)
    required = decode_payment_required(response.headers["payment-required"])
    assert required.x402_version == 2
    (v2,) = required.accepts
    assert (v2.network, v2.amount, v2.pay_to, v2.asset) == (
        "eip155:84532",
        str(PRICE),
        seller,
        asset.address,
    )
    assert calls["paid"] == 0


def test_x402_fetch_and_x402_axios_pay_every_adapter(
    served: tuple[str, Any], sepolia: LocalChain, sepolia_token: TestToken, buyer: Any, seller: str
) -> None:
    base_url, calls = served
    outcomes = pay_with_v1_clients(buyer.key, f"{base_url}/paid")
    content = {"content": "PAID-CONTENT", "payer": buyer.address}
    transactions = {
        assert_paid_on_chain(outcomes[name], sepolia, buyer.address, content) for name in CLIENTS
    }
    assert len(transactions) == 2  # one transfer each, nothing paid twice
    assert sepolia_token.balance_of(buyer.address) == 1_000_000 - 2 * PRICE
    assert sepolia_token.balance_of(seller) == 2 * PRICE
    assert calls["paid"] == 2


async def test_v2_clients_still_pay_the_same_route_in_v2(
    served: tuple[str, Any], sepolia_token: TestToken, buyer: Any, seller: str
) -> None:
    base_url, calls = served
    async with paying_httpx_client(buyer, asset=sepolia_token, base_url=base_url) as client:
        response = await client.get("/paid", timeout=30)
    assert response.status_code == 200, response.text
    assert "x-payment-response" not in response.headers
    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert receipt.success and receipt.network == "eip155:84532"
    assert sepolia_token.balance_of(seller) == PRICE
    assert calls["paid"] == 1


# -- the gateway, as ``x402gate proxy`` runs it ---------------------------------------------------

GATEWAY_YAML = """\
pay_to: "{pay_to}"
accepts:
  - network: base-sepolia
    asset: "{token}"
    name: USDC
    version: "2"
facilitator:
  rpc_url: {rpc_url}
  private_key: ${{FACILITATOR_KEY}}
store: sqlite:///{tmp}/gateway.db
upstreams:
  echo:
    url: {upstream}
routes:
  "GET /flat/*":
    upstream: echo
    path: /echo/{{*}}
    price: $0.01
    description: Anything under /flat, one cent
"""


@contextlib.contextmanager
def proxy(config: Path, env: dict[str, str]) -> Iterator[str]:
    """``x402gate proxy <config> --port 0`` in a child process; yields its URL."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    process = subprocess.Popen(
        [sys.executable, "-m", "x402gate.cli", "proxy", str(config), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**base, **env},
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            output.append(line)
            lines.put(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=60)
        assert first.startswith("x402gate gateway on http://127.0.0.1:"), "".join(output)
        yield first.split(" on ", 1)[1].split(": ", 1)[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        assert process.stderr is not None
        process.stderr.close()


def test_x402_fetch_and_x402_axios_pay_the_gateway(
    sepolia: LocalChain,
    sepolia_token: TestToken,
    buyer: Any,
    seller: str,
    tmp_path: Path,
) -> None:
    pytest.importorskip("yaml")
    pytest.importorskip("uvicorn")
    from x402gate.testing.fake_llm import serve_fake_llm

    facilitator_account = sepolia.new_account(eth_wei=100 * 10**18)
    with serve_fake_llm() as upstream:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            GATEWAY_YAML.format(
                pay_to=seller,
                token=sepolia_token.address,
                rpc_url=sepolia.rpc_url,
                tmp=tmp_path,
                upstream=upstream.url,
            )
        )
        with proxy(config, {"FACILITATOR_KEY": facilitator_account.key.hex()}) as url:
            unpaid = httpx.get(f"{url}/flat/a/b?x=1", timeout=30)
            outcomes = pay_with_v1_clients(buyer.key, f"{url}/flat/a/b?x=1")
        assert unpaid.status_code == 402
        (terms,) = unpaid.json()["accepts"]
        assert (terms["network"], terms["maxAmountRequired"], terms["resource"]) == (
            "base-sepolia",
            str(PRICE),
            f"{url}/flat/a/b?x=1",
        )
        assert terms["description"] == "Anything under /flat, one cent"
        echo = {"method": "GET", "path": "/echo/a/b", "query": "x=1", "body": ""}
        transactions = {
            assert_paid_on_chain(outcomes[name], sepolia, buyer.address, echo) for name in CLIENTS
        }
        assert len(transactions) == 2
        # The 402s never reached the upstream; each paid request did, once, without X-PAYMENT.
        assert len(upstream.requests) == 2
        assert all(r.header("x-payment") is None for r in upstream.requests)
    assert sepolia_token.balance_of(buyer.address) == 1_000_000 - 2 * PRICE
    assert sepolia_token.balance_of(seller) == 2 * PRICE


def _v1_header(payer: Any, base_url: str) -> dict[str, str]:
    """A v1 ``X-PAYMENT`` for ``/paid``, signed for the terms of its 402."""
    from x402gate.testing.payments import sign_exact_payment

    challenge = httpx.get(f"{base_url}/paid", timeout=30)
    requirements = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
    signed = sign_exact_payment(payer, requirements)
    v1 = {"x402Version": 1, "scheme": "exact", "network": "base-sepolia", "payload": signed.payload}
    return {"X-PAYMENT": base64.b64encode(json.dumps(v1).encode()).decode()}


def test_a_failed_v1_settlement_gets_a_v1_receipt_and_no_content(
    served: tuple[str, Any],
    draining: DrainingFacilitator,
    sepolia: LocalChain,
    sepolia_token: TestToken,
    buyer: Any,
    seller: str,
) -> None:
    base_url, calls = served
    header = _v1_header(buyer, base_url)
    sepolia.set_balance(buyer.address, 10**18)  # gas for the buyer's own draining transfer
    draining.drain = buyer
    response = httpx.get(f"{base_url}/paid", headers=header, timeout=30)
    assert response.status_code == 402, response.text
    assert "PAID-CONTENT" not in response.text
    body = response.json()
    assert body["x402Version"] == 1 and body["error"] == "invalid_exact_evm_insufficient_balance"
    assert body["accepts"][0]["network"] == "base-sepolia"
    receipt = json.loads(base64.b64decode(response.headers["x-payment-response"]))
    assert receipt == {
        "success": False,
        "errorReason": "invalid_exact_evm_insufficient_balance",
        "payer": buyer.address,
        "transaction": "",
        "network": "base-sepolia",
    }
    assert "payment-response" not in response.headers
    assert sepolia_token.balance_of(seller) == 0
    assert calls["paid"] == 1  # the handler ran (settlement "after"); its answer never left


def test_a_replayed_v1_payment_is_refused_with_a_v1_body_and_moves_nothing(
    served: tuple[str, Any], sepolia_token: TestToken, buyer: Any, seller: str
) -> None:
    base_url, calls = served
    header = _v1_header(buyer, base_url)
    first = httpx.get(f"{base_url}/paid", headers=header, timeout=30)
    again = httpx.get(f"{base_url}/paid", headers=header, timeout=30)
    assert first.status_code == 200, first.text
    receipt = json.loads(base64.b64decode(first.headers["x-payment-response"]))
    assert receipt["network"] == "base-sepolia" and receipt["success"] is True
    assert "payment-response" not in first.headers
    assert again.status_code == 402
    assert again.json()["x402Version"] == 1
    assert again.json()["error"] == "invalid_exact_evm_nonce_already_used"
    assert "x-payment-response" not in again.headers
    assert sepolia_token.balance_of(seller) == PRICE
    assert calls["paid"] == 1
