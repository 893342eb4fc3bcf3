"""Payment schemes: the gate's plug-in point for how a price is asked for, checked and settled.

:class:`~x402gate.schemes.base.PaymentScheme` is the interface;
:class:`~x402gate.schemes.exact.ExactScheme` (EIP-3009 ``exact``) is the default of every gate.
"""

from __future__ import annotations

from .base import Authorization, PaymentScheme
from .exact import ExactScheme

__all__ = ["Authorization", "ExactScheme", "PaymentScheme"]
