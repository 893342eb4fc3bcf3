"""Django middleware: charge for the ``ROUTES`` of ``settings.X402GATE`` and settle paid views.

::

    MIDDLEWARE = [..., "x402gate.django.PaymentMiddleware"]

Each paid request is one :class:`~x402gate.flow.PaymentFlow`, driven through a flow generator
(:mod:`x402gate.django.runner`) by a sync runner under WSGI and an async one under ASGI. A
``ROUTES`` entry is charged here; a ``@require_payment`` view starts its payment in its
decorator, right before the view (after DRF authentication and permissions), and this
middleware settles it. Settlement happens after the view returned and before the response
leaves the middleware, so no byte of content is sent unpaid: a ``StreamingHttpResponse``
produces its content only later, when the server iterates it. When settlement fails the client
gets the gate's answer (402/502/503) and the view's response is closed unsent.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse

from .._web.body import AsyncFlowBody, FlowBody, whole_body
from ..discovery import CREDIT_PATH, WELL_KNOWN_PATH, discovery_document
from ..flow import Answer
from ..observability.metrics import scrape_answer
from ..request import RequestInfo
from ..siwx import split_url
from .conf import Runtime
from .discovery import check_at_startup, discoverable_routes
from .runner import (
    Flow,
    RequestState,
    Step,
    answer_response,
    attach_state,
    guarded_call,
    paid_flow,
    run_flow_async,
    run_flow_sync,
)

__all__ = ["PaymentMiddleware", "middleware_flow"]


def middleware_flow(request: HttpRequest, state: RequestState) -> Flow:
    """One request through the middleware: discovery, ``ROUTES``, then settlement."""
    runtime = state.runtime
    gate = runtime.gate
    path, method = request.path_info, request.method
    if gate.telemetry.metrics is not None:
        auth = request.headers.get("authorization")
        scrape = scrape_answer(gate, str(method), path, auth)
        if scrape is not None:
            return answer_response(scrape)
    if runtime.discovery and path == WELL_KNOWN_PATH and method in ("GET", "HEAD"):
        return _discovery_response(request, runtime)
    if gate.dashboard is not None and gate.dashboard.matches(path):
        return (yield from _dashboard_response(request, state))  # never charged
    if path == CREDIT_PATH and method == "GET":
        code, document = yield Step(gate.credit_status, gate.credit_status_sync, (request.headers,))
        answer = JsonResponse(document, status=code)
        answer["Cache-Control"] = "no-store"
        return answer
    route = runtime.match(request)
    if route is not None:
        response = yield from paid_flow(request, state, route)
    else:
        response = yield from guarded_call(state)
    flow = state.flow
    if flow is None:
        return response
    try:
        headers = list(response.items())
        # Metered and paid by a channel voucher: measured whole before the headers go out.
        whole = None
        if not response.streaming and flow.holds_answer(headers):
            whole = bytes(response.content)
        start = yield Step(
            flow.response_start, flow.response_start_sync, (response.status_code, headers, whole)
        )
        if isinstance(start, Answer):
            _discard(response)
            return answer_response(start)
        for name, value in start:
            response[name] = value
        if response.streaming:
            # The flow follows the server as it pulls the body, and ends when it is done.
            if getattr(response, "is_async", False):
                offload = not state.async_mode  # served from a loop of its own under WSGI
                content: Any = AsyncFlowBody(response.streaming_content, flow, offload=offload)
            else:
                content = FlowBody(response.streaming_content, flow)
            response.streaming_content = content
            state.flow = None  # the body closes it
            return response
        body = bytes(response.content)
        sent = whole_body(flow, body)
        if sent is not body:
            response.content = sent
            if response.has_header("Content-Length"):
                response["Content-Length"] = str(len(sent))
        # Handed back to Django whole: a retry of the payment is a replay from now on.
        yield Step(flow.sent, flow.sent_sync, (sent, True))
        return response
    finally:
        if state.flow is not None:
            state.flow = None
            yield Step(flow.close, flow.close_sync)


def _dashboard_response(request: HttpRequest, state: RequestState) -> Flow:
    """The gate's dashboard (:mod:`x402gate.dashboard`), read off the loop under ASGI."""
    from ..dashboard import MAX_FORM_BYTES, DashboardAnswer, DashboardRequest
    from ..dashboard.web import too_large

    gate = state.runtime.gate
    dashboard = gate.dashboard
    assert dashboard is not None
    method = (request.method or "GET").upper()
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0) if method == "POST" else 0
    except ValueError:
        length = -1
    answer: DashboardAnswer
    if not 0 <= length <= MAX_FORM_BYTES:
        answer = too_large()
    else:
        dashboard_request = DashboardRequest(
            method=method,
            query=request.META.get("QUERY_STRING", ""),
            headers=request.headers,
            body=request.body if length else b"",
            https=request.is_secure(),
        )
        answer = yield Step(
            dashboard.handle_async, dashboard.handle, (dashboard_request, gate.store)
        )
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
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
    script_name = request.path[: len(request.path) - len(request.path_info)]
    # The configured public origin, when there is one: not what the request's Host says.
    origin = runtime.gate.public_url(RequestInfo("GET", "/", url=request.build_absolute_uri("/")))
    base = split_url(origin)[0] + script_name
    routes = discoverable_routes(runtime, getattr(request, "urlconf", None))
    return JsonResponse(discovery_document(runtime.gate, routes, base))


class PaymentMiddleware:
    """Charges for ``X402GATE["ROUTES"]`` and settles every paid view, under WSGI and ASGI.

    Sets ``request.payment`` (an :class:`x402gate.Payment`, or ``None`` on free requests).
    Place it after ``SecurityMiddleware``, ``CommonMiddleware`` and the CORS middleware, so
    redirects and CORS preflights are answered first, and free.

    Django builds it when the WSGI/ASGI handler is made, before the first request: that is
    when :func:`~x402gate.django.discovery.check_at_startup` runs, and a failure stops the
    start with :class:`~django.core.exceptions.ImproperlyConfigured`.
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
        state = attach_state(request, async_mode=False)
        call = functools.partial(self.get_response, request)
        return run_flow_sync(middleware_flow(request, state), call)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        state = attach_state(request, async_mode=True)
        call = functools.partial(self.get_response, request)
        return await run_flow_async(middleware_flow(request, state), call)
