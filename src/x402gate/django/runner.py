"""The payment of one Django request as a generator, and the sync and async runners that drive
it (the idea of httpx's auth flows): the same steps serve WSGI, ASGI and async views under WSGI.

A flow generator yields :data:`CALL` (call the next handler: ``get_response`` or the view) or a
:class:`Step` (a step of the request's :class:`~x402gate.flow.PaymentFlow`, with its async
method and its sync twin) and returns the response to send. The sync runner calls the twin,
which stays in the request's thread wherever the work is synchronous; the async runner awaits
the method. :class:`RequestState`, kept on the ``HttpRequest``, carries the flow from the
middleware to a ``@require_payment`` view and back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.http.request import RawPostDataException

from ..flow import Answer, PaymentFlow
from ..gate import Route
from ..proxies import TrustedProxies
from ..request import RequestInfo
from .conf import Runtime, get_runtime

__all__ = [
    "CALL",
    "RequestState",
    "Step",
    "answer_response",
    "attach_state",
    "guarded_call",
    "paid_flow",
    "request_info",
    "request_state",
    "run_flow_async",
    "run_flow_sync",
]

CALL: Any = object()
"""A flow step: call the next handler (``get_response`` or the view) and send back its result."""

Flow = Generator[Any, Any, HttpResponseBase]
"""Yields :class:`Step` or :data:`CALL`; returns the response to send."""

_STATE_ATTR = "_x402gate"


@dataclass(frozen=True, slots=True)
class Step:
    """A step with async work: ``run(*args)`` from async code, ``run_sync(*args)`` from sync."""

    run: Callable[..., Awaitable[Any]]
    run_sync: Callable[..., Any]
    args: tuple[Any, ...] = ()


class RequestState:
    """Per-request payment state, kept on the ``HttpRequest`` between middleware and view."""

    __slots__ = ("async_mode", "flow", "runtime")

    def __init__(self, runtime: Runtime, async_mode: bool) -> None:
        self.runtime = runtime
        self.async_mode = async_mode
        self.flow: PaymentFlow | None = None


def run_flow_sync(flow: Flow, call: Callable[[], Any]) -> HttpResponseBase:
    """Drive ``flow`` from sync code: each step's sync twin, in this thread."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as done:
            response: HttpResponseBase = done.value
            return response
        value, error = None, None
        try:
            value = call() if step is CALL else step.run_sync(*step.args)
        except BaseException as exc:
            error = exc


async def run_flow_async(
    flow: Flow, call: Callable[[], Awaitable[Any]], *, offload: bool = False
) -> HttpResponseBase:
    """Drive ``flow`` from async code. ``offload`` runs the steps' sync twins in a thread
    instead (an async view under WSGI runs on a loop that lives for one request only, where
    the gate must not run)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.throw(error) if error is not None else flow.send(value)
        except StopIteration as done:
            response: HttpResponseBase = done.value
            return response
        value, error = None, None
        try:
            if step is CALL:
                value = await call()
            elif offload:
                value = await asyncio.to_thread(step.run_sync, *step.args)
            else:
                value = await step.run(*step.args)
        except BaseException as exc:
            error = exc


def _http_request(request: Any) -> HttpRequest:
    # A DRF Request wraps the HttpRequest; attributes are written to the HttpRequest, where
    # both views and the middleware see them.
    inner = getattr(request, "_request", request)
    return inner if isinstance(inner, HttpRequest) else request


def attach_state(request: HttpRequest, async_mode: bool) -> RequestState:
    """Start the payment state of a request entering the middleware."""
    state = RequestState(get_runtime(), async_mode)
    setattr(request, _STATE_ATTR, state)
    request.payment = None
    return state


def request_state(request: Any) -> RequestState | None:
    """The payment state of a request that went through the middleware."""
    state: RequestState | None = getattr(_http_request(request), _STATE_ATTR, None)
    return state


def request_info(request: HttpRequest, proxies: TrustedProxies | None = None) -> RequestInfo:
    """The neutral request for pricing. The resource URL comes from ``build_absolute_uri``, so
    Django's own proxy settings (``USE_X_FORWARDED_HOST``, ``SECURE_PROXY_SSL_HEADER``) and
    ``ALLOWED_HOSTS`` decide which host and scheme are trusted (the gate's ``public_origin``
    replaces them where it is set). ``proxies`` (the gate's ``trusted_proxies``) decide the
    client address."""
    body = b""
    # Uploads are not pulled into memory for pricing: prices never see multipart bodies.
    if not request.META.get("CONTENT_TYPE", "").startswith("multipart/"):
        try:
            body = request.body
        except RawPostDataException:  # something read the stream already (a DRF parser)
            body = b""
    return RequestInfo(
        request.method or "GET",
        request.path_info,
        query_string=request.META.get("QUERY_STRING", ""),
        headers=request.headers,
        body=body,
        url=request.build_absolute_uri(),
        native=request,
        client=(proxies or TrustedProxies()).client_address(
            request.META.get("REMOTE_ADDR") or None, request.META.get("HTTP_X_FORWARDED_FOR")
        ),
    )


def answer_response(answer: Answer) -> HttpResponse:
    """The gate's answer (402, 400, 409, 503...) as a Django response."""
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response


def guarded_call(state: RequestState) -> Flow:
    """Call the next handler; when it raises (or the request is cancelled) the flow is closed,
    so nothing is charged, and the error goes on."""
    try:
        response: HttpResponseBase = yield CALL
    except BaseException:
        flow, state.flow = state.flow, None
        if flow is not None:
            yield Step(flow.close, flow.close_sync)
        raise
    return response


def paid_flow(request: Any, state: RequestState, route: Route) -> Flow:
    """Start the payment (402 when there is none), then call the view; the middleware settles."""
    if state.flow is not None:
        # Already charged for this request (a ROUTES entry in front of a decorated view).
        return (yield from guarded_call(state))
    http = _http_request(request)
    gate = state.runtime.gate
    flow = PaymentFlow(gate, route, request_info(http, gate.trusted_proxies))
    # The cached challenge needs no step: an unpaid request is answered right here.
    answer = flow.challenge()
    if answer is None:
        answer = yield Step(flow.begin, flow.begin_sync)
    if answer is not None:
        return answer_response(answer)
    state.flow = flow
    http.payment = flow.payment
    return (yield from guarded_call(state))
