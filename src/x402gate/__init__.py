"""x402gate: charge per call for any Python API with HTTP 402 and the x402 protocol.

``import x402gate`` is cheap: it loads no web framework, no web3, no redis and not even the x402
SDK. Public names are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .__about__ import __version__
from .errors import (
    ConfigurationError,
    FacilitatorError,
    FacilitatorUnavailable,
    PaymentError,
    StoreError,
    X402GateError,
)

if TYPE_CHECKING:
    from .assets import Asset, usdc
    from .facilitators import Facilitator, HTTPFacilitator, LocalFacilitator
    from .gate import EventKind, Payment, PaymentEvent, PaymentGate, Route
    from .metering import PerSecond, PerToken, TokenPrice
    from .pricing import (
        DecodedBody,
        Dynamic,
        Flat,
        MatchRules,
        ModelTable,
        PayerPrice,
        PriceStrategy,
        Rule,
        Tiered,
    )
    from .ratelimit import RateLimit
    from .reconcile import ChainReconciler
    from .request import RequestInfo
    from .schemes import ExactScheme, PaymentScheme
    from .stores import open_store

__all__ = [
    "Asset",
    "ChainReconciler",
    "ConfigurationError",
    "DecodedBody",
    "Dynamic",
    "EventKind",
    "ExactScheme",
    "Facilitator",
    "FacilitatorError",
    "FacilitatorUnavailable",
    "Flat",
    "HTTPFacilitator",
    "LocalFacilitator",
    "MatchRules",
    "ModelTable",
    "PayerPrice",
    "Payment",
    "PaymentError",
    "PaymentEvent",
    "PaymentGate",
    "PaymentScheme",
    "PerSecond",
    "PerToken",
    "PriceStrategy",
    "RateLimit",
    "RequestInfo",
    "Route",
    "Rule",
    "StoreError",
    "Tiered",
    "TokenPrice",
    "X402GateError",
    "__version__",
    "open_store",
    "usdc",
]

_LAZY = {
    "Asset": "assets",
    "usdc": "assets",
    "ChainReconciler": "reconcile",
    "Facilitator": "facilitators",
    "HTTPFacilitator": "facilitators",
    "LocalFacilitator": "facilitators",
    "EventKind": "gate",
    "Payment": "gate",
    "PaymentEvent": "gate",
    "PaymentGate": "gate",
    "Route": "gate",
    "DecodedBody": "pricing",
    "Dynamic": "pricing",
    "Flat": "pricing",
    "MatchRules": "pricing",
    "ModelTable": "pricing",
    "PayerPrice": "pricing",
    "Tiered": "pricing",
    "PriceStrategy": "pricing",
    "Rule": "pricing",
    "RequestInfo": "request",
    "RateLimit": "ratelimit",
    "PerSecond": "metering",
    "PerToken": "metering",
    "TokenPrice": "metering",
    "ExactScheme": "schemes",
    "PaymentScheme": "schemes",
    "open_store": "stores",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'x402gate' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
