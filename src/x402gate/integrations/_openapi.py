"""Deprecated: moved to the internal :mod:`x402gate._web.openapi` (kept for one release)."""

from __future__ import annotations

from .._web.moved import warn_moved
from .._web.openapi import document_paid_operation

__all__ = ["document_paid_operation"]

warn_moved(__name__, "x402gate._web.openapi")
