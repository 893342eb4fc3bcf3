"""The FastAPI integration: ``from x402gate.fastapi import install, require_payment``.

See :mod:`x402gate.integrations.fastapi`. Importing it without FastAPI installed raises an
``ImportError`` that says ``pip install 'x402gate[fastapi]'``.
"""

from __future__ import annotations

from .integrations.fastapi import (
    Payment,
    RequirePayment,
    install,
    paid_operations,
    require_payment,
)

__all__ = ["Payment", "RequirePayment", "install", "paid_operations", "require_payment"]
