"""The paid routes of a Django project, for ``/.well-known/x402`` (``X402GATE["DISCOVERY"]``),
the ``ROUTES`` keys that match none of them (:func:`check_route_keys`), and the start-up check
of the middleware (:func:`check_at_startup`).

Listed: the path keys of ``ROUTES``; every URL pattern whose name has a ``view:`` entry; and
every URL pattern whose view carries ``@require_payment`` (function views, class-based and DRF
views with decorated methods or ``dispatch``, ViewSet actions). A DRF function view is found when
``@require_payment`` is visible from outside (above ``@api_view``); below it, the view is charged
all the same but not listed. Path parameters are written ``{name}``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, get_args

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.urls import Resolver404, URLResolver, get_resolver, resolve

from ..errors import ConfigurationError
from ..gate import Route, StartupChecks
from ..routing import AppRoute, RouteTable, check_routes_exist
from .conf import PAID_VIEW_ATTR, PaidView, Runtime, ViewRoute, conf, get_runtime

__all__ = [
    "check_at_startup",
    "check_decorated_views",
    "check_route_keys",
    "decorated_views",
    "discoverable_routes",
]

_CONVERTER_RE = re.compile(r"<(?:[^>:]+:)?([^>]+)>")  # path("<int:pk>/") → {pk}
_GROUP_RE = re.compile(r"\(\?P<(\w+)>[^()]*\)")  # re_path(r"(?P<pk>[^/.]+)/") → {pk}
_METHODS = ("get", "post", "put", "patch", "delete")
_STARTUP_MODES = get_args(StartupChecks)


def _template(pattern: Any) -> str:
    # Regex patterns print as regexes: drop the anchors and name the groups; anything fancier
    # is listed as written.
    text = str(pattern).removeprefix("^").removesuffix("$").removesuffix(r"\Z")
    return _CONVERTER_RE.sub(r"{\1}", _GROUP_RE.sub(r"{\1}", text))


def _walk(
    patterns: Sequence[Any], prefix: str, namespaces: tuple[str, ...]
) -> Iterator[tuple[str, Any, str | None]]:
    for template, callback, name, _ in _walk_all(patterns, prefix, namespaces):
        yield template, callback, name


def _walk_all(
    patterns: Sequence[Any], prefix: str, namespaces: tuple[str, ...]
) -> Iterator[tuple[str, Any, str | None, tuple[str, ...]]]:
    for entry in patterns:
        template = prefix + _template(entry.pattern)
        if isinstance(entry, URLResolver):
            ns = (*namespaces, entry.namespace) if entry.namespace else namespaces
            yield from _walk_all(entry.url_patterns, template, ns)
        else:
            name = ":".join((*namespaces, entry.name)) if entry.name else None
            yield "/" + template, entry.callback, name, namespaces


def _decorated(callback: Any) -> list[tuple[str, PaidView]]:
    paid = getattr(callback, PAID_VIEW_ATTR, None)
    if paid is not None:
        return [("GET", paid)]  # a function view answers every method; GET is the usual one
    cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if cls is None:
        return []
    actions: dict[str, str] = getattr(callback, "actions", None) or {}  # DRF ViewSets
    whole = getattr(getattr(cls, "dispatch", None), PAID_VIEW_ATTR, None)
    found = []
    for method in _METHODS:
        if actions and method not in actions:
            continue
        handler = getattr(cls, actions.get(method, method), None)
        if handler is None:
            continue
        paid = getattr(handler, PAID_VIEW_ATTR, None) or whole
        if paid is not None:
            found.append((method.upper(), paid))
    return found


def discoverable_routes(runtime: Runtime, urlconf: Any = None) -> list[tuple[str, Route]]:
    """``(key, Route)`` pairs for :func:`x402gate.discovery.discovery_document`."""
    routes: list[tuple[str, Route]] = list(runtime.table) if runtime.table is not None else []
    for template, callback, name in _walk(get_resolver(urlconf).url_patterns, "", ()):
        for view in runtime.views:
            if view.name == name:
                methods = ",".join(sorted(view.methods)) if view.methods else "GET"
                routes.append((f"{methods} {template}", view.route))
        for method, paid in _decorated(callback):
            routes.append((f"{method} {template}", runtime.route_for(paid)))
    return routes


def _view_path(callback: Any) -> str:
    # What Django's ResolverMatch calls an unnamed pattern's view: its dotted path.
    func = getattr(callback, "view_class", None) or getattr(callback, "cls", None) or callback
    if not hasattr(func, "__name__"):
        func = type(func)
    return f"{func.__module__}.{func.__name__}"


def check_route_keys(
    table: RouteTable | None, views: Sequence[ViewRoute], urlconf: Any = None
) -> None:
    """Raise :class:`ConfigurationError` naming every ``ROUTES`` key that matches nothing in the
    URLconf: a path key no URL pattern resolves, a ``view:`` name no pattern has. A misspelt key
    would leave the view it meant unpaid."""
    walked = list(_walk_all(get_resolver(urlconf).url_patterns, "", ()))
    problems = []
    names = {name for _, _, name, _ in walked if name}
    names |= {":".join((*ns, _view_path(callback))) for _, callback, _, ns in walked}
    for view in views:
        if view.name not in names:
            close = difflib.get_close_matches(view.name, sorted(names), n=1, cutoff=0.6)
            hint = f" (did you mean 'view:{close[0]}'?)" if close else ""
            problems.append(f"route {view.key!r} names no URL pattern of the URLconf{hint}")
    if table is not None:

        def resolves(method: str, path: str) -> bool:
            try:
                resolve(path, urlconf)
            except Resolver404:
                return False
            return True

        known = [AppRoute(template) for template, _, _, _ in walked]
        try:
            check_routes_exist(table, [*known, AppRoute("", None, resolves)], "the URLconf")
        except ConfigurationError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigurationError("; ".join(problems))


def decorated_views(urlconf: Any = None) -> list[str]:
    """The URL patterns (as ``/template``) whose view carries ``@require_payment``."""
    return [
        template
        for template, callback, _ in _walk(get_resolver(urlconf).url_patterns, "", ())
        if _decorated(callback)
    ]


def check_decorated_views(route_for: Callable[[PaidView], Route], urlconf: Any = None) -> list[str]:
    """Build the route of every ``@require_payment`` view of the URLconf with ``route_for``
    (``Runtime.route_for``, which keeps it). One problem per view whose options the gate
    refuses (a metered price without ``PUBLIC_ORIGIN``, a ``PerSecond`` longer than the credit
    TTL...), naming the view."""
    problems = []
    seen: set[PaidView] = set()  # a decorated dispatch() prices every method: said once
    for template, callback, name, namespaces in _walk_all(
        get_resolver(urlconf).url_patterns, "", ()
    ):
        for method, paid in _decorated(callback):
            if paid in seen:
                continue
            seen.add(paid)
            try:
                route_for(paid)
            except ConfigurationError as exc:
                view = name or ":".join((*namespaces, _view_path(callback)))
                problems.append(f"@require_payment view {view!r} ({method} {template}): {exc}")
    return problems


def check_at_startup() -> None:
    """What :class:`~x402gate.django.middleware.PaymentMiddleware` checks when
    Django loads it (the WSGI/ASGI handler is built): the settings build a gate, every
    ``ROUTES`` key matches the URLconf, and the gate's start-up checks pass under
    ``STARTUP_CHECKS``; every ``@require_payment`` view of the URLconf has a route the gate
    accepts. Raises :class:`ImproperlyConfigured` with one message otherwise."""
    runtime = get_runtime()
    mode = conf.STARTUP_CHECKS
    try:
        if mode not in _STARTUP_MODES:
            raise ConfigurationError(
                f"STARTUP_CHECKS must be one of {', '.join(_STARTUP_MODES)}, not {mode!r}"
            )
        if getattr(settings, "ROOT_URLCONF", None):
            check_route_keys(runtime.table, runtime.views)
            problems = check_decorated_views(runtime.route_for)
            if problems:
                raise ConfigurationError("; ".join(problems))
        runtime.gate.check_startup_sync(mode)
    except ConfigurationError as exc:
        raise ImproperlyConfigured(f"X402GATE: {exc}") from exc
