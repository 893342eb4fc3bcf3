"""Prometheus metrics of a gate, with the official client (``pip install x402gate[metrics]``).

::

    from x402gate.observability import PaymentMetrics

    metrics = PaymentMetrics(gate, path="/metrics", token="s3cret")

Every integration built on ``gate`` then answers ``GET /metrics`` (never charged, before any
paid route); with ``token`` set a scrape must send ``Authorization: Bearer s3cret``. Or serve
them on a port of their own: ``metrics.serve(9464)``.

Series (``route`` is the route's label, bounded by the routes of the app; see
:mod:`x402gate.observability.telemetry`):

=======================================  ===================================================
``x402gate_requests_total``              outcomes by ``route`` and ``outcome`` (event kind)
``x402gate_refusals_total``              refusals by ``route`` and ``code`` (well-formed
                                         codes only; at most :data:`MAX_CODES` distinct)
``x402gate_revenue_atomic_total``        revenue in the asset's atomic units by ``route``,
                                         ``asset`` (address) and ``network``
``x402gate_step_seconds``                histogram by ``route`` and ``step``: ``verify``,
                                         ``settle`` (the facilitator's), ``handler``
``x402gate_open_reservations``           credit reservations this process holds now
``x402gate_open_channels``               payment channels with a request running now
=======================================  ===================================================

Revenue is what a payer was charged: a settled payment on a flat-priced route, the charge of
a metered request (its top-up is credit, not revenue) and of a channel voucher step.

Each :class:`PaymentMetrics` has its own :class:`prometheus_client.CollectorRegistry` unless one
is given, so two gates (or tests) never share series and the global registry stays untouched.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..gate.events import EventKind

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..flow import Answer
    from ..gate.engine import PaymentGate
    from ..gate.events import PaymentEvent

__all__ = [
    "MAX_CODES",
    "METRICS_KEYS",
    "PaymentMetrics",
    "Scrape",
    "check_metrics_options",
    "metrics_from_options",
    "scrape_answer",
]

MAX_CODES = 200
"""At most this many distinct refusal codes get a series; later ones count as ``other``."""

_REFUSALS = frozenset({EventKind.REJECTED, EventKind.SETTLE_FAILED})
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Scrape = tuple[int, list[tuple[str, str]], bytes]
"""A scrape's answer: status, headers and body."""


