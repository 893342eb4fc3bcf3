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
import contextlib
import json
import os
import signal
import sys
import tempfile
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


@contextlib.contextmanager
def local_gate() -> Iterator[tuple[PaymentGate, dict[str, Any]]]:
    """A gate on a fresh local chain, and what a buyer needs to pay it."""
    from eth_account import Account

    from x402gate import LocalFacilitator
    from x402gate.testing import LocalChain

    with tempfile.TemporaryDirectory() as tmp, LocalChain() as chain:
        token = chain.deploy_token()
        buyer = chain.new_account(token=token, token_amount=5_000_000)  # 5 test USDC
        settler = chain.new_account()  # pays the settlement gas
        gate = PaymentGate(
            pay_to=Account.create().address,
            assets=token.asset,
            facilitator=LocalFacilitator(chain.rpc_url, settler.key.hex(), networks=chain.network),
            store=f"sqlite:///{tmp}/replay.db",
        )
        asset = token.asset
        buyer_info = {
            "buyer_key": buyer.key.hex(),
            "asset": {
                "network": asset.network,
                "address": asset.address,
                "name": asset.name,
                "version": asset.version,
                "decimals": asset.decimals,
            },
            "pay_to": gate.pay_to[asset.network],
        }
        try:
            yield gate, buyer_info
        finally:
            gate.close()


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
    if args.local:
        with local_gate() as (gate, info):
            serve(create_app(gate), args.host, args.port, info)
    else:
        serve(create_app(), args.host, args.port, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
