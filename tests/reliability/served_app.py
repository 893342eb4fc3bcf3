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
``X402GATE_TEST_DIE_SETTLED``  when set: the worker SIGKILLs itself right after a settlement
                               succeeded, before anything is recorded or answered
``X402GATE_TEST_DIE_ANSWERING`` when set: the worker SIGKILLs itself when a paid answer's
                               headers went out, before its body (the claim is marked used)
``X402GATE_TEST_OWNER_GRACE``  seconds a claim whose request vanished is left to it before a
                               retry found paid on chain takes it over (default 60)
``X402GATE_TEST_WEBHOOK``      when set: ``URL SECRET``, a webhook endpoint sent the payment
                               events (retried after 0.2 to 0.5 s)
``X402GATE_TEST_SECRET``       the session-token secret (default: one per process, so a token
                               works only on the process that issued it)
=============================  ==========================================================

Routes: ``GET /paid`` costs $0.01, and so does ``GET /slow`` (an answer streamed in
:data:`SLOW_CHUNKS` chunks, one per :data:`SLOW_INTERVAL` seconds); ``POST /metered`` is
priced per token (12 in, 40 out: $0.092) with a $0.50 credit top-up; ``GET /free`` and
``GET /health`` are free. Every answer carries ``x-served-by: <pid>`` so a test can see which
worker process answered it.
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
ENV_DIE_SETTLED = "X402GATE_TEST_DIE_SETTLED"
ENV_OWNER_GRACE = "X402GATE_TEST_OWNER_GRACE"
ENV_DIE_ANSWERING = "X402GATE_TEST_DIE_ANSWERING"
ENV_WEBHOOK = "X402GATE_TEST_WEBHOOK"
ENV_SECRET = "X402GATE_TEST_SECRET"
USAGE = {"prompt_tokens": 12, "completion_tokens": 40}
METERED_CHARGE = 12 * 1_000 + 40 * 2_000
METERED_TOPUP = 500_000
SLOW_CHUNKS = 12
SLOW_INTERVAL = 0.5


class _DyingAfterSettlement:
    """The real facilitator; the process dies (SIGKILL) the moment a settlement succeeded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def supported(self) -> Any:
        return await self.inner.supported()

    async def verify(self, payload: Any, requirements: Any) -> Any:
        return await self.inner.verify(payload, requirements)

    async def settle(self, payload: Any, requirements: Any) -> Any:
        import signal

        result = await self.inner.settle(payload, requirements)
        if result.success:
            os.kill(os.getpid(), signal.SIGKILL)
        return result


def _with_worker_pid(app: Any) -> Any:
    pid = str(os.getpid()).encode()
    die_answering = bool(os.environ.get(ENV_DIE_ANSWERING))

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        paid = False

        async def send_with_pid(message: Any) -> None:
            nonlocal paid
            if message["type"] == "http.response.start":
                paid = any(k.lower() == b"payment-response" for k, _ in message.get("headers", ()))
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), (b"x-served-by", pid)]
            elif paid and die_answering:
                import signal

                os.kill(os.getpid(), signal.SIGKILL)  # settled and marked used; no body sent
            await send(message)

        await app(scope, receive, send_with_pid)

    return wrapped


def create_app() -> Any:
    """Build the app from the environment (uvicorn calls this once per worker process)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from x402gate import Asset, ChainReconciler, LocalFacilitator, PaymentGate
    from x402gate.asgi import PaymentMiddleware

    env = os.environ
    asset = Asset(
        network="eip155:31337", address=env[ENV_TOKEN], name="USD Coin", version="2", decimals=6
    )
    facilitator: Any = LocalFacilitator(
        env[ENV_RPC_URL], env[ENV_FACILITATOR_KEY], networks=asset.network
    )
    if env.get(ENV_DIE_SETTLED):
        facilitator = _DyingAfterSettlement(facilitator)
    webhook: dict[str, Any] = {}
    if env.get(ENV_WEBHOOK):
        url, secret = env[ENV_WEBHOOK].split()
        webhook = {
            "webhooks": [{"url": url, "secret": secret}],
            "webhook_delivery": {
                "backoff_seconds": 0.2,
                "max_backoff_seconds": 0.5,
                "poll_seconds": 0.1,
                "timeout_seconds": 5,
            },
        }
    gate = PaymentGate(
        pay_to=env[ENV_PAY_TO],
        assets=asset,
        facilitator=facilitator,
        store=env[ENV_STORE],
        reconcile=ChainReconciler(
            env[ENV_RPC_URL], owner_grace_seconds=float(env.get(ENV_OWNER_GRACE, "60"))
        ),
        # The metered route accepts sign-ins and session tokens, bound to this origin.
        public_origin="http://served-app.test",
        **webhook,
        secret=env[ENV_SECRET].encode() if env.get(ENV_SECRET) else None,
    )
    runs_file = env[ENV_RUNS]

    def count_run() -> None:
        # O_APPEND writes of one short line are atomic across processes.
        fd = os.open(runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)

    async def paid(request: Request) -> JSONResponse:
        count_run()
        return JSONResponse({"secret": PAID_CONTENT, "payer": request.state.payment.payer})

    async def metered(request: Request) -> JSONResponse:
        count_run()
        return JSONResponse({"secret": PAID_CONTENT, "usage": USAGE})

    async def slow(request: Request) -> StreamingResponse:
        count_run()

        async def chunks() -> Any:
            import asyncio

            for n in range(SLOW_CHUNKS):
                if n:
                    await asyncio.sleep(SLOW_INTERVAL)
                yield f"{PAID_CONTENT} {n}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    async def free(request: Request) -> JSONResponse:
        return JSONResponse({"free": True})

    from x402gate.metering import PerToken, TokenPrice

    app = Starlette(
        routes=[
            Route("/paid", paid),
            Route("/slow", slow),
            Route("/metered", metered, methods=["POST"]),
            Route("/free", free),
            Route("/health", free),
        ]
    )
    per_token = PerToken(TokenPrice(input="$1", output="$2", per=1_000))
    routes = {
        "GET /paid": PRICE,
        "GET /slow": PRICE,
        "POST /metered": gate.route(per_token, credit_topup="$0.50"),
    }
    return _with_worker_pid(PaymentMiddleware(app, gate=gate, routes=routes))
