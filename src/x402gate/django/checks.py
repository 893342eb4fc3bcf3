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

from ..assets import Asset, checksum_address, normalize_network, usdc
from ..errors import ConfigurationError
from ..gate import PaymentGate
from ..proxies import TrustedProxies
from ..siwx import parse_public_origins
from ..stores.registry import accepted_schemes, redact_url
from .conf import GATE_KEYS, KNOWN_KEYS, build_gate, build_routes, conf
from .discovery import check_decorated_views, check_route_keys, decorated_views
from .middleware import PaymentMiddleware

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


def _check_pay_to(pay_to: Any) -> list[CheckMessage]:
    if pay_to is None:
        return [_error(1, "X402GATE['PAY_TO'] is required: the address that receives payments.")]
    addresses = list(pay_to.values()) if isinstance(pay_to, Mapping) else [pay_to]
    try:
        if isinstance(pay_to, Mapping):
            for network in pay_to:
                normalize_network(network)
        for address in addresses:
            if int(checksum_address(address), 16) == 0:
                raise ConfigurationError("PAY_TO must not be the zero address")
    except ConfigurationError as exc:
        return [_error(1, f"X402GATE['PAY_TO'] is invalid: {exc}")]
    return []


def _check_assets() -> list[CheckMessage]:
    try:
        if conf.ASSETS is not None:
            assets = conf.ASSETS if isinstance(conf.ASSETS, list | tuple) else [conf.ASSETS]
            if not assets or not all(isinstance(a, Asset) for a in assets):
                raise ConfigurationError("ASSETS must be one or more x402gate.Asset")
        elif conf.NETWORK is None:
            raise ConfigurationError("NETWORK (or ASSETS) is required, e.g. 'base'")
        else:
            usdc(conf.NETWORK)
    except ConfigurationError as exc:
        return [_error(2, f"X402GATE: {exc}")]
    return []


def _check_facilitator() -> list[CheckMessage]:
    try:
        if conf.FACILITATOR is not None:
            if isinstance(conf.FACILITATOR, str):
                import_string(conf.FACILITATOR)
            return []
        if not conf.FACILITATOR_URL:
            raise ConfigurationError("FACILITATOR_URL (or FACILITATOR) is required")
        from ..facilitators import HTTPFacilitator

        HTTPFacilitator(conf.FACILITATOR_URL, timeout=conf.FACILITATOR_TIMEOUT)
    except (ConfigurationError, ImportError) as exc:
        return [_error(4, f"X402GATE: {exc}")]
    return []


def _check_store() -> list[CheckMessage]:
    url = conf.STORE_URL
    if isinstance(url, str) and url.partition("://")[0].lower() not in accepted_schemes():
        return [
            _error(
                6,
                f"X402GATE['STORE_URL'] {redact_url(url)!r} has an unknown scheme.",
                f"Use one of {', '.join(s + '://' for s in accepted_schemes())}.",
            )
        ]
    return []


def _check_options() -> list[CheckMessage]:
    errors = []
    timeout = conf.MAX_TIMEOUT_SECONDS
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 10 <= timeout <= 86_400:
        errors.append(_error(5, "X402GATE['MAX_TIMEOUT_SECONDS'] must be an int from 10 to 86400."))
    if conf.PUBLIC_ORIGIN is not None:
        try:
            parse_public_origins(conf.PUBLIC_ORIGIN, "PUBLIC_ORIGIN")
        except ConfigurationError as exc:
            errors.append(_error(5, f"X402GATE: {exc}", "e.g. 'https://api.example.com'"))
    try:
        TrustedProxies(conf.TRUSTED_PROXIES, setting="TRUSTED_PROXIES")
    except ConfigurationError as exc:
        errors.append(_error(5, f"X402GATE: {exc}", "e.g. ['10.0.0.0/8']"))
    for key in ("VERIFY_WITH_FACILITATOR", "ALLOW_SMART_WALLETS", "LIMIT_IN_FLIGHT", "DISCOVERY"):
        if not isinstance(getattr(conf, key), bool):
            errors.append(_error(5, f"X402GATE[{key!r}] must be True or False."))
    if conf.STARTUP_CHECKS not in ("fail", "warn", "off"):
        errors.append(_error(5, "X402GATE['STARTUP_CHECKS'] must be 'fail', 'warn' or 'off'."))
    return errors


