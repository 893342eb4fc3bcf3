"""The paid operations of a FastAPI app: found among its routes, checked at start-up, documented
in its OpenAPI schema and listed in its discovery document; the routes and error handler the
FastAPI adapter adds to an app.

Nothing here runs per request. Operations of included routers are listed through FastAPI's
``iter_route_contexts`` (what its own OpenAPI generator reads) when the installed FastAPI has it;
older versions copy every operation, with its routers' dependencies, into ``app.routes``.

Internal: nothing here is public API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.routing import Route as StarletteRoute

from ..discovery import CREDIT_PATH, WELL_KNOWN_PATH, discovery_document
from ..errors import ConfigurationError, PaymentError
from ..flow import Answer
from ..observability.metrics import scrape_answer
from ..request import Headers
from .asgi import FlowSlot, lifespan_with_checks, public_origin, run_with_slot, send_answer
from .openapi import document_paid_operation
from .types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi.dependencies.models import Dependant

    from ..gate import PaymentGate, Route

__all__ = [
    "SLOT",
    "Settings",
    "SettlementLayer",
    "add_routes_and_documents",
    "check_operations",
    "discovery_items",
    "document_operations",
    "endpoint_name",
    "first_dependency",
    "operation_key",
    "paid_operations",
]

_route_contexts: Callable[[Sequence[Any]], Iterable[Any]] = getattr(
    fastapi.routing, "iter_route_contexts", lambda routes: routes
)


def _find(dependant: Dependant, kind: type[Any]) -> Any:
    if isinstance(dependant.call, kind):
        return dependant.call
    return next(filter(None, (_find(d, kind) for d in dependant.dependencies)), None)


def paid_operations(routes: Sequence[Any], kind: type[Any]) -> Iterator[tuple[Any, Any]]:
    """The operations of ``routes`` (``app.routes``) that depend on an instance of ``kind``,
    with that dependency. Each operation has the dependencies of its routers and app, its
    ``path_format`` and ``methods``."""
    for route in _route_contexts(routes):
        if isinstance(getattr(route, "original_route", route), APIRoute) and route.dependant:
            dependency = _find(route.dependant, kind)
            if dependency is not None:
                yield route, dependency


def _calls(dependant: Dependant) -> Iterator[Any]:
    """The callables FastAPI calls to solve ``dependant``, in its order (each dependency's own
    dependencies before it)."""
    for sub in dependant.dependencies:
        yield from _calls(sub)
        if sub.call is not None:
            yield sub.call


def _reads_body(dependant: Dependant) -> bool:
    return bool(dependant.body_params) or any(map(_reads_body, dependant.dependencies))


_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


def first_dependency(app: FastAPI, scope: Scope) -> Any:
    """The dependency FastAPI would call first for ``scope`` when nothing but it can decide the
    answer of a request without body: the operation is a plain ``APIRoute`` of ``app.routes``
    (the first that fully matches, as the router picks it), its first dependency is not
    overridden, and it reads no body. ``None`` otherwise (then FastAPI handles the request).

    Only public API: ``Route.matches``, ``APIRoute.dependant``, ``app.dependency_overrides``."""
    for name, value in scope.get("headers", ()):
        if name in _BODY_HEADERS and value not in (b"0", b""):
            return None
    probe = dict(scope)  # some routes note things in the scope while they match
    for route in app.routes:
        match, _ = route.matches(probe)
        if match is Match.FULL:
            break
    else:
        return None
    # A subclass may act before its dependencies (its own route handler): not provable.
    if type(route) is not APIRoute:
        return None
    known = _first_calls.get(id(route))
    if known is None or known[0] is not route:
        first = None if _reads_body(route.dependant) else next(_calls(route.dependant), None)
        if len(_first_calls) >= 4096:  # routes of the apps in this process: few
            _first_calls.clear()
        known = _first_calls[id(route)] = (route, first)
    first = known[1]
    if first is None or first in app.dependency_overrides:
        return None
    return first


_first_calls: dict[int, tuple[Any, Any]] = {}
"""By route: the route, and its first dependency when it reads no body (else ``None``)."""


def endpoint_name(route: Any) -> str:
    """The qualified name of an operation's endpoint, for messages."""
    original = getattr(route, "original_route", route)
    endpoint = getattr(original, "endpoint", None)
    return str(getattr(endpoint, "__qualname__", None) or getattr(original, "name", "?"))


def operation_key(route: Any) -> str:
    """``"METHOD /template"`` of an operation, as route tables and discovery name it."""
    methods = sorted((route.methods or set()) - {"HEAD"}) or ["GET"]
    return f"{','.join(methods)} {route.path_format}"


def _paid(
    app: FastAPI, gate: PaymentGate, kind: type[Any]
) -> Iterator[tuple[Any, PaymentGate, Route]]:
    for route, dependency in paid_operations(app.routes, kind):
        paying = dependency.gate or gate  # an operation may be paid through a gate of its own
        yield route, paying, dependency.route_for(paying)


def check_operations(app: FastAPI, gate: PaymentGate, kind: type[Any]) -> list[PaymentGate]:
    """Build the route of every paid operation on the gate it charges through (a route option
    that gate refuses raises :class:`ConfigurationError` naming the operation); the gates."""
    gates = {id(gate): gate}
    for route, dependency in paid_operations(app.routes, kind):
        paying = dependency.gate or gate
        try:
            dependency.route_for(paying)
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"require_payment() on {operation_key(route)} ({endpoint_name(route)}): {exc}"
            ) from exc
        gates.setdefault(id(paying), paying)
    return list(gates.values())


