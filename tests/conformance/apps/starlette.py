"""The conformance app on Starlette: plain routes behind the ASGI ``PaymentMiddleware``."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from x402gate import PaymentGate
from x402gate.asgi import PaymentMiddleware
from x402gate.demo import serve_in_thread

from . import _llm

NAME = "starlette"
CHUNKS = (b"chunk-0\n", b"chunk-1\n", b"chunk-2\n")


async def _chunks() -> AsyncIterator[bytes]:
    for chunk in CHUNKS:
        yield chunk


def make_app(gate: PaymentGate) -> tuple[Any, collections.Counter[str]]:
    """The contract's endpoints; the counter says how often each handler really ran."""
    runs: collections.Counter[str] = collections.Counter()

    async def paid(request: Request) -> Response:
        runs["paid"] += 1
        return JSONResponse({"content": "PAID-CONTENT", "payer": request.state.payment.payer})

    async def boom(request: Request) -> Response:
        runs["boom"] += 1
        raise RuntimeError("boom")

    async def error(request: Request) -> Response:
        runs["error"] += 1
        return JSONResponse({"error": "down"}, status_code=503)

    async def stream(request: Request) -> Response:
        runs["stream"] += 1
        return StreamingResponse(_chunks(), media_type="text/plain")

    async def stream_after(request: Request) -> Response:
        runs["stream-after"] += 1
        return StreamingResponse(_chunks(), media_type="text/plain")

    async def free(request: Request) -> Response:
        runs["free"] += 1
        return PlainTextResponse("free")

    async def llm(request: Request) -> Response:
        runs["llm"] += 1

        async def events() -> AsyncIterator[bytes]:
            for chunk in _llm.sse_chunks():
                yield chunk

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/paid", paid),
            Route("/boom", boom),
            Route("/error", error),
            Route("/stream", stream),
            Route("/stream-after", stream_after),
            Route("/free", free),
            Route("/llm", llm, methods=["POST"]),
        ]
    )
    return (
        PaymentMiddleware(
            app,
            gate=gate,
            routes={
                "GET /paid": "$0.01",
                "GET /boom": "$0.01",
                "GET /error": "$0.01",
                "GET /stream": gate.route("$0.01", settlement="before"),
                "GET /stream-after": gate.route("$0.01", settlement="after"),
                "POST /llm": gate.route(_llm.strategy(), credit_topup=_llm.TOPUP),
            },
            discovery=True,
        ),
        runs,
    )


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1, a free port; yields the base URL."""
    with serve_in_thread(app) as base_url:
        yield base_url
