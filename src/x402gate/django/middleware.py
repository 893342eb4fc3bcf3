"""Django middleware: charge for the ``ROUTES`` of ``settings.X402GATE`` and settle paid views.

::

    MIDDLEWARE = [..., "x402gate.django.PaymentMiddleware"]

The payment of a paid request is one flow, written once as a generator (:func:`paid_flow`,
:func:`middleware_flow`) and driven by a sync runner under WSGI and an async one under ASGI, like
httpx's auth flows. A ``ROUTES`` entry is charged here; a ``@require_payment`` view starts its
payment in its decorator, right before the view (after DRF authentication and permissions), and
this middleware settles it. Settlement happens after the view returned and before the response
leaves the middleware, so no byte of content is sent unpaid: a ``StreamingHttpResponse`` produces
its content only later, when the server iterates it. When settlement fails the client gets the
gate's answer (402/502/503) and the view's response is closed unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.http.request import RawPostDataException

from .._runner import run_sync
from .._web.common import (
    AsyncMeteredBody,
    MeteredBody,
    meter_body,
    paid_response_headers,
    render_error,
)
from ..discovery import CREDIT_PATH, WELL_KNOWN_PATH, discovery_document
from ..errors import PaymentError
from ..gate import PaymentSession, Route
from ..proxies import TrustedProxies
from ..request import RequestInfo
from ..siwx import split_url
from .conf import Runtime, check_at_startup, get_runtime

__all__ = [
    "CALL",
    "PaymentMiddleware",
    "RequestState",
    "error_response",
    "middleware_flow",
    "paid_flow",
    "request_info",
    "request_state",
    "run_flow_async",
    "run_flow_sync",
]

CALL: Any = object()
"""A flow step: call the next handler (``get_response`` or the view) and send back its result."""

Flow = Generator[Any, Any, HttpResponseBase]
"""Yields gate coroutines or :data:`CALL`; returns the response to send."""

_STATE_ATTR = "_x402gate"


class RequestState:
    """Per-request payment state, kept on the ``HttpRequest`` between middleware and view."""

    __slots__ = ("async_mode", "runtime", "session")

    def __init__(self, runtime: Runtime, async_mode: bool) -> None:
        self.runtime = runtime
        self.async_mode = async_mode
        self.session: PaymentSession | None = None


def run_flow_sync(flow: Flow, call: Callable[[], Any]) -> HttpResponseBase:
    """Drive ``flow`` from sync code: gate coroutines run on x402gate's background loop."""
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
            value = call() if step is CALL else run_sync(step)
        except BaseException as exc:
            error = exc


async def run_flow_async(
    flow: Flow, call: Callable[[], Awaitable[Any]], *, offload: bool = False
) -> HttpResponseBase:
    """Drive ``flow`` from async code. ``offload`` runs the gate on the background loop instead
    of this one (an async view under WSGI runs on a loop that lives for one request only)."""
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
                value = await asyncio.to_thread(run_sync, step)
            else:
                value = await step
        except BaseException as exc:
            error = exc


def _http_request(request: Any) -> HttpRequest:
    # A DRF Request wraps the HttpRequest; attributes are written to the HttpRequest, where
    # both views and the middleware see them.
    inner = getattr(request, "_request", request)
    return inner if isinstance(inner, HttpRequest) else request


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


def error_response(exc: PaymentError, request: HttpRequest) -> HttpResponse:
    """The gate's answer as a Django response (HTML for browsers, JSON otherwise)."""
    status, headers, body = render_error(exc, request.headers.get("accept"))
    response = HttpResponse(body, status=status)
    for name, value in headers:
        response[name] = value
    return response


def _guarded_call(state: RequestState) -> Flow:
    try:
        response: HttpResponseBase = yield CALL
    except BaseException:
        # The view raised (or the request was cancelled): charge nothing, then re-raise.
        session = state.session
        if session is not None and not session.done:
            yield state.runtime.gate.abort(session)
        raise
    return response


def paid_flow(request: Any, state: RequestState, route: Route) -> Flow:
    """Start the payment (402 when there is none), then call the view; the middleware settles."""
    if state.session is not None:
        # Already charged for this request (a ROUTES entry in front of a decorated view).
        return (yield from _guarded_call(state))
    http = _http_request(request)
    try:
        gate = state.runtime.gate
        state.session = yield gate.begin(route, request_info(http, gate.trusted_proxies))
    except PaymentError as exc:
        return error_response(exc, http)
    http.payment = state.session.payment
    return (yield from _guarded_call(state))


