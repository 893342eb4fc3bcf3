"""Django integration: ``PaymentMiddleware``, ``@require_payment``, settings and system checks.

Users import it as :mod:`x402gate.django`; see ``docs/django.md``.
"""

from __future__ import annotations

try:
    import django  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - exercised without Django installed
    raise ImportError(
        "x402gate.django needs Django: pip install 'x402gate[django]'"
    ) from exc

from ...gate import PaymentGate
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
