"""ChainReconciler: its configuration, and what it makes of an RPC endpoint that answers badly
(a real HTTP server on loopback): always ChainReadError, bounded in size, never a guess."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from x402gate import ChainReconciler, ConfigurationError, PaymentGate
from x402gate.facilitators import HTTPFacilitator
from x402gate.reconcile import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC, ChainReadError
from x402gate.stores.memory import MemoryStore

PAYER = "0x" + "11" * 20
PAY_TO = "0x" + "22" * 20
ASSET = "0x" + "33" * 20
NONCE = "0x" + "44" * 32


def test_event_topics_are_the_keccak_of_their_signatures() -> None:
    from eth_utils.crypto import keccak

    used = keccak(text="AuthorizationUsed(address,bytes32)")
    transfer = keccak(text="Transfer(address,address,uint256)")
    assert bytes.fromhex(AUTHORIZATION_USED_TOPIC[2:]) == used
    assert bytes.fromhex(TRANSFER_TOPIC[2:]) == transfer


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"rpc_urls": "ftp://node"}, "http(s) URL"),
        ({"rpc_urls": {}}, "RPC URL"),
        ({"rpc_urls": "http://node", "lookback_blocks": 0}, "lookback_blocks"),
        ({"rpc_urls": "http://node", "timeout": 0}, "timeout"),
        ({"rpc_urls": "http://node", "min_interval_seconds": -1}, "min_interval_seconds"),
        ({"rpc_urls": "http://node", "owner_grace_seconds": True}, "owner_grace_seconds"),
    ],
)
def test_bad_settings_are_configuration_errors(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match="reconcile") as caught:
        ChainReconciler(**kwargs)
    assert fragment in str(caught.value)


def _gate(**kwargs: Any) -> PaymentGate:
    options: dict[str, Any] = {"store": "memory://", **kwargs}
    return PaymentGate(
        pay_to=PAY_TO,
        network="base-sepolia",
        facilitator=HTTPFacilitator("http://127.0.0.1:9"),
        **options,
    )


def test_the_gate_reconciles_only_when_it_can_read_the_chain() -> None:
    assert _gate().reconciler is None  # a facilitator service and no RPC URL: off
    assert _gate(reconcile=False).reconciler is None
    on = _gate(reconcile="https://rpc.example/key-in-path")
    assert on.reconciler is not None and on.reconciler.covers("eip155:84532")
    assert "key-in-path" not in repr(on.reconciler)  # API keys in URLs are never shown
    with pytest.raises(ConfigurationError, match="reconcile=True needs a LocalFacilitator"):
        _gate(reconcile=True)
    with pytest.raises(ConfigurationError, match="reconcile must be"):
        _gate(reconcile=42)


def test_a_store_without_recovery_cannot_reconcile() -> None:
    class OldStore(MemoryStore):
        supports_recovery = False

    with pytest.raises(ConfigurationError, match="cannot recover claims"):
        _gate(store=OldStore(), reconcile="http://127.0.0.1:8545")


class HostileRpc:
    """A JSON-RPC endpoint that answers every call with ``answer`` (status, body)."""

    def __init__(self) -> None:
        self.answer: tuple[int, bytes] = (200, b"{}")
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                status, body = owner.answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/SECRET-KEY"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def hostile() -> Iterator[HostileRpc]:
    server = HostileRpc()
    yield server
    server.close()


def _result(value: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "result": value}).encode()


@pytest.mark.parametrize(
    "answer",
    [
        (500, b'{"error": "down"}'),
        (200, b"not json"),
        (200, b'{"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "x"}}'),
        (200, b"[" * 100_000),
        (200, b'{"result": "' + b"0" * (5 * 1024 * 1024) + b'"}'),
        (200, _result("0xZZ")),
        (200, _result(None)),
    ],
    ids=["http-500", "not-json", "rpc-error", "deep", "huge", "bad-hex", "null"],
)
async def test_a_bad_answer_is_a_chain_read_error(
    hostile: HostileRpc, answer: tuple[int, bytes]
) -> None:
    hostile.answer = answer
    reconciler = ChainReconciler(hostile.url, timeout=5)
    with pytest.raises(ChainReadError) as caught:
        await reconciler.find_transfer(
            network="eip155:1", asset=ASSET, payer=PAYER, nonce=NONCE, pay_to=PAY_TO, value=1
        )
    assert "SECRET-KEY" not in str(caught.value)


async def test_an_unused_nonce_is_not_a_transfer(hostile: HostileRpc) -> None:
    hostile.answer = (200, _result("0x" + "00" * 32))
    reconciler = ChainReconciler(hostile.url)
    found = await reconciler.find_transfer(
        network="eip155:1", asset=ASSET, payer=PAYER, nonce=NONCE, pay_to=PAY_TO, value=1
    )
    assert found is None


async def test_malformed_arguments_are_refused_before_any_call() -> None:
    reconciler = ChainReconciler("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="nonce"):
        await reconciler.find_transfer(
            network="eip155:1", asset=ASSET, payer=PAYER, nonce="0x12", pay_to=PAY_TO, value=1
        )


@pytest.mark.chain
async def test_a_chain_that_cannot_be_read_is_a_503_and_serves_nothing(
    hostile: HostileRpc,
    chain: Any,
    facilitator_account: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    """Behind uvicorn: a claim whose settlement answer was lost, retried while the RPC endpoint
    answers garbage: 503 chain_unavailable with Retry-After, no content, the claim still held."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate import LocalFacilitator
    from x402gate.asgi import PaymentMiddleware
    from x402gate.demo import serve_in_thread
    from x402gate.testing.facilitator_server import FacilitatorServer
    from x402gate.testing.payments import (
        decode_payment_required,
        encode_payment,
        sign_exact_payment,
    )

    runs = 0

    async def paid(request: Request) -> JSONResponse:
        nonlocal runs
        runs += 1
        return JSONResponse({"content": "PAID-CONTENT"})

    inner = LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)
    hostile.answer = (200, b"garbage")
    with FacilitatorServer(inner) as service:
        # No keep-alive to the facilitator: its connections would outlive the server's loop.
        facilitator = HTTPFacilitator(service.url, timeout=10, headers={"Connection": "close"})
        gate = PaymentGate(
            pay_to=pay_to,
            assets=test_token.asset,
            facilitator=facilitator,
            store="memory://",
            reconcile=hostile.url,
        )
        app = PaymentMiddleware(
            Starlette(routes=[Route("/paid", paid)]), gate=gate, routes={"GET /paid": "$0.01"}
        )
        with serve_in_thread(app) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                challenge = await client.get("/paid")
                required = decode_payment_required(challenge.headers["payment-required"])
                payment = {
                    "PAYMENT-SIGNATURE": encode_payment(
                        sign_exact_payment(payer, required.accepts[0])
                    )
                }
                with service.fault("settle", "settle_then_drop"):
                    first = await client.get("/paid", headers=payment)
                assert first.status_code == 503
                retry = await client.get("/paid", headers=payment)
    inner.close()
    assert retry.status_code == 503
    assert retry.json()["error"] == "chain_unavailable"
    assert "retry-after" in retry.headers
    assert "PAID-CONTENT" not in retry.text
    assert "SECRET-KEY" not in retry.text
    assert runs == 1
    assert test_token.balance_of(pay_to) == 10_000  # the one settlement, never a second
