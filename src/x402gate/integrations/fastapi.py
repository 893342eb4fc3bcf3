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

The layer also answers repeated unpaid ``GET`` requests itself (see :class:`_Shortcuts`): once
FastAPI has routed a ``GET`` to a payment dependency that nothing else can pre-empt, the next
``GET`` of the same URL without payment gets the same 402 without routing and dependency
resolution, which cost more than the 402 itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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
from ..gate import PAYING_HEADERS, Payment, PaymentGate, PaymentSession, Route, Settlement
from ..pricing import as_strategy
from ..request import Headers
from ._common import render_error, route_refused, warn_trust_proxy_headers
from ._openapi import document_paid_operation
from ._types import ASGIApp, Message, Receive, Scope, Send
from .asgi import (
    DEFAULT_MAX_BODY,
    finish_recording,
    lifespan_with_checks,
    public_origin,
    request_info_from_scope,
    send_error,
    settling_send,
)

__all__ = ["Payment", "RequirePayment", "install", "paid_operations", "require_payment"]

_SLOT = "x402gate.fastapi"

# FastAPI 0.16x resolves included routers lazily and gives each operation a context; older
# versions copy every APIRoute, with its routers' dependencies, into app.routes.
_route_contexts: Callable[[Sequence[Any]], Iterable[Any]] = getattr(
    fastapi.routing, "iter_route_contexts", lambda routes: routes
)


# Request headers that may make a request payable without a new payment: it takes the full path.
_PAYING_HEADERS = frozenset(h.lower().encode("latin-1") for h in PAYING_HEADERS)
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class _Shortcuts:
    """The unpaid ``GET`` requests the layer may answer with a 402 itself.

    Learned from FastAPI's own routing: when a ``GET`` reached a :class:`RequirePayment` that is
    the first dependency FastAPI calls for its operation (so no other dependency, e.g. an
    authentication check, could have answered first), and the operation reads no body, the
    request's (host, root path, path) is remembered. A later ``GET`` of the same URL with no
    payment, session or sign-in header and no body would reach the same dependency and get its
    402, so the layer calls the gate directly. Never learned while a user middleware sits inside
    the layer (it could answer or rewrite first); forgotten when the app's routes change; skipped
    while the dependency is overridden (``app.dependency_overrides``). At most ``SIZE`` URLs.
    """

    SIZE = 1024

    def __init__(self) -> None:
        self.known: OrderedDict[tuple[str, str, str], RequirePayment] = OrderedDict()
        self.routes = -1  # len(app.routes) when learned
        self.allowed: bool | None = None  # no user middleware inside the layer

    @staticmethod
    def key(scope: Scope) -> tuple[str, str, str] | None:
        host = ""
        for name, value in scope.get("headers", ()):
            if name in _PAYING_HEADERS or (name in _BODY_HEADERS and value not in (b"0", b"")):
                return None
            if name == b"host":
                host = value.decode("latin-1")
        return host, scope.get("root_path", ""), scope.get("path", "")

    def find(self, app: Any, scope: Scope) -> RequirePayment | None:
        if not self.known or scope.get("method") != "GET":
            return None
        if len(app.routes) != self.routes:
            self.known.clear()
            return None
        key = self.key(scope)
        dependency = self.known.get(key) if key is not None else None
        if dependency is None or dependency in app.dependency_overrides:
            return None
        return dependency

    def learn(self, app: Any, request: Request, dependency: RequirePayment) -> None:
        if request.scope.get("method") != "GET" or not dependency.pre_empts(request.scope):
            return
        if self.allowed is None:
            classes = [m.cls for m in app.user_middleware]
            self.allowed = _SettlementLayer in classes and classes[-1] is _SettlementLayer
        key = self.key(request.scope)
        if not self.allowed or key is None:
            return
        if len(app.routes) != self.routes:
            self.known.clear()
            self.routes = len(app.routes)
        self.known[key] = dependency
        self.known.move_to_end(key)
        while len(self.known) > self.SIZE:
            self.known.popitem(last=False)


