"""Gateway mode: resell any HTTP API per call from a YAML file, with no code.

``x402gate proxy gateway.yaml`` serves :func:`build_gateway`'s ASGI app with uvicorn: every
route of the file is paid with x402 (through the same :class:`~x402gate.gate.PaymentGate` and
:class:`~x402gate.asgi.PaymentMiddleware` as any other x402gate app) and forwarded
to its upstream with the upstream's credentials added. See ``docs/gateway.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import GatewayConfig, GatewayConfigError, Problem, load_config, parse_config

__all__ = [
    "Gateway",
    "GatewayConfig",
    "GatewayConfigError",
    "Problem",
    "build_gateway",
    "load_config",
    "parse_config",
]

if TYPE_CHECKING:  # imported on first use, below
    from .app import Gateway, build_gateway


def __getattr__(name: str) -> object:
    # The app pulls in httpx and the gate; validating a file (x402gate proxy --check) needs neither.
    if name in ("Gateway", "build_gateway"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
