"""``@require_payment``: price one view, on function views, class-based views and DRF.

::

    @require_payment("$0.01")
    def weather(request): ...

    @api_view(["GET"])
    @require_payment("$0.05", description="A report")
    def report(request): ...                  # DRF: after authentication and permissions

    class Forecast(APIView):
        @require_payment("$0.02")
        def get(self, request): ...

    @method_decorator(require_payment("$0.02"), name="get")
    class Forecast(View): ...

The payment is started right before the view runs and settled by
:class:`~x402gate.django.middleware.PaymentMiddleware` once the response is complete,
so the middleware must be installed: without it a decorated view answers 500 and never runs for
free.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, Unpack, cast

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse

from .._web.common import route_refused
from .._web.decorators import paid_terms
from ..errors import ConfigurationError
from ..flow import Answer
from ..gate import Route
from ..options import RouteOptions
from .conf import PAID_VIEW_ATTR, PaidView
from .runner import (
    RequestState,
    answer_response,
    paid_flow,
    request_state,
    run_flow_async,
    run_flow_sync,
)

__all__ = ["PAID_VIEW_ATTR", "require_payment"]

V = TypeVar("V", bound=Callable[..., Any])


def _request_of(args: Sequence[Any]) -> tuple[Any, RequestState]:
    # Function views get (request, ...); methods get (self, request, ...).
    for arg in args[:2]:
        inner = getattr(arg, "_request", arg)
        if isinstance(inner, HttpRequest):
            state = request_state(arg)
            if state is None:
                break
            return arg, state
    raise ImproperlyConfigured(
        "@require_payment needs 'x402gate.django.PaymentMiddleware' in MIDDLEWARE"
    )


def require_payment(price: Any, **options: Unpack[RouteOptions]) -> Callable[[V], V]:
    """Charge ``price`` for every call of the decorated view (sync or async).

    ``price`` and the options are those of :meth:`x402gate.PaymentGate.route`: ``"$0.01"``,
    ``Decimal``, a strategy (``MatchRules``, ``ModelTable``), or a function of the
    :class:`~x402gate.RequestInfo`; a misspelt option raises
    :class:`~x402gate.errors.ConfigurationError` here, naming it. ``settlement="before"``
    settles before the view runs (for irreversible side effects); the default ``"after"``
    settles only if the view answered with a status below 400. The view finds the payment in
    ``request.payment``.
    """
    # A bad price or option fails at import time, not on the first paying customer.
    strategy, checked = paid_terms(price, options)
    paid = PaidView(strategy, {k: v for k, v in checked.items() if v is not None})

    def route_of(request: Any, state: RequestState, view: Any) -> Route | HttpResponse:
        try:
            route = state.runtime.route_for(paid)
        except ConfigurationError as exc:
            # Only for a view the start-up check could not see (a DRF view decorated below
            # @api_view): nothing is served, the problem is logged once.
            refused = route_refused(f"@require_payment view {view.__qualname__!r}", exc)
            return answer_response(Answer.from_error(refused, request.headers.get("accept")))
        # Logs and metrics label the route by its URL pattern, never by the request's path.
        match = getattr(request, "resolver_match", None)
        pattern = getattr(match, "route", None) or view.__qualname__
        state.runtime.gate.telemetry.name_route(route, "/" + str(pattern).lstrip("/"))
        return route

    def decorate(view: V) -> V:
        if isinstance(view, type):
            raise TypeError(
                "@require_payment decorates view functions and methods; for a class use "
                "method_decorator(require_payment(...), name='get')"
            )
        wrapper: Any
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                request, state = _request_of(args)
                route = route_of(request, state, view)
                if isinstance(route, HttpResponse):
                    return route
                flow = paid_flow(request, state, route)
                # Under WSGI an async view runs on a loop of its own: the gate must not.
                call = functools.partial(view, *args, **kwargs)
                return await run_flow_async(flow, call, offload=not state.async_mode)

        else:

            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                request, state = _request_of(args)
                route = route_of(request, state, view)
                if isinstance(route, HttpResponse):
                    return route
                flow = paid_flow(request, state, route)
                return run_flow_sync(flow, functools.partial(view, *args, **kwargs))

        setattr(wrapper, PAID_VIEW_ATTR, paid)
        return cast(V, wrapper)

    return decorate
