"""What the gateway needs from an HTTP client for its upstreams, whichever library provides it.

The gateway makes one kind of request: a method, a request target, headers and a body it already
holds, to one origin; the answer's status and headers come back first, then its body is relayed
chunk by chunk as it arrives (server-sent events stream through), undecoded. An
:class:`UpstreamClient` does exactly that and nothing a general-purpose client adds on its own:

* no cookies kept between requests (one client's cookies would go out with every other's);
* no redirects followed (they would carry the injected credentials elsewhere);
* no headers added but ``Host`` (when the caller sends none) and ``Content-Length``;
* no decompression (the bytes relayed are the upstream's bytes);
* connections kept alive and reused, at most ``max_connections`` open at once;
* every wait (connecting, a free connection, the next bytes) bounded by ``timeout``.

Errors are :class:`UpstreamError`\\ s with fixed messages: neither a header (the injected
credentials) nor the upstream's address ever appears in one. :class:`UpstreamTimeout` is the
gateway's 504, any other its 502 (or, once an answer is under way, a cut connection).

Implementations: :mod:`.builtin` (the project's own, over h11), :mod:`.aiohttp_client` and
:mod:`.httpx_client`; :func:`open_client` picks one by name and imports its library only then.
"""

from __future__ import annotations

import abc
import importlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from ...errors import ConfigurationError

__all__ = [
    "CLIENTS",
    "DEFAULT_CLIENT",
    "KEEPALIVE_EXPIRY",
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

ClientName = Literal["aiohttp", "httpx", "builtin"]

CLIENTS: dict[str, str] = {
    "aiohttp": "x402gate.gateway.clients.aiohttp_client:AiohttpClient",
    "httpx": "x402gate.gateway.clients.httpx_client:HttpxClient",
    "builtin": "x402gate.gateway.clients.builtin:ConnectionPool",
}
"""Client name → ``module:class``; the module (and its library) is imported on first use."""

DEFAULT_CLIENT: ClientName = "aiohttp"
"""The client of a gateway file that names none (``gateway.upstream_client``): a maintained
library, measured within the gateway's latency goal (``bench/upstream_clients.py``)."""

KEEPALIVE_EXPIRY = 4.0
"""Seconds an idle connection is kept: less than the 5 s after which uvicorn and Node close
theirs, so a request is not sent on a connection the upstream is closing at that moment."""


class UpstreamError(Exception):
    """The upstream could not be reached, did not answer properly, or broke off its answer."""


class UpstreamUnavailable(UpstreamError):
    """No connection could be made, or it closed before an answer."""


class UpstreamTimeout(UpstreamError):
    """Connecting, waiting for a free connection, or waiting for the next bytes took too long."""


class UpstreamProtocolError(UpstreamError):
    """The request could not be written or the answer was not valid HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """Where one upstream is and how to talk to it (the same for every implementation)."""

    host: str
    """The host to connect to (an IP address or an ASCII name)."""
    port: int
    host_header: bytes | None
    """The ``Host`` of every request; ``None``: the caller sends its own."""
    ssl_context: ssl.SSLContext | None = None
    """For ``https://`` upstreams; ``None`` for plain TCP."""
    timeout: float = 60.0
    """The longest wait for a connection, a free connection, or the next bytes."""
    max_connections: int = 100
    keepalive_expiry: float = KEEPALIVE_EXPIRY

    @property
    def origin(self) -> str:
        """``scheme://host:port`` (for libraries that want a URL; never logged)."""
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


class UpstreamResponse(abc.ABC):
    """An answer's status and headers; its body is read with :meth:`aiter_raw` (as it arrives,
    undecoded), and :meth:`aclose` gives the connection back (or closes it when the body was
    not read to its end)."""

    __slots__ = ()

    status_code: int
    headers: list[tuple[bytes, bytes]]
    """``(name, value)`` pairs as received."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.status_code}>"

    @abc.abstractmethod
    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; raises :class:`UpstreamError` if it is cut."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the connection (idempotent; also after a partial read)."""


class UpstreamClient(abc.ABC):
    """Keep-alive connections to one upstream origin, for the event loop that uses them."""

    @classmethod
    @abc.abstractmethod
    def from_options(cls, options: UpstreamOptions) -> UpstreamClient:
        """A client for this origin (no connection is made yet)."""

    @abc.abstractmethod
    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> UpstreamResponse:
        """Send a request and read the answer's status and headers.

        ``target`` is the request target as it goes on the wire (already percent-encoded; no
        client may normalise it). ``headers`` must not have ``Content-Length`` (added when there
        is a body), nor ``Host`` unless the options have no ``host_header``.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their answer is closed."""


def client_class(name: str) -> type[UpstreamClient]:
    """The class of the client called ``name`` (one of :data:`CLIENTS`), its library imported.

    :raises ConfigurationError: for an unknown name, or a library that is not installed (a
        gateway finds out when it is built, not at its first request).
    """
    try:
        path = CLIENTS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown upstream client {name!r}: one of {', '.join(sorted(CLIENTS))}"
        ) from None
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {name} upstream client needs {exc.name or name}: pip install 'x402gate[gateway]'"
        ) from None
    cls: type[UpstreamClient] = getattr(module, attribute)
    return cls


def open_client(name: str, options: UpstreamOptions) -> UpstreamClient:
    """The client called ``name`` (see :func:`client_class`) for ``options``."""
    return client_class(name).from_options(options)
