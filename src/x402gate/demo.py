"""``x402gate demo``: a complete paid round trip on a local chain, in about a second.

Starts anvil on 127.0.0.1, deploys the project's test USDC, funds a buyer, serves a small
paywalled Starlette app with uvicorn on a free loopback port, and lets the official x402 client
buy a flat-priced call and a dynamically priced call, then replay an already used payment.
Prints what happened and stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["run_demo"]

BUYER_FUNDS = 5_000_000  # 5 USDC
DEMO_ORIGIN = "https://demo.x402gate.test"
"""The public origin the demo's gate names; the server itself listens on a free loopback port."""
CHAT_INPUT_TOKENS, CHAT_OUTPUT_TOKENS = 25, 60  # what the demo's chat answer reports
CHAT_BODY = {
    "model": "demo-chat",
    "max_tokens": 200,
    "stream": True,
    "messages": [{"role": "user", "content": "What does x402 do?"}],
}


@dataclass
class _Row:
    route: str
    price: str
    outcome: str
    tx: str
    buyer: tuple[int, int]
    seller: tuple[int, int]


def _usd(atomic: int) -> str:
    from .money import format_usd

    return format_usd(atomic)


def build_demo_app(gate: Any) -> Any:
    """The demo's paywalled app: a flat-priced weather report and a summary priced by length."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from .asgi import PaymentMiddleware
    from .metering import PerToken, TokenPrice
    from .request import RequestInfo

    async def index(request: Request) -> JSONResponse:
        return JSONResponse({"service": "x402gate demo", "paid": ["/weather", "/summarize"]})

    async def weather(request: Request) -> JSONResponse:
        payment = request.state.payment
        return JSONResponse({"city": "Lisbon", "forecast": "sunny", "paid_by": payment.payer})

    async def summarize(request: Request) -> JSONResponse:
        text = (await request.json()).get("text", "")
        return JSONResponse({"summary": text[:40] + ("…" if len(text) > 40 else "")})

    def price_by_length(request: RequestInfo) -> str:
        # $0.001 per started 100 characters of input: deterministic for a given body.
        body = request.json() or {}
        chars = len(str(body.get("text", "")))
        return f"${(chars // 100 + 1) / 1000:.3f}"

    async def chat(request: Request) -> StreamingResponse:
        # An OpenAI-shaped streamed answer whose last event reports the tokens it used.
        async def events() -> AsyncIterator[bytes]:
            for word in ("Paid", " per", " token", "."):
                delta = {"choices": [{"delta": {"content": word}}]}
                yield f"data: {json.dumps(delta)}\n\n".encode()
            usage = {"prompt_tokens": CHAT_INPUT_TOKENS, "completion_tokens": CHAT_OUTPUT_TOKENS}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/weather", weather),
            Route("/summarize", summarize, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )
    return PaymentMiddleware(
        app,
        gate=gate,
        routes={
            "GET /weather": gate.route("$0.01", description="Today's weather"),
            "POST /summarize": gate.route(price_by_length, description="Summary, priced by length"),
            # $3 / $15 per million input / output tokens; a payment tops up at least $0.05 and
            # what a call does not use stays as the buyer's credit for the next one.
            "POST /v1/chat/completions": gate.route(
                PerToken(TokenPrice(input="$3", output="$15")),
                credit_topup="$0.05",
                description="Chat, charged per token used",
            ),
        },
    )


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields the base URL.

    uvicorn's own reading of ``X-Forwarded-*`` is off: the gate's ``trusted_proxies`` decide.
    """
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=0, log_level="warning", lifespan="off", proxy_headers=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="x402gate-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the demo server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def _quoted_price(base_url: str, method: str, path: str, body: Any) -> str:
    """The price the server asks for, read from its 402 challenge (what the client sees)."""
    import httpx

    from .protocol import _decode_b64_json

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as raw:
        challenge = await raw.request(method, path, json=body)
    required = _decode_b64_json(challenge.headers["payment-required"], "PAYMENT-REQUIRED")
    return _usd(int(required["accepts"][0]["amount"]))


def _tx(response: Any) -> str:
    from .protocol import _decode_b64_json

    receipt = response.headers.get("payment-response")
    if not receipt:
        return "-"
    return str(_decode_b64_json(receipt, "PAYMENT-RESPONSE").get("transaction", "-"))


