"""Paid Flask views: ``require_payment`` and ``current_payment``.

Each call of a paid view is one :class:`~x402gate.flow.PaymentFlow`: begun before the view,
its response started once the view has answered (settlement, receipt headers) and its body
driven as werkzeug sends it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, Unpack, cast
from weakref import WeakKeyDictionary

from flask import Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.local import LocalProxy

from .._web.body import FlowBody, closing, whole_body
from .._web.common import route_refused
from .._web.decorators import paid_terms
from .._web.wsgi import DEFAULT_MAX_BODY, PAYMENT_ENVIRON_KEY, request_info_from_environ
from ..errors import ConfigurationError, PaymentError
from ..flow import Answer, PaymentFlow
from ..gate import Payment, PaymentGate, Route
from ..options import RouteOptions
from ..request import RequestInfo

__all__ = [
    "EXTENSION_KEY",
    "MARK",
    "GateState",
    "PaidView",
    "current_payment",
    "gate_state",
    "require_payment",
]

P = ParamSpec("P")
EXTENSION_KEY = "x402gate"
"""The key of :class:`GateState` in ``app.extensions``."""
MARK = "__x402gate__"
"""The attribute of a paid view that holds its :class:`PaidView`."""
_FLOW = "_x402gate_flow"


@dataclass(frozen=True, slots=True)
class GateState:
    """What :meth:`X402Gate.init_app` keeps in ``app.extensions["x402gate"]``."""

    gate: PaymentGate
    trust_proxy_headers: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY


def gate_state() -> GateState:
    """The :class:`GateState` of the current app (500 when the extension is missing)."""
    state = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, GateState):
        raise ConfigurationError("x402gate is not set up on this app: call X402Gate(app)")
    return state


class PaidView:
    """The payment terms of one decorated view; its Route is built once per gate."""

    def __init__(self, price: Any, gate: PaymentGate | None, options: RouteOptions) -> None:
        self.price, self.options = paid_terms(price, options)
        self.gate = gate
        self._routes: WeakKeyDictionary[PaymentGate, Route] = WeakKeyDictionary()
        if gate is not None:
            self.route_for(gate)

    def route_for(self, gate: PaymentGate) -> Route:
        route = self._routes.get(gate)
        if route is None:
            route = self._routes[gate] = gate.route(self.price, **self.options)
        return route

    def serve(self, view: Callable[..., Any], args: Any, kwargs: Any) -> Response:
        if g.get(_FLOW) is not None or request.environ.get(PAYMENT_ENVIRON_KEY) is not None:
            # A paid view inside a paid view (decorated twice, or calling another), or one
            # that X402GATE_ROUTES charges already: the outermost one charges, once.
            return current_app.make_response(view(*args, **kwargs))
        found = current_app.extensions.get(EXTENSION_KEY)
        # An explicit gate needs no extension; otherwise a missing one fails closed (500).
        state = GateState(self.gate) if self.gate and not found else gate_state()
        gate = self.gate or state.gate
        accept = request.headers.get("Accept")
        try:
            route = self.route_for(gate)
        except ConfigurationError as exc:  # only when init_app could not see the view
            return _error(route_refused(f"@require_payment view {request.endpoint!r}", exc), accept)
        # Logs and metrics label the route by its URL rule, never by the request's path.
        rule = request.url_rule
        gate.telemetry.name_route(route, rule.rule if rule is not None else str(request.endpoint))
        try:
            flow = PaymentFlow(gate, route, _request_info(state, gate))
        except PaymentError as exc:
            return _error(exc, accept)
        answer = flow.begin_sync()
        if answer is not None:
            return _answer(answer)
        setattr(g, _FLOW, flow)
        g.payment = flow.payment
        try:
            response = current_app.make_response(view(*args, **kwargs))
            headers = list(response.headers.items())
            # Metered and paid by a channel voucher: measured whole before the headers go out.
            whole = None
            if not response.is_streamed and flow.holds_answer(headers):
                whole = response.get_data()
            start = flow.response_start_sync(response.status_code, headers, whole)
        except BaseException:
            flow.close_sync()  # the view failed: nothing is charged
            raise
        if isinstance(start, Answer):
            response.close()  # a generator body is closed before it ever ran
            flow.close_sync()
            return _answer(start)
        response.headers.clear()
        response.headers.extend(start)
        if response.is_streamed:
            # The flow follows the server as it pulls the body, and ends when it closes it.
            response.response = FlowBody(closing(response.iter_encoded(), response.response), flow)
            return response
        data = response.get_data()
        sent = whole_body(flow, data)
        if sent is not data:
            response.set_data(sent)

        def delivered() -> None:
            # The server closes the answer once it has written it: a retry is a replay now.
            try:
                flow.sent_sync(sent, True)
            finally:
                flow.close_sync()

        response.call_on_close(delivered)
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
    return _answer(Answer.from_error(exc, accept))


def _answer(answer: Answer) -> Response:
    return Response(answer.body, status=answer.status, headers=answer.headers)


def require_payment(
    price: Any, *, gate: PaymentGate | None = None, **options: Unpack[RouteOptions]
) -> Callable[[Callable[P, Any]], Callable[P, Response]]:
    """Charge ``price`` per call of the decorated view (sync or ``async``).

    The options are those of :meth:`~x402gate.gate.PaymentGate.route`; a misspelt one raises
    :class:`~x402gate.errors.ConfigurationError` here, naming it. The app's gate (from
    :class:`X402Gate`) is used unless ``gate`` is given. In the view, the payment is
    :data:`current_payment` (also ``g.payment``). ``settlement="before"`` settles before the
    view runs: use it for streamed responses and irreversible side effects.
    """
    paid = PaidView(price, gate, options)

    def decorator(view: Callable[P, Any]) -> Callable[P, Response]:
        @functools.wraps(view)
        def paid_view(*args: P.args, **kwargs: P.kwargs) -> Response:
            # ensure_sync runs an async view to completion (Flask's asgiref bridge) while the
            # payment flow stays on the gate's own loop.
            return paid.serve(current_app.ensure_sync(view), args, kwargs)

        setattr(paid_view, MARK, paid)
        return paid_view

    return decorator


def _current_payment() -> Payment:
    flow = g.get(_FLOW)
    payment = flow.payment if isinstance(flow, PaymentFlow) else None
    if payment is None and request:  # charged by X402GATE_ROUTES, in front of the app
        payment = request.environ.get(PAYMENT_ENVIRON_KEY)
    if payment is None:
        raise RuntimeError("no x402 payment in this request: the view is not @require_payment")
    return payment


current_payment = cast(Payment, LocalProxy(_current_payment))
"""The payment of the current request (payer, amount, asset, transaction), in a paid view."""
