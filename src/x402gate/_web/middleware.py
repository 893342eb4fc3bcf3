"""What the route-table middlewares (ASGI and WSGI) share: their settings, given once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..routing import RouteTable
from .common import warn_trust_proxy_headers

if TYPE_CHECKING:
    from ..gate import PaymentGate

__all__ = ["DEFAULT_MAX_BODY", "RouteTableMiddleware"]

DEFAULT_MAX_BODY = 1 << 20
"""The largest request body read for pricing on a paid route, unless configured (413 above)."""

AppT = TypeVar("AppT")


class RouteTableMiddleware(Generic[AppT]):
    """A middleware that charges for the routes of a table in front of ``app``.

    :param routes: ``{"METHOD /path": price or {"price": ..., **options}}`` or a
        :class:`~x402gate.routing.RouteTable`; a misspelt option is named with a suggestion.
    :param max_body_bytes: largest request body read for pricing on a paid route (413 above).
    :param trust_proxy_headers: deprecated: trust the peer's ``X-Forwarded-*`` headers whatever
        its address. Give the gate ``trusted_proxies`` (and ``public_origin``) instead.
    :param discovery: answer ``GET /.well-known/x402`` with a document listing ``routes``.
    :param check_at_startup: check ``routes`` against the app's own routes and run the gate's
        start-up checks (when depends on the server interface: see each middleware).
    """

    def __init__(
        self,
        app: AppT,
        *,
        gate: PaymentGate,
        routes: Mapping[str, Any] | RouteTable,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        trust_proxy_headers: bool = False,
        discovery: bool = False,
        check_at_startup: bool = True,
    ) -> None:
        self.app = app
        self.gate = gate
        self.routes = routes if isinstance(routes, RouteTable) else RouteTable(gate, routes)
        self.max_body_bytes = max_body_bytes
        self.trust_proxy_headers = warn_trust_proxy_headers(trust_proxy_headers)
        self.discovery = discovery
        self.check_at_startup = check_at_startup
