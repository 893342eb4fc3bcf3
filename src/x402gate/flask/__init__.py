"""x402 payments for Flask: the ``X402Gate`` extension, ``require_payment``, ``current_payment``.

Needs the ``flask`` extra: ``pip install 'x402gate[flask]'``.

::

    app.config.update(X402GATE_PAY_TO="0x...", X402GATE_NETWORK="base-sepolia",
                      X402GATE_FACILITATOR_URL="https://x402.org/facilitator")
    X402Gate(app)

    @app.get("/weather")
    @require_payment("$0.01")
    def weather():
        return {"forecast": "sunny", "payer": current_payment.payer}

The view runs only after the payment is claimed and verified; its response is built, the payment
settled for its status (policy ``after``), and only then is the response handed to Flask, so a
streamed body is not produced, let alone sent, before settlement. When settlement fails the
client gets the gate's answer and the response is closed unread.
"""

from __future__ import annotations

try:
    import flask as _flask  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("x402gate.flask needs Flask: pip install 'x402gate[flask]'") from exc

from .extension import X402Gate, gate_from_config
from .views import GateState, current_payment, require_payment

__all__ = ["GateState", "X402Gate", "current_payment", "gate_from_config", "require_payment"]
