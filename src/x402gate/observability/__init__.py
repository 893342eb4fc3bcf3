"""Observability of a paid API: payment logs, Prometheus metrics and OpenTelemetry spans.

* Logs: every gate writes one line per payment outcome to the ``x402gate.payments`` logger
  (:class:`~x402gate.observability.logs.PaymentLog`); :class:`JsonFormatter` writes records as
  JSON lines.
* Metrics: :class:`PaymentMetrics` (``pip install x402gate[metrics]``) keeps the gate's
  counters, histograms and gauges in its own registry and serves them on a path of every
  integration, or a port.
* Traces: spans around the claim, verify and settle steps when ``opentelemetry-api`` is
  installed (see :class:`~x402gate.observability.telemetry.Telemetry`).

docs/operations.md shows each with Django, Flask, FastAPI and the gateway.
"""

from __future__ import annotations

from .logs import PAYMENTS_LOGGER, JsonFormatter, PaymentLog
from .metrics import PaymentMetrics
from .telemetry import Telemetry

__all__ = ["PAYMENTS_LOGGER", "JsonFormatter", "PaymentLog", "PaymentMetrics", "Telemetry"]
