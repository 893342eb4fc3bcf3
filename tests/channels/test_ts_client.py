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

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from x402gate import PaymentGate
from x402gate._runner import run_sync
from x402gate.facilitators import LocalFacilitator
from x402gate.gate import ChannelSettings
from x402gate.testing.facilitator_server import FacilitatorServer

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
    payer: LocalAccount,
    token: TestToken,
    rpc_url: str,
    count: int,
    *urls: str,
    body: dict[str, Any] | None = None,
    refund: bool = False,
) -> dict[str, Any]:
    """Run the TypeScript payer for ``count`` requests over ``urls`` (each a POST of ``body``
    as JSON when given, else a GET; then, with ``refund``, its cooperative refund); its decoded
    report."""
    command = [_node(), str(PAYER_SCRIPT), token.asset.network, token.address, str(count), *urls]
    env = {
        **os.environ,
        "X402_PAYER_KEY": "0x" + bytes(payer.key).hex(),
        "X402_RPC_URL": rpc_url,
        "X402_REFUND": "1" if refund else "0",
    }
    if body is not None:
        env["X402_REQUEST_BODY"] = json.dumps(body)
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
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


def assert_refunded(
    report: dict[str, Any],
    channel_contracts: ChannelContracts,
    token: TestToken,
    payer: LocalAccount,
    before: int,
    channel_id: str,
) -> None:
    """The client's cooperative refund returned everything but what was served: the seller's
    share claimed in the same transaction, read from the chain."""
    assert report["refund"] is not None and report["refund"]["success"] is True, report
    assert report["refund"]["amount"] == str(DEPOSIT - N * PRICE)
    on_chain = channel_contracts.channel(channel_id)
    assert (on_chain.balance, on_chain.total_claimed) == (N * PRICE, N * PRICE)
    assert token.balance_of(payer.address) == before - N * PRICE


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


# -- a per-token route ---------------------------------------------------------------------------

PROMPT = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
JSON_USAGE = {"prompt_tokens": 7, "completion_tokens": 30}
STREAM_USAGE = {"prompt_tokens": 12, "completion_tokens": 40}
METERED_DEPOSIT = 1_000_000  # $1, the announced minimum: covers every request of the test


def token_cost(usage: dict[str, int]) -> int:
    """At $1 / $2 per 1k input / output tokens: 1,000 / 2,000 atomic units a token."""
    return usage["prompt_tokens"] * 1_000 + usage["completion_tokens"] * 2_000


