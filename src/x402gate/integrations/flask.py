"""Flask integration: an extension and a ``require_payment`` decorator for views.

::

    app.config.update(X402GATE_PAY_TO="0x...", X402GATE_NETWORK="base-sepolia",
                      X402GATE_FACILITATOR_URL="https://x402.org/facilitator")
    X402Gate(app)

    @app.get("/weather")
    @require_payment("$0.01")
    def weather():
        return {"forecast": "sunny", "payer": current_payment.payer}

The view runs only after the payment is claimed and verified; its response is built, the payment
settled for its status (policy ``after``), and only then is the response handed to Flask, so a
streamed body is not produced, let alone sent, before settlement. When settlement fails the
client gets the gate's answer and the response is closed unread.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, cast, get_args
from weakref import WeakKeyDictionary

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.local import LocalProxy

from ..assets import Asset
from ..discovery import CREDIT_PATH, WELL_KNOWN_PATH, discovery_document
from ..errors import ConfigurationError, PaymentError
from ..gate import (
    Payment,
    PaymentGate,
    PaymentIdentifier,
    PaymentSession,
    Route,
    Settlement,
)
from ..pricing import as_strategy
from ..request import Headers, RequestInfo
from ..settings import gate_from_flask_config
from ._common import (
    MeteredBody,
    meter_body,
    paid_response_headers,
    render_error,
    route_refused,
    warn_trust_proxy_headers,
)
from .wsgi import DEFAULT_MAX_BODY, base_url_of, request_info_from_environ

__all__ = ["GateState", "X402Gate", "current_payment", "gate_from_config", "require_payment"]

P = ParamSpec("P")
EXTENSION_KEY = "x402gate"
_SESSION = "_x402gate_session"
_MARK = "__x402gate__"
_RULE_PARAM = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


def gate_from_config(config: Mapping[str, Any]) -> PaymentGate:
    """A :class:`~x402gate.gate.PaymentGate` from the ``X402GATE_*`` keys of ``app.config``
    (see :func:`x402gate.settings.gate_from_flask_config`)."""
    return gate_from_flask_config(config)


@dataclass(frozen=True, slots=True)
class GateState:
    """What :meth:`X402Gate.init_app` keeps in ``app.extensions["x402gate"]``."""

    gate: PaymentGate
    trust_proxy_headers: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY


class X402Gate:
    """The Flask extension: one :class:`~x402gate.gate.PaymentGate` per app.

    :param gate: the gate to use; when omitted, :meth:`init_app` builds one from the app's
        ``X402GATE_*`` config (see :func:`gate_from_config`).
    :param discovery: serve ``GET /.well-known/x402`` listing every ``require_payment`` view.
    :param trust_proxy_headers: deprecated: trust the peer's ``X-Forwarded-*`` headers whatever
        its address. Give the gate ``trusted_proxies`` (and ``public_origin``) instead.
    :param max_body_bytes: largest request body read for pricing on a paid view (413 above).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        gate: PaymentGate | None = None,
        discovery: bool = False,
        trust_proxy_headers: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY,
    ) -> None:
        self._gate = gate
        self.discovery = discovery
        self.trust_proxy_headers = warn_trust_proxy_headers(trust_proxy_headers)
        self.max_body_bytes = max_body_bytes
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Attach to ``app``: build or take the gate, run its start-up checks
        (:meth:`~x402gate.gate.PaymentGate.check_startup`: a failing one raises
        :class:`~x402gate.errors.ConfigurationError`), and register the discovery route."""
        gate = self._gate if self._gate is not None else gate_from_config(app.config)
        try:
            gate.check_startup_sync()
        except ConfigurationError:
            if self._gate is None:
                gate.close()  # built here: nobody else will close its store
            raise
        try:
            for endpoint, view in app.view_functions.items():
                rules = [r.rule for r in app.url_map.iter_rules() if r.endpoint == endpoint]
                _check_view(endpoint, ", ".join(rules), view, gate)
        except ConfigurationError:
            if self._gate is None:
                gate.close()
            raise
        app.extensions[EXTENSION_KEY] = GateState(
            gate, self.trust_proxy_headers, self.max_body_bytes
        )
        _check_views_added(app, gate)
        if self.discovery:
            app.add_url_rule(WELL_KNOWN_PATH, "x402gate_discovery", _discovery, methods=["GET"])
        app.add_url_rule(CREDIT_PATH, "x402gate_credit", _credit, methods=["GET"])

    @property
    def gate(self) -> PaymentGate:
        """The gate of the current app (or the one given to the constructor)."""
        return self._gate if self._gate is not None else _state().gate


def _check_view(endpoint: str, rule: str, view: Any, gate: PaymentGate) -> None:
    """Build the route of a ``require_payment`` view now: a route option the gate refuses
    (a metered price without ``public_origin``, a ``PerSecond`` longer than the credit TTL...)
    stops the start naming the view, instead of failing its first paying request."""
    paid = getattr(view, _MARK, None)
    if not isinstance(paid, _PaidView):
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


def _state() -> GateState:
    state = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, GateState):
        raise ConfigurationError("x402gate is not set up on this app: call X402Gate(app)")
    return state


class _PaidView:
    """The payment terms of one decorated view; its Route is built once per gate."""

    def __init__(self, price: Any, gate: PaymentGate | None, options: dict[str, Any]) -> None:
        self.price = as_strategy(price)  # a bad price fails at import time, not per request
        if options["settlement"] not in get_args(Settlement):
            raise ConfigurationError(
                f"settlement must be 'after' or 'before', not {options['settlement']!r}"
            )
        self.gate, self.options = gate, options
        self._routes: WeakKeyDictionary[PaymentGate, Route] = WeakKeyDictionary()
        if gate is not None:
            self.route_for(gate)

    def route_for(self, gate: PaymentGate) -> Route:
        route = self._routes.get(gate)
        if route is None:
            route = self._routes[gate] = gate.route(self.price, **self.options)
        return route

    def serve(self, view: Callable[..., Any], args: Any, kwargs: Any) -> Response:
        if g.get(_SESSION) is not None:
            # A paid view inside a paid view (decorated twice, or calling another): the
            # outermost one charges, once per request.
            return current_app.make_response(view(*args, **kwargs))
        found = current_app.extensions.get(EXTENSION_KEY)
        # An explicit gate needs no extension; otherwise a missing one fails closed (500).
        state = GateState(self.gate) if self.gate and not found else _state()
        gate = self.gate or state.gate
        accept = request.headers.get("Accept")
        try:
            route = self.route_for(gate)
        except ConfigurationError as exc:  # only when init_app could not see the view
            return _error(route_refused(f"@require_payment view {request.endpoint!r}", exc), accept)
        try:
            session = gate.begin_sync(route, _request_info(state, gate))
        except PaymentError as exc:
            return _error(exc, accept)
        setattr(g, _SESSION, session)
        g.payment = session.payment
        try:
            response = current_app.make_response(view(*args, **kwargs))
        except BaseException:
            gate.abort_sync(session)
            raise
        try:
            extra = gate.finish_sync(
                session, response.status_code, recording=session.idempotency is not None
            )
        except PaymentError as exc:
            response.close()  # a generator body is closed before it ever ran
            return _error(exc, accept)
        if extra or response.status_code < 400:
            headers = paid_response_headers(response.headers.items(), extra)
            response.headers.clear()
            response.headers.extend(headers)
        if session.reservation is not None:
            # Metered route: charge what the answer reports it used (tokens) or took (seconds).
            if response.is_streamed:
                response.response = MeteredBody(
                    response.iter_encoded(),  # bytes, whatever the view yielded
                    response.content_type,
                    lambda usage: gate.complete_sync(session, usage),
                    overdue=gate.overdue_check(session),
                )
            else:
                gate.complete_sync(session, meter_body(response.get_data(), response.content_type))
        if session.idempotency is not None:
            # Kept for retries with the same payment identifier; a stream cannot be replayed.
            body = None if response.is_streamed else response.get_data()
            gate.record_sync(session, response.status_code, response.headers.items(), body)
        # The server closes the answer once it has written it: a retry is a replay from then on.
        response.call_on_close(lambda: gate.delivered_sync(session))
        return response


def _request_info(state: GateState, gate: PaymentGate) -> RequestInfo:
    limit = request.max_content_length
    if limit is None or limit > state.max_body_bytes:
        with contextlib.suppress(AttributeError):  # no per-request limit before Flask 3.1
            request.max_content_length = state.max_body_bytes
    try:
        length = request.content_length
        if length is not None and length > state.max_body_bytes:
            raise RequestEntityTooLarge
        body = request.get_data(cache=True)  # cached: the view reads it again
    except RequestEntityTooLarge:
        raise PaymentError(
            413, "request_too_large", "request body too large for a paid route"
        ) from None
    return request_info_from_environ(
        request.environ,
        body,
        trust_proxy_headers=state.trust_proxy_headers,
        native=request,
        proxies=gate.trusted_proxies,
    )


def _error(exc: PaymentError, accept: str | None) -> Response:
    status, headers, body = render_error(exc, accept)
    return Response(body, status=status, headers=headers)


def require_payment(
    price: Any,
    *,
    settlement: Settlement = "after",
    description: str | None = None,
    mime_type: str | None = None,
    assets: Asset | Sequence[Asset] | None = None,
    network: str | None = None,
    pay_to: str | Mapping[str, str] | None = None,
    max_timeout_seconds: int | None = None,
    verify_with_facilitator: bool | None = None,
    extensions: Mapping[str, Any] | None = None,
    payment_identifier: PaymentIdentifier = "optional",
    credit_topup: Any = None,
    gate: PaymentGate | None = None,
) -> Callable[[Callable[P, Any]], Callable[P, Response]]:
    """Charge ``price`` per call of the decorated view (sync or ``async``).

    The options are those of :meth:`~x402gate.gate.PaymentGate.route`. The app's gate (from
    :class:`X402Gate`) is used unless ``gate`` is given. In the view, the payment is
    :data:`current_payment` (also ``g.payment``). ``settlement="before"`` settles before the
    view runs: use it for streamed responses and irreversible side effects.
    """
    options: dict[str, Any] = {
        "settlement": settlement,
        "description": description,
        "mime_type": mime_type,
        "assets": assets,
        "network": network,
        "pay_to": pay_to,
        "max_timeout_seconds": max_timeout_seconds,
        "verify_with_facilitator": verify_with_facilitator,
        "extensions": extensions,
        "payment_identifier": payment_identifier,
        "credit_topup": credit_topup,
    }
    paid = _PaidView(price, gate, options)

    def decorator(view: Callable[P, Any]) -> Callable[P, Response]:
        @functools.wraps(view)
        def paid_view(*args: P.args, **kwargs: P.kwargs) -> Response:
            # ensure_sync runs an async view to completion (Flask's asgiref bridge) while the
            # payment flow stays on the gate's own loop.
            return paid.serve(current_app.ensure_sync(view), args, kwargs)

        setattr(paid_view, _MARK, paid)
        return paid_view

    return decorator


def _current_payment() -> Payment:
    session = g.get(_SESSION)
    if not isinstance(session, PaymentSession):
        raise RuntimeError("no x402 payment in this request: the view is not @require_payment")
    return session.payment


current_payment = cast(Payment, LocalProxy(_current_payment))
"""The payment of the current request (payer, amount, asset, transaction), in a paid view."""


def _credit() -> Response:
    code, document = _state().gate.credit_status_sync(Headers(request.headers.items()))
    response = jsonify(document)
    response.status_code = code
    response.headers["Cache-Control"] = "no-store"
    return response


def _discovery() -> Response:
    state = _state()
    by_gate: dict[int, tuple[PaymentGate, list[tuple[str, Route]]]] = {}
    for rule in current_app.url_map.iter_rules():
        paid = getattr(current_app.view_functions.get(rule.endpoint), _MARK, None)
        if not isinstance(paid, _PaidView):
            continue
        gate = paid.gate or state.gate
        methods = ",".join(sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))
        template = _RULE_PARAM.sub(r"{\1}", rule.rule)  # /items/<int:id> -> /items/{id}
        key = f"{methods} {template}"
        by_gate.setdefault(id(gate), (gate, []))[1].append((key, paid.route_for(gate)))
    base = base_url_of(
        request.environ, trust_proxy_headers=state.trust_proxy_headers, gate=state.gate
    )
    document = discovery_document(state.gate, [], base)
    for gate, items in by_gate.values():
        document["items"].extend(discovery_document(gate, items, base)["items"])
    response = jsonify(document)
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Access-Control-Allow-Origin"] = "*"  # public terms, meant for crawlers
    return response
