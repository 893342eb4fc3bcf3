"""Django settings for the Django integration tests, and a real server for a set of URLs.

Django's settings are process-wide: they are configured once here (compatible with the
conformance app, which configures the same way when it is imported first), and every test says
what it needs through ``override_settings`` inside :func:`django_server`.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

pytest.importorskip("django")

import django
from django.conf import settings
from django.test.utils import override_settings

from x402gate import LocalFacilitator, PaymentGate
from x402gate._runner import run_sync

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

# DRF without django.contrib.auth: no authentication, anonymous requests allowed.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
}


@contextlib.contextmanager
def django_server(
    urlpatterns: Sequence[Any], x402gate: dict[str, Any], *, asgi: bool = False, **overrides: Any
) -> Iterator[str]:
    """Serve a Django project made of ``urlpatterns`` and ``X402GATE = x402gate`` with waitress
    (WSGI) or uvicorn (ASGI) on a free loopback port; yields the base URL."""

    urlconf = types.ModuleType("test_urls")  # ROOT_URLCONF may be a module object
    urlconf.urlpatterns = list(urlpatterns)  # type: ignore[attr-defined]
    options = {"REST_FRAMEWORK": REST_FRAMEWORK, **overrides}
    with override_settings(ROOT_URLCONF=urlconf, X402GATE=x402gate, **options):
        if asgi:
            from django.core.asgi import get_asgi_application

            from x402gate.demo import serve_in_thread

            with serve_in_thread(get_asgi_application()) as base_url:
                yield base_url
        else:
            from django.core.wsgi import get_wsgi_application

            from x402gate.testing.servers import serve_wsgi

            with serve_wsgi(get_wsgi_application()) as base_url:
                yield base_url


@pytest.fixture
def facilitator(chain: Any, facilitator_account: Any) -> LocalFacilitator:
    return LocalFacilitator(chain.rpc_url, facilitator_account.key.hex(), networks=chain.network)


@pytest.fixture
def gate(
    facilitator: LocalFacilitator, test_token: Any, pay_to: str, tmp_path: Any
) -> Iterator[PaymentGate]:
    g = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
    )
    yield g
    run_sync(g.aclose())