def _gate_for_checks() -> tuple[PaymentGate | None, list[CheckMessage]]:
    if conf.GATE is not None:
        try:
            gate, _ = build_gate()
        except (ConfigurationError, ImportError) as exc:
            return None, [_error(7, f"X402GATE['GATE']: {exc}")]
        return gate, []
    errors = [
        *_check_pay_to(conf.PAY_TO),
        *_check_assets(),
        *_check_facilitator(),
        *_check_store(),
    ]
    if errors:
        return None, errors
    try:
        origins = parse_public_origins(conf.PUBLIC_ORIGIN) if conf.PUBLIC_ORIGIN else None
        proxies = list(TrustedProxies(conf.TRUSTED_PROXIES).networks)
    except ConfigurationError:  # reported as E005 by the option checks
        origins, proxies = None, []
    try:
        gate = PaymentGate(
            pay_to=conf.PAY_TO,
            network=conf.NETWORK,
            assets=conf.ASSETS,
            facilitator=_NoFacilitator(),
            store="memory://",
            public_origin=origins,
            trusted_proxies=[str(network) for network in proxies],
        )
    except ConfigurationError as exc:  # e.g. a PAY_TO mapping without one of the networks
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

    try:
        table, views = build_routes(gate, conf.ROUTES)
        check_route_keys(table, views)
    except ConfigurationError as exc:
        return [_error(9, f"X402GATE['ROUTES']: {exc}", "Fix the key; see docs/django.md.")]
    return []


def _check_decorated_views(gate: PaymentGate) -> list[CheckMessage]:
    if not getattr(settings, "ROOT_URLCONF", None):
        return []

    try:
        problems = check_decorated_views(lambda paid: gate.route(paid.price, **paid.options))
    except Exception:  # an URLconf that does not import: Django's own checks report it
        return []
    hint = "Fix the view's options or the gate's settings; see docs/django.md."
    return [_error(11, problem, hint) for problem in problems]


def _decorated_views() -> list[str]:
    if not getattr(settings, "ROOT_URLCONF", None):
        return []

    try:
        return decorated_views()
    except Exception:  # an URLconf that does not import: Django's own checks report it
        return []


def _check_middleware() -> list[CheckMessage]:

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
    raw = conf.raw
    if not isinstance(raw, Mapping):
        found = "missing" if raw is None else f"a {type(raw).__name__}"
        errors = [_error(5, f"settings.X402GATE must be a dict; it is {found}.")]
        return errors + _check_middleware()
    known = f"Known keys: {', '.join(sorted(KNOWN_KEYS))}."
    errors = [
        _error(5, f"X402GATE has an unknown key {key!r}.", known)
        for key in raw
        if key not in KNOWN_KEYS
    ]
    conflicting = ", ".join(sorted(GATE_KEYS & set(raw)))
    gate: PaymentGate | None
    if conf.GATE is not None and conflicting:
        errors.append(_error(7, f"X402GATE['GATE'] cannot be combined with {conflicting}."))
        gate = None
    else:
        gate, gate_errors = _gate_for_checks()
        errors += gate_errors
    errors += _check_options()
    if gate is not None:
        route_errors = _check_routes(gate)
        errors += route_errors or _check_route_keys(gate)
        errors += _check_decorated_views(gate)
    errors += _check_middleware()
    errors += _check_memory_store(gate)
    return errors


def register_checks() -> None:
    """Register :func:`check_settings` (called by the app's ``ready``)."""
    register(check_settings)
