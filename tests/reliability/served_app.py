"""The paid API the multi-process tests serve with uvicorn, built from environment variables.

``python -m uvicorn served_app:create_app --factory --app-dir tests/reliability`` builds, in every
worker process, a real :class:`~x402gate.PaymentGate` with a :class:`~x402gate.LocalFacilitator`
settling on the test chain:

=============================  ==========================================================
``X402GATE_TEST_RPC_URL``      JSON-RPC URL of the chain
``X402GATE_TEST_FACILITATOR``  private key (hex) that pays settlement gas
``X402GATE_TEST_TOKEN``        address of the test USDC (EIP-712 domain "USD Coin" / "2")
``X402GATE_TEST_PAY_TO``       recipient of payments
``X402GATE_TEST_STORE``        replay store URL (``sqlite:///...`` or ``redis://...``)
``X402GATE_TEST_RUNS``         file that gets one line (the worker's pid) per paid handler run
=============================  ==========================================================

Routes: ``GET /paid`` costs $0.01; ``GET /free`` and ``GET /health`` are free. Every answer carries
``x-served-by: <pid>`` so a test can see which worker process answered it.
"""

from __future__ import annotations

import os
from typing import Any

PRICE = "$0.01"
PAID_CONTENT = "the paid content"

ENV_RPC_URL = "X402GATE_TEST_RPC_URL"
ENV_FACILITATOR_KEY = "X402GATE_TEST_FACILITATOR"
ENV_TOKEN = "X402GATE_TEST_TOKEN"
ENV_PAY_TO = "X402GATE_TEST_PAY_TO"
ENV_STORE = "X402GATE_TEST_STORE"
ENV_RUNS = "X402GATE_TEST_RUNS"


def _with_worker_pid(app: Any) -> Any:
    pid = str(os.getpid()).encode()

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_with_pid(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), (b"x-served-by", pid)]
            await send(message)

        await app(scope, receive, send_with_pid)

    return wrapped


def create_app() -> Any:
    """Build the app from the environment (uvicorn calls this once per worker process)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate import Asset, LocalFacilitator, PaymentGate
    from x402gate.integrations.asgi import PaymentMiddleware

    env = os.environ
    asset = Asset(
        network="eip155:31337", address=env[ENV_TOKEN], name="USD Coin", version="2", decimals=6
    )
    gate = PaymentGate(
        pay_to=env[ENV_PAY_TO],
        assets=asset,
        facilitator=LocalFacilitator(
            env[ENV_RPC_URL], env[ENV_FACILITATOR_KEY], networks=asset.network
        ),
        store=env[ENV_STORE],
    )
    runs_file = env[ENV_RUNS]

    async def paid(request: Request) -> JSONResponse:
        # O_APPEND writes of one short line are atomic across processes.
        fd = os.open(runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return JSONResponse({"secret": PAID_CONTENT, "payer": request.state.payment.payer})

    async def free(request: Request) -> JSONResponse:
        return JSONResponse({"free": True})

    app = Starlette(routes=[Route("/paid", paid), Route("/free", free), Route("/health", free)])
    return _with_worker_pid(PaymentMiddleware(app, gate=gate, routes={"GET /paid": PRICE}))
