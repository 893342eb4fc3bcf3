"""A plain WSGI app with one paid route, served by waitress.

Real network (Base Sepolia through the public x402.org facilitator)::

    X402GATE_PAY_TO=0xYourAddress python examples/wsgi/app.py

Local chain (anvil and a test USDC, nothing to configure; needs ``x402gate[all]`` and anvil)::

    python examples/wsgi/app.py --local

In local mode the first line printed is JSON with the URL, the test token and a funded buyer
key, so a script (``check.py``) can pay a request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Iterable
from typing import Any

from x402gate import HTTPFacilitator, PaymentGate
from x402gate.wsgi import PaymentMiddleware


def weather(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The app, as it was before payments: it knows nothing about x402."""
    if environ["PATH_INFO"] == "/weather":
        payment = environ["x402gate.payment"]  # set by the middleware on paid routes
        body = {"city": "Lisbon", "forecast": "sunny", "paid_by": payment.payer}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Paid route: GET /weather ($0.01)\n"]


def build_app(gate: PaymentGate) -> PaymentMiddleware:
    """``weather`` with ``GET /weather`` paywalled at $0.01 and a discovery document."""
    return PaymentMiddleware(
        weather,
        gate=gate,
        routes={"GET /weather": gate.route("$0.01", description="Today's weather in Lisbon")},
        discovery=True,
    )


def gate_from_environment() -> PaymentGate:
    return PaymentGate(
        pay_to=os.environ["X402GATE_PAY_TO"],
        network=os.environ.get("X402GATE_NETWORK", "base-sepolia"),
        facilitator=HTTPFacilitator(
            os.environ.get("X402GATE_FACILITATOR_URL", "https://x402.org/facilitator")
        ),
        store=os.environ.get("X402GATE_STORE_URL", "sqlite:///x402gate.db"),
    )


def serve(app: Any, host: str, port: int, info: dict[str, Any]) -> None:
    from waitress.server import create_server

    server = create_server(app, host=host, port=port)
    url = f"http://{host}:{server.effective_port}"
    print(json.dumps({"url": url, **info}), flush=True)
    print(f"serving on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    server.run()  # returns on SIGINT/SIGTERM (see main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A paywalled WSGI app served by waitress")
    parser.add_argument("--local", action="store_true", help="run on a local anvil chain")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the with-blocks: anvil is stopped too

    signal.signal(signal.SIGTERM, stop)
    if not args.local:
        serve(build_app(gate_from_environment()), args.host, args.port, {})
    else:  # the same app on a local chain: anvil, a test USDC, a funded buyer
        from x402gate.testing.local import local_gate

        with local_gate() as local:
            serve(build_app(local.gate), args.host, args.port, local.buyer_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
