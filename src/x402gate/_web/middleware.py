"""What the paywall middlewares share: their keyword options and the route-table base class.

:class:`MiddlewareOptions` types the options every middleware and the Flask extension take beside
their gate and routes (``**options: Unpack[MiddlewareOptions]``); :func:`middleware_options`
refuses a misspelt one at construction, naming it with the closest known name, since a keyword
collected into ``**options`` would otherwise be dropped silently. :class:`RouteTableMiddleware`
is the common constructor of the ASGI and WSGI middlewares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, Unpack

from ..errors import ConfigurationError
from ..options import unknown_key_message
from ..routing import RouteTable
from .common import warn_trust_proxy_headers

if TYPE_CHECKING:
    from ..gate import PaymentGate

__all__ = [
    "DEFAULT_MAX_BODY",
    "MiddlewareOptions",
    "MiddlewareSettings",
    "RouteTableMiddleware",
    "middleware_options",
]

DEFAULT_MAX_BODY = 1 << 20
"""Largest request body read for pricing on a paid route, by default (413 above)."""

AppT = TypeVar("AppT")


class MiddlewareOptions(TypedDict, total=False):
    """The keyword options of the ASGI and WSGI middlewares and the Flask extension."""

    max_body_bytes: int
    """Largest request body read for pricing on a paid route (413 above)."""
    trust_proxy_headers: bool
    """Deprecated: trust the peer's ``X-Forwarded-*`` headers whatever its address."""
    discovery: bool
    """Serve ``GET /.well-known/x402`` listing the paid routes."""


@dataclass(frozen=True, slots=True)
class MiddlewareSettings:
    """:class:`MiddlewareOptions` checked, with their defaults."""

    max_body_bytes: int = DEFAULT_MAX_BODY
    trust_proxy_headers: bool = False
    discovery: bool = False


def middleware_options(options: Mapping[str, Any], where: str) -> MiddlewareSettings:
    """``options`` checked (every unknown name reported at once, with a suggestion)."""
    known = tuple(MiddlewareOptions.__annotations__)
    unknown = [key for key in options if key not in known]
    if unknown:
        problems = "; ".join(unknown_key_message(key, known, "option") for key in unknown)
        raise ConfigurationError(f"{where}: {problems}")
    return MiddlewareSettings(**options)


class RouteTableMiddleware(Generic[AppT]):
    """A middleware that charges for the routes of a table in front of ``app``.

    :param routes: ``{"METHOD /path": price or {"price": ..., **options}}`` or a
        :class:`~x402gate.routing.RouteTable`; a misspelt route option is named with a suggestion.
    :param check_at_startup: check ``routes`` against the app's own routes and run the gate's
        start-up checks (when depends on the server interface: see each middleware).
    :param options: :class:`MiddlewareOptions` (``max_body_bytes``, ``discovery``, the deprecated
        ``trust_proxy_headers``); a misspelt one is named with a suggestion.
    """

    def __init__(
        self,
        app: AppT,
        *,
        gate: PaymentGate,
        routes: Mapping[str, Any] | RouteTable,
        check_at_startup: bool = True,
        **options: Unpack[MiddlewareOptions],
    ) -> None:
        settings = middleware_options(options, type(self).__name__)
        self.app = app
        self.gate = gate
        self.routes = routes if isinstance(routes, RouteTable) else RouteTable(gate, routes)
        self.max_body_bytes = settings.max_body_bytes
        self.trust_proxy_headers = warn_trust_proxy_headers(settings.trust_proxy_headers)
        self.discovery = settings.discovery
        self.check_at_startup = check_at_startup
        if check_at_startup:
            self.check_when_built()

    def check_when_built(self) -> None:
        """Run the start-up checks now, if the server interface has no start-up event of its
        own (WSGI). ASGI middlewares leave this empty and check at the lifespan start-up."""
