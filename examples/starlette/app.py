"""A Starlette API paywalled by the pure ASGI middleware and a route table, served by uvicorn.

The same middleware fits any ASGI app (Litestar, Quart, Django's ASGI handler, raw ASGI).

Real network (Base Sepolia through the public x402.org facilitator)::

    X402GATE_PAY_TO=0xYourAddress X402GATE_NETWORK=base-sepolia \\
    X402GATE_FACILITATOR_URL=https://x402.org/facilitator python examples/starlette/app.py

Local chain (anvil and a test USDC, nothing to configure; needs ``x402gate[server]`` and anvil)::

    python examples/starlette/app.py --local

In local mode the first line printed is JSON with the URL, the test token and a funded buyer
key, so a script (``check.py``) can pay a request.
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from x402gate import HTTPFacilitator, MatchRules, PaymentGate, Rule
from x402gate.asgi import PaymentMiddleware


async def index(request: Request) -> Response:
    return JSONResponse(
        {
            "paid": [
                "GET /weather/{city} ($0.01)",
                "POST /chat ($0.002-$0.02)",
                "GET /forecast ($0.02, streamed)",
            ]
        }
    )


async def weather(request: Request) -> Response:
    payment = request.state.payment  # what was paid, by whom (settled right after this answer)
    city = request.path_params["city"].title()
    return JSONResponse({"city": city, "forecast": "sunny", "paid_by": payment.payer})


async def chat(request: Request) -> Response:
    body = await request.json()  # the middleware read it once for pricing; the app reads it too
    return JSONResponse({"model": body.get("model"), "answer": "Hello!"})


async def forecast(request: Request) -> Response:
    async def days() -> AsyncIterator[str]:
        for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"):
            yield json.dumps({"day": day, "forecast": "sunny"}) + "\n"

    return StreamingResponse(days(), media_type="application/x-ndjson")


def create_app(gate: PaymentGate) -> PaymentMiddleware:
    """The Starlette app wrapped in the payment middleware; paid routes are in one table."""
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/weather/{city}", weather),
            Route("/chat", chat, methods=["POST"]),
            Route("/forecast", forecast),
        ]
    )
    return PaymentMiddleware(
        app,
        gate=gate,
        routes={
            "GET /weather/{city}": gate.route("$0.01", description="Today's weather in a city"),
            # Priced from the JSON body: the big model costs more.
            "POST /chat": MatchRules([Rule("$0.02", {"body.model": "large-*"})], fallback="$0.002"),
            # A stream's status goes out before its content exists: settle first ("before").
            "GET /forecast": gate.route("$0.02", settlement="before", description="Week, streamed"),
        },
        discovery=True,
    )


def gate_from_env() -> PaymentGate:
    """The real gate: ``X402GATE_PAY_TO``, ``X402GATE_NETWORK``, ``X402GATE_FACILITATOR_URL``."""
    return PaymentGate(
        pay_to=os.environ["X402GATE_PAY_TO"],
        network=os.environ.get("X402GATE_NETWORK", "base-sepolia"),
        facilitator=HTTPFacilitator(
            os.environ.get("X402GATE_FACILITATOR_URL", "https://x402.org/facilitator")
        ),
    )


def serve(app: Any, host: str, port: int, info: dict[str, Any]) -> None:
    import uvicorn

    # Bind first so the ready line can name the port, even when port 0 picked it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}"
    print(json.dumps({"url": url, **info}), flush=True)
    print(f"serving on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A paid Starlette API served by uvicorn")
    parser.add_argument("--local", action="store_true", help="run on a local anvil chain")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the with-blocks: anvil is stopped too

    # uvicorn shuts down gracefully on SIGTERM, then raises it again for this handler.
    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        if not args.local:
            serve(create_app(gate_from_env()), args.host, args.port, {})
        else:  # the same app on a local chain: anvil, a test USDC, a funded buyer
            from x402gate.testing.local import local_gate

            with local_gate() as local:
                serve(create_app(local.gate), args.host, args.port, local.buyer_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