def _per_token_app(gate: PaymentGate, runs: list[str]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware
    from x402gate.metering import PerToken, TokenPrice

    async def chat(request: Request) -> Response:
        kind = request.path_params["kind"]
        runs.append(kind)
        if kind == "json":
            return JSONResponse({**CONTENT, "choices": [], "usage": JSON_USAGE})
        events = [
            {"choices": [{"delta": {"content": "PAID"}}]},
            {"choices": [], "usage": STREAM_USAGE},
        ]
        lines = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
        return StreamingResponse(iter(lines), media_type="text/event-stream")

    prices = TokenPrice(input="$1", output="$2", per=1_000)
    app = Starlette(routes=[Route("/v1/{kind}", chat, methods=["POST"])])
    routes = {"POST /v1/*": gate.route(PerToken({"gpt-*": prices}))}
    return PaymentMiddleware(app, gate=gate, routes=routes)


def test_ts_client_pays_a_per_token_route_json_and_stream_from_one_deposit(
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    authorizer: LocalAccount,
    facilitator: CountingFacilitator,
    channel_contracts: ChannelContracts,
    tmp_path: Path,
) -> None:
    """JSON answers are charged their tokens exactly; a stream reports its whole step with its
    headers and earns the tokens it reported. The client checks each receipt and keeps signing:
    no paid request is ever answered 402, one deposit, earned = the tokens used."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from x402gate.demo import serve_in_thread

    gate = PaymentGate(
        pay_to=chain.new_account().address,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'gate.db'}",
        startup_checks="off",
        limit_in_flight=False,
        secret=b"k" * 32,
        public_origin="http://llm.test",
        channels=ChannelSettings(
            receiver_authorizer=authorizer.address, min_deposit=METERED_DEPOSIT
        ),
    )
    runs: list[str] = []
    before = test_token.balance_of(payer.address)
    count = 6
    try:
        with serve_in_thread(_per_token_app(gate, runs)) as base_url:
            urls = (f"{base_url}/v1/json", f"{base_url}/v1/stream")
            report = pay_with_ts_client(payer, test_token, chain.rpc_url, count, *urls, body=PROMPT)
        answers = report["answers"]
        assert [a["status"] for a in answers] == [200] * count, answers
        used = {"json": token_cost(JSON_USAGE), "stream": token_cost(STREAM_USAGE)}
        total = 0
        channel_ids: set[str] = set()
        for answer in answers:
            kind = answer["url"].rsplit("/", 1)[-1]
            assert "PAID" in answer["body"]
            receipt = answer["paymentResponse"]
            assert receipt is not None and receipt["success"] is True, receipt
            charged = int(receipt["extra"]["chargedAmount"])
            if kind == "json":
                assert charged == used["json"]  # measured before the headers went out
            else:
                assert charged >= used["stream"]  # the whole step, earned as far as used
            total += charged
            state = receipt["extra"]["channelState"]
            assert state["chargedCumulativeAmount"] == str(total)
            channel_ids.add(state["channelId"])
        assert len(channel_ids) == 1, channel_ids
        channel_id = channel_ids.pop()
        # Every paid request was served at once: the client never met a corrective 402.
        paid = [e for e in report["exchanges"] if e["paid"]]
        assert [e["status"] for e in paid] == [200] * count, report["exchanges"]
        assert runs == ["json", "stream"] * (count // 2)
        assert facilitator.settled == 1  # the deposit, and nothing else
        on_chain = channel_contracts.channel(channel_id)
        assert on_chain.balance == METERED_DEPOSIT and on_chain.total_claimed == 0
        assert test_token.balance_of(payer.address) == before - METERED_DEPOSIT
        stored = gate.store.channel_get(channel_id)
        assert stored is not None and stored.step is None
        assert stored.earned == (count // 2) * (used["json"] + used["stream"])
        assert stored.charged == total <= stored.max_claimable
    finally:
        gate.close()


# -- servers whose channels come from their configuration ----------------------------------------


@pytest.fixture
def facilitator_service(
    chain: LocalChain,
    channel_contracts: ChannelContracts,
    facilitator_account: LocalAccount,
    authorizer: LocalAccount,
) -> Iterator[FacilitatorServer]:
    """A LocalFacilitator that signs for receivers with ``authorizer``, served over HTTP."""
    inner = LocalFacilitator(
        chain.rpc_url,
        facilitator_account.key.hex(),
        networks=chain.network,
        receiver_authorizer_key=authorizer.key.hex(),
    )
    try:
        with FacilitatorServer(inner) as server:
            yield server
    finally:
        inner.close()


@pytest.mark.parametrize("refund", [False, True], ids=["pays", "pays-then-refunds"])
def test_ts_client_pays_a_flask_app_whose_channels_come_from_its_config(
    refund: bool,
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    facilitator_account: LocalAccount,
    facilitator_service: FacilitatorServer,
    channel_contracts: ChannelContracts,
    tmp_path: Path,
) -> None:
    pytest.importorskip("flask")
    pytest.importorskip("waitress")
    from flask import Flask

    from x402gate.flask import X402Gate
    from x402gate.testing.servers import serve_wsgi

    app = Flask(__name__)
    app.config.update(
        {
            "X402GATE_PAY_TO": chain.new_account().address,
            "X402GATE_ASSETS": [test_token.asset],
            "X402GATE_FACILITATOR_URL": facilitator_service.url,
            "X402GATE_STORE_URL": f"sqlite:///{tmp_path / 'flask.db'}",
            "X402GATE_LIMIT_IN_FLIGHT": False,
            "X402GATE_ROUTES": {"GET /paid": "$0.001"},
            # The receiver authorizer is the one the facilitator advertises.
            "X402GATE_CHANNELS": {"receiver_authorizer": "facilitator", "min_deposit": DEPOSIT},
        }
    )
    runs: list[str] = []

    @app.get("/paid")
    def paid() -> dict[str, str]:
        runs.append("paid")
        return CONTENT

    X402Gate(app)
    gate = app.extensions["x402gate"].gate
    before = test_token.balance_of(payer.address)
    try:
        with serve_wsgi(app) as base_url:
            report = pay_with_ts_client(
                payer, test_token, chain.rpc_url, N, f"{base_url}/paid", refund=refund
            )
        channel_id = assert_paid_by_one_channel(report, N)
        assert runs == ["paid"] * N
        assert facilitator_service.calls["settle"] == 1 + refund
        assert chain.tx_count(facilitator_account.address) == 1 + refund
        if refund:
            assert_refunded(report, channel_contracts, test_token, payer, before, channel_id)
        else:
            assert_one_deposit_on_chain(channel_contracts, test_token, payer, before, channel_id)
        stored = gate.store.channel_get(channel_id)
        assert stored is not None and stored.charged == N * PRICE
    finally:
        run_sync(gate.aclose())  # on the sync runner's loop, where its HTTP client lives


@contextlib.contextmanager
def _django_site(runs: list[str], x402gate: dict[str, Any]) -> Iterator[str]:
    """A Django project with one paid view and ``X402GATE = x402gate``, served by waitress.

    Django's settings belong to the process: configured here unless another test module (the
    Django integration tests, the conformance app) configured the same base settings first."""
    pytest.importorskip("django")
    pytest.importorskip("waitress")
    import django
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.http import HttpRequest, JsonResponse
    from django.test.utils import override_settings
    from django.urls import path

    from x402gate.testing.servers import serve_wsgi

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="x402gate-tests",
            ALLOWED_HOSTS=["*"],
            INSTALLED_APPS=["x402gate.django"],
            MIDDLEWARE=["x402gate.django.PaymentMiddleware"],
            ROOT_URLCONF=None,
            USE_TZ=True,
        )
        django.setup()

    def paid(request: HttpRequest) -> JsonResponse:
        runs.append("paid")
        return JsonResponse(CONTENT)

    urlconf = types.ModuleType("ts_client_urls")
    urlconf.urlpatterns = [path("paid", paid)]  # type: ignore[attr-defined]
    with (
        override_settings(ROOT_URLCONF=urlconf, X402GATE=x402gate),
        serve_wsgi(get_wsgi_application()) as base_url,
    ):
        yield base_url


@pytest.mark.parametrize("refund", [False, True], ids=["pays", "pays-then-refunds"])
def test_ts_client_pays_a_django_site_whose_channels_come_from_its_settings(
    refund: bool,
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    authorizer: LocalAccount,
    facilitator_account: LocalAccount,
    facilitator: CountingFacilitator,
    channel_contracts: ChannelContracts,
    tmp_path: Path,
) -> None:
    settings = {
        "PAY_TO": chain.new_account().address,
        "ASSETS": [test_token.asset],
        "FACILITATOR": facilitator,
        "STORE_URL": f"sqlite:///{tmp_path / 'django.db'}",
        "LIMIT_IN_FLIGHT": False,
        "ROUTES": {"GET /paid": "$0.001"},
        "CHANNELS": {"RECEIVER_AUTHORIZER": authorizer.address, "MIN_DEPOSIT": DEPOSIT},
    }
    if refund:  # the facilitator signs for no receiver: the site signs its refunds itself
        settings["CHANNELS"] = {
            "RECEIVER_AUTHORIZER_KEY": authorizer.key.hex(),
            "MIN_DEPOSIT": DEPOSIT,
        }
    runs: list[str] = []
    before = test_token.balance_of(payer.address)
    with _django_site(runs, settings) as base_url:
        from x402gate.django.conf import get_runtime

        report = pay_with_ts_client(
            payer, test_token, chain.rpc_url, N, f"{base_url}/paid", refund=refund
        )
        gate = get_runtime().gate
        channel_id = assert_paid_by_one_channel(report, N)
        stored = gate.store.channel_get(channel_id)
    assert runs == ["paid"] * N
    assert facilitator.settled == 1 + refund
    assert chain.tx_count(facilitator_account.address) == 1 + refund
    if refund:
        assert_refunded(report, channel_contracts, test_token, payer, before, channel_id)
    else:
        assert_one_deposit_on_chain(channel_contracts, test_token, payer, before, channel_id)
    assert stored is not None and stored.charged == N * PRICE


GATEWAY_YAML = """\
pay_to: "{pay_to}"
accepts:
  - network: "{network}"
    asset: "{token}"
    name: USD Coin
    version: "2"