class PaymentMetrics:
    """The Prometheus series of ``gate``'s payments (see the module).

    :param gate: the gate to observe (``gate.telemetry.metrics`` becomes this object).
    :param registry: where the series live; a new :class:`CollectorRegistry` by default.
    :param path: the path every integration of the gate answers scrapes on (``None``: none;
        then use :meth:`serve` or your own exporter over :attr:`registry`).
    :param token: when set, a scrape on ``path`` needs ``Authorization: Bearer <token>``.
    :param namespace: the series' prefix.
    """

    def __init__(
        self,
        gate: PaymentGate,
        *,
        registry: CollectorRegistry | None = None,
        path: str | None = "/metrics",
        token: str | None = None,
        namespace: str = "x402gate",
    ) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "metrics need prometheus-client: pip install 'x402gate[metrics]'"
            ) from exc
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ConfigurationError(f"metrics path must start with '/': {path!r}")
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ConfigurationError("metrics token must be a string of 8 characters or more")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.path = path
        self._token = token.encode() if token is not None else None
        self._codes: set[str] = set()
        self._codes_lock = threading.Lock()
        # The series' children by label values, found without prometheus_client's label checks
        # (bounded like the labels: routes x kinds, steps, assets).
        self._children: dict[tuple[str, ...], Any] = {}
        self._servers: list[tuple[Any, Any]] = []
        self.requests = Counter(
            "requests",
            "Paid-route requests by outcome",
            ("route", "outcome"),
            namespace=namespace,
            registry=self.registry,
        )
        self.refusals = Counter(
            "refusals",
            "Refused payments by error code",
            ("route", "code"),
            namespace=namespace,
            registry=self.registry,
        )
        self.revenue = Counter(
            "revenue_atomic",
            "Revenue in the asset's atomic units",
            ("route", "asset", "network"),
            namespace=namespace,
            registry=self.registry,
        )
        self.steps = Histogram(
            "step_seconds",
            "Latency of the facilitator's verify and settle, and of the handler",
            ("route", "step"),
            namespace=namespace,
            registry=self.registry,
            buckets=_BUCKETS,
        )
        holds = gate.holds
        reservations = Gauge(
            "open_reservations",
            "Credit reservations this process holds",
            namespace=namespace,
            registry=self.registry,
        )
        reservations.set_function(lambda: float(holds.counts()[0]))
        channels = Gauge(
            "open_channels",
            "Payment channels with a request running in this process",
            namespace=namespace,
            registry=self.registry,
        )
        channels.set_function(lambda: float(holds.counts()[1]))
        gate.telemetry.metrics = self

    # -- what the gate calls -------------------------------------------------------------------

    def record(self, event: PaymentEvent, route: str) -> None:
        """Count one outcome (called by the gate's :class:`Telemetry`)."""
        kind = event.kind
        # Keyed by the kind itself: a StrEnum member hashes and compares as its value, and
        # reading ``.value`` is a descriptor call on every event.
        counter = self._children.get((route, kind))
        if counter is None:
            counter = self._children[(route, kind)] = self.requests.labels(route, kind.value)
        counter.inc()
        if kind in _REFUSALS:
            self.refusals.labels(route, self._code(event.code)).inc()
            return
        payment = event.payment
        if payment is None:
            return
        metered = event.route.price.metered
        if (kind is EventKind.SETTLED and not metered) or kind is EventKind.CHARGED:
            amount = event.amount if kind is EventKind.CHARGED else payment.amount
            if amount:
                asset = payment.asset
                key = (route, asset.address, asset.network)
                revenue = self._children.get(key)
                if revenue is None:
                    revenue = self._children[key] = self.revenue.labels(*key)
                revenue.inc(amount)

    def step_histogram(self, step: str, route: str) -> Any:
        """The latency histogram of ``step`` (``verify``, ``settle``, ``handler``) on ``route``."""
        key = (route, step, "")
        histogram = self._children.get(key)
        if histogram is None:
            histogram = self._children[key] = self.steps.labels(route, step)
        return histogram

    def observe_step(self, step: str, route: str, seconds: float) -> None:
        """One timed step (``verify``, ``settle`` or ``handler``)."""
        self.step_histogram(step, route).observe(seconds)

    def _code(self, code: str | None) -> str:
        if code is None:
            return "none"
        if code in self._codes:
            return code
        with self._codes_lock:
            if len(self._codes) >= MAX_CODES:
                return "other"
            self._codes.add(code)
        return code

    # -- exposition ----------------------------------------------------------------------------

    def scrape(self, authorization: str | None) -> Scrape:
        """The answer to ``GET <path>`` with this ``Authorization`` header value."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self._token is not None:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self._token
            ):
                return (
                    401,
                    [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("WWW-Authenticate", 'Bearer realm="metrics"'),
                        ("Cache-Control", "no-store"),
                    ],
                    b"metrics need a valid bearer token\n",
                )
        body = generate_latest(self.registry)
        return 200, [("Content-Type", CONTENT_TYPE_LATEST), ("Cache-Control", "no-store")], body

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Serve the metrics on ``addr:port`` from a thread of prometheus_client's own server
        (no token there: bind it where only the scraper reaches) until :meth:`close`.
        Returns (server, thread); ``port=0`` picks a free port (``server.server_address``)."""
        from prometheus_client import start_http_server

        served = start_http_server(port, addr, registry=self.registry)
        self._servers.append(served)
        return served

    @property
    def ports(self) -> list[int]:
        """The ports :meth:`serve` listens on (a ``port=0`` server's real port)."""
        return [int(server.server_address[1]) for server, _ in self._servers]

    def close(self) -> None:
        """Stop the servers :meth:`serve` started."""
        servers, self._servers = self._servers, []
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def scrape_answer(
    gate: PaymentGate, method: str, path: str, authorization: str | None
) -> Answer | None:
    """The answer to a scrape of ``gate``'s metrics path, or ``None`` when the request is not
    one (every integration asks this before its paid routes: a scrape is never charged)."""
    metrics = gate.telemetry.metrics
    if metrics is None or path != metrics.path or method not in ("GET", "HEAD"):
        return None
    from ..flow import Answer

    status, headers, body = metrics.scrape(authorization)
    headers.append(("Content-Length", str(len(body))))
    return Answer(status, headers, b"" if method == "HEAD" else body)


METRICS_KEYS = ("path", "token", "port", "host")
"""The keys of the ``METRICS`` setting (Django, Flask) and of ``gateway.metrics`` (YAML)."""


def check_metrics_options(value: Any) -> dict[str, Any] | None:
    """The ``METRICS`` setting checked: ``None`` (or ``False``), ``True`` (the defaults: path
    ``/metrics``, no token, no port), or a mapping of :data:`METRICS_KEYS`
    (``{"path": "/metrics", "token": "...", "port": 9464}``); ``ConfigurationError`` otherwise."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigurationError("must be a mapping with path, token, port or host")
    unknown = sorted(str(k) for k in value if k not in METRICS_KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown key(s) {', '.join(unknown)}; known: path, token, port, host"
        )
    path = value.get("path", "/metrics")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise ConfigurationError(f"path must start with '/': {path!r}")
    token = value.get("token")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ConfigurationError("token must be a string of 8 characters or more")
    port = value.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        raise ConfigurationError(f"port must be an int from 0 to 65535: {port!r}")
    host = value.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ConfigurationError(f"host must be an address: {host!r}")
    return {"path": path, "token": token, "port": port, "host": host}


def metrics_from_options(gate: PaymentGate, value: Any) -> PaymentMetrics | None:
    """The metrics a ``METRICS`` setting asks for, built on ``gate`` (and served on its port);
    a gate that has metrics already keeps them."""
    options = check_metrics_options(value)
    if options is None:
        return None
    if gate.telemetry.metrics is not None:
        return gate.telemetry.metrics
    metrics = PaymentMetrics(gate, path=options["path"], token=options["token"])
    if options["port"] is not None:
        metrics.serve(options["port"], options["host"])
    return metrics
