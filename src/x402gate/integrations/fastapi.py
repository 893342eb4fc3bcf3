"""Deprecated: moved to :mod:`x402gate.fastapi` (this path is kept for one release)."""

from __future__ import annotations

from .._web.moved import warn_moved
from ..fastapi import Payment, RequirePayment, install, paid_operations, require_payment

__all__ = ["Payment", "RequirePayment", "install", "paid_operations", "require_payment"]

warn_moved(__name__, "x402gate.fastapi")
