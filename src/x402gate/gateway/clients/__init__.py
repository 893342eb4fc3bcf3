"""The gateway's HTTP clients for its upstreams, behind one interface (:mod:`.base`).

``gateway.upstream_client`` in a gateway file picks one: ``aiohttp`` (the default), ``httpx`` or
``builtin`` (the project's own HTTP/1.1 client over h11). Only the chosen one's library is
imported.
"""

from __future__ import annotations

from .base import (
    CLIENTS,
    DEFAULT_CLIENT,
    ClientName,
    UpstreamClient,
    UpstreamError,
    UpstreamOptions,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    client_class,
    open_client,
)

__all__ = [
    "CLIENTS",
    "DEFAULT_CLIENT",
    "ClientName",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamOptions",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "client_class",
    "open_client",
]
