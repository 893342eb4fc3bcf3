"""x402gate for Django: ``MIDDLEWARE = [..., "x402gate.django.PaymentMiddleware"]``.

::

    INSTALLED_APPS = [..., "x402gate.django"]          # system checks
    MIDDLEWARE = [..., "x402gate.django.PaymentMiddleware"]
    X402GATE = {"PAY_TO": "0x...", "NETWORK": "base", "FACILITATOR_URL": "https://...",
                "ROUTES": {"GET /weather/": "$0.01"}}

    from x402gate.django import require_payment

    @require_payment("$0.05")
    def report(request): ...

The implementation lives in :mod:`x402gate.integrations.django`; see ``docs/django.md``.
"""

from __future__ import annotations

from ..integrations.django import PaymentMiddleware, conf, get_gate, require_payment, reset

__all__ = ["PaymentMiddleware", "conf", "get_gate", "require_payment", "reset"]
