"""x402gate for Django: ``MIDDLEWARE = [..., "x402gate.django.PaymentMiddleware"]``.

::

    INSTALLED_APPS = [..., "x402gate.django"]          # system checks
    MIDDLEWARE = [..., "x402gate.django.PaymentMiddleware"]
    X402GATE = {"PAY_TO": "0x...", "NETWORK": "base", "FACILITATOR_URL": "https://...",
                "ROUTES": {"GET /weather/": "$0.01"}}

    from x402gate.django import require_payment

    @require_payment("$0.05")
    def report(request): ...

See ``docs/django.md``.
"""

from __future__ import annotations

try:
    import django  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - exercised without Django installed
    raise ImportError("x402gate.django needs Django: pip install 'x402gate[django]'") from exc

from ..gate import PaymentGate
from .conf import conf, get_runtime, reset
from .decorators import require_payment
from .middleware import PaymentMiddleware

__all__ = ["PaymentMiddleware", "conf", "get_gate", "require_payment", "reset"]


def get_gate() -> PaymentGate:
    """The :class:`~x402gate.PaymentGate` in force (built from the settings on first use).

    Use it to add event listeners: ``get_gate().on_event(listener)``. A gate built from the
    settings is rebuilt when they change; to keep listeners, build the gate yourself and pass
    it as ``X402GATE["GATE"]``.
    """
    return get_runtime().gate