def middleware_flow(request: HttpRequest, state: RequestState) -> Flow:
    """One request through the middleware: discovery, ``ROUTES``, then settlement."""
    runtime = state.runtime
    if (
        runtime.discovery
        and request.path_info == WELL_KNOWN_PATH
        and request.method in ("GET", "HEAD")
    ):
        return _discovery_response(request, runtime)
    if request.path_info == CREDIT_PATH and request.method == "GET":
        code, document = yield runtime.gate.credit_status(request.headers)
        answer = JsonResponse(document, status=code)
        answer["Cache-Control"] = "no-store"
        return answer
    route = runtime.match(request)
    if route is not None:
        response = yield from paid_flow(request, state, route)
    else:
        response = yield from _guarded_call(state)
    session = state.session
    if session is None:
        return response
    status = response.status_code
    try:
        extra = yield runtime.gate.finish(
            session, status, recording=session.idempotency is not None
        )
    except PaymentError as exc:
        _discard(response)
        return error_response(exc, request)
    if extra or status < 400:
        for name, value in paid_response_headers(response.items(), extra):
            response[name] = value
    if session.reservation is not None:
        # Metered route: charge what the answer reports it used (tokens) or took (seconds).
        content_type = response.get("Content-Type")
        if not response.streaming:
            usage = meter_body(bytes(response.content), content_type)
            yield runtime.gate.complete(session, usage)
        elif getattr(response, "is_async", False):
            response.streaming_content = AsyncMeteredBody(
                response.streaming_content,
                content_type,
                lambda usage: runtime.gate.complete(session, usage),
                overdue=runtime.gate.overdue_check(session),
            )
        else:
            response.streaming_content = MeteredBody(
                response.streaming_content,
                content_type,
                lambda usage: runtime.gate.complete_sync(session, usage),
                overdue=runtime.gate.overdue_check(session),
            )
    if session.idempotency is not None:
        # Kept for retries with the same payment identifier; a stream cannot be replayed.
        body = None if response.streaming else bytes(response.content)
        yield runtime.gate.record(session, status, list(response.items()), body)
    # Handed back to Django whole: a retry of the payment is a replay from now on.
    yield runtime.gate.delivered(session)
    return response


def _discard(response: HttpResponseBase) -> None:
    """Release a response that will never be sent: a stream's iterator is closed unconsumed."""
    closers = getattr(response, "_resource_closers", None)
    if closers is None:
        response.close()
        return
    # Not response.close(): that also sends request_finished, which belongs to the response
    # actually sent, once.
    for closer in closers:
        with contextlib.suppress(Exception):
            closer()
    closers.clear()


def _discovery_response(request: HttpRequest, runtime: Runtime) -> HttpResponse:
    from .discovery import discoverable_routes

    script_name = request.path[: len(request.path) - len(request.path_info)]
    # The configured public origin, when there is one: not what the request's Host says.
    origin = runtime.gate.public_url(RequestInfo("GET", "/", url=request.build_absolute_uri("/")))
    base = split_url(origin)[0] + script_name
    routes = discoverable_routes(runtime, getattr(request, "urlconf", None))
    return JsonResponse(discovery_document(runtime.gate, routes, base))


def _attach_state(request: HttpRequest, async_mode: bool) -> RequestState:
    state = RequestState(get_runtime(), async_mode)
    setattr(request, _STATE_ATTR, state)
    request.payment = None
    return state


def request_state(request: Any) -> RequestState | None:
    """The payment state of a request that went through :class:`PaymentMiddleware`."""
    state: RequestState | None = getattr(_http_request(request), _STATE_ATTR, None)
    return state


class PaymentMiddleware:
    """Charges for ``X402GATE["ROUTES"]`` and settles every paid view, under WSGI and ASGI.

    Sets ``request.payment`` (an :class:`x402gate.Payment`, or ``None`` on free requests).
    Place it after ``SecurityMiddleware``, ``CommonMiddleware`` and the CORS middleware, so
    redirects and CORS preflights are answered first, and free.

    Django builds it when the WSGI/ASGI handler is made, before the first request: that is
    when :func:`~x402gate.django.conf.check_at_startup` runs, and a failure stops
    the start with :class:`~django.core.exceptions.ImproperlyConfigured`.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        check_at_startup()
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            # Django then awaits this instance instead of running it in a thread.
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        state = _attach_state(request, async_mode=False)
        call = functools.partial(self.get_response, request)
        return run_flow_sync(middleware_flow(request, state), call)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        state = _attach_state(request, async_mode=True)
        call = functools.partial(self.get_response, request)
        return await run_flow_async(middleware_flow(request, state), call)
