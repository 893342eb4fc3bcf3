"""httpx transports that pay 402 answers and carry x402gate session tokens.

Two layers, each in a sync and an async form (the OpenAI and Anthropic SDKs take either an
``httpx.Client`` or an ``httpx.AsyncClient``):

- the *session* layer, next to the network: when an answer carries the x402gate session header
  it keeps the token for that origin and sends it with the next requests to the same origin,
  so credit a metered route kept from an ``exact`` payment is spent rather than stranded;
- the *payment* layer on top: a 402 is read (its body bounded), the official x402 client picks
  an offer and signs it (refusing first if a spend limit says no), the request is sent again
  with the payment, and the answer's payment-response header is handed to the client's hooks
  (the channel scheme learns its new balance there). A corrective 402 of a channel is
  recovered from once, as the official httpx transport does.

A refusal by the client's spend limits is raised as
:class:`~x402gate.client.limits.SpendLimitExceeded`; the request is then not sent again.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import httpx

from ..credit import SESSION_HEADER

if TYPE_CHECKING:
    from x402 import x402Client, x402ClientSync

__all__ = ["AsyncPayingTransport", "PayingTransport", "SessionTokens"]

MAX_CHALLENGE_BYTES = 256 * 1024
"""Largest 402 body read; a payment-required document is a few kilobytes."""
MAX_TOKEN_CHARS = 4096
"""Longest session token kept; x402gate's are a few hundred characters."""
MAX_ORIGINS = 256
"""Origins whose session token is kept at once (least recently used dropped first)."""
_RETRY = "x402gate_paid"
_ATTACHED = "x402gate_session"


class SessionTokens:
    """The latest session token of each origin (bounded, thread-safe)."""

    def __init__(self) -> None:
        self._tokens: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, origin: str) -> str | None:
        """The token to send to ``origin``, if one was received."""
        with self._lock:
            token = self._tokens.get(origin)
            if token is not None:
                self._tokens.move_to_end(origin)
            return token

    def put(self, origin: str, token: str) -> None:
        """Keep ``token`` for ``origin`` (an over-long or non-printable value is ignored)."""
        if not token or len(token) > MAX_TOKEN_CHARS or not token.isprintable():
            return
        with self._lock:
            self._tokens[origin] = token
            self._tokens.move_to_end(origin)
            while len(self._tokens) > MAX_ORIGINS:
                self._tokens.popitem(last=False)

    def attach(self, request: httpx.Request) -> None:
        """Add the origin's newest token to ``request`` unless the caller set one."""
        if SESSION_HEADER in request.headers and not request.extensions.get(_ATTACHED):
            return
        token = self.get(_origin(request.url))
        if token is not None:
            request.headers[SESSION_HEADER] = token
            request.extensions[_ATTACHED] = True

    def learn(self, request: httpx.Request, response: httpx.Response) -> None:
        """Keep the token an answer carries."""
        token = response.headers.get(SESSION_HEADER)
        if token is not None:
            self.put(_origin(request.url), token.strip())


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii')}".lower()


def _payment_required(http: Any, response: httpx.Response, body: bytes) -> Any:
    parsed: Any = None
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    return http.get_payment_required_response(response.headers.get, parsed)


def _retry_request(request: httpx.Request, headers: dict[str, str]) -> httpx.Request:
    """``request`` again with ``headers`` added (the session layer re-attaches the newest
    token of the origin, which the 402 may just have renewed)."""
    retry = httpx.Request(
        method=request.method,
        url=request.url,
        headers=request.headers,
        content=request.content,
        extensions={**request.extensions, _RETRY: True},
    )
    retry.headers.update(headers)
    return retry


class PayingTransport(httpx.BaseTransport):
    """A sync transport that answers 402 by paying with an ``x402ClientSync``."""

    def __init__(
        self, client: x402ClientSync, sessions: SessionTokens, inner: httpx.BaseTransport
    ) -> None:
        from x402.http import x402HTTPClientSync

        self._client = client
        self._http = x402HTTPClientSync(client)
        self._sessions = sessions
        self._inner = inner

    def _send(self, request: httpx.Request) -> httpx.Response:
        self._sessions.attach(request)
        response = self._inner.handle_request(request)
        self._sessions.learn(request, response)
        return response

    def _read_challenge(self, response: httpx.Response) -> bytes:
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_CHALLENGE_BYTES:
                    return b""
        finally:
            response.close()
        return bytes(body)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        response = self._send(request)
        if response.status_code != 402 or request.extensions.get(_RETRY):
            return response
        body = self._read_challenge(response)
        required = _payment_required(self._http, response, body)
        hook_headers = self._http.handle_payment_required(required, str(request.url))
        if hook_headers:
            answer = self._send(_retry_request(request, hook_headers))
            if answer.status_code != 402:
                return answer
            answer.close()
        payload = self._client.create_payment_payload(required)
        paid = self._send(
            _retry_request(request, self._http.encode_payment_signature_header(payload))
        )
        result = self._http.process_payment_result(payload, paid.headers.get, paid.status_code)
        if not result.recovered:
            return paid
        paid.close()
        fresh = self._client.create_payment_payload(required)
        again = self._send(
            _retry_request(request, self._http.encode_payment_signature_header(fresh))
        )
        self._http.process_payment_result(fresh, again.headers.get, again.status_code)
        return again

    def close(self) -> None:
        self._inner.close()


class AsyncPayingTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`PayingTransport` (an ``x402Client``)."""

    def __init__(
        self, client: x402Client, sessions: SessionTokens, inner: httpx.AsyncBaseTransport
    ) -> None:
        from x402.http import x402HTTPClient

        self._client = client
        self._http = x402HTTPClient(client)
        self._sessions = sessions
        self._inner = inner

    async def _send(self, request: httpx.Request) -> httpx.Response:
        self._sessions.attach(request)
        response = await self._inner.handle_async_request(request)
        self._sessions.learn(request, response)
        return response

    async def _read_challenge(self, response: httpx.Response) -> bytes:
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_CHALLENGE_BYTES:
                    return b""
        finally:
            await response.aclose()
        return bytes(body)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        response = await self._send(request)
        if response.status_code != 402 or request.extensions.get(_RETRY):
            return response
        body = await self._read_challenge(response)
        required = _payment_required(self._http, response, body)
        hook_headers = await self._http.handle_payment_required(required, str(request.url))
        if hook_headers:
            answer = await self._send(_retry_request(request, hook_headers))
            if answer.status_code != 402:
                return answer
            await answer.aclose()
        payload = await self._client.create_payment_payload(required)
        paid = await self._send(
            _retry_request(request, self._http.encode_payment_signature_header(payload))
        )
        result = await self._http.process_payment_result(
            payload, paid.headers.get, paid.status_code
        )
        if not result.recovered:
            return paid
        await paid.aclose()
        fresh = await self._client.create_payment_payload(required)
        again = await self._send(
            _retry_request(request, self._http.encode_payment_signature_header(fresh))
        )
        await self._http.process_payment_result(fresh, again.headers.get, again.status_code)
        return again

    async def aclose(self) -> None:
        await self._inner.aclose()
