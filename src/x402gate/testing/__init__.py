"""Testing kit: a real local chain, a test USDC, and the official x402 clients wired to pay.

- :class:`LocalChain` runs anvil on 127.0.0.1 and deploys :class:`TestToken` (an EIP-3009
  token with USDC's interface, domain and revert strings);
- :func:`x402_client`, :func:`paying_httpx_client`, :func:`paying_requests_session` build the
  official SDK clients paying with a given key for a given asset;
- :func:`local_gate` sets all of it up at once: a chain, the token, a funded buyer and a
  :class:`~x402gate.gate.PaymentGate` settling locally (:class:`LocalSetup`);
- the pytest plugin (loaded automatically) provides ``local_chain``, ``test_token``, ``chain``,
  ``payer``, ``pay_to`` and ``facilitator_account`` fixtures.

Names are imported on first access, so ``import x402gate.testing`` loads neither web3 nor x402.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chain import ChainUnavailable, LocalChain, TestToken, find_anvil, load_token_artifact
    from .clients import (
        paying_httpx_client,
        paying_requests_session,
        spend_controls_for,
        x402_client,
        x402_client_sync,
    )
    from .local import LocalSetup, local_gate

__all__ = [
    "ChainUnavailable",
    "LocalChain",
    "LocalSetup",
    "TestToken",
    "find_anvil",
    "load_token_artifact",
    "local_gate",
    "paying_httpx_client",
    "paying_requests_session",
    "spend_controls_for",
    "x402_client",
    "x402_client_sync",
]

_LAZY = {
    "ChainUnavailable": ".chain",
    "LocalChain": ".chain",
    "TestToken": ".chain",
    "find_anvil": ".chain",
    "load_token_artifact": ".chain",
    "LocalSetup": ".local",
    "local_gate": ".local",
    "paying_httpx_client": ".clients",
    "paying_requests_session": ".clients",
    "spend_controls_for": ".clients",
    "x402_client": ".clients",
    "x402_client_sync": ".clients",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
