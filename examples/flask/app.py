"""A Flask API with a paid view and a paid stream, served by waitress.

Real network (Base Sepolia through the public x402.org facilitator)::

    X402GATE_PAY_TO=0xYourAddress X402GATE_NETWORK=base-sepolia \\
    X402GATE_FACILITATOR_URL=https://x402.org/facilitator python examples/flask/app.py

Local chain (anvil and a test USDC, nothing to configure; needs ``x402gate[all]`` and anvil)::

    python examples/flask/app.py --local

In local mode the first line printed is JSON with the URL, the test token and a funded buyer
key, so a script (``check.py``) can pay a request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response

from x402gate import PaymentGate
from x402gate.flask import X402Gate, current_payment, require_payment


def create_app(gate: PaymentGate | None = None) -> Flask:
    """The app; its gate comes from ``X402GATE_*`` environment settings unless one is given."""
    app = Flask(__name__)
    app.config.update({k: v for k, v in os.environ.items() if k.startswith("X402GATE_")})
    X402Gate(app, gate=gate, discovery=True)

    @app.get("/")
    def index() -> dict[str, Any]:
        return {"paid": ["GET /weather ($0.01)", "GET /forecast ($0.05, streamed)"]}

    @app.get("/weather")
    @require_payment("$0.01", description="Today's weather in Lisbon")
    def weather() -> dict[str, Any]:
        return {"city": "Lisbon", "forecast": "sunny", "paid_by": current_payment.payer}

    @app.get("/forecast")
    @require_payment("$0.05", settlement="before", description="A week of forecasts, streamed")
    def forecast() -> Response:
        # A stream's status is sent before its content exists: settle first ("before"), so
        # the charge never depends on how far the generator gets.
        def days() -> Iterator[str]:
            for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"):
                yield json.dumps({"day": day, "forecast": "sunny"}) + "\n"

        return Response(days(), mimetype="application/x-ndjson")

    return app


def serve(app: Any, host: str, port: int, info: dict[str, Any]) -> None:
    from waitress.server import create_server

    server = create_server(app, host=host, port=port)
    url = f"http://{host}:{server.effective_port}"
    print(json.dumps({"url": url, **info}), flush=True)
    print(f"serving on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    server.run()  # returns on SIGINT/SIGTERM (see main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A paid Flask API served by waitress")
    parser.add_argument("--local", action="store_true", help="run on a local anvil chain")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the with-blocks: anvil is stopped too

    signal.signal(signal.SIGTERM, stop)
    if not args.local:
        serve(create_app(), args.host, args.port, {})
    else:  # the same app on a local chain: anvil, a test USDC, a funded buyer
        from x402gate.testing.local import local_gate

        with local_gate() as local:
            serve(create_app(local.gate), args.host, args.port, local.buyer_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
