"""Django: a metered stream longer than the credit TTL keeps its hold and is charged, and a
per-second stream is ended at its paid maximum — under WSGI (waitress) and ASGI (uvicorn).

The scenarios and helpers are those of tests/integrations/test_metered_holds.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import path

from x402gate import PaymentGate

from ..test_metered_holds import (
    CHAT_CHARGE,
    CHAT_QUOTE,
    TICK_QUOTE,
    TTL,
    WAIT,
    Controls,
    balance,
    chat_async,
    chat_price,
    chat_sync,
    fund,
    gate,  # noqa: F401 - the fixture: a gate on a test clock
    let_time_pass,
    settled_balance,
    tick_async,
    tick_price,
    tick_sync,
    wait_for,
)
from .conftest import django_server


@contextlib.contextmanager
def serve_django(paid: PaymentGate, controls: Controls, asgi: bool) -> Iterator[str]:
    if asgi:

        async def chat(request: HttpRequest) -> StreamingHttpResponse:
            return StreamingHttpResponse(chat_async(controls), content_type="text/event-stream")

        async def tick(request: HttpRequest) -> StreamingHttpResponse:
            return StreamingHttpResponse(tick_async(controls), content_type="text/plain")

    else:

        def chat(request: HttpRequest) -> StreamingHttpResponse:  # type: ignore[misc]
            return StreamingHttpResponse(chat_sync(controls), content_type="text/event-stream")

        def tick(request: HttpRequest) -> StreamingHttpResponse:  # type: ignore[misc]
            return StreamingHttpResponse(tick_sync(controls), content_type="text/plain")

    routes = {"GET /chat": paid.route(chat_price()), "GET /tick": paid.route(tick_price())}
    urls = [path("chat", chat), path("tick", tick)]
    with django_server(urls, {"GATE": paid, "ROUTES": routes}, asgi=asgi) as url:
        yield url


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_a_django_stream_longer_than_the_ttl_keeps_its_hold_and_is_charged(
    gate: PaymentGate,  # noqa: F811
    asgi: bool,
) -> None:
    controls = Controls()
    headers = fund(gate, CHAT_QUOTE)
    with (
        serve_django(gate, controls, asgi) as url,
        httpx.Client(base_url=url, timeout=WAIT) as client,
        client.stream("GET", "/chat", headers=headers) as stream,
    ):
        assert stream.status_code == 200
        chunks = stream.iter_raw()
        assert next(chunks).startswith(b"data: ")
        for _ in range(4):
            let_time_pass(gate, TTL * 2 / 3)
            assert balance(gate) == (0, CHAT_QUOTE, 0)
        assert client.get("/chat", headers=headers).status_code == 402
        controls.go.set()
        assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
    assert settled_balance(gate) == (CHAT_QUOTE - CHAT_CHARGE, 0, CHAT_CHARGE)


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_a_django_per_second_stream_is_ended_at_max_seconds_and_charged_the_cap(
    gate: PaymentGate,  # noqa: F811
    asgi: bool,
) -> None:
    controls = Controls()
    headers = fund(gate, 5 * TICK_QUOTE)
    clock: Any = gate.clock
    with (
        serve_django(gate, controls, asgi) as url,
        httpx.Client(base_url=url, timeout=WAIT) as client,
        client.stream("GET", "/tick", headers=headers) as stream,
    ):
        assert stream.status_code == 200
        chunks = stream.iter_raw()
        assert next(chunks).startswith(b"tick")
        clock.advance(2)
        b"".join(chunks)  # ends, although the view would tick for 30 more seconds
    wait_for(controls.stopped.is_set, "the view's stream to be stopped")
    assert settled_balance(gate) == (4 * TICK_QUOTE, 0, TICK_QUOTE)
