"""The conformance app on Flask: ``X402Gate`` and ``require_payment`` views, served by waitress."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response

from x402gate import PaymentGate
from x402gate.flask import X402Gate, current_payment, require_payment
from x402gate.testing.servers import serve_wsgi

from . import _llm

NAME = "flask"
CHUNKS = (b"chunk-0\n", b"chunk-1\n", b"chunk-2\n")


def _chunks() -> Iterator[bytes]:
    yield from CHUNKS


def make_app(gate: PaymentGate) -> tuple[Any, collections.Counter[str]]:
    """The contract's endpoints; the counter says how often each handler really ran."""
    runs: collections.Counter[str] = collections.Counter()
    app = Flask(__name__)
    X402Gate(app, gate=gate, discovery=True)

    @app.get("/paid")
    @require_payment("$0.01")
    def paid() -> dict[str, str]:
        runs["paid"] += 1
        return {"content": "PAID-CONTENT", "payer": current_payment.payer}

    @app.get("/boom")
    @require_payment("$0.01")
    def boom() -> Response:
        runs["boom"] += 1
        raise RuntimeError("boom")

    @app.get("/error")
    @require_payment("$0.01")
    def error() -> tuple[dict[str, str], int]:
        runs["error"] += 1
        return {"error": "down"}, 503

    @app.get("/stream")
    @require_payment("$0.01", settlement="before")
    def stream() -> Response:
        runs["stream"] += 1
        return Response(_chunks(), mimetype="text/plain")

    @app.get("/stream-after")
    @require_payment("$0.01", settlement="after")
    def stream_after() -> Response:
        runs["stream-after"] += 1
        return Response(_chunks(), mimetype="text/plain")

    @app.post("/llm")
    @require_payment(_llm.strategy(), credit_topup=_llm.TOPUP)
    def llm() -> Response:
        runs["llm"] += 1
        return Response(iter(_llm.sse_chunks()), mimetype="text/event-stream")

    @app.get("/free")
    def free() -> Response:
        runs["free"] += 1
        return Response("free", mimetype="text/plain")

    return app, runs


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with waitress on 127.0.0.1, a free port; yields the base URL."""
    with serve_wsgi(app) as base_url:
        yield base_url
