"""Suite-wide test settings.

Hypothesis: these are correctness properties, not timings. The suite runs on shared 2-core
machines (and CI runs several servers beside it), where a slow example says nothing about the
code, so no per-example deadline and no "too slow" health check; each test's own
``@settings`` still sets how many examples it draws.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("x402gate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("x402gate")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``web3v7`` need the official client's sign-in-with-x extension, which comes
    with ``x402[extensions]`` and pins web3 7: they are left out (deselected, not skipped) of a
    run in an environment without it. CI runs them in its web3-7 environment, where
    ``X402GATE_REQUIRE_SIWX=1`` makes a missing extension fail instead."""
    if os.environ.get("X402GATE_REQUIRE_SIWX") == "1" or importlib.util.find_spec("siwe"):
        return
    kept = [item for item in items if item.get_closest_marker("web3v7") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
