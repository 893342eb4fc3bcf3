"""FastAPI: a paid route is a dependency; settlement is a pure ASGI layer installed once per app.

::

    from x402gate.fastapi import install, require_payment

    app = FastAPI()
    install(app, gate)

    @app.get("/weather")
    async def weather(payment: Annotated[Payment, Depends(require_payment("$0.01"))]) -> dict:
        return {"forecast": "sunny", "paid_by": payment.payer}

:class:`RequirePayment` begins the request's :class:`~x402gate.flow.PaymentFlow` (FastAPI has no
hook between an endpoint's return and its first byte) and leaves it in a per-request slot;
:func:`install`'s pure ASGI layer hands the endpoint's answer to that flow, holding
``http.response.start`` until the payment is settled. Unpaid requests get the gate's cached 402
from the layer when public routing API (``Route.matches``) proves the payment dependency decides
first, else from the dependency before the body is read (see ``docs/fastapi.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Unpack, get_args

try:
    from fastapi import FastAPI, Request
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "x402gate's FastAPI integration needs FastAPI: pip install 'x402gate[fastapi]'"
    ) from exc

from ._web import operations
from ._web.asgi import FlowSlot, request_info_from_scope, too_large
from ._web.common import route_refused, warn_trust_proxy_headers
from ._web.middleware import MiddlewareOptions, middleware_options
from ._web.operations import SLOT, Settings, SettlementLayer
from ._web.types import Scope
from .errors import ConfigurationError
from .flow import Answer, PaymentFlow
from .gate import Payment, PaymentGate, Route, Settlement
from .options import check_route_options
from .pricing import as_strategy

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import RouteOptions

__all__ = ["Payment", "RequirePayment", "install", "paid_operations", "require_payment"]


class RequirePayment:
    """The dependency :func:`require_payment` builds; its value is the accepted :class:`Payment`.

    With policy ``after`` the endpoint runs before settlement, so ``payment.transaction`` is
    ``None`` there; with ``before`` it is the settlement transaction.
    """

    def __init__(self, price: Any, *, gate: PaymentGate | None = None, **options: Any) -> None:
        check_route_options(options, "require_payment()")
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

    def _flow(self, scope: Scope, settings: Settings) -> PaymentFlow:
        gate = self.gate or settings.gate
        trust, proxies = settings.trust_proxy_headers, gate.trusted_proxies
        info = request_info_from_scope(scope, b"", trust_proxy_headers=trust, proxies=proxies)
        route = self.route_for(gate)
        # Logs and metrics label the route by its path template, never by the request's path.
        template = getattr(scope.get("route"), "path", None)
        if isinstance(template, str):
            gate.telemetry.name_route(route, template)
        return PaymentFlow(gate, route, info)

    def challenge(self, scope: Scope, settings: Settings) -> Answer | None:
        """The gate's cached 402 for an unpaid request of ``scope``, or ``None``."""
        try:
            return self._flow(scope, settings).challenge()
        except ConfigurationError:
            return None  # the full path answers it (see route_refused)

    async def __call__(self, request: Request) -> Payment:
        slot = request.scope.get(SLOT)
        if not isinstance(slot, FlowSlot):
            # Fail closed: without the layer nothing would hold the response until settled.
            raise ConfigurationError(
                "require_payment() needs x402gate's settlement layer on this app: "
                "call x402gate.fastapi.install(app, gate) where the app is created"
            )
        if slot.flow is not None:
            raise ConfigurationError(
                "two different require_payment() dependencies on one route, but a request "
                "carries one payment: reuse one instance (Depends caches it per request)"
            )
        settings: Settings = slot.settings
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.max_body_bytes:
            raise too_large()
        try:
            flow = self._flow(request.scope, settings)
        except ConfigurationError as exc:  # only when the server ran no lifespan start-up
            operation = request.scope.get("route")
            where = getattr(operation, "path_format", None) or operations.endpoint_name(operation)
            raise route_refused(f"require_payment() on {where}", exc) from exc
        info = flow.request
        info.native = request
        answer = flow.challenge()  # unpaid: the cached 402, before the body is read
        if answer is None:
            info.body = await request.body()  # kept by Starlette: the endpoint reads it again
            if len(info.body) > settings.max_body_bytes:
                raise too_large()
            answer = await flow.begin()
        if answer is not None:
            assert answer.error is not None  # the flow's answers render a PaymentError
            raise answer.error  # rendered inside the app: its CORS middleware decorates it
        slot.flow = flow
        request.state.payment = flow.payment
        return flow.payment  # type: ignore[return-value]  # begin() accepted a payment


def require_payment(
    price: Any, *, gate: PaymentGate | None = None, **options: Unpack[RouteOptions]
) -> RequirePayment:
    """A dependency that charges ``price`` per call: ``Depends(require_payment("$0.01"))``.

    Use it on an endpoint (parameter or ``dependencies=[...]``), an ``APIRouter`` or the whole
    app. ``gate`` defaults to the one given to :func:`install`; the route options
    (``settlement``, ``description``, ``mime_type``, ``assets``, ...) are those of
    :meth:`~x402gate.gate.PaymentGate.route`. A misspelt option raises
    :class:`~x402gate.errors.ConfigurationError` here, naming it.
    """
    return RequirePayment(price, gate=gate, **options)


def paid_operations(routes: Any) -> Any:
    """The paid operations of ``routes`` (``app.routes``), with their :class:`RequirePayment`."""
    return operations.paid_operations(routes, RequirePayment)


def install(app: FastAPI, gate: PaymentGate, **options: Unpack[MiddlewareOptions]) -> None:
    """Make ``app`` able to charge: call it once, where the app is created.

    Adds the settlement layer, renders payment answers (402, 400, 413, 502, 503), documents
    each paid operation in the OpenAPI schema (402 response, price, ``x-payment-info``) and,
    with ``discovery=True``, serves ``GET /.well-known/x402``. When the server starts the app
    (ASGI lifespan), the gate's start-up checks run first
    (:meth:`~x402gate.gate.PaymentGate.check_startup`): a failing one stops the start.

    ``options`` are those of every paywall middleware: ``max_body_bytes`` (largest request
    body read for pricing on a paid route, 413 above), ``discovery``, and the deprecated
    ``trust_proxy_headers`` (give the gate ``trusted_proxies`` and ``public_origin`` instead).
    A misspelt one is named with a suggestion.
    """
    checked = middleware_options(options, "install")
    discovery, max_body_bytes = checked.discovery, checked.max_body_bytes
    if getattr(app.state, "x402gate", None) is not None:
        raise ConfigurationError("x402gate is already installed on this app")
    trust_proxy_headers = warn_trust_proxy_headers(checked.trust_proxy_headers)
    app.state.x402gate = settings = Settings(
        gate, trust_proxy_headers, max_body_bytes, app, RequirePayment
    )
    app.add_middleware(SettlementLayer, settings=settings)
    operations.add_routes_and_documents(app, gate, RequirePayment, trust_proxy_headers, discovery)
