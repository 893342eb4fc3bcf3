"""`import x402gate` stays light, and adapters say which extra they need."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = [
    "web3",
    "eth_account",
    "x402",
    "redis",
    "psycopg",
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


def test_metered_prices_stores_schemes_and_event_kinds_are_top_level_names() -> None:
    names = ["PerToken", "PerSecond", "TokenPrice", "open_store", "EventKind", "ExactScheme"]
    code = (
        "import x402gate, x402gate.metering, x402gate.stores, x402gate.gate, x402gate.schemes\n"
        f"for name in {names!r}:\n"
        "    home = {'open_store': x402gate.stores, 'EventKind': x402gate.gate,\n"
        "            'ExactScheme': x402gate.schemes}.get(name, x402gate.metering)\n"
        "    assert getattr(x402gate, name) is getattr(home, name), name\n"
        "    assert name in x402gate.__all__, name\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("blocked", "statement", "extra"),
    [
        ("flask", "import x402gate.flask", "flask"),
        ("fastapi", "import x402gate.fastapi", "fastapi"),
        ("django", "import x402gate.django", "django"),
        (
            "redis",
            "from x402gate.stores import open_store; open_store('redis://127.0.0.1:1/0')",
            "redis",
        ),
        (
            "psycopg",
            "from x402gate.stores import open_store; open_store('postgresql://127.0.0.1:1/db')"
            ".ping()",
            "postgres",
        ),
    ],
)
def test_a_missing_framework_or_driver_names_the_extra_to_install(
    blocked: str, statement: str, extra: str
) -> None:
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        f"try:\n    {statement}\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install 'x402gate[{extra}]'" in out.stdout, out.stdout