async def _credit(base_url: str, session_token: str) -> int:
    """The buyer's credit, as the buyer can ask for it."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as raw:
        answer = await raw.get(
            "/.well-known/x402/credit", headers={"X402GATE-SESSION": session_token}
        )
    return int(answer.json()["available"]) if answer.status_code == 200 else 0


async def _buy(
    base_url: str, buyer: Any, asset: Any, token: Any, seller: str, rows: list[_Row]
) -> None:
    import httpx

    from .testing.clients import paying_httpx_client

    sent: list[str] = []
    prices: dict[str, str] = {}

    class Recording(httpx.AsyncBaseTransport):
        # Sits below the x402 transport, so it sees the retried request with the payment.
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if "payment-signature" in request.headers:
                sent.append(request.headers["payment-signature"])
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    def balances() -> tuple[int, int]:
        return token.balance_of(buyer.address), token.balance_of(seller)

    async with paying_httpx_client(
        buyer, asset=asset, base_url=base_url, transport=Recording(), timeout=30
    ) as client:
        for method, path, body in (
            ("GET", "/weather", None),
            ("POST", "/summarize", {"text": "x402 lets any HTTP API charge per call. " * 6}),
        ):
            price = await _quoted_price(base_url, method, path, body)
            prices[path] = price
            before = balances()
            response = await client.request(method, path, json=body)
            after = balances()
            tx = "-"
            receipt = response.headers.get("payment-response")
            if receipt:
                from .protocol import _decode_b64_json

                tx = str(_decode_b64_json(receipt, "PAYMENT-RESPONSE").get("transaction", "-"))
            outcome = (
                f"{response.status_code} {'paid' if response.status_code == 200 else 'refused'}"
            )
            rows.append(
                _Row(
                    f"{method} {path}",
                    price,
                    outcome,
                    tx,
                    (before[0], after[0]),
                    (before[1], after[1]),
                )
            )

        # Per-token chat: the payment tops up credit, the call is charged the tokens it used.
        price = await _quoted_price(base_url, "POST", "/v1/chat/completions", CHAT_BODY)
        before = balances()
        paid_chat = await client.post("/v1/chat/completions", json=CHAT_BODY)
        after = balances()
        token_header = paid_chat.headers.get("x402gate-session", "")
        credit = await _credit(base_url, token_header)
        rows.append(
            _Row(
                "POST /v1/chat/completions",
                price,
                f"{paid_chat.status_code} paid, used {_usd(before[0] - after[0] - credit)}, "
                f"credit {_usd(credit)}",
                _tx(paid_chat),
                (before[0], after[0]),
                (before[1], after[1]),
            )
        )

    # The same buyer again, with its session token: served from credit, no new transaction.
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as raw:
        before = balances()
        again = await raw.post(
            "/v1/chat/completions", json=CHAT_BODY, headers={"X402GATE-SESSION": token_header}
        )
        after = balances()
        left = await _credit(base_url, token_header)
        rows.append(
            _Row(
                "POST /v1/chat/completions (again)",
                "credit",
                f"{again.status_code} from credit, used {_usd(credit - left)}, credit {_usd(left)}",
                _tx(again),
                (before[0], after[0]),
                (before[1], after[1]),
            )
        )

    # A replay: the exact PAYMENT-SIGNATURE of the first purchase, sent again by hand.
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as raw:
        before = balances()
        response = await raw.get("/weather", headers={"PAYMENT-SIGNATURE": sent[0]})
        after = balances()
        code = response.json().get("error", "")
        rows.append(
            _Row(
                "GET /weather (replay)",
                prices["/weather"],
                f"{response.status_code} {code}",
                "-",
                (before[0], after[0]),
                (before[1], after[1]),
            )
        )


def _print_table(rows: list[_Row], out: TextIO) -> None:
    def short(tx: str) -> str:
        return tx if len(tx) < 16 else f"{tx[:10]}…{tx[-6:]}"

    header = (
        "route",
        "price",
        "outcome",
        "transaction",
        "buyer before → after",
        "seller before → after",
    )
    table = [header] + [
        (
            r.route,
            r.price,
            r.outcome,
            short(r.tx),
            f"{_usd(r.buyer[0])} → {_usd(r.buyer[1])}",
            f"{_usd(r.seller[0])} → {_usd(r.seller[1])}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def run_demo(out: TextIO = sys.stdout, *, as_json: bool = False) -> int:
    """Run the demo; returns the process exit code (0 when every step behaved as expected)."""
    from .testing.local import local_gate

    started = time.monotonic()
    rows: list[_Row] = []
    # Sign-ins and session tokens are bound to the name clients use for the service.
    with local_gate(buyer_funds=BUYER_FUNDS, public_origin=DEMO_ORIGIN) as local:
        chain, token, buyer, seller = local.chain, local.token, local.buyer, local.pay_to
        out.write(
            f"local chain {chain.network} at {chain.rpc_url} (anvil pid {chain.pid}), "
            f"test USDC {token.address}\nbuyer {buyer.address} with {_usd(BUYER_FUNDS)}, "
            f"seller {seller}\n"
        )
        with serve_in_thread(build_demo_app(local.gate)) as base_url:
            out.write(f"paywalled app served by uvicorn at {base_url}\n\n")
            asyncio.run(_buy(base_url, buyer, token.asset, token, seller, rows))
    _print_table(rows, out)
    expected = [r.outcome.split()[0] for r in rows] == ["200", "200", "200", "200", "402"]
    moved = sum(r.seller[1] - r.seller[0] for r in rows)
    out.write(
        f"\nseller received {_usd(moved)} in {len([r for r in rows if r.tx != '-'])} transactions; "
        "the second chat call was paid from credit and the replay was refused, both moving "
        f"nothing on chain. Done in {time.monotonic() - started:.1f} s.\n"
    )
    if as_json:
        out.write(json.dumps([r.__dict__ for r in rows]) + "\n")
    if not expected:
        out.write("demo FAILED: the outcomes above are not the expected 200, 200, 200, 200, 402\n")
        return 1
    return 0
