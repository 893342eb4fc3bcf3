"""The conformance app as plain WSGI behind the WSGI ``PaymentMiddleware``, served by waitress."""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from x402gate import PaymentGate
from x402gate.integrations.wsgi import PaymentMiddleware
from x402gate.testing.servers import serve_wsgi

from . import _llm

NAME = "wsgi"
CHUNKS = (b"chunk-0\n", b"chunk-1\n", b"chunk-2\n")

StartResponse = Callable[..., Any]


def _chunks() -> Iterator[bytes]:
    yield from CHUNKS


def make_app(gate: PaymentGate) -> tuple[Any, collections.Counter[str]]:
    """The contract's endpoints; the counter says how often each handler really ran."""
    runs: collections.Counter[str] = collections.Counter()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        name = environ.get("PATH_INFO", "/").strip("/")
        if name == "paid":
            runs[name] += 1
            payer = environ["x402gate.payment"].payer
            body = json.dumps({"content": "PAID-CONTENT", "payer": payer}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if name == "boom":
            runs[name] += 1
            raise RuntimeError("boom")
        if name == "error":
            runs[name] += 1
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error": "down"}']
        if name in ("stream", "stream-after"):
            runs[name] += 1
            start_response("200 OK", [("Content-Type", "text/plain")])
            return _chunks()
        if name == "llm":
            runs[name] += 1
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            return iter(_llm.sse_chunks())
        if name == "free":
            runs[name] += 1
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"free"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    paywalled = PaymentMiddleware(
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
    )
    return paywalled, runs


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with waitress on 127.0.0.1, a free port; yields the base URL."""
    with serve_wsgi(app) as base_url:
        yield base_url
