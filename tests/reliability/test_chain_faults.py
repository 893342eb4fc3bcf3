"""Chain faults in the middle of settlement, on a dedicated anvil that the test stops and restarts.

The session chain is not touched: each test starts its own anvil (``--state`` file, so a graceful
stop dumps the chain and a restart loads it, like a node restart; a SIGKILL loses everything since
the last dump, like a reorg that drops a transaction). The facilitator reaches the node through a
small JSON-RPC relay, so the test can act at an exact point of the settlement (right after the
settlement transaction was accepted by the node) and keep one RPC URL across restarts.

What must hold whatever the chain does: no content is served without a settlement on chain, and
the replay store never records as settled ("used") a payment that is not on chain.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from eth_account import Account
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from web3 import Web3
from x402.http import decode_payment_response_header

from x402gate import LocalFacilitator, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.stores import replay_key
from x402gate.testing.chain import LocalChain, TestToken, load_token_artifact
from x402gate.testing.payments import decode_payment_required, sign_exact_payment

from ._support import payment_headers, pending_nonce, transactions

pytestmark = [pytest.mark.chain, pytest.mark.slow]

PRICE = 10_000
CONTENT = "the paid content"


class RpcRelay:
    """A JSON-RPC relay on loopback in front of the node.

    ``after[method] = fn`` runs ``fn`` once, after the node answered ``method`` and before the
    answer goes back (e.g. stop the node right after it accepted a transaction). While the node
    is down the relay closes connections without an answer, as a dead node's network path does.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.after: dict[str, Callable[[], None]] = {}
        self.methods: list[str] = []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                calls = json.loads(body)
                names = [c["method"] for c in (calls if isinstance(calls, list) else [calls])]
                relay.methods.extend(names)
                answer = relay.forward(body)
                for name in names:
                    hook = relay.after.pop(name, None)
                    if hook is not None:
                        hook()
                if answer is None:
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, body: bytes) -> bytes | None:
        target = urlsplit(self.target)
        connection = http.client.HTTPConnection(target.netloc, timeout=10)
        try:
            connection.request("POST", "/", body, {"Content-Type": "application/json"})
            return connection.getresponse().read()
        except OSError:
            return None
        finally:
            connection.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class Node:
    """A dedicated anvil with a state file, its token, a funded payer and a facilitator key."""

    def __init__(self, anvil: str, workdir: Path) -> None:
        script = workdir / "anvil-with-state"
        # exec: the PID LocalChain signals is anvil's own.
        script.write_text(f'#!/bin/sh\nexec "{anvil}" "$@" --state "{workdir / "state.json"}"\n')
        script.chmod(0o755)
        self.chain = LocalChain(str(script)).start()
        token = self.chain.deploy_token()
        self.payer = self.chain.new_account(eth_wei=0, token=token, token_amount=PRICE * 100)
        self.facilitator_account = self.chain.new_account(eth_wei=10**20)
        self.pay_to = Account.create().address
        self.token_address = token.address
        self.restart()  # dump the funded chain: a SIGKILL later comes back to this point
        self.relay = RpcRelay(self.chain.rpc_url)

    @property
    def token(self) -> TestToken:
        # A contract object bound to the current node (its port changes on every restart).
        contract = self.chain.w3.eth.contract(
            address=Web3.to_checksum_address(self.token_address), abi=load_token_artifact()["abi"]
        )
        return TestToken(self.chain, contract, name="USD Coin", symbol="USDC", version="2")

    def stop(self) -> None:
        """Graceful stop: anvil dumps its state, mined transactions included."""
        self.chain.stop()

    def settle_pool(self, timeout: float = 10.0) -> None:
        """Wait until anvil has mined every transaction the facilitator sent.

        ``eth_sendRawTransaction`` answers once the transaction is in the pool; automine puts it
        in a block a moment later. A stop in between can dump the state with the transfer applied
        but without the block that holds it, so the hooks below wait for the block first: what
        they model is "the node mined it, then went away".
        """
        address = self.facilitator_account.address
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            latest = int(self.chain.rpc("eth_getTransactionCount", [address, "latest"]), 16)
            if latest == pending_nonce(self.chain, address):
                return
            time.sleep(0.01)
        raise AssertionError(f"anvil did not mine the facilitator's transaction in {timeout} s")

    def stop_after_mining(self) -> None:
        self.settle_pool()
        self.stop()

    def restart_after_mining(self) -> None:
        self.settle_pool()
        self.restart()

    def kill(self) -> None:
        """SIGKILL: no dump, the chain will restart from the last graceful stop."""
        os.kill(self.chain.pid, signal.SIGKILL)
        self.chain.stop()

    def restart(self) -> None:
        if self.chain.running:
            self.chain.stop()
        self.chain.start()
        if hasattr(self, "relay"):
            self.relay.target = self.chain.rpc_url

    def close(self) -> None:
        if hasattr(self, "relay"):
            self.relay.close()
        self.chain.stop()


