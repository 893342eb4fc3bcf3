"""A paid API whose price drops for regular payers: $0.01 a call, $0.005 after 100 paid calls in
the calendar month (``TIER_AFTER`` changes the 100), read from the payments journal.

Real network (Base Sepolia through the public x402.org facilitator)::

    X402GATE_PAY_TO=0xYourAddress X402GATE_PUBLIC_ORIGIN=https://api.example.com \\
    python examples/tiered_prices/app.py

Local chain (anvil and a test USDC, nothing to configure; needs ``x402gate[server]`` and anvil)::

    python examples/tiered_prices/app.py --local

A paid answer carries an ``X402GATE-SESSION`` token naming the payer; a client that sends it
back is quoted its own price in the 402 (an anonymous request is always quoted the full one).
In local mode the first line printed is JSON with the URL, the test token and a funded buyer
key, so a script (``check.py``) can pay requests.
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from x402gate import HTTPFacilitator, PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.pricing import Tiered


async def weather(request: Request) -> Response:
    payment = request.state.payment
    city = request.path_params["city"].title()
    return JSONResponse({"city": city, "forecast": "sunny", "paid": payment.amount})


def create_app(gate: PaymentGate) -> PaymentMiddleware:
    """The app and its one paid route, priced by the payer's requests this month."""
    after = int(os.environ.get("TIER_AFTER", "100"))
    app = Starlette(routes=[Route("/weather/{city}", weather)])
    return PaymentMiddleware(
        app,
        gate=gate,
        routes={"GET /weather/{city}": Tiered("$0.01", [(after, "$0.005")], period="month")},
    )


def gate_from_env() -> PaymentGate:
    """The real gate: ``X402GATE_PAY_TO``, ``X402GATE_PUBLIC_ORIGIN``, ``X402GATE_NETWORK``,
    ``X402GATE_FACILITATOR_URL``; the journal is in the default SQLite store."""
    return PaymentGate(
        pay_to=os.environ["X402GATE_PAY_TO"],
        network=os.environ.get("X402GATE_NETWORK", "base-sepolia"),
        facilitator=HTTPFacilitator(
            os.environ.get("X402GATE_FACILITATOR_URL", "https://x402.org/facilitator")
        ),
        public_origin=os.environ["X402GATE_PUBLIC_ORIGIN"],
    )


def bind(host: str, port: int) -> tuple[socket.socket, str]:
    """Bind first, so that the URL (the gate's public origin) is known, even for port 0."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock, f"http://{host}:{sock.getsockname()[1]}"


def serve(app: Any, sock: socket.socket, url: str, info: dict[str, Any]) -> None:
    import uvicorn

    print(json.dumps({"url": url, **info}), flush=True)
    print(f"serving on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A paid API with tiered prices per payer")
    parser.add_argument("--local", action="store_true", help="run on a local anvil chain")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the with-blocks: anvil is stopped too

    signal.signal(signal.SIGTERM, stop)
    sock, url = bind(args.host, args.port)
    with contextlib.suppress(KeyboardInterrupt):
        if not args.local:
            serve(create_app(gate_from_env()), sock, url, {})
        else:
            import tempfile

            from x402gate.testing.local import local_gate

            with (
                tempfile.TemporaryDirectory(prefix="x402gate-tiered-") as tmp,
                local_gate(store=f"sqlite:///{tmp}/journal.db", public_origin=url) as local,
            ):
                # The store URL lets a script run `x402gate report --store URL` on the journal.
                info = {**local.buyer_info(), "store": f"sqlite:///{tmp}/journal.db"}
                serve(create_app(local.gate), sock, url, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