@dataclass(slots=True)
class _Settings:
    gate: PaymentGate
    trust_proxy_headers: bool
    max_body_bytes: int
    app: Any = None
    shortcuts: _Shortcuts = field(default_factory=_Shortcuts)


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

    async def check_startup(self) -> None:
        """The route of every paid operation, built on the gate it charges through (a route
        option that gate refuses stops the start, naming the operation), then the start-up
        checks of the app's gate and of every gate a paid operation names."""
        gates = {id(self.settings.gate): self.settings.gate}
        if self.settings.app is not None:
            for route, dependency in paid_operations(self.settings.app.routes):
                paying = dependency.gate or self.settings.gate
                try:
                    dependency.route_for(paying)
                except ConfigurationError as exc:
                    raise ConfigurationError(
                        f"require_payment() on {_key(route)} ({_endpoint_name(route)}): {exc}"
                    ) from exc
                gates.setdefault(id(paying), paying)
        for gate in gates.values():
            await gate.check_startup()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan_with_checks(self.app, scope, receive, send, self.check_startup)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = Headers.from_asgi(scope.get("headers", ())).get("accept")
        dependency = self.settings.shortcuts.find(self.settings.app, scope)
        if dependency is not None and await self._challenge(
            scope, receive, send, dependency, accept
        ):
            return
        slot = scope[_SLOT] = _Slot(self.settings)
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
        except Exception:
            # An answer ended at its paid maximum stops the endpoint (AnswerCut): expected.
            if slot.begun is None or not slot.begun[1].cut:
                raise
        finally:
            # The endpoint raised (or never answered): charge nothing, free the authorization.
            if slot.begun is not None and not slot.begun[1].done:
                await slot.begun[0].abort(slot.begun[1])
            if slot.begun is not None:
                await finish_recording(*slot.begun)

    async def _challenge(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        dependency: RequirePayment,
        accept: str | None,
    ) -> bool:
        """Answer an unpaid request for a known paid URL as the dependency would; ``False`` if
        the gate unexpectedly accepted it (then it takes the full path)."""
        settings = self.settings
        gate = dependency.gate or settings.gate
        info = request_info_from_scope(
            scope,
            b"",
            trust_proxy_headers=settings.trust_proxy_headers,
            proxies=gate.trusted_proxies,
        )
        info.native = Request(scope, receive)
        try:
            session = await gate.begin(dependency.route_for(gate), info)
        except PaymentError as exc:
            await send_error(send, exc, accept)
            return True
        await gate.abort(session)
        return False


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
        self._first: dict[int, tuple[Any, bool]] = {}  # id(route) -> (route, pre-empts)
        if gate is not None:
            self.route_for(gate)

    def route_for(self, gate: PaymentGate) -> Route:
        """This dependency's :class:`~x402gate.gate.Route` on ``gate`` (built once per gate)."""
        cached = self._routes.get(id(gate))
        if cached is None or cached[0] is not gate:
            cached = self._routes[id(gate)] = (gate, gate.route(self.price, **self.options))
        return cached[1]

    def pre_empts(self, scope: Scope) -> bool:
        """Whether this dependency is the first one FastAPI calls for the operation that
        handles ``scope``, and that operation reads no body (so nothing but this dependency
        decides what an unpaid request gets)."""
        # FastAPI 0.16x keeps an operation's effective dependencies (its routers' and the app's
        # included) in a per-request route context; older versions copy them into the route.
        fastapi_scope = scope.get("fastapi")
        context = (
            fastapi_scope.get("effective_route_context")
            if isinstance(fastapi_scope, dict)
            else None
        )
        route = context if context is not None else scope.get("route")
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            return False
        known = self._first.get(id(route))
        if known is None or known[0] is not route:
            flat = list(_calls(dependant))
            ok = bool(flat) and flat[0] is self and not _reads_body(dependant)
            known = self._first[id(route)] = (route, ok)
        return known[1]

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
        gate = self.gate or settings.gate
        try:
            route = self.route_for(gate)
        except ConfigurationError as exc:  # only when the server ran no lifespan start-up
            operation = request.scope.get("route")
            where = getattr(operation, "path_format", None) or _endpoint_name(operation)
            raise route_refused(f"require_payment() on {where}", exc) from exc
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
            request.scope,
            body,
            trust_proxy_headers=settings.trust_proxy_headers,
            proxies=gate.trusted_proxies,
        )
        info.native = request
        if settings.app is not None:
            settings.shortcuts.learn(settings.app, request, self)
        session = await gate.begin(route, info)
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


def _calls(dependant: Dependant) -> Iterator[Any]:
    """The callables FastAPI calls to solve ``dependant``'s dependencies, in its order (each
    dependency's own dependencies before it)."""
    for sub in dependant.dependencies:
        yield from _calls(sub)
        if sub.call is not None:
            yield sub.call


def _reads_body(dependant: Dependant) -> bool:
    return bool(dependant.body_params) or any(map(_reads_body, dependant.dependencies))


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


def _endpoint_name(route: Any) -> str:
    original = getattr(route, "original_route", route)
    endpoint = getattr(original, "endpoint", None)
    return str(getattr(endpoint, "__qualname__", None) or getattr(original, "name", "?"))


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
    with ``discovery=True``, serves ``GET /.well-known/x402``. When the server starts the app
    (ASGI lifespan), the gate's start-up checks run first
    (:meth:`~x402gate.gate.PaymentGate.check_startup`): a failing one stops the start.

    :param trust_proxy_headers: deprecated: trust the peer's ``X-Forwarded-*`` headers whatever
        its address. Give the gate ``trusted_proxies`` (and ``public_origin``) instead.
    :param max_body_bytes: largest request body read for pricing on a paid route (413 above).
    """
    if getattr(app.state, "x402gate", None) is not None:
        raise ConfigurationError("x402gate is already installed on this app")
    trust_proxy_headers = warn_trust_proxy_headers(trust_proxy_headers)
    app.state.x402gate = settings = _Settings(gate, trust_proxy_headers, max_body_bytes, app)
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
            origin = public_origin(
                request.scope, trust_proxy_headers=trust_proxy_headers, gate=gate
            )
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
