"""x402 payments for Flask: ``X402Gate``, ``require_payment``, ``current_payment``.

Needs the ``flask`` extra: ``pip install 'x402gate[flask]'``. The implementation is in
:mod:`x402gate.integrations.flask`.
"""

from __future__ import annotations

try:
    import flask as _flask  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("x402gate.flask needs Flask: pip install 'x402gate[flask]'") from exc

from .integrations.flask import (
    GateState,
    X402Gate,
    current_payment,
    gate_from_config,
    require_payment,
)

__all__ = ["GateState", "X402Gate", "current_payment", "gate_from_config", "require_payment"]
