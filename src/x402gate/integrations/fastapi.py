"""FastAPI: a paid route is a dependency; settlement is a pure ASGI layer installed once per app.

::

    app = FastAPI()
    install(app, gate)

    @app.get("/weather")
    async def weather(payment: Annotated[Payment, Depends(require_payment("$0.01"))]) -> dict:
        return {"forecast": "sunny", "paid_by": payment.payer}

FastAPI offers no point between the endpoint's return and the first byte sent where a dependency
could act on the status: a ``yield`` dependency exits either before the response exists (scope
``"function"``) or after it was sent (the default). So :class:`RequirePayment` only begins (price,
verify, claim; settles too with policy ``before``) and leaves the session in a per-request slot
that :func:`install`'s layer put in the scope. That layer wraps ``send`` with
:func:`~x402gate.integrations.asgi.settling_send`: ``http.response.start`` is held until the
payment is settled (policy ``after``, status < 400), and a failed settlement answers the 402 with
none of the endpoint's content. Without the layer, the dependency refuses to serve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, get_args

try:
    import fastapi.routing
    from fastapi import FastAPI, Request
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute
    from starlette.responses import JSONResponse, Response
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "x402gate's FastAPI integration needs FastAPI: pip install 'x402gate[fastapi]'"
    ) from exc

from ..discovery import CREDIT_PATH, WELL_KNOWN_PATH, discovery_document
from ..errors import ConfigurationError, PaymentError
from ..gate import Payment, PaymentGate, PaymentSession, Route, Settlement
from ..pricing import as_strategy
from ..request import Headers
from ._common import render_error
from ._openapi import document_paid_operation
from ._types import ASGIApp, Message, Receive, Scope, Send
from .asgi import (
    DEFAULT_MAX_BODY,
    finish_recording,
    public_origin,
    request_info_from_scope,
    settling_send,
)

__all__ = ["Payment", "RequirePayment", "install", "paid_operations", "require_payment"]

_SLOT = "x402gate.fastapi"

# FastAPI 0.16x resolves included routers lazily and gives each operation a context; older
# versions copy every APIRoute, with its routers' dependencies, into app.routes.
_route_contexts: Callable[[Sequence[Any]], Iterable[Any]] = getattr(
    fastapi.routing, "iter_route_contexts", lambda routes: routes
)


@dataclass(frozen=True, slots=True)
class _Settings:
    gate: PaymentGate
    trust_proxy_headers: bool
    max_body_bytes: int


@dataclass(slots=True)
class _Slot:
    """One request's link from the dependency (which begins) to the layer (which settles)."""

    settings: _Settings
    begun: tuple[PaymentGate, PaymentSession] | None = None