@pytest.fixture
def node(local_chain: LocalChain, tmp_path: Path) -> Iterator[Node]:
    # local_chain only brings the plugin's "anvil missing" handling and the binary path; the
    # session node itself is left alone.
    assert local_chain.anvil is not None
    node = Node(local_chain.anvil, tmp_path)
    try:
        yield node
    finally:
        node.close()


class Hooked:
    """The real LocalFacilitator, with a hook that runs once right before a settle."""

    def __init__(self, inner: LocalFacilitator) -> None:
        self.inner = inner
        self.before_settle: Callable[[], None] | None = None

    async def supported(self) -> Any:
        return await self.inner.supported()

    async def verify(self, payload: Any, requirements: Any) -> Any:
        return await self.inner.verify(payload, requirements)

    async def settle(self, payload: Any, requirements: Any) -> Any:
        hook, self.before_settle = self.before_settle, None
        if hook is not None:
            hook()
        return await self.inner.settle(payload, requirements)


@pytest.fixture
def facilitator(node: Node) -> Hooked:
    inner = LocalFacilitator(
        node.relay.url,
        node.facilitator_account.key.hex(),
        networks=node.chain.network,
        confirmation_timeout=2,
    )
    return Hooked(inner)


@pytest.fixture
async def gate(node: Node, facilitator: Hooked, tmp_path: Path) -> AsyncIterator[PaymentGate]:
    g = PaymentGate(
        pay_to=node.pay_to,
        assets=node.token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
    )
    yield g
    await g.aclose()


class Shop:
    def __init__(self, gate: PaymentGate) -> None:
        self.runs = 0

        async def paid(request: Request) -> JSONResponse:
            self.runs += 1
            return JSONResponse({"secret": CONTENT})

        self.app = PaymentMiddleware(
            Starlette(routes=[Route("/paid", paid)]), gate=gate, routes={"GET /paid": "$0.01"}
        )

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as c:
            yield c


async def _pay(client: httpx.AsyncClient, node: Node) -> tuple[Any, httpx.Response]:
    challenge = await client.get("/paid")
    requirements = decode_payment_required(challenge.headers["payment-required"])
    payload = sign_exact_payment(node.payer, requirements.accepts[0])
    return payload, await client.get("/paid", headers=payment_headers(payload))


def _store_state(gate: PaymentGate, node: Node, payload: Any) -> str | None:
    auth = payload.payload["authorization"]
    key = replay_key(node.chain.network, node.token_address, auth["from"], auth["nonce"])
    state: str | None = gate.store.state(key, gate.clock.now())
    return state


def _on_chain(node: Node, payload: Any) -> bool:
    auth = payload.payload["authorization"]
    return node.token.authorization_state(auth["from"], auth["nonce"])


def _assert_consistent(gate: PaymentGate, node: Node, *payloads: Any) -> None:
    """The store calls "used" exactly the payments that are on chain, and the chain holds one
    successful transfer per such payment, nothing reverted, nothing stuck in the pool."""
    on_chain = [p for p in payloads if _on_chain(node, p)]
    for payload in payloads:
        if _store_state(gate, node, payload) == "used":
            assert _on_chain(node, payload)
    assert node.token.balance_of(node.pay_to) == PRICE * len(on_chain)
    mined = [
        tx for tx in transactions(node.chain, 1) if tx["from"] == node.facilitator_account.address
    ]
    assert [tx["status"] for tx in mined] == [1] * len(on_chain)


async def test_chain_stopped_right_before_settlement(
    node: Node, facilitator: Hooked, gate: PaymentGate
) -> None:
    shop = Shop(gate)
    facilitator.before_settle = node.stop
    async with shop.client() as client:
        payload, response = await _pay(client, node)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "facilitator_unavailable"
        assert CONTENT not in response.text
        assert shop.runs == 1  # the handler ran (policy "after"); its answer was withheld
        assert _store_state(gate, node, payload) == "held"

        node.restart()
        assert not _on_chain(node, payload)
        # The gate could not know nothing was sent: the authorization stays blocked until it
        # expires, and the payer signs a new one.
        again = await client.get("/paid", headers=payment_headers(payload))
        assert again.status_code == 402
        assert again.json()["error"] == "invalid_exact_evm_nonce_already_used"
        fresh, recovered = await _pay(client, node)
    assert recovered.status_code == 200 and CONTENT in recovered.text
    assert _store_state(gate, node, fresh) == "used"
    _assert_consistent(gate, node, payload, fresh)


