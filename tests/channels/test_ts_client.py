"""The official TypeScript client pays every adapter and the gateway over one channel.

``@x402/fetch`` with ``@x402/evm``'s batch-settlement client scheme, run by node
(``js/pay_channel.mjs``), pays N requests: the first one deposits into the escrow on the local
chain, every later one is paid by a voucher. Each server is real (uvicorn, waitress, or
``x402gate proxy`` in a child process) and its facilitator is our ``LocalFacilitator`` (over
HTTP for the servers built here). What is asserted is what the buyer and the seller see: N
answers 200 with the content and a receipt charging the price, no paid request ever answered
402 (no corrective round trip), one deposit settled on chain and nothing more moved by the
vouchers, and the server's charged total for the channel equal to N x the price.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from x402gate import PaymentGate
from x402gate.facilitators import LocalFacilitator
from x402gate.gate import ChannelSettings

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

pytestmark = pytest.mark.chain

ROOT = Path(__file__).resolve().parents[2]
PAYER_SCRIPT = Path(__file__).parent / "js" / "pay_channel.mjs"
PACKAGES = ("@x402/fetch", "@x402/evm", "@x402/core", "viem")
NODE_TIMEOUT_SECONDS = 180
PRICE = 1_000  # $0.001 in 6-decimal units
DEPOSIT = 20_000  # the announced minimum deposit, which the client deposits
N = 5
CONTENT = {"content": "PAID"}


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        # CI (X402GATE_REQUIRE_CHAIN=1) has node, as the chain needs it: never skip there.
        if os.environ.get("X402GATE_REQUIRE_CHAIN") == "1":
            pytest.fail("node is not installed (X402GATE_REQUIRE_CHAIN=1)", pytrace=False)
        pytest.skip("node is not installed: the x402 TypeScript client is an npm package")
    for package in PACKAGES:
        if not (ROOT / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"npm package {package} is missing: run `npm ci` in {ROOT}", pytrace=False)
    return node


def pay_with_ts_client(
    payer: LocalAccount, token: TestToken, rpc_url: str, count: int, *urls: str
) -> dict[str, Any]:
    """Run the TypeScript payer for ``count`` requests over ``urls``; its decoded report."""
    command = [_node(), str(PAYER_SCRIPT), token.asset.network, token.address, str(count), *urls]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={
            **os.environ,
            "X402_PAYER_KEY": "0x" + bytes(payer.key).hex(),
            "X402_RPC_URL": rpc_url,
        },
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(lines[0])
    assert report["error"] is None, report["error"]
    return report


def assert_paid_by_one_channel(report: dict[str, Any], count: int) -> str:
    """``count`` answers 200 with the content, each receipt charging the price on one channel,
    and no paid request answered 402; returns the channel id."""
    answers = report["answers"]
    assert [a["status"] for a in answers] == [200] * count, answers
    channel_ids: set[str] = set()
    for step, answer in enumerate(answers, start=1):
        assert json.loads(answer["body"]) == CONTENT
        receipt = answer["paymentResponse"]
        assert receipt is not None, "no PAYMENT-RESPONSE header"
        assert receipt["success"] is True, receipt
        assert receipt["transaction"] == ""
        assert receipt["extra"]["chargedAmount"] == str(PRICE)
        state = receipt["extra"]["channelState"]
        assert state["chargedCumulativeAmount"] == str(step * PRICE)
        assert state["balance"] == str(DEPOSIT)  # the deposit; vouchers move nothing on chain
        channel_ids.add(state["channelId"])
    assert len(channel_ids) == 1, channel_ids
    # @x402/fetch asks unpaid first on every request; every paid request was served at once.
    paid = [e for e in report["exchanges"] if e["paid"]]
    assert [e["status"] for e in paid] == [200] * count, report["exchanges"]
    unpaid = [e for e in report["exchanges"] if not e["paid"]]
    assert [e["status"] for e in unpaid] == [402] * count, report["exchanges"]
    return channel_ids.pop()


def assert_one_deposit_on_chain(
    channel_contracts: ChannelContracts,
    token: TestToken,
    payer: LocalAccount,
    before: int,
    channel_id: str,
) -> None:
    """The escrow holds exactly the one deposit, nothing claimed, and the payer's tokens moved
    once, by that deposit (vouchers move nothing on chain)."""
    on_chain = channel_contracts.channel(channel_id)
    assert on_chain.balance == DEPOSIT
    assert on_chain.total_claimed == 0
    assert token.balance_of(payer.address) == before - DEPOSIT


# -- the facilitator: our LocalFacilitator, counted -----------------------------------------------


class CountingFacilitator:
    """A LocalFacilitator in the gate's process, counting its settlements (deposits)."""

    def __init__(self, inner: LocalFacilitator) -> None:
        self.inner = inner
        self.settled = 0

    async def supported(self) -> Any:
        return await self.inner.supported()

    async def verify(self, payload: Any, requirements: Any) -> Any:
        return await self.inner.verify(payload, requirements)

    async def settle(self, payload: Any, requirements: Any) -> Any:
        self.settled += 1
        return await self.inner.settle(payload, requirements)


