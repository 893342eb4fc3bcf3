"""The testing kit itself: LocalChain, the pytest fixtures and the paying clients."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest

from x402gate.testing import (
    ChainUnavailable,
    LocalChain,
    find_anvil,
    paying_httpx_client,
    paying_requests_session,
    spend_controls_for,
    x402_client_sync,
)

from . import payment_required, sdk_facilitator

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from x402 import PaymentRequirements, x402FacilitatorSync

    from x402gate._web.types import Receive, Scope, Send
    from x402gate.testing import TestToken

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


def _require_anvil() -> str:
    anvil = find_anvil()
    if anvil is None:
        if os.environ.get("X402GATE_REQUIRE_CHAIN") == "1":
            pytest.fail("anvil not found")
        pytest.skip("anvil not found: run `npm ci`")
    return anvil


# ---------------------------------------------------------------------------------- find_anvil


def test_find_anvil_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "my-anvil"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("X402GATE_ANVIL", str(fake))
    assert find_anvil() == str(fake)


def test_find_anvil_finds_the_repository_binary_from_anywhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pinned = REPO / "node_modules" / ".bin" / "anvil"
    if not pinned.exists():
        pytest.skip("the pinned anvil is not installed (npm ci)")
    monkeypatch.delenv("X402GATE_ANVIL", raising=False)
    monkeypatch.chdir(tmp_path)  # no node_modules above a temporary directory
    assert find_anvil() == str(pinned)


# ---------------------------------------------------------------------------------- LocalChain


def test_missing_binary_raises_with_install_hint(tmp_path: Path) -> None:
    with pytest.raises(ChainUnavailable, match="npm ci"):
        LocalChain(str(tmp_path / "no-such-anvil")).start()


def test_a_binary_that_exits_at_once_fails_fast() -> None:
    quitter = "/bin/true" if Path("/bin/true").exists() else "/usr/bin/true"
    started = time.monotonic()
    chain = LocalChain(quitter)
    with pytest.raises(ChainUnavailable, match="did not report its port"):
        chain.start()
    assert time.monotonic() - started < 5  # no waiting for the 20 s deadline
    assert not chain.running


def test_lifecycle_of_a_second_node_with_its_own_chain_id() -> None:
    anvil = _require_anvil()
    with LocalChain(anvil, chain_id=1337) as node:
        process = node._process  # the Popen itself: proves *our* child exits on stop()
        assert process is not None and node.pid == process.pid
        assert node.running
        assert node.network == "eip155:1337"
        assert node.rpc_url == f"http://127.0.0.1:{node.port}"
        assert node.w3.eth.chain_id == 1337
    assert process.returncode is not None  # our anvil has exited
    assert not node.running
    node.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{node.port}", timeout=2)

    with node:  # a stopped LocalChain starts again, as a brand-new node
        assert node.pid != process.pid
        assert node.block_number() == 0
        assert node.w3.eth.chain_id == 1337
    assert not node.running


def test_snapshot_revert_restores_balances_and_is_single_use(
    local_chain: LocalChain, test_token: TestToken
) -> None:
    holder = local_chain.new_account(eth_wei=0)
    snapshot_id = local_chain.snapshot()
    test_token.mint(holder.address, 42)
    local_chain.set_balance(holder.address, 5)
    assert test_token.balance_of(holder.address) == 42
    assert local_chain.eth_balance(holder.address) == 5
    local_chain.revert(snapshot_id)
    assert test_token.balance_of(holder.address) == 0
    assert local_chain.eth_balance(holder.address) == 0
    with pytest.raises(AssertionError, match="returned False"):
        local_chain.revert(snapshot_id)


def test_tx_count_and_block_number_track_transactions(
    chain: LocalChain, test_token: TestToken, pay_to: str
) -> None:
    sender = chain.new_account(token=test_token, token_amount=10)
    assert chain.tx_count(sender.address) == 0
    block = chain.block_number()
    chain.transact(sender, test_token.contract.functions.transfer(pay_to, 10))
    assert chain.tx_count(sender.address) == 1
    assert chain.block_number() == block + 1  # automine: one block per transaction


def test_new_account_is_funded_as_asked(chain: LocalChain, test_token: TestToken) -> None:
    account = chain.new_account(eth_wei=123, token=test_token, token_amount=4_500_000)
    assert chain.eth_balance(account.address) == 123
    assert test_token.balance_of(account.address) == 4_500_000
    assert chain.new_account().address != account.address
    with pytest.raises(ValueError, match="needs a token"):
        chain.new_account(token_amount=1)


def test_fixtures_give_a_funded_payer_and_a_fresh_payee(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    pay_to: str,
    facilitator_account: LocalAccount,
) -> None:
    assert test_token.balance_of(payer.address) == 100_000_000
    assert chain.eth_balance(payer.address) == 0  # EIP-3009 payers need no gas
    assert test_token.balance_of(pay_to) == 0
    assert chain.eth_balance(facilitator_account.address) > 10**18
    assert len({payer.address, pay_to, facilitator_account.address}) == 3


def test_import_is_lazy() -> None:
    code = (
        "import sys, x402gate.testing, x402gate.testing.pytest_plugin\n"
        "heavy = [m for m in ('web3', 'x402', 'eth_account') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert x402gate.testing.LocalChain.__name__ == 'LocalChain'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------- the plugin

ISOLATION_TESTS = """
HOLDER = "0x000000000000000000000000000000000000dEaD"

def test_a_mints(chain, test_token):
    test_token.mint(HOLDER, 5)
    assert test_token.balance_of(HOLDER) == 5

def test_b_sees_nothing_of_a(chain, test_token):
    assert test_token.balance_of(HOLDER) == 0

