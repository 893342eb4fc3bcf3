"""The gateway's upstream targets as Prometheus series, read when scraped.

Each upstream keeps its own counters (:class:`~x402gate.gateway.upstreams.UpstreamStats`:
successes, failures by kind, fallbacks, skips while its breaker was open, latency to the
answer's headers) for fallback and circuit breaking. This collector turns a snapshot of them into
series at scrape time, so forwarding pays nothing for the metrics. The label is the upstream's
name in the gateway file, never its URL or headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["UpstreamCollector"]

_BREAKER_STATES = ("closed", "half-open", "open")


class UpstreamCollector:
    """A ``prometheus_client`` collector of ``reports()`` (upstream name -> report, as
    :meth:`x402gate.gateway.Gateway.upstream_stats` answers)."""

    def __init__(
        self, reports: Callable[[], Mapping[str, Mapping[str, Any]]], namespace: str = "x402gate"
    ) -> None:
        self._reports = reports
        self._namespace = namespace

    def _name(self, name: str) -> str:
        return f"{self._namespace}_{name}"

    def collect(self) -> Iterator[Any]:
        """The series of one scrape (called by the registry)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        successes = CounterMetricFamily(
            self._name("upstream_successes"), "Upstream attempts answered", labels=["upstream"]
        )
        failures = CounterMetricFamily(
            self._name("upstream_failures"),
            "Upstream attempts failed, by kind (unavailable, timeout, status)",
            labels=["upstream", "kind"],
        )
        fallbacks = CounterMetricFamily(
            self._name("upstream_fallbacks"),
            "Failed attempts after which the request went on to another target",
            labels=["upstream"],
        )
        skipped = CounterMetricFamily(
            self._name("upstream_skipped"),
            "Requests that skipped the upstream because its circuit breaker was open",
            labels=["upstream"],
        )
        opens = CounterMetricFamily(
            self._name("upstream_breaker_opens"),
            "Times the upstream's circuit breaker opened",
            labels=["upstream"],
        )
        latency = GaugeMetricFamily(
            self._name("upstream_latency_seconds_mean"),
            "Mean time to the answer's status and headers over successful attempts",
            labels=["upstream"],
        )
        latency_max = GaugeMetricFamily(
            self._name("upstream_latency_seconds_max"),
            "Longest time to the answer's status and headers",
            labels=["upstream"],
        )
        breaker = GaugeMetricFamily(
            self._name("upstream_breaker_state"),
            "1 for the circuit breaker's current state (closed, half-open, open)",
            labels=["upstream", "state"],
        )
        for name, report in sorted(self._reports().items()):
            successes.add_metric([name], report["successes"])
            for kind, count in sorted(report["failures"].items()):
                failures.add_metric([name, kind], count)
            fallbacks.add_metric([name], report["fallbacks"])
            skipped.add_metric([name], report["skipped"])
            opens.add_metric([name], report["breaker_opens"])
            latency.add_metric([name], report["latency_seconds_mean"])
            latency_max.add_metric([name], report["latency_seconds_max"])
            for state in _BREAKER_STATES:
                breaker.add_metric([name, state], 1.0 if report["breaker"] == state else 0.0)
        yield from (successes, failures, fallbacks, skipped, opens, latency, latency_max, breaker)
