"""The ``X402GATE`` setting, and the gate and route tables built from it.

:data:`conf` reads ``settings.X402GATE`` on every access (no copy is kept), so
``override_settings`` works everywhere. The gate built from the settings is cached for the whole
process and rebuilt after a ``setting_changed`` signal for ``X402GATE`` (sent by
``override_settings`` and Django's test tools).

Keys (see ``docs/django.md``)::

    X402GATE = {
        "PAY_TO": "0x...",                 # address, or {network: address}
        "NETWORK": "base",                 # USDC on this network; or "ASSETS": [Asset(...)]
        "FACILITATOR_URL": "https://...",  # or several; or "FACILITATOR": an object / dotted path
        "FACILITATOR_HEADERS": {...},      # optional: auth headers, or a callable
        "FACILITATOR_TIMEOUT": 20.0,
        "STORE_URL": "sqlite:///x402gate.db",
        "MAX_TIMEOUT_SECONDS": 300,
        "VERIFY_WITH_FACILITATOR": True,
        "ALLOW_SMART_WALLETS": False,
        "ROUTES": {"GET /weather/": "$0.01", "view:reports-detail": {"price": "$0.05"}},
        "DISCOVERY": False,                # serve GET /.well-known/x402
        "STARTUP_CHECKS": "fail",          # or "warn" / "off": start even if a check fails
    }

or ``{"GATE": a PaymentGate or "dotted.path.to.gate", "ROUTES": ..., "DISCOVERY": ...}``.

The keys are those of :class:`x402gate.settings.GateSettings` in upper case (Flask writes them
``X402GATE_PAY_TO``, the gateway file ``pay_to``); the gate and the system checks read them
through :func:`x402gate.settings.read_django_setting`, so both report the same problems.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, get_args

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.http import HttpRequest
from django.urls import Resolver404, resolve

from .._runner import run_sync
from ..errors import ConfigurationError
from ..gate import PaymentGate, Route, StartupChecks
from ..observability.metrics import metrics_from_options
from ..options import check_route_options
from ..routing import RouteTable, split_route_key
from ..settings import (
    GATE_FIELDS,
    SETTING_NAMES,
    SettingsError,
    read_django_setting,
)
from ..settings import build_gate as build_gate_from
from ..stores.registry import DEFAULT_STORE_URL

__all__ = [
    "GATE_KEYS",
    "KNOWN_KEYS",
    "PAID_VIEW_ATTR",
    "PaidView",
    "Runtime",
    "Settings",
    "build_gate",
    "build_routes",
    "conf",
    "get_runtime",
    "reset",
]

GATE_KEYS = frozenset(name.upper() for name in GATE_FIELDS)
"""Keys that describe the gate; they cannot be combined with ``GATE``."""

KNOWN_KEYS = frozenset(name.upper() for name in SETTING_NAMES)

_STARTUP_MODES = get_args(StartupChecks)
_VIEW = "view:"


class Settings:
    """``settings.X402GATE``, one property per key, read on every access."""

    def _get(self, key: str, default: Any = None) -> Any:
        raw = getattr(settings, "X402GATE", None)
        return raw.get(key, default) if isinstance(raw, Mapping) else default

    @property
    def raw(self) -> Any:
        """The setting as written (``None`` when absent)."""
        return getattr(settings, "X402GATE", None)

    @property
    def GATE(self) -> Any:
        """An existing :class:`PaymentGate`, or the dotted path of one."""
        return self._get("GATE")

    @property
    def PAY_TO(self) -> Any:
        return self._get("PAY_TO")

    @property
    def NETWORK(self) -> Any:
        return self._get("NETWORK")

    @property
    def ASSETS(self) -> Any:
        return self._get("ASSETS")

    @property
    def FACILITATOR(self) -> Any:
        """A facilitator object (``LocalFacilitator``, your own) or its dotted path."""
        return self._get("FACILITATOR")

    @property
    def FACILITATOR_URL(self) -> Any:
        return self._get("FACILITATOR_URL")

    @property
    def FACILITATOR_HEADERS(self) -> Any:
        return self._get("FACILITATOR_HEADERS")

    @property
    def FACILITATOR_TIMEOUT(self) -> Any:
        return self._get("FACILITATOR_TIMEOUT", 20.0)

    @property
    def STORE_URL(self) -> Any:
        return self._get("STORE_URL", DEFAULT_STORE_URL)

    @property
    def MAX_TIMEOUT_SECONDS(self) -> Any:
        return self._get("MAX_TIMEOUT_SECONDS", 300)

    @property
    def VERIFY_WITH_FACILITATOR(self) -> Any:
        return self._get("VERIFY_WITH_FACILITATOR", True)

    @property
    def ALLOW_SMART_WALLETS(self) -> Any:
        return self._get("ALLOW_SMART_WALLETS", False)

    @property
    def PUBLIC_ORIGIN(self) -> Any:
        """The origin (or list) clients reach the site at; metered routes need it."""
        return self._get("PUBLIC_ORIGIN")

    @property
    def TRUSTED_PROXIES(self) -> Any:
        """IP addresses / CIDR blocks of the reverse proxies in front of the site."""
        return self._get("TRUSTED_PROXIES", ())

    @property
    def LIMIT_IN_FLIGHT(self) -> Any:
        return self._get("LIMIT_IN_FLIGHT", True)

    @property
    def RPC_URL(self) -> Any:
        """The chain node payers' balances are read from (a URL or network → URL)."""
        return self._get("RPC_URL")

    @property
    def ROUTES(self) -> Any:
        return self._get("ROUTES", {})

    @property
    def DISCOVERY(self) -> Any:
        return self._get("DISCOVERY", False)

    @property
    def METRICS(self) -> Any:
        """Prometheus metrics: ``{"path": "/metrics", "token": ..., "port": ...}``."""
        return self._get("METRICS")

    @property
    def STARTUP_CHECKS(self) -> Any:
        """What a failing start-up check does: ``"fail"`` (stop), ``"warn"``, ``"off"``."""
        return self._get("STARTUP_CHECKS", "fail")


