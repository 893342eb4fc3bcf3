"""The gate's observation points: payment outcomes, timed steps and OpenTelemetry spans.

Every :class:`~x402gate.gate.PaymentGate` has one :class:`Telemetry` (``gate.telemetry``). The
gate calls it at each outcome (:meth:`Telemetry.observe`, synchronously: unlike event
listeners it never turns the cached 402 off) and around the steps that wait on something else:
the replay store's claim, the facilitator's verify and settle (:meth:`Telemetry.step`), and
the handler (:meth:`Telemetry.handler_done`).

What listens:

* the payment log (:class:`~x402gate.observability.logs.PaymentLog`), on by default: one line
  per outcome on the ``x402gate.payments`` logger, which emits nothing until the application's
  logging configuration enables INFO (or DEBUG) for it;
* metrics (:class:`~x402gate.observability.metrics.PaymentMetrics`), when built on the gate;
* OpenTelemetry: a span per step when ``opentelemetry-api`` is installed and the application
  set a tracer provider (an SDK's; the spans go where it sends them). Before that no span is
  opened, so the API alone, installed as another package's dependency, costs nothing.

Route labels: logs and metrics name a route by the pattern it was configured with (``"GET
/weather"`` in a route table, the framework's path pattern for a decorated view), never by the
raw path, so the label set is bounded by the routes of the app.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..gate.events import EventKind, PaymentEvent
    from ..gate.model import Route
    from .logs import PaymentLog
    from .metrics import PaymentMetrics

__all__ = ["STEPS", "UNNAMED", "Telemetry"]

logger = logging.getLogger("x402gate")

STEPS = ("claim", "verify", "settle")
"""The steps in spans: the replay store's claim, the facilitator's verify and settle (the
latter two, and the handler, also in the metrics' latency histogram)."""

UNNAMED = "unnamed"
"""The route label of a route no integration named (a route driven by hand)."""

MAX_ROUTE_NAMES = 10_000
"""At most this many route labels are kept (a bound on label cardinality)."""


def _otel_tracer() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    from ..__about__ import __version__

    return trace.get_tracer("x402gate", __version__)


def _provider_set() -> bool:
    """Whether the application set a global tracer provider (an SDK's): until then the API's
    spans record nothing, and the gate opens none (each would cost a few µs for nothing)."""
    from opentelemetry import trace

    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


class _Step:
    """Times one step into its histogram and wraps it in a span; a context manager."""

    __slots__ = ("_cm", "_histogram", "_span", "_started")

    def __init__(self, histogram: Any, cm: Any) -> None:
        self._histogram = histogram
        self._cm = cm
        self._span: Any = None
        self._started = 0.0

    def __enter__(self) -> _Step:
        if self._cm is not None:
            self._span = self._cm.__enter__()
        self._started = time.perf_counter()
        return self

    def refused(self, code: str) -> None:
        """The step answered with a refusal (``code``, a sanitised error code): the span
        says so."""
        span = self._span
        if span is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("x402gate.code", code)
            span.set_status(Status(StatusCode.ERROR, code))

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if self._histogram is not None:
            self._histogram.observe(time.perf_counter() - self._started)
        if self._cm is not None:
            self._cm.__exit__(kind, exc, tb)


class _Nothing:
    """The step context when nothing observes steps."""

    __slots__ = ()

    def __enter__(self) -> _Nothing:
        return self

    def refused(self, code: str) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        return None


_NOTHING = _Nothing()


class Telemetry:
    """What the gate tells about its payments: logs, metrics and spans (see the module).

    ``log`` is the payment log (``None`` turns it off), ``metrics`` the
    :class:`~x402gate.observability.metrics.PaymentMetrics` built on the gate (``None`` by
    default), ``tracer`` the OpenTelemetry tracer (``None`` when ``opentelemetry-api`` is not
    installed; set it to ``None`` to turn spans off, or to another tracer).
    """

    def __init__(self) -> None:
        from .logs import PaymentLog

        self.log: PaymentLog | None = PaymentLog()
        self.metrics: PaymentMetrics | None = None
        self._tracer: Any = _otel_tracer()
        # The global provider is looked at until one is set; a tracer given is used as it is.
        self._tracing = False
        self._names: dict[int, tuple[Route, str]] = {}

    @property
    def tracer(self) -> Any:
        """The OpenTelemetry tracer of the gate's spans (``None``: no spans)."""
        return self._tracer

    @tracer.setter
    def tracer(self, tracer: Any) -> None:
        self._tracer = tracer
        self._tracing = tracer is not None

    # -- route labels --------------------------------------------------------------------------

    def name_route(self, route: Route, name: str) -> None:
        """Label ``route`` ``name`` in logs and metrics (the first name given stays)."""
        if id(route) in self._names or len(self._names) >= MAX_ROUTE_NAMES:
            return
        # The route is kept with its name, so its id is never reused by another route.
        self._names[id(route)] = (route, name)

    def route_name(self, route: Route) -> str:
        """The label of ``route``: the name an integration gave it, else :data:`UNNAMED`."""
        named = self._names.get(id(route))
        return named[1] if named is not None else UNNAMED

    # -- observation points --------------------------------------------------------------------

    def observe(self, event: PaymentEvent) -> None:
        """One outcome of a paid request; never raises (it must not break a payment)."""
        try:
            name = self.route_name(event.route)
            if self.log is not None:
                self.log.record(event, name)
            if self.metrics is not None:
                self.metrics.record(event, name)
        except Exception:  # an observer's failure must never break a payment
            logger.exception("x402gate telemetry failed on %s", event.kind)

    def wants(self, kind: EventKind) -> bool:
        """Whether an event of ``kind`` would be logged or counted (the 402 fast path asks, so
        an unobserved 402 builds no event)."""
        if self.metrics is not None:
            return True
        log = self.log
        return log is not None and log.logger.isEnabledFor(log.levels[kind])

    def step(self, name: str, route: Route, scheme: str | None = None) -> Any:
        """A context manager around the step ``name`` (one of :data:`STEPS`) of ``route``:
        a span when tracing is on, and for ``verify`` and ``settle`` a latency sample."""
        metrics, tracer = self.metrics, self._tracer
        if tracer is not None and not self._tracing:
            if _provider_set():
                self._tracing = True
            else:
                tracer = None
        if tracer is None and (metrics is None or name == "claim"):
            return _NOTHING
        label = self.route_name(route)
        histogram = None
        if metrics is not None and name != "claim":
            histogram = metrics.step_histogram(name, label)
        cm = None
        if tracer is not None:
            attributes = {"x402gate.route": label}
            if scheme is not None:
                attributes["x402gate.scheme"] = scheme
            cm = tracer.start_as_current_span(f"x402gate.{name}", attributes=attributes)
        return _Step(histogram, cm)

    def handler_done(self, route: Route, seconds: float) -> None:
        """The handler of ``route`` answered ``seconds`` after the payment let it run."""
        metrics = self.metrics
        if metrics is not None:
            metrics.step_histogram("handler", self.route_name(route)).observe(seconds)
