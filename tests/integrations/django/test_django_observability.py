"""The observability scenario through Django, served by waitress (WSGI) and uvicorn (ASGI)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk")

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from x402gate import PaymentGate
from x402gate._runner import run_sync
from x402gate.django import require_payment

from .._observability import METRICS, Drain, check_everything, make_gate, run_scenario
from .conftest import django_server

pytestmark = pytest.mark.chain


def site(asgi: bool) -> Any:
    @contextmanager
    def serve(gate: PaymentGate, drain: Drain) -> Iterator[tuple[str, dict[str, str]]]:
        @require_payment("$0.01")
        def paid(request: HttpRequest) -> HttpResponse:
            return JsonResponse({"content": "PAID"})

        if asgi:

            @require_payment("$0.01")
            async def spend(request: HttpRequest) -> HttpResponse:
                await asyncio.to_thread(drain)
                return JsonResponse({"content": "PAID"})

        else:

            @require_payment("$0.01")
            def spend(request: HttpRequest) -> HttpResponse:
                drain()
                return JsonResponse({"content": "PAID"})

        urls = [path("paid", paid), path("spend", spend)]
        # The metrics come from the settings: METRICS builds them on the given gate.
        with django_server(urls, {"GATE": gate, "METRICS": METRICS}, asgi=asgi) as url:
            yield url, {"/paid": "/paid", "/spend": "/spend"}

    return serve


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_django_shows_each_outcome_in_logs_metrics_and_spans(
    asgi: bool, chain: Any, test_token: Any, local_facilitator: Any, pay_to: str, tmp_path: Any
) -> None:
    gate = make_gate(local_facilitator, test_token, pay_to, tmp_path, metrics=False)
    try:
        outcome, logs = run_scenario(site(asgi), gate, chain, test_token)
    finally:
        run_sync(gate.aclose())
    check_everything(outcome, logs, test_token)