def test_c_without_chain_fixture(pay_to):
    assert pay_to.startswith("0x")
"""


# Plugins the inner sessions do not need: hypothesis' re-imports itself in every in-process
# session (seconds), pytest-asyncio warns about its unset loop scope.
INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:asyncio")


def test_plugin_isolates_tests_and_marks_chain_users(pytester: pytest.Pytester) -> None:
    _require_anvil()
    pytester.makepyfile(ISOLATION_TESTS)
    result = pytester.runpytest_inprocess(*INNER, "-q")
    result.assert_outcomes(passed=3)
    result = pytester.runpytest_inprocess(*INNER, "-q", "-m", "not chain")
    result.assert_outcomes(passed=1, deselected=2)


def test_plugin_skips_without_anvil_and_fails_when_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("X402GATE_ANVIL", str(tmp_path / "missing" / "anvil"))
    monkeypatch.delenv("X402GATE_REQUIRE_CHAIN", raising=False)
    pytester.makepyfile("def test_needs_chain(chain):\n    pass\n")
    result = pytester.runpytest_inprocess(*INNER, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*cannot run anvil*npm ci*"])

    monkeypatch.setenv("X402GATE_REQUIRE_CHAIN", "1")
    result = pytester.runpytest_inprocess(*INNER)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*X402GATE_REQUIRE_CHAIN=1*"])


# ---------------------------------------------------------------------------------- clients

PRICE = 10_000  # 0.01 USDC


def _paid_endpoint(
    facilitator: x402FacilitatorSync, offer: Any, requirement: PaymentRequirements
) -> Callable[[str | None], tuple[int, dict[str, str], bytes]]:
    """A minimal x402 server: 402 with the offer, or verify + settle the payment header."""
    from x402.http import (
        decode_payment_signature_header,
        encode_payment_required_header,
        encode_payment_response_header,
    )

    def handle(payment_header: str | None) -> tuple[int, dict[str, str], bytes]:
        if payment_header is None:
            return 402, {"PAYMENT-REQUIRED": encode_payment_required_header(offer)}, b"{}"
        payload = decode_payment_signature_header(payment_header)
        verified = facilitator.verify(payload, requirement)
        if not verified.is_valid:
            return 402, {"PAYMENT-REQUIRED": encode_payment_required_header(offer)}, b"{}"
        settled = facilitator.settle(payload, requirement)
        headers = {"PAYMENT-RESPONSE": encode_payment_response_header(settled)}
        return (200 if settled.success else 402), headers, b"paid content"

    return handle


@pytest.fixture
def paid_endpoint(
    chain: LocalChain, test_token: TestToken, facilitator_account: LocalAccount, pay_to: str
) -> Callable[[str | None], tuple[int, dict[str, str], bytes]]:
    offer, requirement = payment_required(test_token, pay_to, PRICE)
    return _paid_endpoint(sdk_facilitator(chain, facilitator_account), offer, requirement)


async def test_paying_httpx_client_pays_through_an_asgi_app(
    test_token: TestToken,
    payer: LocalAccount,
    pay_to: str,
    paid_endpoint: Callable[[str | None], tuple[int, dict[str, str], bytes]],
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        status, extra, body = paid_endpoint(headers.get("payment-signature"))
        raw = [(key.lower().encode(), value.encode()) for key, value in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async with paying_httpx_client(
        payer,
        asset=test_token.asset,
        base_url="http://test",
        transport=httpx.ASGITransport(app=app),
    ) as http:
        response = await http.get("/paid")
    assert response.status_code == 200
    assert response.content == b"paid content"
    assert "payment-response" in response.headers
    assert test_token.balance_of(pay_to) == PRICE
    assert test_token.balance_of(payer.address) == 100_000_000 - PRICE


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def wsgi_server(
    paid_endpoint: Callable[[str | None], tuple[int, dict[str, str], bytes]],
) -> Iterator[str]:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        status, headers, body = paid_endpoint(environ.get("HTTP_PAYMENT_SIGNATURE"))
        reason = {200: "OK", 402: "Payment Required"}[status]
        start_response(f"{status} {reason}", list(headers.items()))
        return [body]

    server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_paying_requests_session_pays_a_real_server(
    test_token: TestToken, payer: LocalAccount, pay_to: str, wsgi_server: str
) -> None:
    with paying_requests_session(payer, asset=test_token) as session:
        response = session.get(f"{wsgi_server}/paid", timeout=30)
    assert response.status_code == 200
    assert response.content == b"paid content"
    assert test_token.balance_of(pay_to) == PRICE


def test_client_refuses_to_pay_above_its_cap(
    test_token: TestToken, payer: LocalAccount, pay_to: str
) -> None:
    offer, _ = payment_required(test_token, pay_to, 2_000_000)
    capped = x402_client_sync(payer, asset=test_token, max_amount_per_payment=1_999_999)
    with pytest.raises(Exception, match="spend_controls"):
        capped.create_payment_payload(offer)
    generous = x402_client_sync(payer, asset=test_token, max_amount_per_payment=2_000_000)
    payload = generous.create_payment_payload(offer)
    assert payload.payload["authorization"]["value"] == "2000000"
    assert payload.payload["authorization"]["from"] == payer.address


def test_spend_controls_name_each_asset_with_an_atomic_cap(test_token: TestToken) -> None:
    from x402gate.assets import usdc

    controls = spend_controls_for([test_token, usdc("base")], max_amount_per_payment=5)
    assert controls == {
        "allowed_assets": [
            {"network": "eip155:31337", "asset": test_token.address, "max_amount_per_payment": "5"},
            {
                "network": "eip155:8453",
                "asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
                "max_amount_per_payment": "5",
            },
        ]
    }