def document_operations(
    schema: dict[str, Any], app: FastAPI, gate: PaymentGate, kind: type[Any]
) -> None:
    """Add the payment terms of every paid operation to the app's OpenAPI ``schema``."""
    for route, paying, paid in _paid(app, gate, kind):
        operations = schema.get("paths", {}).get(route.path_format, {})
        for method in route.methods or ():
            operation = operations.get(method.lower())
            if operation is not None:  # None: left out of the schema
                document_paid_operation(operation, paying, operation_key(route), paid)


def discovery_items(
    app: FastAPI, gate: PaymentGate, kind: type[Any], origin: str
) -> dict[str, Any]:
    """The discovery document of the app's paid operations, under ``origin``."""
    document = discovery_document(gate, [], origin)
    for route, paying, paid in _paid(app, gate, kind):
        entry = discovery_document(paying, [(operation_key(route), paid)], origin)
        document["items"] += entry["items"]
    return document


async def _payment_error(request: Request, exc: Exception) -> Response:
    # Rendered inside the app, so CORS and other user middleware decorate the 402 too.
    assert isinstance(exc, PaymentError)
    answer = Answer.from_error(exc, request.headers.get("accept"))
    return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))


def add_routes_and_documents(
    app: FastAPI, gate: PaymentGate, kind: type[Any], trust_proxy_headers: bool, discovery: bool
) -> None:
    """Render payment answers, document the paid operations (dependencies of type ``kind``) in
    the OpenAPI schema, serve ``GET /.well-known/x402`` (with ``discovery``) and the credit
    balance."""
    app.add_exception_handler(PaymentError, _payment_error)
    generate = app.openapi
    documented: list[Any] = [None]

    def openapi() -> dict[str, Any]:
        schema = generate()
        if schema is not documented[0]:  # FastAPI caches the schema until routes change
            document_operations(schema, app, gate, kind)
            documented[0] = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    if discovery:

        async def well_known(request: Request) -> Response:
            # Operation paths are relative to the app, which may be served under a prefix.
            origin = public_origin(
                request.scope, trust_proxy_headers=trust_proxy_headers, gate=gate
            )
            origin += request.scope.get("root_path", "")
            return JSONResponse(discovery_items(app, gate, kind, origin))

        # A plain Starlette route: app-level payment dependencies must not apply to it.
        app.router.add_route(WELL_KNOWN_PATH, well_known, methods=["GET"], include_in_schema=False)

    async def credit(request: Request) -> Response:
        code, document = await gate.credit_status(request.headers)
        return JSONResponse(document, status_code=code, headers={"Cache-Control": "no-store"})

    app.router.add_route(CREDIT_PATH, credit, methods=["GET"], include_in_schema=False)
    if gate.dashboard is not None:
        # A raw ASGI endpoint: the app's payment dependencies never apply to it.
        endpoint = _DashboardEndpoint(gate)
        app.router.routes.append(
            StarletteRoute(
                gate.dashboard.path,
                endpoint,
                methods=["GET", "HEAD", "POST"],
                include_in_schema=False,
            )
        )


class _DashboardEndpoint:
    """The gate's dashboard as an ASGI endpoint of the app."""

    def __init__(self, gate: PaymentGate) -> None:
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from ..dashboard.web import serve_asgi

        await serve_asgi(self.gate, scope, receive, send)


SLOT = "x402gate.fastapi"
"""The scope key of the per-request :class:`~x402gate._web.asgi.FlowSlot`."""


@dataclass(slots=True)
class Settings:
    """What :func:`x402gate.fastapi.install` was given; ``kind`` is the payment dependency's
    class."""

    gate: PaymentGate
    trust_proxy_headers: bool
    max_body_bytes: int
    app: Any
    kind: type[Any]


class SettlementLayer:
    """Pure ASGI: the endpoint's answer goes through the payment flow its dependency began."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        # Innermost of the app's own middleware: no middleware of the app runs after this layer
        # (one added before install() would), so it may answer an unpaid request itself.
        self.direct = isinstance(app, ExceptionMiddleware)

    async def check_startup(self) -> None:
        """The route of every paid operation, built on the gate it charges through (a route
        option that gate refuses stops the start, naming the operation), then the start-up
        checks of the app's gate and of every gate a paid operation names."""
        settings = self.settings
        gates = [settings.gate]
        if settings.app is not None:
            gates = check_operations(settings.app, settings.gate, settings.kind)
        for gate in gates:
            await gate.check_startup()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan_with_checks(self.app, scope, receive, send, self.check_startup)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gate = self.settings.gate
        if gate.telemetry.metrics is not None:
            headers = Headers.from_asgi(scope.get("headers", ()))
            authorization = headers.get("authorization")
            scrape = scrape_answer(gate, scope["method"], scope["path"], authorization)
            if scrape is not None:
                await send_answer(send, scrape)
                return
        if self.direct and self.settings.app is not None:
            # Unpaid, on a route whose payment dependency FastAPI would call first: the gate's
            # cached 402 without routing and dependency resolution, which cost more than it.
            dependency = first_dependency(self.settings.app, scope)
            if isinstance(dependency, self.settings.kind):
                answer = dependency.challenge(scope, self.settings)
                if answer is not None:
                    await send_answer(send, answer)
                    return
        scope[SLOT] = slot = FlowSlot(self.settings)
        await run_with_slot(self.app, scope, receive, send, slot)
