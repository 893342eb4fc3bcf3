"""The chain transport of :class:`~x402gate.LocalFacilitator`, with real parts only.

Transport tests run against a loopback JSON-RPC server started by the test (it counts TCP
connections and calls, and can close connections the way real servers do). Facilitator tests
settle real payments on the session's anvil, some through a relay in front of it that can fail
one broadcast. What is checked is what a user relies on: calls succeed over few connections, a
broadcast is never sent twice, errors never carry the server's body or the URL's secrets,
settlements overlap and a failed broadcast does not hold back the next payment.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import http.client
import json
import logging
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import TimeExhausted
from x402.schemas import PaymentRequirements

from x402gate import LocalFacilitator
from x402gate._rpc import JsonRpcTransport, RpcHttpError, Signer, redact_rpc_url
from x402gate.errors import ConfigurationError, FacilitatorError, FacilitatorUnavailable
from x402gate.protocol import build_requirements
from x402gate.testing.chain import LocalChain, TestToken
from x402gate.testing.payments import sign_exact_payment

PRICE = 10_000  # $0.01 in USDC atomic units
SEND = "eth_sendRawTransaction"
RAW_TX = "0x" + "02" * 40  # never decoded by the fake node
TX_HASH = "0x" + "ab" * 32


# --------------------------------------------------------------------------- loopback servers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like every JSON-RPC node
    node: ClassVar[RpcNode]

    def setup(self) -> None:
        super().setup()
        with self.node.lock:
            self.node.connections += 1
            self.node.open += 1

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.node.lock:
                self.node.open -= 1

    def log_message(self, format: str, *args: Any) -> None:
        pass  # idle timeouts are expected here, not worth a line on stderr

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        node = self.node
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = json.loads(body)
        # A JSON-RPC batch counts each of its calls; it never carries a broadcast.
        batch = request if isinstance(request, list) else [request]
        method = batch[0]["method"]
        with node.lock:
            for call in batch:
                node.calls[call["method"]] += 1
            node.batches += isinstance(request, list)
            node.posts += 1
            node.targets.append(self.path)
            node.authorizations.append(self.headers.get("Authorization"))
            fail = method == SEND and node.fail_sends > 0
            if fail:
                node.fail_sends -= 1
        if method in node.swallow:
            # Taken, but the answer is lost: the connection closes without a response.
            self.close_connection = True
            return
        if node.status != 200:
            self._answer(node.status, node.error_body)
            return
        if fail and node.fail_mode == "before":
            self._answer(502, b"bad gateway")
            return
        if node.upstream is not None:
            answer = node.forward(body)
        else:
            answers = [
                {
                    "jsonrpc": "2.0",
                    "id": c["id"],
                    "result": TX_HASH if c["method"] == SEND else "0x10",
                }
                for c in batch
            ]
            answer = json.dumps(answers if isinstance(request, list) else answers[0]).encode()
        if fail:  # fail_mode "after": the node took the transaction, the client hears 502
            self._answer(502, b"bad gateway")
            return
        self._answer(200, answer)
        if method in node.drop_after:
            # Answered as kept alive, then closed (as servers do with idle connections).
            self.close_connection = True


class RpcNode:
    """A JSON-RPC server on 127.0.0.1 in a thread of this test: answers every call itself, or
    relays it to ``upstream``. Counts TCP connections (accepted and still open) and calls."""

    def __init__(self, *, upstream: str | None = None, idle_timeout: float = 10.0) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.open = 0
        self.calls: Counter[str] = Counter()
        self.batches = 0
        self.posts = 0
        self.targets: list[str] = []
        self.authorizations: list[str | None] = []
        self.status = 200
        self.error_body = b""
        self.swallow: set[str] = set()
        self.drop_after: set[str] = set()
        self.fail_sends = 0
        self.fail_mode = "before"
        self.upstream = upstream
        handler = type("Handler", (_Handler,), {"node": self, "timeout": idle_timeout})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def forward(self, body: bytes) -> bytes:
        assert self.upstream is not None
        parts = urlsplit(self.upstream)
        assert parts.hostname is not None
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            connection.request("POST", "/", body, {"Content-Type": "application/json"})
            return connection.getresponse().read()
        finally:
            connection.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def wait_until_async(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.fixture
def node() -> Iterator[RpcNode]:
    server = RpcNode()
    yield server
    server.stop()


@pytest.fixture
def short_idle_node() -> Iterator[RpcNode]:
    """Closes a kept-alive connection after 0.2 s without a request."""
    server = RpcNode(idle_timeout=0.2)
    yield server
    server.stop()


@pytest.fixture
def transports() -> Iterator[Callable[..., JsonRpcTransport]]:
    """Makes transports that are closed after the test (their sockets with them)."""
    made: list[JsonRpcTransport] = []

    def make(url: str, **kwargs: Any) -> JsonRpcTransport:
        transport = JsonRpcTransport(url, **kwargs)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


def result_of(transport: JsonRpcTransport, method: str, params: list[Any] | None = None) -> Any:
    response = transport.make_request(method, params or [])
    assert "error" not in response, response
    return response["result"]


# --------------------------------------------------------------------------- transport


def test_one_thread_reuses_one_connection(
    node: RpcNode, transports: Callable[..., JsonRpcTransport]
) -> None:
    transport = transports(node.url)
    results = [result_of(transport, "eth_blockNumber") for _ in range(20)]
    assert results == ["0x10"] * 20
    assert node.calls["eth_blockNumber"] == 20
    assert node.connections == 1


def test_each_thread_has_its_own_kept_alive_connection(
    node: RpcNode, transports: Callable[..., JsonRpcTransport]
) -> None:
    transport = transports(node.url)
    errors: list[BaseException] = []

    def calls() -> None:
        try:
            for _ in range(5):
                assert result_of(transport, "eth_blockNumber") == "0x10"
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
    assert node.calls["eth_blockNumber"] == 20
    assert node.connections == 4


def test_is_a_web3_provider(node: RpcNode, transports: Callable[..., JsonRpcTransport]) -> None:
    w3 = Web3(transports(node.url))
    assert w3.eth.block_number == 16
    assert w3.is_connected()


def test_read_is_retried_once_when_the_server_closed_the_idle_connection(
    short_idle_node: RpcNode, transports: Callable[..., JsonRpcTransport]
) -> None:
    node = short_idle_node
    transport = transports(node.url)
    assert result_of(transport, "eth_blockNumber") == "0x10"
    assert wait_until(lambda: node.open == 0), "the server did not close the idle connection"
    assert result_of(transport, "eth_blockNumber") == "0x10"  # no error reaches the caller
    assert node.calls["eth_blockNumber"] == 2
    assert node.connections == 2


def test_read_is_retried_when_the_connection_is_closed_right_after_an_answer(
    node: RpcNode, transports: Callable[..., JsonRpcTransport]
) -> None:
    node.drop_after.add("eth_blockNumber")
    transport = transports(node.url)
    for _ in range(5):
        assert result_of(transport, "eth_blockNumber") == "0x10"
    assert node.calls["eth_blockNumber"] == 5
    assert node.connections == 5


def test_broadcast_on_a_closed_connection_is_not_retried(
    node: RpcNode, transports: Callable[..., JsonRpcTransport]
) -> None:
    node.drop_after.add("eth_blockNumber")
    transport = transports(node.url)
    assert result_of(transport, "eth_blockNumber") == "0x10"
    with pytest.raises(OSError):
        transport.make_request(SEND, [RAW_TX])
    assert node.calls[SEND] <= 1
    # The transport is usable again afterwards.
    assert result_of(transport, "eth_blockNumber") == "0x10"


def test_broadcast_whose_answer_is_lost_is_sent_exactly_once(
    node: RpcNode, transports: Callable[..., JsonRpcTransport]
) -> None:
    node.swallow.add(SEND)
    transport = transports(node.url)
    assert result_of(transport, "eth_blockNumber") == "0x10"  # the connection is now reused
    with pytest.raises(OSError):
        transport.make_request(SEND, [RAW_TX])
    assert node.calls[SEND] == 1, "the broadcast reached the node again"


def test_broadcast_after_a_long_idle_uses_a_fresh_connection(
    transports: Callable[..., JsonRpcTransport],
) -> None:
    node = RpcNode(idle_timeout=0.3)
    try:
        transport = transports(node.url)
        assert result_of(transport, "eth_blockNumber") == "0x10"
        assert wait_until(lambda: node.open == 0), "the server did not close the idle connection"
        time.sleep(1.1)  # idle more than a second: the kept connection is not trusted for a send
        assert result_of(transport, SEND, [RAW_TX]) == TX_HASH
        assert node.calls[SEND] == 1
        assert node.connections == 2
    finally:
        node.stop()


@pytest.mark.parametrize("status", [500, 429, 401])
def test_http_error_reports_the_status_never_the_body(
    node: RpcNode, transports: Callable[..., JsonRpcTransport], status: int
) -> None:
    node.status = status
    node.error_body = b'{"error": "bad key sk_live_TOPSECRET for https://x/v3/TOPSECRET"}'
    transport = transports(node.url)
    with pytest.raises(RpcHttpError) as excinfo:
        transport.make_request("eth_blockNumber", [])
    assert isinstance(excinfo.value, OSError)  # the facilitator's "chain unavailable"
    assert str(status) in str(excinfo.value)
    assert "TOPSECRET" not in str(excinfo.value) and "TOPSECRET" not in repr(excinfo.value)
    assert node.calls["eth_blockNumber"] == 1  # an HTTP error is an answer: not retried
    node.status = 200
    assert result_of(transport, "eth_blockNumber") == "0x10"


def test_user_info_becomes_basic_authorization(
    node: RpcNode, transports: Callable[..., JsonRpcTransport]
) -> None:
    transport = transports(f"http://user:p%40ss@127.0.0.1:{node.port}/")
    assert result_of(transport, "eth_blockNumber") == "0x10"
    (header,) = node.authorizations
    assert header is not None and header.startswith("Basic ")
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == "user:p@ss"
    assert "p%40ss" not in repr(transport) and "p@ss" not in repr(transport)


def test_no_authorization_without_user_info(
    node: RpcNode, transports: Callable[..., JsonRpcTransport]
) -> None:
    result_of(transports(node.url), "eth_blockNumber")
    assert node.authorizations == [None]


def test_path_and_query_are_sent_but_never_shown(
    node: RpcNode, transports: Callable[..., JsonRpcTransport]
) -> None:
    url = f"http://127.0.0.1:{node.port}/v3/KEY123?x=1"
    transport = transports(url)
    assert result_of(transport, "eth_blockNumber") == "0x10"
    assert node.targets == ["/v3/KEY123?x=1"]
    for shown in (repr(transport), redact_rpc_url(url)):
        assert "KEY123" not in shown and "x=1" not in shown
        assert f"127.0.0.1:{node.port}" in shown


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pw@rpc.example/v3/KEY123?apikey=KEY123",
        "https://rpc.example/?apikey=KEY123",
        "http://KEY123:@rpc.example:8545",
        "https://rpc.example/KEY123",
    ],
)
def test_redacted_url_keeps_only_scheme_host_and_port(url: str) -> None:
    shown = redact_rpc_url(url)
    assert "KEY123" not in shown and "pw" not in shown and "user" not in shown
    assert shown.startswith(urlsplit(url).scheme + "://rpc.example")


def test_connection_refused_is_an_oserror(transports: Callable[..., JsonRpcTransport]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    transport = transports(f"http://127.0.0.1:{port}", timeout=5.0)
    started = time.monotonic()
    with pytest.raises(OSError):
        transport.make_request("eth_blockNumber", [])
    assert time.monotonic() - started < 5
    assert transport.is_connected() is False


@pytest.mark.parametrize(
    "url", ["ws://127.0.0.1:8545", "ftp://127.0.0.1/", "127.0.0.1:8545", "http:///path", ""]
)
def test_non_http_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        JsonRpcTransport(url)


def outcome(call: Callable[[], Any]) -> Any:
    """What ``call`` returned, or the exception it raised (without its traceback, which would
    keep the caller's frames, and the transport in them, alive)."""
    try:
        return call()
    except Exception as exc:
        return exc.with_traceback(None)


def record_outcome(call: Callable[[], Any], into: list[Any]) -> None:
    into.append(outcome(call))


def test_close_closes_every_threads_connection_and_later_calls_fail(node: RpcNode) -> None:
    transport = JsonRpcTransport(node.url)
    try:
        threads = [
            threading.Thread(target=result_of, args=(transport, "eth_blockNumber"))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        result_of(transport, "eth_blockNumber")  # and one from this thread
        assert node.connections == 4 and node.open == 4
    finally:
        transport.close()
    assert wait_until(lambda: node.open == 0, timeout=3), f"{node.open} connections left open"

    late_call = functools.partial(transport.make_request, "eth_blockNumber", [])
    # From this thread (which had a connection) and from a new one (which had none).
    here = outcome(late_call)
    elsewhere: list[Any] = []
    thread = threading.Thread(target=record_outcome, args=(late_call, elsewhere))
    thread.start()
    thread.join(timeout=10)
    # Whatever a late call did, dropping the transport must not leave a socket behind.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del transport, late_call
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]

    assert isinstance(here, OSError), f"a call after close() returned {here!r}"
    assert len(elsewhere) == 1 and isinstance(elsewhere[0], OSError), elsewhere
    assert node.calls["eth_blockNumber"] == 4, "a call was sent after close()"
    assert node.connections == 4, "a connection was opened after close()"
    assert leaked == []


# --------------------------------------------------------------------------- facilitator config


def test_repr_hides_the_rpc_urls_secrets() -> None:
    facilitator = LocalFacilitator(
        "http://user:secret@127.0.0.1:1/v3/APIKEY?token=QUERYKEY",
        Account.create().key.hex(),
        networks="eip155:31337",
    )
    try:
        shown = repr(facilitator)
        for secret in ("secret", "APIKEY", "QUERYKEY", "user"):
            assert secret not in shown
        assert "127.0.0.1:1" in shown
    finally:
        facilitator.close()


@pytest.mark.parametrize(
    "options",
    [
        {"max_concurrency": 0},
        {"max_concurrency": -1},
        {"max_concurrency": True},
        {"max_concurrency": "3"},
        {"max_concurrency": 2.5},
        {"confirmation_timeout": 0},
        {"confirmation_timeout": -1},
        {"confirmation_timeout": "3"},
        {"confirmation_timeout": float("nan")},
    ],
)
def test_bad_settings_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        LocalFacilitator(
            "http://127.0.0.1:1", Account.create().key.hex(), networks="eip155:31337", **options
        )


async def test_unreachable_chain_is_unavailable_without_leaking_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    facilitator = LocalFacilitator(
        f"http://user:secret@127.0.0.1:{port}/v3/APIKEY",
        Account.create().key.hex(),
        networks="eip155:31337",
    )
    requirements = PaymentRequirements(
        scheme="exact",
        network="eip155:31337",
        asset="0x" + "11" * 20,
        amount=str(PRICE),
        pay_to=Account.create().address,
        max_timeout_seconds=300,
        extra={"name": "USD Coin", "version": "2"},
    )
    payment = sign_exact_payment(Account.create(), requirements)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(FacilitatorUnavailable) as excinfo:
            await asyncio.wait_for(facilitator.verify(payment, requirements), 20)
    finally:
        await facilitator.aclose()
    shown = f"{excinfo.value!s} {excinfo.value!r} {caplog.text}"
    assert "secret" not in shown and "APIKEY" not in shown


# --------------------------------------------------------------------------- on the local chain


def requirements_for(token: TestToken, pay_to: str) -> PaymentRequirements:
    return build_requirements(token.asset, PRICE, pay_to, 300)


@pytest.fixture
def relay(local_chain: LocalChain) -> Iterator[RpcNode]:
    """A JSON-RPC relay in front of the session's anvil."""
    server = RpcNode(upstream=local_chain.rpc_url)
    yield server
    server.stop()


@pytest.mark.chain
async def test_concurrent_settlements_overlap_and_all_land(
    chain: LocalChain,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    """16 payments settled at once are all waiting for their receipts at the same moment: with
    automine off, nothing is mined until every one of them was broadcast, so settlements that
    ran one after another could never all get there. The facilitator has 4 chain threads: a
    receipt wait holds none of them."""
    facilitator = LocalFacilitator(
        chain.rpc_url,
        facilitator_account.key.hex(),
        networks=chain.network,
        confirmation_timeout=30,
        max_concurrency=4,
    )
    requirements = requirements_for(test_token, pay_to)
    payments = [sign_exact_payment(payer, requirements) for _ in range(16)]
    payer_before = test_token.balance_of(payer.address)
    first_nonce = chain.tx_count(facilitator.address)
    try:
        chain.rpc("evm_setAutomine", [False])
        try:
            settling = asyncio.gather(*(facilitator.settle(p, requirements) for p in payments))
            poller = facilitator._signer.receipts
            all_waiting = await wait_until_async(lambda: poller.pending == 16, timeout=20)
            pending = chain.tx_count(facilitator.address) - first_nonce
            chain.rpc("evm_mine")
        finally:
            chain.rpc("evm_setAutomine", [True])
        results = await asyncio.wait_for(settling, 60)
    finally:
        await facilitator.aclose()

    assert all_waiting, f"{poller.pending} settlements waited for a receipt at once"
    # No thread of the facilitator is held by a receipt wait: the poll loop calls back.
    assert pending == 16
    assert [r.success for r in results] == [True] * 16, [r.error_reason for r in results]
    hashes = {r.transaction for r in results}
    assert len(hashes) == 16
    transactions = [chain.w3.eth.get_transaction(h) for h in hashes]  # type: ignore[arg-type]
    assert sorted(t["nonce"] for t in transactions) == list(range(first_nonce, first_nonce + 16))
    receipts = [chain.w3.eth.get_transaction_receipt(h) for h in hashes]  # type: ignore[arg-type]
    assert {r["status"] for r in receipts} == {1}
    assert len({r["blockNumber"] for r in receipts}) == 1  # one block mined them all
    assert test_token.balance_of(pay_to) == 16 * PRICE
    assert test_token.balance_of(payer.address) == payer_before - 16 * PRICE


@pytest.mark.chain
@pytest.mark.parametrize("fail_mode", ["before", "after"], ids=["not_sent", "answer_lost"])
async def test_failed_broadcast_leaves_no_nonce_gap(
    chain: LocalChain,
    relay: RpcNode,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
    fail_mode: str,
) -> None:
    """The relay answers one broadcast with HTTP 502, either without passing it on (``not_sent``)
    or after anvil took it (``answer_lost``). The next payment must settle at once: with a
    nonce gap its transaction would never be mined and it would hit the 3 s timeout."""
    facilitator = LocalFacilitator(
        relay.url, facilitator_account.key.hex(), networks=chain.network, confirmation_timeout=3
    )
    requirements = requirements_for(test_token, pay_to)
    try:
        first = await facilitator.settle(sign_exact_payment(payer, requirements), requirements)
        assert first.success, first.error_reason

        relay.fail_sends, relay.fail_mode = 1, fail_mode
        failed: Any
        try:
            failed = await asyncio.wait_for(
                facilitator.settle(sign_exact_payment(payer, requirements), requirements), 20
            )
        except FacilitatorUnavailable as exc:
            failed = exc
        assert isinstance(failed, FacilitatorUnavailable) or not failed.success

        started = time.monotonic()
        following = await asyncio.wait_for(
            facilitator.settle(sign_exact_payment(payer, requirements), requirements), 20
        )
        took = time.monotonic() - started
    finally:
        await facilitator.aclose()

    assert following.success, following.error_reason
    assert took < 2.5, f"the next settlement took {took:.2f} s"
    assert chain.w3.eth.get_transaction_receipt(following.transaction)["status"] == 1  # type: ignore[arg-type]
    assert relay.calls[SEND] == 3  # the failed broadcast was not sent again
    landed = 3 if fail_mode == "after" else 2
    assert test_token.balance_of(pay_to) == landed * PRICE
    assert chain.tx_count(facilitator.address) == chain.w3.eth.get_transaction_count(
        facilitator.address,  # type: ignore[arg-type]
        "latest",
    )  # nothing left pending behind a gap


@pytest.mark.chain
async def test_aclose_closes_the_connections_and_later_settles_fail_cleanly(
    chain: LocalChain,
    relay: RpcNode,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    facilitator = LocalFacilitator(
        relay.url, facilitator_account.key.hex(), networks=chain.network, confirmation_timeout=3
    )
    requirements = requirements_for(test_token, pay_to)
    settled = await asyncio.gather(
        *(
            facilitator.settle(sign_exact_payment(payer, requirements), requirements)
            for _ in range(4)
        )
    )
    assert all(s.success for s in settled)
    assert relay.open >= 1

    await asyncio.wait_for(facilitator.aclose(), 10)
    assert wait_until(lambda: relay.open == 0, timeout=3), f"{relay.open} connections left open"

    late = sign_exact_payment(payer, requirements)
    started = time.monotonic()
    with pytest.raises(FacilitatorError):
        await asyncio.wait_for(facilitator.settle(late, requirements), 10)
    assert time.monotonic() - started < 5
    calls_after_close = sum(relay.calls.values())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del facilitator
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert sum(relay.calls.values()) == calls_after_close
    assert test_token.balance_of(pay_to) == 4 * PRICE


@pytest.mark.chain
async def test_a_facilitator_dropped_without_close_closes_its_connections(
    chain: LocalChain,
    relay: RpcNode,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    facilitator = LocalFacilitator(
        relay.url, facilitator_account.key.hex(), networks=chain.network, confirmation_timeout=3
    )
    requirements = requirements_for(test_token, pay_to)
    settled = await facilitator.settle(sign_exact_payment(payer, requirements), requirements)
    assert settled.success, settled.error_reason
    assert relay.open >= 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del facilitator
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert wait_until(lambda: relay.open == 0, timeout=3), f"{relay.open} connections left open"


@pytest.mark.chain
def test_receipt_wait_gives_up_after_the_confirmation_timeout(local_chain: LocalChain) -> None:
    signer = Signer(Account.create().key.hex(), local_chain.rpc_url, confirmation_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(TimeExhausted):
            signer.wait_for_transaction_receipt("0x" + "cd" * 32)
        took = time.monotonic() - started
    finally:
        signer.close()
    assert 0.3 <= took < 3


@pytest.mark.chain
def test_receipt_wait_returns_soon_after_the_transaction_is_mined(
    chain: LocalChain, facilitator_account: Any
) -> None:
    """With automine off, the receipt appears only when the test mines a block 0.6 s later (the
    wait has backed off to its slowest polling by then); it is found within one slow poll."""
    signer = Signer(facilitator_account.key.hex(), chain.rpc_url, confirmation_timeout=10)
    mined_at: list[float] = []

    def mine_later() -> None:
        time.sleep(0.6)
        mined_at.append(time.monotonic())
        chain.rpc("evm_mine")

    try:
        chain.rpc("evm_setAutomine", [False])
        try:
            tx_hash = signer.send_transaction(Account.create().address, b"")
            miner = threading.Thread(target=mine_later)
            miner.start()
            receipt = signer.wait_for_transaction_receipt(tx_hash)
            found_at = time.monotonic()
            miner.join(timeout=10)
        finally:
            chain.rpc("evm_setAutomine", [True])
    finally:
        signer.close()
    assert receipt.status == 1 and receipt.tx_hash == tx_hash
    assert mined_at and 0 <= found_at - mined_at[0] < 1.0


def test_the_chain_id_is_asked_once_per_transport(node: Any) -> None:
    # web3 asks for it before every call it validates; the answer cannot change under us.
    transport = JsonRpcTransport(node.url)
    try:
        assert [result_of(transport, "eth_chainId") for _ in range(5)] == ["0x10"] * 5
    finally:
        transport.close()
    assert node.calls["eth_chainId"] == 1


@pytest.mark.chain
async def test_a_paid_request_costs_four_round_trips_to_the_node(
    chain: LocalChain,
    relay: RpcNode,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    """Verify: one simulation. Settle: the simulation again batched with the gas price, the
    broadcast, the receipt. The token's code, the chain id and the nonce are read once."""
    facilitator = LocalFacilitator(
        relay.url, facilitator_account.key.hex(), networks=chain.network, confirmation_timeout=10
    )
    requirements = requirements_for(test_token, pay_to)
    try:
        first = sign_exact_payment(payer, requirements)
        assert (await facilitator.verify(first, requirements)).is_valid
        assert (await facilitator.settle(first, requirements)).success
        with relay.lock:
            relay.calls.clear()
            relay.posts = 0
        payments = 5
        for _ in range(payments):
            payment = sign_exact_payment(payer, requirements)
            assert (await facilitator.verify(payment, requirements)).is_valid
            settled = await facilitator.settle(payment, requirements)
            assert settled.success, settled.error_reason
    finally:
        await facilitator.aclose()
    calls = dict(relay.calls)
    assert calls.pop("eth_call") == 2 * payments
    assert calls.pop("eth_gasPrice") == payments
    assert calls.pop(SEND) == payments
    receipts = calls.pop("eth_getTransactionReceipt")
    assert payments <= receipts <= 2 * payments  # mined at once by anvil; at most one miss
    assert calls == {}  # no eth_getCode, eth_chainId, eth_getTransactionCount any more
    assert relay.posts <= 4 * payments + (receipts - payments)


@pytest.mark.chain
async def test_one_receipt_loop_serves_a_burst(
    chain: LocalChain,
    relay: RpcNode,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    """Twelve settlements waiting together are polled by one thread, in batches: while the
    chain mines nothing, each poll asks for every pending receipt in one post."""
    facilitator = LocalFacilitator(
        relay.url, facilitator_account.key.hex(), networks=chain.network, confirmation_timeout=30
    )
    requirements = requirements_for(test_token, pay_to)
    payments = [sign_exact_payment(payer, requirements) for _ in range(12)]
    try:
        chain.rpc("evm_setAutomine", [False])
        try:
            settling = asyncio.gather(*(facilitator.settle(p, requirements) for p in payments))
            pending = await wait_until_async(
                lambda: relay.calls[SEND] == 12 and relay.batches > 0, timeout=20
            )
            await asyncio.sleep(0.3)
            pollers = [t for t in threading.enumerate() if t.name == "x402gate-receipts"]
            with relay.lock:
                receipt_calls, batches = relay.calls["eth_getTransactionReceipt"], relay.batches
            chain.rpc("evm_mine")
        finally:
            chain.rpc("evm_setAutomine", [True])
        results = await asyncio.wait_for(settling, 60)
    finally:
        await facilitator.aclose()
    assert pending
    assert len(pollers) == 1
    assert all(r.success for r in results), [r.error_reason for r in results]
    receipt_posts = batches - 12  # the other batches: each settlement's simulation + gas price
    assert receipt_calls >= 12 and receipt_posts >= 1
    assert receipt_calls / receipt_posts >= 6  # polls ask for many receipts at once


@pytest.mark.chain
async def test_a_nonce_used_by_another_sender_of_the_key_is_skipped_without_a_gap(
    chain: LocalChain,
    relay: RpcNode,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    """The key also sends from elsewhere (another process): the local counter is behind, the
    node answers "nonce too low", and the transaction is signed again once with the node's
    count. Nothing is left pending and nothing is sent twice."""
    facilitator = LocalFacilitator(
        relay.url, facilitator_account.key.hex(), networks=chain.network, confirmation_timeout=5
    )
    requirements = requirements_for(test_token, pay_to)
    try:
        first = await facilitator.settle(sign_exact_payment(payer, requirements), requirements)
        assert first.success, first.error_reason
        chain.transact(facilitator_account, to=Account.create().address, value=1)
        second = await facilitator.settle(sign_exact_payment(payer, requirements), requirements)
    finally:
        await facilitator.aclose()
    assert second.success, second.error_reason
    assert relay.calls[SEND] == 3  # the refused one, then its second signature
    assert test_token.balance_of(pay_to) == 2 * PRICE
    assert chain.tx_count(facilitator.address) == chain.w3.eth.get_transaction_count(
        facilitator.address,  # type: ignore[arg-type]
        "latest",
    )


@pytest.mark.chain
async def test_a_settlement_cancelled_while_awaiting_its_receipt_is_not_sent_again(
    chain: LocalChain,
    relay: RpcNode,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    """The request waiting for the receipt goes away (cancelled); a retry of the same payment
    waits for the transaction already sent instead of broadcasting another one."""
    facilitator = LocalFacilitator(
        relay.url, facilitator_account.key.hex(), networks=chain.network, confirmation_timeout=10
    )
    requirements = requirements_for(test_token, pay_to)
    payment = sign_exact_payment(payer, requirements)
    try:
        chain.rpc("evm_setAutomine", [False])
        try:
            first = asyncio.ensure_future(facilitator.settle(payment, requirements))
            receipts = facilitator._signer.receipts
            assert await wait_until_async(lambda: receipts.pending == 1, timeout=10)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            chain.rpc("evm_mine")
        finally:
            chain.rpc("evm_setAutomine", [True])
        again = await asyncio.wait_for(facilitator.settle(payment, requirements), 20)
    finally:
        await facilitator.aclose()
    assert again.success, again.error_reason
    assert relay.calls[SEND] == 1
    assert test_token.balance_of(pay_to) == PRICE


@pytest.mark.chain
async def test_a_pending_settlement_is_reconciled_even_after_its_authorization_expired(
    chain: LocalChain,
    relay: RpcNode,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receipt does not come in time (``settlement_pending``); by the retry the
    authorization has expired. The retry still waits for the transaction already sent (looked
    up before any check, as the SDK's scheme does) instead of refusing a payment that lands."""
    facilitator = LocalFacilitator(
        relay.url, facilitator_account.key.hex(), networks=chain.network, confirmation_timeout=0.5
    )
    requirements = requirements_for(test_token, pay_to)
    payment = sign_exact_payment(payer, requirements)
    try:
        chain.rpc("evm_setAutomine", [False])
        try:
            first = await asyncio.wait_for(facilitator.settle(payment, requirements), 20)
            valid_before = int(payment.payload["authorization"]["validBefore"])
            monkeypatch.setattr(time, "time", lambda: float(valid_before + 1))
            chain.rpc("evm_mine")
        finally:
            chain.rpc("evm_setAutomine", [True])
        again = await asyncio.wait_for(facilitator.settle(payment, requirements), 20)
    finally:
        monkeypatch.undo()
        await facilitator.aclose()
    assert not first.success and first.error_reason == "settlement_pending"
    assert again.success, again.error_reason
    assert again.transaction == first.transaction
    assert relay.calls[SEND] == 1
    assert test_token.balance_of(pay_to) == PRICE


@pytest.mark.chain
async def test_two_processes_settling_from_one_key_at_once_all_land(
    chain: LocalChain,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    """Two servers share one settlement key (each with its own nonce counter, as two worker
    processes have) and settle at the same time: each collision on a nonce is signed again
    with the node's count, so every valid payment settles, once."""
    requirements = requirements_for(test_token, pay_to)
    facilitators = [
        LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)
        for _ in range(2)
    ]
    payments = [sign_exact_payment(payer, requirements) for _ in range(40)]
    try:
        results = await asyncio.gather(
            *(
                facilitators[i % 2].settle(payment, requirements)
                for i, payment in enumerate(payments)
            )
        )
    finally:
        for facilitator in facilitators:
            await facilitator.aclose()
    assert [(r.error_reason, r.error_message) for r in results if not r.success] == []
    assert test_token.balance_of(pay_to) == PRICE * len(payments)


@pytest.mark.chain
async def test_one_payment_settled_by_two_senders_of_one_key_sends_one_transaction(
    chain: LocalChain,
    test_token: TestToken,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
) -> None:
    """Two servers both took the same authorization (a claim lost in a store failover): both
    simulated it before either sent. The second to get the account's turn finds the first's
    transaction and sends nothing: one settlement, no reverted transaction paid for."""
    requirements = requirements_for(test_token, pay_to)
    facilitators = [
        LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)
        for _ in range(2)
    ]
    first_block = chain.block_number() + 1
    payments = [sign_exact_payment(payer, requirements) for _ in range(10)]
    try:
        results = await asyncio.gather(
            *(f.settle(payment, requirements) for payment in payments for f in facilitators)
        )
    finally:
        for facilitator in facilitators:
            await facilitator.aclose()
    assert sum(r.success for r in results) == len(payments)
    assert test_token.balance_of(pay_to) == PRICE * len(payments)
    statuses = [
        int(chain.w3.eth.get_transaction_receipt(tx["hash"])["status"])  # type: ignore[call-overload]
        for number in range(first_block, chain.block_number() + 1)
        for tx in chain.w3.eth.get_block(number, full_transactions=True)["transactions"]
    ]
    assert statuses == [1] * len(payments)