facilitator:
  rpc_url: {rpc_url}
  private_key: ${{FACILITATOR_KEY}}
store: {store}
channels:
  receiver_authorizer_key: ${{AUTHORIZER_KEY}}
  min_deposit: {deposit}
upstreams:
  api:
    url: {upstream}
routes:
  "GET /data/*":
    upstream: api
    path: /item/{{*}}
    price: $0.001
"""


@contextlib.contextmanager
def _proxy(config: Path, env: dict[str, str]) -> Iterator[str]:
    """``x402gate proxy <config> --port 0`` in a child process; yields its URL."""
    keep = ("PATH", "HOME", "LANG", "PYTHONPATH")
    base = {k: v for k, v in os.environ.items() if k in keep}
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
        try:
            first = lines.get(timeout=60)
        except queue.Empty:
            pytest.fail("x402gate proxy did not start: " + "".join(output))
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


@pytest.mark.parametrize("refund", [False, True], ids=["pays", "pays-then-refunds"])
def test_ts_client_pays_the_gateway_whose_channels_come_from_its_file(
    refund: bool,
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    authorizer: LocalAccount,
    facilitator_account: LocalAccount,
    channel_contracts: ChannelContracts,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("yaml")
    pytest.importorskip("uvicorn")
    pytest.importorskip("waitress")
    from x402gate.stores import open_store
    from x402gate.testing.servers import serve_wsgi

    upstream_paths: list[str] = []

    def upstream(environ: dict[str, Any], start_response: Any) -> Any:
        upstream_paths.append(environ.get("PATH_INFO", ""))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(CONTENT).encode()]

    store_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    before = test_token.balance_of(payer.address)
    with serve_wsgi(upstream) as upstream_url:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            GATEWAY_YAML.format(
                pay_to=chain.new_account().address,
                network=chain.network,
                token=test_token.address,
                rpc_url=chain.rpc_url,
                store=store_url,
                deposit=DEPOSIT,
                upstream=upstream_url,
            )
        )
        env = {
            "FACILITATOR_KEY": facilitator_account.key.hex(),
            "AUTHORIZER_KEY": authorizer.key.hex(),
        }
        with _proxy(config, env) as base_url:
            urls = [f"{base_url}/data/a", f"{base_url}/data/b"]
            report = pay_with_ts_client(payer, test_token, chain.rpc_url, N, *urls, refund=refund)
    channel_id = assert_paid_by_one_channel(report, N)
    # The refund ran no upstream call.
    assert upstream_paths == ["/item/a", "/item/b"] * (N // 2) + ["/item/a"] * (N % 2)
    store = open_store(store_url)
    try:
        stored = store.channel_get(channel_id)
    finally:
        store.close()
    assert stored is not None and stored.charged == N * PRICE
    if not refund:
        assert chain.tx_count(facilitator_account.address) == 1  # the deposit, nothing else
        assert_one_deposit_on_chain(channel_contracts, test_token, payer, before, channel_id)
        # The operator lists and refunds it with the gateway's own file (store, chain, key).
        from x402gate.cli import main

        for name, value in env.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        assert main(["channels", "list", "--config", str(config), "--json"]) == 0
        (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert (row["channel_id"], row["unclaimed"]) == (channel_id, str(N * PRICE))
        assert main(["channels", "refund", "--config", str(config), channel_id]) == 0
        assert f"refunded {DEPOSIT - N * PRICE} to the payer" in capsys.readouterr().out
        on_chain = channel_contracts.channel(channel_id)
        assert (on_chain.balance, on_chain.total_claimed) == (N * PRICE, N * PRICE)
        assert test_token.balance_of(payer.address) == before - N * PRICE
        return
    # The deposit, then one transaction claiming what was served and refunding the rest.
    assert chain.tx_count(facilitator_account.address) == 2
    assert_refunded(report, channel_contracts, test_token, payer, before, channel_id)
    assert (stored.balance, stored.total_claimed) == (N * PRICE, N * PRICE)
