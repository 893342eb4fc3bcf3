"""The dashboard served by the ASGI and WSGI middlewares (the other integrations build a
:class:`~x402gate.dashboard.DashboardRequest` from their own request objects)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..request import Headers
from . import MAX_FORM_BYTES, DashboardAnswer, DashboardRequest
from .page import answer as page_answer
from .page import message

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .._web.types import Receive, Scope, Send, StartResponse, WSGIEnviron
    from ..gate import PaymentGate

__all__ = ["serve_asgi", "serve_wsgi", "too_large"]


def too_large() -> DashboardAnswer:
    """413: a sign-in body above :data:`MAX_FORM_BYTES`."""
    return page_answer(413, message("Sign-in form too large"))


async def serve_asgi(gate: PaymentGate, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer an ASGI request to the dashboard's path (the journal is read off the loop)."""
    from .._web.asgi import BodyTooLarge, public_origin, read_body

    dashboard = gate.dashboard
    assert dashboard is not None
    method = str(scope["method"]).upper()
    body = b""
    if method == "POST":
        try:
            read = await read_body(receive, MAX_FORM_BYTES)
        except BodyTooLarge:
            await _send(send, too_large())
            return
        if read is None:
            return  # the client left
        body = read
    https = public_origin(scope, gate=gate).startswith("https:")
    request = DashboardRequest(
        method=method,
        query=bytes(scope.get("query_string", b"")).decode("latin-1"),
        headers=Headers.from_asgi(scope.get("headers", ())),
        body=body,
        https=https,
    )
    await _send(send, await asyncio.to_thread(dashboard.handle, request, gate.store))


async def _send(send: Send, answer: DashboardAnswer) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [(k.lower().encode("latin-1"), v.encode()) for k, v in answer.headers],
        }
    )
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


def serve_wsgi(
    gate: PaymentGate, environ: WSGIEnviron, start_response: StartResponse
) -> Iterable[bytes]:
    """Answer a WSGI request to the dashboard's path."""
    from .._web.wsgi import base_url_of, environ_headers

    dashboard = gate.dashboard
    assert dashboard is not None
    method = str(environ.get("REQUEST_METHOD", "GET")).upper()
    body = b""
    if method == "POST":
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = MAX_FORM_BYTES + 1
        stream = environ.get("wsgi.input")
        if length > MAX_FORM_BYTES or length < 0:
            return _respond(start_response, too_large())
        body = stream.read(length) if stream is not None and length else b""
    request = DashboardRequest(
        method=method,
        query=str(environ.get("QUERY_STRING", "")),
        headers=environ_headers(environ),
        body=body,
        https=base_url_of(environ, gate=gate).startswith("https:"),
    )
    return _respond(start_response, dashboard.handle(request, gate.store))


def _respond(start_response: StartResponse, answer: DashboardAnswer) -> list[bytes]:
    from .._web.wsgi import status_line

    start_response(status_line(answer.status), answer.headers)
    return [answer.body]
