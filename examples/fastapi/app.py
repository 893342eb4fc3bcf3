"""A FastAPI API with a paid endpoint, a paid router and a paid stream, served by uvicorn.

Real network (Base Sepolia through the public x402.org facilitator)::

    X402GATE_PAY_TO=0xYourAddress X402GATE_NETWORK=base-sepolia \\
    X402GATE_FACILITATOR_URL=https://x402.org/facilitator python examples/fastapi/app.py

Local chain (anvil and a test USDC, nothing to configure; needs ``x402gate[fastapi]`` and anvil)::

    python examples/fastapi/app.py --local

In local mode the first line printed is JSON with the URL, the test token and a funded buyer
key, so a script (``check.py``) can pay a request. The OpenAPI page (``/docs``) shows each paid
operation's price and 402 answer.
"""

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from x402gate import HTTPFacilitator, PaymentGate
from x402gate.fastapi import Payment, install, require_payment


class Weather(BaseModel):
    city: str
    forecast: str
    paid_by: str


weather_price = require_payment("$0.01", description="Today's weather in a city")
Paid = Annotated[Payment, Depends(weather_price)]


def create_app(gate: PaymentGate) -> FastAPI:
    """The app: free index, paid ``/weather/{city}``, paid ``/premium`` router, paid stream."""
    app = FastAPI(title="Weather, paid per call")
    install(app, gate, discovery=True)

    @app.get("/")
    async def index() -> dict[str, list[str]]:
        return {
            "paid": [
                "GET /weather/{city} ($0.01)",
                "GET /premium/* ($0.05)",
                "GET /forecast ($0.02, streamed)",
            ]
        }

    @app.get("/weather/{city}")
    async def weather(city: str, payment: Paid) -> Weather:
        return Weather(city=city.title(), forecast="sunny", paid_by=payment.payer)

    # Every operation of this router costs $0.05; the endpoints themselves know nothing of it.
    premium = APIRouter(prefix="/premium", dependencies=[Depends(require_payment("$0.05"))])

    @premium.get("/alerts/{city}")
    def alerts(city: str) -> dict[str, Any]:  # sync endpoints work the same
        return {"city": city.title(), "alerts": []}

    app.include_router(premium)

    # A stream's status goes out before its content exists: settle first ("before"), so the
    # charge never depends on how far the generator gets.
    forecast_price = require_payment("$0.02", settlement="before", description="Week, streamed")

    @app.get("/forecast", dependencies=[Depends(forecast_price)])
    async def forecast() -> StreamingResponse:
        async def days() -> AsyncIterator[str]:
            for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"):
                yield json.dumps({"day": day, "forecast": "sunny"}) + "\n"
                await asyncio.sleep(0)

        return StreamingResponse(days(), media_type="application/x-ndjson")

    return app


def gate_from_env() -> PaymentGate:
    """The real gate: ``X402GATE_PAY_TO``, ``X402GATE_NETWORK``, ``X402GATE_FACILITATOR_URL``."""
    return PaymentGate(
        pay_to=os.environ["X402GATE_PAY_TO"],
        network=os.environ.get("X402GATE_NETWORK", "base-sepolia"),
        facilitator=HTTPFacilitator(
            os.environ.get("X402GATE_FACILITATOR_URL", "https://x402.org/facilitator")
        ),
    )


def serve(app: FastAPI, host: str, port: int, info: dict[str, Any]) -> None:
    import uvicorn

    # Bind first so the ready line can name the port, even when port 0 picked it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}"
    print(json.dumps({"url": url, **info}), flush=True)
    print(f"serving on {url} (docs at {url}/docs; Ctrl-C to stop)", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A paid FastAPI API served by uvicorn")
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
