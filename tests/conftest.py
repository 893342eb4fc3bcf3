"""Suite-wide test settings.

Hypothesis: these are correctness properties, not timings. The suite runs on shared 2-core
machines (and CI runs several servers beside it), where a slow example says nothing about the
code, so no per-example deadline and no "too slow" health check; each test's own
``@settings`` still sets how many examples it draws.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("x402gate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("x402gate")
