"""`import x402gate` stays light, and adapters say which extra they need."""

from __future__ import annotations

import subprocess
import sys

HEAVY = [
    "web3",
    "eth_account",
    "x402",
    "redis",
    "flask",
    "django",
    "fastapi",
    "starlette",
    "pydantic",
    "httpx",
]


def test_import_x402gate_loads_no_framework_web3_redis_or_sdk() -> None:
    code = f"import sys, x402gate; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_resolve_lazily() -> None:
    code = "import x402gate; print(x402gate.PaymentGate.__name__, x402gate.MatchRules.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PaymentGate", "MatchRules"]