class _SettlementLayer:
    """Pure ASGI: settle the payment of a request while its response start is held."""

    def __init__(self, app: ASGIApp, settings: _Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot = scope[_SLOT] = _Slot(self.settings)
        accept = Headers.from_asgi(scope.get("headers", ())).get("accept")
        paid_send: Send | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal paid_send
            if slot.begun is None:  # a free route
                await send(message)
                return
            if paid_send is None:
                paid_send = settling_send(send, *slot.begun, accept)
            await paid_send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The endpoint raised (or never answered): charge nothing, free the authorization.
            if slot.begun is not None and not slot.begun[1].done:
                await slot.begun[0].abort(slot.begun[1])
            if slot.begun is not None:
                await finish_recording(*slot.begun)


class RequirePayment:
    """The dependency :func:`require_payment` builds; its value is the accepted :class:`Payment`.

    With policy ``after`` the endpoint runs before settlement, so ``payment.transaction`` is
    ``None`` there; with ``before`` it is the settlement transaction.
    """

    def __init__(self, price: Any, *, gate: PaymentGate | None = None, **options: Any) -> None:
        if options.get("settlement", "after") not in get_args(Settlement):
            raise ConfigurationError(
                f"settlement must be 'after' or 'before', not {options['settlement']!r}"
            )
        self.price = as_strategy(price)  # now, so a bad price fails at import, not at a client
        self.gate = gate
        self.options = options
        self._routes: dict[int, tuple[PaymentGate, Route]] = {}
        if gate is not None:
            self.route_for(gate)

    def route_for(self, gate: PaymentGate) -> Route:
        """This dependency's :class:`~x402gate.gate.Route` on ``gate`` (built once per gate)."""
        cached = self._routes.get(id(gate))
        if cached is None or cached[0] is not gate:
            cached = self._routes[id(gate)] = (gate, gate.route(self.price, **self.options))
        return cached[1]

    async def __call__(self, request: Request) -> Payment:
        slot = request.scope.get(_SLOT)
        if not isinstance(slot, _Slot):
            # Fail closed: without the layer nothing would hold the response until settled.
            raise ConfigurationError(
                "require_payment() needs x402gate's settlement layer on this app: "
                "call x402gate.fastapi.install(app, gate) where the app is created"
            )
        if slot.begun is not None:
            raise ConfigurationError(
                "two different require_payment() dependencies on one route, but a request "
                "carries one payment: reuse one instance (Depends caches it per request)"
            )
        settings = slot.settings
        length = request.headers.get("content-length", "")
        too_large = PaymentError(
            413, "request_too_large", "request body too large for a paid route"
        )
        if length.isdigit() and int(length) > settings.max_body_bytes:
            raise too_large
        body = await request.body()  # kept by Starlette: the endpoint can read it again
        if len(body) > settings.max_body_bytes:
            raise too_large
        info = request_info_from_scope(
            request.scope, body, trust_proxy_headers=settings.trust_proxy_headers
        )
        info.native = request
        gate = self.gate or settings.gate
        session = await gate.begin(self.route_for(gate), info)
        slot.begun = (gate, session)
        request.state.payment = session.payment
        return session.payment


def require_payment(
    price: Any,
    *,
    gate: PaymentGate | None = None,
    settlement: Settlement = "after",
    description: str | None = None,
    **route_options: Any,
) -> RequirePayment:
    """A dependency that charges ``price`` per call: ``Depends(require_payment("$0.01"))``.

    Use it on an endpoint (parameter or ``dependencies=[...]``), an ``APIRouter`` or the whole
    app. ``gate`` defaults to the one given to :func:`install`; other keyword arguments go to
    :meth:`~x402gate.gate.PaymentGate.route` (``mime_type``, ``assets``, ``extensions``, ...).
    """
    return RequirePayment(
        price, gate=gate, settlement=settlement, description=description, **route_options
    )


def _find(dependant: Dependant) -> RequirePayment | None:
    if isinstance(dependant.call, RequirePayment):
        return dependant.call
    return next(filter(None, map(_find, dependant.dependencies)), None)


def paid_operations(routes: Sequence[Any]) -> Iterator[tuple[Any, RequirePayment]]:
    """The paid operations of ``routes`` (``app.routes``), with their dependency.

    Each operation is an ``APIRoute`` (or FastAPI's view of one in an included router) with the
    dependencies of its routers and app, its ``path_format`` and ``methods``.
    """
    for route in _route_contexts(routes):
        if isinstance(getattr(route, "original_route", route), APIRoute) and route.dependant:
            dependency = _find(route.dependant)
            if dependency is not None:
                yield route, dependency


def _key(route: Any) -> str:
    methods = sorted((route.methods or set()) - {"HEAD"}) or ["GET"]
    return f"{','.join(methods)} {route.path_format}"


async def _payment_error(request: Request, exc: Exception) -> Response:
    # Rendered inside the app, so CORS and other user middleware decorate the 402 too.
    assert isinstance(exc, PaymentError)
    status, headers, body = render_error(exc, request.headers.get("accept"))
    return Response(body, status_code=status, headers=dict(headers))


def install(
    app: FastAPI,
    gate: PaymentGate,
    *,
    discovery: bool = False,
    trust_proxy_headers: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY,
) -> None:
    """Make ``app`` able to charge: call it once, where the app is created.

    Adds the settlement layer, renders payment answers (402, 400, 413, 502, 503), documents
    each paid operation in the OpenAPI schema (402 response, price, ``x-payment-info``) and,
    with ``discovery=True``, serves ``GET /.well-known/x402``.

    :param trust_proxy_headers: build resource URLs from ``X-Forwarded-Proto``/``-Host``; only
        when every request comes through a proxy you control.
    :param max_body_bytes: largest request body read for pricing on a paid route (413 above).
    """
    if getattr(app.state, "x402gate", None) is not None:
        raise ConfigurationError("x402gate is already installed on this app")
    app.state.x402gate = settings = _Settings(gate, trust_proxy_headers, max_body_bytes)
    app.add_middleware(_SettlementLayer, settings=settings)
    app.add_exception_handler(PaymentError, _payment_error)

    def paid_routes() -> Iterator[tuple[Any, PaymentGate, Route]]:
        for route, dependency in paid_operations(app.routes):
            paying = dependency.gate or gate  # a route may be paid through a gate of its own
            yield route, paying, dependency.route_for(paying)

    generate = app.openapi
    documented: list[Any] = [None]

    def openapi() -> dict[str, Any]:
        schema = generate()
        if schema is not documented[0]:  # FastAPI caches the schema until routes change
            for route, paying, paid in paid_routes():
                operations = schema.get("paths", {}).get(route.path_format, {})
                for method in route.methods or ():
                    operation = operations.get(method.lower())
                    if operation is not None:  # None: left out of the schema
                        document_paid_operation(operation, paying, _key(route), paid)
            documented[0] = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    if discovery:

        async def well_known(request: Request) -> Response:
            # Operation paths are relative to the app, which may be served under a prefix.
            origin = public_origin(request.scope, trust_proxy_headers=trust_proxy_headers)
            origin += request.scope.get("root_path", "")
            document = discovery_document(gate, [], origin)
            for route, paying, paid in paid_routes():
                entry = discovery_document(paying, [(_key(route), paid)], origin)
                document["items"] += entry["items"]
            return JSONResponse(document)

        # A plain Starlette route: app-level payment dependencies must not apply to it.
        app.router.add_route(WELL_KNOWN_PATH, well_known, methods=["GET"], include_in_schema=False)

    async def credit(request: Request) -> Response:
        code, document = await gate.credit_status(request.headers)
        return JSONResponse(document, status_code=code, headers={"Cache-Control": "no-store"})

    app.router.add_route(CREDIT_PATH, credit, methods=["GET"], include_in_schema=False)
