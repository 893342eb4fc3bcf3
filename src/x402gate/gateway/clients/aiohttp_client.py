"""An upstream client over aiohttp: its connection pool and HTTP/1.1 parser, none of its extras.

The session keeps no cookies, follows no redirects, decompresses nothing and adds no headers of
its own (``User-Agent``, ``Accept``, ``Accept-Encoding`` and ``Content-Type`` are skipped), so
the upstream gets the client's request as the gateway forwards it. aiohttp's errors become
:class:`~.base.UpstreamError`\\ s with fixed messages (aiohttp's own name the URL).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aiohttp
from yarl import URL

from .base import (
    UpstreamClient,
    UpstreamError,
    UpstreamOptions,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = ["AiohttpClient", "AiohttpResponse"]

MAX_HEAD_LINE = 100 * 1024
"""Longest status line or header accepted (the builtin client's limit for the whole head)."""
READ_BUFFER = 256 * 1024
"""Bytes read ahead of the relay before aiohttp pauses reading from the upstream."""
_SKIPPED = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def _translate(exc: BaseException, *, started: bool) -> UpstreamError:
    """The gateway's error for an aiohttp failure (never aiohttp's message: it names the URL)."""
    if isinstance(exc, TimeoutError):  # also aiohttp's ServerTimeoutError, ConnectionTimeoutError
        return UpstreamTimeout("the upstream did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable("the upstream could not be reached")
    if isinstance(exc, aiohttp.ClientPayloadError) or started:
        return UpstreamProtocolError("the upstream broke off its answer")
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamProtocolError("the upstream's answer is not valid HTTP/1.1")
    return UpstreamUnavailable("the upstream closed the connection")


def _unread(content: aiohttp.StreamReader) -> bytes:
    """The bytes aiohttp received and did not hand out (its reader's buffer), taken out."""
    buffer = getattr(content, "_buffer", None)
    if not buffer:
        return b""
    data = b"".join(bytes(part) for part in buffer)
    buffer.clear()
    return data


class AiohttpResponse(UpstreamResponse):
    """An answer read by aiohttp."""

    __slots__ = ("_complete", "_response", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._complete = False
        self.status_code = response.status
        self.headers = list(response.raw_headers)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        if self._complete:
            return
        content = self._response.content
        try:
            async for chunk in content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = _translate(exc, started=True)
        else:
            self._complete = True
            return
        # aiohttp raises a broken answer's error before handing out the bytes that came with
        # it: they are the upstream's (a stream's last events, the usage it reported) and go
        # to the client and the meter first, as with the other clients.
        left = _unread(content)
        if left:
            yield left
        raise error

    async def aclose(self) -> None:
        if self._complete:
            await self._response.release()  # the connection goes back to the pool
        else:
            self._response.close()  # part of the answer is unread: the connection goes away


class AiohttpClient(UpstreamClient):
    """One :class:`aiohttp.ClientSession` per upstream and event loop."""

    def __init__(self, options: UpstreamOptions) -> None:
        self.options = options
        self._origin = options.origin
        self._host = None if options.host_header is None else options.host_header.decode("latin-1")
        timeout = options.timeout
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        connector = aiohttp.TCPConnector(
            limit=options.max_connections,
            limit_per_host=0,
            keepalive_timeout=options.keepalive_expiry,
            ssl=options.ssl_context if options.ssl_context is not None else False,
            use_dns_cache=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIPPED,
            auto_decompress=False,
            trust_env=False,
            read_bufsize=READ_BUFFER,
            max_line_size=MAX_HEAD_LINE,
            max_field_size=MAX_HEAD_LINE,
            timeout=self._timeout,
        )

    @classmethod
    def from_options(cls, options: UpstreamOptions) -> AiohttpClient:
        return cls(options)

    def __repr__(self) -> str:
        return "<AiohttpClient>"

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes = b"",
    ) -> AiohttpResponse:
        if self._session.closed:
            raise UpstreamUnavailable("the connection pool is closed")
        # Names in lower case: aiohttp merges names differing only in case into the last one;
        # the same name repeated is kept (HTTP names are case-insensitive, servers lower them).
        sent = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in headers]
        if self._host is not None:
            sent.insert(0, ("Host", self._host))
        try:
            # encoded=True: the target goes out as the gateway wrote it, never re-quoted.
            url = URL(self._origin + target.decode("latin-1"), encoded=True)
            response = await self._session.request(
                method.decode("ascii"),
                url,
                headers=sent,
                data=body or None,
                allow_redirects=False,
                compress=None,
                timeout=self._timeout,
            )
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _translate(exc, started=False) from None
        except ValueError:  # a header or target aiohttp refuses to write
            raise UpstreamProtocolError("the request cannot be sent upstream") from None
        return AiohttpResponse(response)

    async def aclose(self) -> None:
        await self._session.close()