@pytest.fixture
def authorizer(chain: LocalChain) -> LocalAccount:
    return chain.new_account()


@pytest.fixture
def facilitator(
    chain: LocalChain, channel_contracts: ChannelContracts, facilitator_account: LocalAccount
) -> Iterator[CountingFacilitator]:
    inner = LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)
    try:
        yield CountingFacilitator(inner)
    finally:
        inner.close()


# -- servers built around a PaymentGate made here ------------------------------------------------


def _asgi_app(gate: PaymentGate, runs: list[str]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def paid(request: Request) -> JSONResponse:
        runs.append("paid")
        return JSONResponse(CONTENT)

    app = Starlette(routes=[Route("/paid", paid)])
    return PaymentMiddleware(app, gate=gate, routes={"GET /paid": "$0.001"})


def _fastapi_app(gate: PaymentGate, runs: list[str]) -> Any:
    from fastapi import Depends, FastAPI

    from x402gate.fastapi import install, require_payment

    app = FastAPI()
    install(app, gate)

    @app.get("/paid", dependencies=[Depends(require_payment("$0.001"))])
    async def paid() -> dict[str, str]:
        runs.append("paid")
        return CONTENT

    return app


def _wsgi_app(gate: PaymentGate, runs: list[str]) -> Any:
    from x402gate.wsgi import PaymentMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        runs.append(environ.get("PATH_INFO", "/").strip("/"))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(CONTENT).encode()]

    return PaymentMiddleware(app, gate=gate, routes={"GET /paid": "$0.001"})


GATE_APPS: dict[str, tuple[str, Callable[[PaymentGate, list[str]], Any]]] = {
    "asgi": ("starlette", _asgi_app),
    "fastapi": ("fastapi", _fastapi_app),
    "wsgi": ("waitress", _wsgi_app),
}


@pytest.mark.parametrize("adapter", sorted(GATE_APPS))
def test_ts_client_pays_a_gate_built_in_code_by_one_deposit_and_vouchers(
    adapter: str,
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    authorizer: LocalAccount,
    facilitator: CountingFacilitator,
    channel_contracts: ChannelContracts,
    tmp_path: Path,
) -> None:
    framework, make_app = GATE_APPS[adapter]
    pytest.importorskip(framework)
    pytest.importorskip("uvicorn")
    from x402gate.demo import serve_in_thread
    from x402gate.testing.servers import serve_wsgi

    gate = PaymentGate(
        pay_to=chain.new_account().address,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'gate.db'}",
        startup_checks="off",
        limit_in_flight=False,
        channels=ChannelSettings(receiver_authorizer=authorizer.address, min_deposit=DEPOSIT),
    )
    runs: list[str] = []
    serve = serve_wsgi if adapter == "wsgi" else serve_in_thread
    before = test_token.balance_of(payer.address)
    try:
        with serve(make_app(gate, runs)) as base_url:
            report = pay_with_ts_client(payer, test_token, chain.rpc_url, N, f"{base_url}/paid")
        channel_id = assert_paid_by_one_channel(report, N)
        assert runs == ["paid"] * N
        assert facilitator.settled == 1  # the deposit, and nothing else
        assert_one_deposit_on_chain(channel_contracts, test_token, payer, before, channel_id)
        stored = gate.store.channel_get(channel_id)
        assert stored is not None
        assert stored.charged == N * PRICE
        assert stored.balance == DEPOSIT
    finally:
        gate.close()
