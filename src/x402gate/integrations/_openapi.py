"""Moved to :mod:`x402gate._web.openapi`; kept so that older internal imports still resolve."""

from .._web.openapi import document_paid_operation

__all__ = ["document_paid_operation"]
