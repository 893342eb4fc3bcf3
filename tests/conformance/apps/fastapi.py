"""The conformance app on FastAPI: ``require_payment`` dependencies and the settlement layer."""

import collections
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from x402gate import Payment, PaymentGate
from x402gate.demo import serve_in_thread
from x402gate.fastapi import install, require_payment

from . import _llm

NAME = "fastapi"
CHUNKS = (b"chunk-0\n", b"chunk-1\n", b"chunk-2\n")


async def _chunks() -> AsyncIterator[bytes]:
    for chunk in CHUNKS:
        yield chunk


def make_app(gate: PaymentGate) -> tuple[Any, collections.Counter[str]]:
    """The contract's endpoints; the counter says how often each handler really ran."""
    runs: collections.Counter[str] = collections.Counter()
    app = FastAPI()
    install(app, gate, discovery=True)
    paid = require_payment("$0.01")

    @app.get("/paid")
    async def paid_endpoint(payment: Annotated[Payment, Depends(paid)]) -> dict[str, str]:
        runs["paid"] += 1
        return {"content": "PAID-CONTENT", "payer": payment.payer}

    @app.get("/boom", dependencies=[Depends(paid)])
    async def boom() -> None:
        runs["boom"] += 1
        raise RuntimeError("boom")

    @app.get("/error", dependencies=[Depends(paid)])
    async def error() -> JSONResponse:
        runs["error"] += 1
        return JSONResponse({"error": "down"}, status_code=503)

    @app.get("/stream", dependencies=[Depends(require_payment("$0.01", settlement="before"))])
    async def stream() -> StreamingResponse:
        runs["stream"] += 1
        return StreamingResponse(_chunks(), media_type="text/plain")

    @app.get("/stream-after", dependencies=[Depends(paid)])
    async def stream_after() -> StreamingResponse:
        runs["stream-after"] += 1
        return StreamingResponse(_chunks(), media_type="text/plain")

    metered = require_payment(_llm.strategy(), credit_topup=_llm.TOPUP)

    @app.post("/llm", dependencies=[Depends(metered)])
    async def llm() -> StreamingResponse:
        runs["llm"] += 1

        async def events() -> AsyncIterator[bytes]:
            for chunk in _llm.sse_chunks():
                yield chunk

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/free", response_class=PlainTextResponse)
    async def free() -> str:
        runs["free"] += 1
        return "free"

    return app, runs


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1, a free port; yields the base URL."""
    with serve_in_thread(app) as base_url:
        yield base_url
