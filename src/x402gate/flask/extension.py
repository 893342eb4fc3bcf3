"""The Flask extension: one gate per app, its start-up checks, and the credit and discovery
routes."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Unpack

from flask import Flask, Response, current_app, jsonify, request

from .._web.common import warn_trust_proxy_headers
from .._web.middleware import MiddlewareOptions, middleware_options
from .._web.wsgi import base_url_of
from ..discovery import CREDIT_PATH, WELL_KNOWN_PATH, discovery_document
from ..errors import ConfigurationError
from ..gate import PaymentGate, Route
from ..observability.metrics import metrics_from_options, scrape_answer
from ..request import Headers
from ..settings import build_gate, gate_from_flask_config, read_flask_config
from ..wsgi import PaymentMiddleware
from .views import EXTENSION_KEY, MARK, GateState, PaidView, gate_state

__all__ = ["X402Gate", "gate_from_config"]

_RULE_PARAM = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


def gate_from_config(config: Mapping[str, Any]) -> PaymentGate:
    """A :class:`~x402gate.gate.PaymentGate` from the ``X402GATE_*`` keys of ``app.config``
    (see :func:`x402gate.settings.gate_from_flask_config`)."""
    return gate_from_flask_config(config)


class X402Gate:
    """The Flask extension: one :class:`~x402gate.gate.PaymentGate` per app.

    :param gate: the gate to use; when omitted, :meth:`init_app` builds one from the app's
        ``X402GATE_*`` config (see :func:`gate_from_config`).
    :param discovery: serve ``GET /.well-known/x402`` listing every ``require_payment`` view.
    :param trust_proxy_headers: deprecated: trust the peer's ``X-Forwarded-*`` headers whatever
        its address. Give the gate ``trusted_proxies`` (and ``public_origin``) instead.
    :param max_body_bytes: largest request body read for pricing on a paid view (413 above;
        default 1 MiB).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        gate: PaymentGate | None = None,
        **options: Unpack[MiddlewareOptions],
    ) -> None:
        settings = middleware_options(options, "X402Gate")
        self._gate, self.discovery = gate, settings.discovery
        self.trust_proxy_headers = warn_trust_proxy_headers(settings.trust_proxy_headers)
        self.max_body_bytes = settings.max_body_bytes
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Attach to ``app``: build or take the gate, run its start-up checks
        (:meth:`~x402gate.gate.PaymentGate.check_startup`: a failing one raises
        :class:`~x402gate.errors.ConfigurationError`), and register the discovery route."""
        routes: Mapping[str, Any] = {}
        discovery = self.discovery
        if self._gate is not None:
            gate = self._gate
            # The gate is given, not its settings: paid routes written there still count.
            routes = app.config.get("X402GATE_ROUTES") or {}
            discovery = discovery or app.config.get("X402GATE_DISCOVERY") is True
            metrics = app.config.get("X402GATE_METRICS")
        else:
            settings = read_flask_config(app.config)
            gate, _ = build_gate(settings)
            routes, discovery = settings.routes, discovery or settings.discovery
            metrics = settings.metrics
        try:
            metrics_from_options(gate, metrics)
            gate.check_startup_sync()
            for endpoint, view in app.view_functions.items():
                rules = [r.rule for r in app.url_map.iter_rules() if r.endpoint == endpoint]
                _check_view(endpoint, ", ".join(rules), view, gate)
            if routes:
                # X402GATE_ROUTES: charged by path in front of the app, as WSGI middleware.
                paywall = PaymentMiddleware(
                    app.wsgi_app,
                    gate=gate,
                    routes=routes,
                    check_at_startup=False,  # the views are mostly registered later
                    max_body_bytes=self.max_body_bytes,
                )
                paywall.trust_proxy_headers = self.trust_proxy_headers
                app.wsgi_app = paywall  # type: ignore[method-assign]
        except ConfigurationError:
            if self._gate is None:
                gate.close()  # built here: nobody else will close its store
            raise
        app.extensions[EXTENSION_KEY] = GateState(
            gate, self.trust_proxy_headers, self.max_body_bytes
        )
        _check_views_added(app, gate)
        if discovery:
            app.add_url_rule(WELL_KNOWN_PATH, "x402gate_discovery", _discovery, methods=["GET"])
        app.add_url_rule(CREDIT_PATH, "x402gate_credit", _credit, methods=["GET"])
        app.before_request(_metrics)
        if gate.dashboard is not None:
            app.add_url_rule(
                gate.dashboard.path, "x402gate_dashboard", _dashboard, methods=["GET", "POST"]
            )

    @property
    def gate(self) -> PaymentGate:
        """The gate of the current app (or the one given to the constructor)."""
        return self._gate if self._gate is not None else gate_state().gate


def _check_view(endpoint: str, rule: str, view: Any, gate: PaymentGate) -> None:
    """Build the route of a ``require_payment`` view now: a route option the gate refuses
    (a metered price without ``public_origin``, a ``PerSecond`` longer than the credit TTL...)
    stops the start naming the view, instead of failing its first paying request."""
    paid = getattr(view, MARK, None)
    if not isinstance(paid, PaidView):
        return
    try:
        paid.route_for(paid.gate or gate)
    except ConfigurationError as exc:
        where = f" ({rule})" if rule else ""
        raise ConfigurationError(f"@require_payment view {endpoint!r}{where}: {exc}") from exc


def _check_views_added(app: Flask, gate: PaymentGate) -> None:
    # Views are usually registered after X402Gate(app) (decorators run at import): each one
    # registered from now on (blueprints included, they register through the app) is checked
    # as it is added, still before the app serves anything.
    add_url_rule = app.add_url_rule

    @functools.wraps(add_url_rule)
    def checked(
        rule: str, endpoint: str | None = None, view_func: Any = None, *args: Any, **kwargs: Any
    ) -> None:
        if view_func is not None:
            _check_view(endpoint or view_func.__name__, rule, view_func, gate)
        add_url_rule(rule, endpoint, view_func, *args, **kwargs)

    app.add_url_rule = checked  # type: ignore[method-assign]


def _metrics() -> Response | None:
    # Before any view (a paid one included): a scrape is never charged.
    gate = gate_state().gate
    if gate.telemetry.metrics is None:
        return None
    scrape = scrape_answer(gate, request.method, request.path, request.headers.get("Authorization"))
    if scrape is None:
        return None
    return Response(scrape.body, status=scrape.status, headers=scrape.headers)


def _credit() -> Response:
    code, document = gate_state().gate.credit_status_sync(Headers(request.headers.items()))
    response = jsonify(document)
    response.status_code = code
    response.headers["Cache-Control"] = "no-store"
    return response


def _dashboard() -> Response:
    from ..dashboard.web import serve_wsgi

    captured: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
        captured[:] = [status, headers]

    body = b"".join(serve_wsgi(gate_state().gate, request.environ, start_response))
    return Response(body, status=captured[0], headers=captured[1])


def _discovery() -> Response:
    app_state = gate_state()
    by_gate: dict[int, tuple[PaymentGate, list[tuple[str, Route]]]] = {}
    for rule in current_app.url_map.iter_rules():
        paid = getattr(current_app.view_functions.get(rule.endpoint), MARK, None)
        if not isinstance(paid, PaidView):
            continue
        gate = paid.gate or app_state.gate
        methods = ",".join(sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))
        template = _RULE_PARAM.sub(r"{\1}", rule.rule)  # /items/<int:id> -> /items/{id}
        key = f"{methods} {template}"
        by_gate.setdefault(id(gate), (gate, []))[1].append((key, paid.route_for(gate)))
    base = base_url_of(
        request.environ, trust_proxy_headers=app_state.trust_proxy_headers, gate=app_state.gate
    )
    document = discovery_document(app_state.gate, [], base)
    for gate, items in by_gate.values():
        document["items"].extend(discovery_document(gate, items, base)["items"])
    response = jsonify(document)
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Access-Control-Allow-Origin"] = "*"  # public terms, meant for crawlers
    return response