conf = Settings()


def build_gate() -> tuple[PaymentGate, bool]:
    """The gate the settings describe, and whether this module owns (and so closes) it.

    ``settings.X402GATE`` is read by :func:`x402gate.settings.read_django_setting`: a
    :class:`~x402gate.settings.SettingsError` names every wrong key at once.
    """
    return build_gate_from(read_django_setting(conf.raw))


@dataclass(frozen=True, slots=True)
class ViewRoute:
    """A ``ROUTES`` entry keyed by URL name (``"GET view:reports-detail"``)."""

    key: str
    methods: frozenset[str] | None
    name: str
    route: Route


def _route(gate: PaymentGate, key: str, spec: Any) -> Route:
    # The same value forms as a path key of RouteTable.
    if isinstance(spec, Route):
        return spec
    if isinstance(spec, Mapping):
        check_route_options(spec, f"route {key!r}", also=("price",))
        try:
            return gate.route(**spec)
        except TypeError as exc:
            raise ConfigurationError(f"route {key!r}: {exc}") from None
    return gate.route(spec)


def build_routes(gate: PaymentGate, routes: Any) -> tuple[RouteTable | None, tuple[ViewRoute, ...]]:
    """Split ``ROUTES`` into a path table and URL-name entries; ``ConfigurationError`` if bad."""
    if not isinstance(routes, Mapping):
        raise ConfigurationError("ROUTES must map 'METHOD /path' or 'view:name' keys to prices")
    paths: dict[str, Any] = {}
    views: list[ViewRoute] = []
    for key, spec in routes.items():
        # The same key syntax as path keys, with a view: target (one parser for both).
        methods, target = split_route_key(key)
        name = target.removeprefix(_VIEW)
        if name == target or not name or any(c.isspace() for c in name):
            paths[key] = spec
            continue
        route = _route(gate, key, spec)
        if route.rate_limit is not None and route.rate_limit.scope is None:
            # Counted per key, whatever the view's path parameters, like a path key.
            route = replace(route, rate_limit=route.rate_limit.scoped(key))
        gate.telemetry.name_route(route, " ".join(key.split()))
        views.append(ViewRoute(key, methods, name, route))
    return (RouteTable(gate, paths) if paths else None), tuple(views)


PAID_VIEW_ATTR = "x402gate_paid"
"""Attribute holding the :class:`PaidView` of a ``@require_payment`` view."""


@dataclass(eq=False)
class PaidView:
    """What ``@require_payment`` attaches to a view: the price and the route options."""

    price: Any
    options: Mapping[str, Any]


@dataclass(eq=False)
class Runtime:
    """The gate and routes in force; replaced as a whole when the settings change."""

    gate: PaymentGate
    owned: bool
    table: RouteTable | None
    views: tuple[ViewRoute, ...]
    discovery: bool
    _decorated: dict[PaidView, Route] = field(default_factory=dict)

    def match(self, request: HttpRequest) -> Route | None:
        """The ``ROUTES`` entry for this request, or ``None``."""
        method, path = request.method or "GET", request.path_info
        if self.table is not None:
            route = self.table.match(method, path)
            if route is not None:
                return route
        if not self.views:
            return None
        try:
            view_name = resolve(path, getattr(request, "urlconf", None)).view_name
        except Resolver404:
            return None
        for entry in self.views:
            if entry.name == view_name and (entry.methods is None or method in entry.methods):
                return entry.route
        return None

    def route_for(self, paid: PaidView) -> Route:
        """The route of a decorated view on this gate (built once)."""
        route = self._decorated.get(paid)
        if route is None:
            route = self._decorated[paid] = self.gate.route(paid.price, **paid.options)
        return route


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The runtime for the current settings (built on first use)."""
    global _runtime
    runtime = _runtime
    if runtime is not None:
        return runtime
    with _lock:
        if _runtime is None:
            gate: PaymentGate | None = None
            try:
                gate, owned = build_gate()
                table, views = build_routes(gate, conf.ROUTES)
                metrics_from_options(gate, conf.METRICS)
            except (ConfigurationError, ImportError) as exc:
                if gate is not None and owned:
                    gate.close()
                # Every request fails until the settings are fixed: nothing is served free.
                raise ImproperlyConfigured(_described(exc)) from exc
            _runtime = Runtime(gate, owned, table, views, bool(conf.DISCOVERY))
        return _runtime


def _described(exc: Exception) -> str:
    # A SettingsError already says where it comes from ("settings.X402GATE: ...").
    return str(exc) if isinstance(exc, SettingsError) else f"X402GATE: {exc}"


def reset() -> None:
    """Forget the runtime; the next request builds it from the settings again."""
    global _runtime
    with _lock:
        old, _runtime = _runtime, None
    if old is not None and old.owned:
        # Closes the store and the facilitator connections of the sync path's loop.
        run_sync(old.gate.aclose())


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "X402GATE":
        reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="x402gate.django.conf")
