"""System checks for ``settings.X402GATE`` (``python manage.py check``).

Run when ``"x402gate.django"`` is in ``INSTALLED_APPS``. Ids:

* ``x402gate.E001`` ``PAY_TO`` missing or not an address (or the zero address);
* ``x402gate.E002`` ``NETWORK`` / ``ASSETS`` missing, or a network without known USDC;
* ``x402gate.E003`` a ``ROUTES`` entry with a bad key, price or option;
* ``x402gate.E004`` no facilitator, or a ``FACILITATOR_URL`` that is not http(s);
* ``x402gate.E005`` ``X402GATE`` missing or not a dict, an unknown key, or a bad option value;
* ``x402gate.E006`` a ``STORE_URL`` with an unknown scheme;
* ``x402gate.E007`` ``GATE`` is not a ``PaymentGate`` (or its path does not import), or is
  combined with keys that describe a gate;
* ``x402gate.E008`` ``PaymentMiddleware`` is not in ``MIDDLEWARE`` (the message names the
  ``@require_payment`` views it leaves unserved);
* ``x402gate.E009`` a ``ROUTES`` key that matches nothing in the URLconf (a path no URL pattern
  resolves, a ``view:`` name no pattern has), with the closest one;
* ``x402gate.E010`` a caching middleware (``UpdateCacheMiddleware``, ``CacheMiddleware``) below
  ``PaymentMiddleware``: it would store paid answers before they are marked private, and serve
  them to anyone;
* ``x402gate.E011`` a ``@require_payment`` view whose price or options the gate refuses (a
  metered price without ``PUBLIC_ORIGIN``, a ``PerSecond`` longer than the credit TTL, ...);
* ``x402gate.W001`` the ``memory://`` store in production: it is per process, so behind several
  worker processes one payment could be accepted once per process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string

from ...errors import ConfigurationError
from ...gate import PaymentGate
from ...settings import GateSettings, SettingsError, read_django_setting
from ...stores.registry import accepted_schemes
from .conf import build_routes, conf

# Middleware that stores answers: below PaymentMiddleware it sees a paid answer before the
# middleware marks it private, stores it, and the cache then serves it to anyone.
_CACHE_MIDDLEWARE = (
    "django.middleware.cache.UpdateCacheMiddleware",
    "django.middleware.cache.CacheMiddleware",
)

__all__ = ["check_settings"]

_DOCS = "See docs/django.md of x402gate."


def _error(n: int, msg: str, hint: str = _DOCS) -> Error:
    return Error(msg, hint=hint, id=f"x402gate.E{n:03d}")


class _NoFacilitator:
    """Stands in for the facilitator while checking: checks never touch the network."""

    async def verify(self, *args: Any) -> Any:
        raise NotImplementedError

    settle = supported = verify


# Each setting's check id; an unknown key and any other setting is E005.
_IDS = {
    "pay_to": 1,
    "network": 2,
    "assets": 2,
    "routes": 3,
    "facilitator": 4,
    "facilitator_url": 4,
    "facilitator_headers": 4,
    "facilitator_timeout": 4,
    "store_url": 6,
    "gate": 7,
}
_HINTS = {
    "store_url": f"Use one of {', '.join(s + '://' for s in accepted_schemes())}.",
    "public_origin": "e.g. 'https://api.example.com'",
    "trusted_proxies": "e.g. ['10.0.0.0/8']",
}


def _read_settings() -> tuple[GateSettings | None, list[CheckMessage]]:
    """The settings, read by the same reader (and validators) the gate is built with."""
    try:
        return read_django_setting(conf.raw), []
    except SettingsError as exc:
        errors = [
            _error(
                _IDS.get(problem.name or "", 5),
                f"X402GATE: {problem}",
                _HINTS.get(problem.name or "", _DOCS),
            )
            for problem in exc.problems
        ]
        return None, errors


def _gate_for_checks(checked: GateSettings) -> tuple[PaymentGate | None, list[CheckMessage]]:
    if checked.gate is not None:
        gate: PaymentGate = checked.gate
        return gate, []
    assert checked.pay_to is not None  # required without GATE
    try:
        gate = PaymentGate(
            pay_to=checked.pay_to,
            assets=checked.assets,
            facilitator=_NoFacilitator(),
            store="memory://",
            public_origin=checked.public_origin,
            trusted_proxies=checked.trusted_proxies,
        )
    except ConfigurationError as exc:  # what the settings reader does not know of
        return None, [_error(1, f"X402GATE: {exc}")]
    return gate, []


def _check_routes(gate: PaymentGate) -> list[CheckMessage]:
    routes = conf.ROUTES
    if not isinstance(routes, Mapping):
        return [_error(3, "X402GATE['ROUTES'] must be a dict of 'METHOD /path' or 'view:name'.")]
    errors = []
    for key, spec in routes.items():
        try:
            build_routes(gate, {key: spec})
        except ConfigurationError as exc:
            errors.append(_error(3, f"X402GATE['ROUTES'][{key!r}]: {exc}"))
    return errors


def _check_route_keys(gate: PaymentGate) -> list[CheckMessage]:
    if not getattr(settings, "ROOT_URLCONF", None):
        return []  # no URLconf to match against (Django reports that itself when it matters)
    from .discovery import check_route_keys

    try:
        table, views = build_routes(gate, conf.ROUTES)
        check_route_keys(table, views)
    except ConfigurationError as exc:
        return [_error(9, f"X402GATE['ROUTES']: {exc}", "Fix the key; see docs/django.md.")]
    return []


def _check_decorated_views(gate: PaymentGate) -> list[CheckMessage]:
    if not getattr(settings, "ROOT_URLCONF", None):
        return []
    from .discovery import check_decorated_views

    try:
        problems = check_decorated_views(lambda paid: gate.route(paid.price, **paid.options))
    except Exception:  # an URLconf that does not import: Django's own checks report it
        return []
    hint = "Fix the view's options or the gate's settings; see docs/django.md."
    return [_error(11, problem, hint) for problem in problems]


def _decorated_views() -> list[str]:
    if not getattr(settings, "ROOT_URLCONF", None):
        return []
    from .discovery import decorated_views

    try:
        return decorated_views()
    except Exception:  # an URLconf that does not import: Django's own checks report it
        return []


def _check_middleware() -> list[CheckMessage]:
    from .middleware import PaymentMiddleware

    paths = list(getattr(settings, "MIDDLEWARE", None) or ())
    for index, path in enumerate(paths):
        try:
            cls = import_string(path)
        except ImportError:
            continue  # Django reports unimportable middleware itself
        if isinstance(cls, type) and issubclass(cls, PaymentMiddleware):
            inner = [p for p in paths[index + 1 :] if p in _CACHE_MIDDLEWARE]
            if inner:
                return [
                    _error(
                        10,
                        f"{inner[0]} is below x402gate.django.PaymentMiddleware in MIDDLEWARE: "
                        "it stores paid answers before they are marked private and serves them "
                        "to clients that did not pay.",
                        "Put UpdateCacheMiddleware (or CacheMiddleware) above PaymentMiddleware, "
                        "as Django documents it: first in MIDDLEWARE.",
                    )
                ]
            return []
    views = _decorated_views()
    unserved = f" (@require_payment views: {', '.join(views[:5])})" if views else ""
    return [
        _error(
            8,
            "x402gate.django.PaymentMiddleware is not in MIDDLEWARE: ROUTES are served free "
            f"and @require_payment views answer 500{unserved}.",
            "Add 'x402gate.django.PaymentMiddleware' to MIDDLEWARE.",
        )
    ]


def _check_memory_store(gate: PaymentGate | None) -> list[CheckMessage]:
    if gate is not None and conf.GATE is not None:
        memory = getattr(gate.store, "scheme", None) == "memory"
    else:
        memory = isinstance(conf.STORE_URL, str) and conf.STORE_URL.startswith("memory://")
    workers = os.environ.get("WEB_CONCURRENCY", "1")  # gunicorn and most PaaS set it
    several = workers.isdigit() and int(workers) > 1
    if memory and (several or not settings.DEBUG):
        return [
            Warning(
                "X402GATE uses the memory:// replay store, which lives in one process: behind a "
                "server with several worker processes (gunicorn -w, uWSGI, several ASGI "
                "workers) a payment can be accepted once in each process.",
                hint="Use 'sqlite:///path/x402gate.db' (one host) or 'redis://...' (several).",
                id="x402gate.W001",
            )
        ]
    return []


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every ``x402gate.*`` check of ``settings.X402GATE``."""
    checked, errors = _read_settings()
    gate = None
    if checked is not None:
        gate, errors = _gate_for_checks(checked)
    if gate is not None:
        route_errors = _check_routes(gate)
        errors += route_errors or _check_route_keys(gate)
        errors += _check_decorated_views(gate)
    errors += _check_middleware()
    if isinstance(conf.raw, Mapping):
        errors += _check_memory_store(gate)
    return errors


def register_checks() -> None:
    """Register :func:`check_settings` (called by the app's ``ready``)."""
    register(check_settings)