async def test_chain_stopped_after_accepting_the_settlement_transaction(
    node: Node, gate: PaymentGate
) -> None:
    shop = Shop(gate)
    node.relay.after["eth_sendRawTransaction"] = node.stop_after_mining
    async with shop.client() as client:
        payload, response = await _pay(client, node)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "settlement_pending"
        assert CONTENT not in response.text
        # Not recorded as settled: the gate never saw a receipt.
        assert _store_state(gate, node, payload) == "held"

        node.restart()
        # The node had mined it before stopping: the payer paid and got a 503 that says "the
        # payment was sent but is not confirmed yet; do not pay again". The same authorization
        # can never be charged a second time.
        assert _on_chain(node, payload)
        again = await client.get("/paid", headers=payment_headers(payload))
        assert again.status_code == 402
        assert again.json()["error"] == "invalid_exact_evm_nonce_already_used"
        fresh, recovered = await _pay(client, node)
    assert recovered.status_code == 200 and CONTENT in recovered.text
    _assert_consistent(gate, node, payload, fresh)
    assert pending_nonce(node.chain, node.facilitator_account.address) == 2


async def test_chain_restarted_during_settlement_keeps_the_payment(
    node: Node, gate: PaymentGate
) -> None:
    shop = Shop(gate)
    node.relay.after["eth_sendRawTransaction"] = node.restart_after_mining
    async with shop.client() as client:
        payload, response = await _pay(client, node)
    assert response.status_code == 200, response.text
    assert CONTENT in response.text
    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert receipt.success and _on_chain(node, payload)
    assert _store_state(gate, node, payload) == "used"
    assert shop.runs == 1
    _assert_consistent(gate, node, payload)


async def test_chain_losing_the_settlement_transaction_records_nothing(
    node: Node, gate: PaymentGate
) -> None:
    shop = Shop(gate)
    node.relay.after["eth_sendRawTransaction"] = node.kill
    async with shop.client() as client:
        payload, response = await _pay(client, node)
        assert response.status_code == 503, response.text
        assert CONTENT not in response.text
        node.restart()  # from the dump taken before the payment: the transaction is gone
        assert not _on_chain(node, payload)
        assert _store_state(gate, node, payload) == "held"
    _assert_consistent(gate, node, payload)


async def test_after_the_chain_dropped_a_settlement_later_payments_settle(
    node: Node, gate: PaymentGate
) -> None:
    shop = Shop(gate)
    node.relay.after["eth_sendRawTransaction"] = node.kill
    async with shop.client() as client:
        lost, response = await _pay(client, node)
        assert response.status_code == 503
        node.restart()
        assert not _on_chain(node, lost)
        fresh, recovered = await _pay(client, node)
    assert CONTENT not in response.text
    assert recovered.status_code == 200, recovered.text
    assert _on_chain(node, fresh)


@pytest.fixture
async def reconciling_gate(
    node: Node, facilitator: Hooked, tmp_path: Path
) -> AsyncIterator[PaymentGate]:
    g = PaymentGate(
        pay_to=node.pay_to,
        assets=node.token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
        reconcile=node.relay.url,
    )
    yield g
    await g.aclose()


async def test_a_settlement_mined_while_the_node_went_down_serves_its_retry_once(
    node: Node, reconciling_gate: PaymentGate
) -> None:
    gate = reconciling_gate
    shop = Shop(gate)
    node.relay.after["eth_sendRawTransaction"] = node.stop_after_mining
    async with shop.client() as client:
        payload, response = await _pay(client, node)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "settlement_pending"
        assert CONTENT not in response.text
        assert _store_state(gate, node, payload) == "held"
        node.restart()
        assert _on_chain(node, payload)

        # The gate reads the chain: the transfer is there, so the retry is served without a
        # second settlement, and the one after it is a replay.
        again = await client.get("/paid", headers=payment_headers(payload))
        assert again.status_code == 200, again.text
        assert CONTENT in again.text
        receipt = decode_payment_response_header(again.headers["payment-response"])
        assert receipt.success and receipt.transaction.startswith("0x")
        assert _store_state(gate, node, payload) == "used"
        replay = await client.get("/paid", headers=payment_headers(payload))
        assert replay.status_code == 402
        assert replay.json()["error"] == "invalid_exact_evm_nonce_already_used"
    assert shop.runs == 2  # the withheld first answer, and the retry served
    _assert_consistent(gate, node, payload)
    assert pending_nonce(node.chain, node.facilitator_account.address) == 1


async def test_a_settlement_that_never_reached_the_chain_stays_blocked_when_reconciling(
    node: Node, facilitator: Hooked, reconciling_gate: PaymentGate
) -> None:
    gate = reconciling_gate
    shop = Shop(gate)
    facilitator.before_settle = node.stop
    async with shop.client() as client:
        payload, response = await _pay(client, node)
        assert response.status_code == 503, response.text
        node.restart()
        assert not _on_chain(node, payload)
        again = await client.get("/paid", headers=payment_headers(payload))
        assert again.status_code == 402
        assert again.json()["error"] == "invalid_exact_evm_nonce_already_used"
        assert CONTENT not in again.text
        assert _store_state(gate, node, payload) == "held"
    assert shop.runs == 1
    _assert_consistent(gate, node, payload)
