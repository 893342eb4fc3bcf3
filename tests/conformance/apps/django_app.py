"""The conformance app on Django: ``ROUTES`` and ``@require_payment`` views, served by waitress.

Django's settings belong to the process: they are configured once here (the same base settings
as ``tests/integrations/django/conftest.py``, whichever is imported first), and each
:func:`make_app` switches ``ROOT_URLCONF`` and ``X402GATE`` to its own with ``override_settings``.
So only the app made last is live; the gate is passed as ``X402GATE["GATE"]``.
"""

from __future__ import annotations

import collections
import contextlib
import types
from collections.abc import Iterator
from typing import Any

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.test.utils import override_settings
from django.urls import path

from x402gate import PaymentGate
from x402gate.django import require_payment
from x402gate.testing.servers import serve_wsgi

from . import _llm

NAME = "django"
CHUNKS = (b"chunk-0\n", b"chunk-1\n", b"chunk-2\n")

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="x402gate-tests",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["x402gate.django"],
        MIDDLEWARE=["x402gate.django.PaymentMiddleware"],
        ROOT_URLCONF=None,
        USE_TZ=True,
    )
    django.setup()

_live: override_settings | None = None


def _chunks() -> Iterator[bytes]:
    yield from CHUNKS


def make_app(gate: PaymentGate) -> tuple[Any, collections.Counter[str]]:
    """The contract's endpoints; the counter says how often each view really ran."""
    global _live
    runs: collections.Counter[str] = collections.Counter()

    def paid(request: HttpRequest) -> HttpResponse:
        runs["paid"] += 1
        return JsonResponse({"content": "PAID-CONTENT", "payer": request.payment.payer})

    def boom(request: HttpRequest) -> HttpResponse:
        runs["boom"] += 1
        raise RuntimeError("boom")

    def error(request: HttpRequest) -> HttpResponse:
        runs["error"] += 1
        return JsonResponse({"error": "down"}, status=503)

    @require_payment("$0.01", settlement="before")
    def stream(request: HttpRequest) -> HttpResponse:
        runs["stream"] += 1
        return StreamingHttpResponse(_chunks(), content_type="text/plain")

    @require_payment("$0.01", settlement="after")
    def stream_after(request: HttpRequest) -> HttpResponse:
        runs["stream-after"] += 1
        return StreamingHttpResponse(_chunks(), content_type="text/plain")

    @require_payment(_llm.strategy(), credit_topup=_llm.TOPUP)
    def llm(request: HttpRequest) -> HttpResponse:
        runs["llm"] += 1
        return StreamingHttpResponse(iter(_llm.sse_chunks()), content_type="text/event-stream")

    def free(request: HttpRequest) -> HttpResponse:
        runs["free"] += 1
        return HttpResponse(b"free", content_type="text/plain; charset=utf-8")

    urlconf = types.ModuleType("conformance_urls")  # ROOT_URLCONF may be a module object
    urlconf.urlpatterns = [  # type: ignore[attr-defined]
        path("paid", paid),
        path("boom", boom),
        path("error", error),
        path("stream", stream),
        path("stream-after", stream_after),
        path("free", free),
        path("llm", llm),
    ]

    if _live is not None:
        _live.disable()
    _live = override_settings(
        ROOT_URLCONF=urlconf,
        MIDDLEWARE=["x402gate.django.PaymentMiddleware"],
        X402GATE={
            "GATE": gate,
            "ROUTES": {"GET /paid": "$0.01", "GET /boom": "$0.01", "GET /error": "$0.01"},
            "DISCOVERY": True,
        },
    )
    _live.enable()
    return get_wsgi_application(), runs


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with waitress on 127.0.0.1, a free port; yields the base URL."""
    with serve_wsgi(app) as base_url:
        yield base_url
