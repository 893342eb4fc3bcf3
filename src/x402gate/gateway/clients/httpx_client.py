"""An upstream client over httpx's transport (httpcore): its pool and h11, not ``AsyncClient``.

An ``httpx.AsyncClient`` keeps the cookies upstreams set (one client's would go out with every
other client's requests) and can follow redirects with the injected credentials; the transport
below it does neither, and adds no headers but ``Host`` and ``Content-Length``. httpx's errors
become :class:`~.base.UpstreamError`\\ s with fixed messages (httpx's own may name the URL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import httpx

from .base import (
    UpstreamClient,
    UpstreamError,
    UpstreamOptions,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = ["HttpxClient", "HttpxResponse"]


def _translate(exc: httpx.HTTPError, *, started: bool) -> UpstreamError:
    """The gateway's error for an httpx failure (never httpx's message)."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout("the upstream did not answer in time")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnavailable("the upstream could not be reached")
    if started:
        return UpstreamProtocolError("the upstream broke off its answer")
    if isinstance(exc, httpx.LocalProtocolError):
        return UpstreamProtocolError("the request cannot be sent upstream")
    if isinstance(exc, httpx.RemoteProtocolError):
        return UpstreamProtocolError("the upstream's answer is not valid HTTP/1.1")
    return UpstreamUnavailable("the upstream closed the connection")


class HttpxResponse(UpstreamResponse):
    """An answer read by httpcore."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.headers = list(response.headers.raw)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        if self._response.is_stream_consumed:
            return
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise _translate(exc, started=True) from None

    async def aclose(self) -> None:
        # httpcore keeps the connection when the body was read to its end, closes it otherwise.
        await self._response.aclose()


class HttpxClient(UpstreamClient):
    """One :class:`httpx.AsyncHTTPTransport` per upstream and event loop."""

    def __init__(self, options: UpstreamOptions) -> None:
        self.options = options
        self._scheme = "https" if options.ssl_context is not None else "http"
        timeout = options.timeout
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        self._closed = False
        self._transport = httpx.AsyncHTTPTransport(
            # No TLS context at all for a plain-HTTP upstream: nothing to load or verify.
            verify=options.ssl_context if options.ssl_context is not None else False,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=options.max_connections,
                max_keepalive_connections=options.max_connections,
                keepalive_expiry=options.keepalive_expiry,
            ),
            retries=0,
        )

    @classmethod
    def from_options(cls, options: UpstreamOptions) -> HttpxClient:
        return cls(options)

    def __repr__(self) -> str:
        return "<HttpxClient>"

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> HttpxResponse:
        if self._closed:
            raise UpstreamUnavailable("the connection pool is closed")
        options = self.options
        sent = list(headers)
        if options.host_header is not None:
            sent.insert(0, (b"Host", options.host_header))
        try:
            request = httpx.Request(
                method.decode("ascii"),
                httpx.URL(
                    scheme=self._scheme, host=options.host, port=options.port, raw_path=target
                ),
                headers=sent,
                content=body or None,
                extensions=self._extensions,
            )
            response = await self._transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            raise _translate(exc, started=False) from None
        except (ValueError, TypeError):  # a header or target httpx refuses to build
            raise UpstreamProtocolError("the request cannot be sent upstream") from None
        return HttpxResponse(response)

    async def aclose(self) -> None:
        self._closed = True
        await self._transport.aclose()
