"""WSGI middleware: paywall any WSGI app (Flask, Django, Falcon, Bottle, Pyramid, plain WSGI).

::

    app = PaymentMiddleware(app, gate=gate, routes={"GET /weather": 0.01, "POST /v1/chat": rules})

Requests on a paid route have their body read once (bounded, for prices that look at it) and
replayed to the app in ``wsgi.input``. The app's ``start_response`` is held: the payment is
settled (policy ``after``, status below 400) before the status line, any header or a single body
byte reaches the server, including for apps that call ``start_response`` lazily from inside a
generator. When settlement fails the client gets the gate's answer and the app's content is
discarded. The accepted payment is in ``environ["x402gate.payment"]``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import quote

from ._web.common import (
    MeteredBody,
    framework_routes,
    paid_response_headers,
    render_error,
    warn_trust_proxy_headers,
)
from ._web.types import StartResponse, WSGIApp, WSGIEnviron
from .discovery import CREDIT_PATH, WELL_KNOWN_PATH, discovery_document
from .errors import PaymentError
from .gate import PaymentGate, PaymentSession
from .proxies import TrustedProxies
from .request import Headers, RequestInfo
from .routing import RouteTable, check_routes_exist
from .siwx import split_url
from .stores.base import MAX_IDEMPOTENT_RESPONSE_BYTES

__all__ = ["PaymentMiddleware", "base_url_of", "error_response", "request_info_from_environ"]

DEFAULT_MAX_BODY = 1 << 20
_NO_PROXIES = TrustedProxies()
PAYMENT_ENVIRON_KEY = "x402gate.payment"

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _text(wsgi_str: str) -> str:
    # WSGI strings carry raw bytes as latin-1 (PEP 3333); paths are UTF-8 on the wire.
    return wsgi_str.encode("latin-1").decode("utf-8", "replace")


def _headers(environ: WSGIEnviron) -> Headers:
    pairs = [(k[5:].replace("_", "-"), v) for k, v in environ.items() if k.startswith("HTTP_")]
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            pairs.append((key.replace("_", "-"), environ[key]))
    return Headers(pairs)


def _client(
    environ: WSGIEnviron, proxies: TrustedProxies | None, trust_proxy_headers: bool
) -> tuple[str | None, bool]:
    return (proxies or _NO_PROXIES).resolve(
        environ.get("REMOTE_ADDR") or None,
        environ.get("HTTP_X_FORWARDED_FOR"),
        trust_peer=trust_proxy_headers,
    )


def base_url_of(
    environ: WSGIEnviron,
    *,
    trust_proxy_headers: bool = False,
    proxies: TrustedProxies | None = None,
    gate: PaymentGate | None = None,
) -> str:
    """Public origin plus ``SCRIPT_NAME`` of a request (PEP 3333's URL reconstruction).

    The origin is one of ``gate``'s configured public origins when it has them;
    ``X-Forwarded-Proto``/``-Host`` are read only from ``proxies`` (or any peer with the
    deprecated ``trust_proxy_headers``).
    """
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST")
    if gate is not None:
        proxies = gate.trusted_proxies
    if _client(environ, proxies, trust_proxy_headers)[1]:
        # Only behind a proxy the operator vouches for: otherwise any client could choose the
        # URL written into payment requirements.
        forwarded_proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip()
        forwarded_host = environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()
        scheme, host = forwarded_proto or scheme, forwarded_host or host
    if not host:
        port = str(environ.get("SERVER_PORT", ""))
        default = (scheme == "https" and port == "443") or (scheme == "http" and port == "80")
        host = environ.get("SERVER_NAME", "localhost") + ("" if default or not port else f":{port}")
    origin = f"{scheme}://{host}"
    if gate is not None and gate.public_origins:
        origin = split_url(gate.public_url(RequestInfo("GET", "/", url=origin + "/")))[0]
    return origin + quote(environ.get("SCRIPT_NAME", "").encode("latin-1"))


def request_info_from_environ(
    environ: WSGIEnviron,
    body: bytes,
    *,
    trust_proxy_headers: bool = False,
    native: Any = None,
    proxies: TrustedProxies | None = None,
) -> RequestInfo:
    """The neutral request of a WSGI environ (``body`` already read by the caller).

    ``proxies`` (the gate's ``trusted_proxies``) decide the client address and whether
    ``X-Forwarded-Proto``/``-Host`` are read.
    """
    raw_path = environ.get("PATH_INFO", "") or "/"
    query = environ.get("QUERY_STRING", "")
    client, _ = _client(environ, proxies, trust_proxy_headers)
    url = base_url_of(environ, trust_proxy_headers=trust_proxy_headers, proxies=proxies)
    url += quote(raw_path.encode("latin-1")) + (f"?{query}" if query else "")
    return RequestInfo(
        environ.get("REQUEST_METHOD", "GET"),
        _text(raw_path),
        query_string=query,
        headers=_headers(environ),
        body=body,
        url=url,
        native=environ if native is None else native,
        client=client,
    )


def error_response(
    start_response: StartResponse, exc: PaymentError, accept: str | None
) -> list[bytes]:
    """Answer with the gate's error (402, 400, 413, 503, ...); returns the body iterable."""
    status, headers, body = render_error(exc, accept)
    start_response(_status_line(status), headers)
    return [body]


def _status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


def _close(iterable: Iterable[bytes]) -> None:
    close = getattr(iterable, "close", None)
    if close is not None:
        close()


class _Settling:
    """One paid request's response: holds the app's start until the payment is settled."""

    def __init__(
        self,
        gate: PaymentGate,
        session: PaymentSession,
        start_response: StartResponse,
        accept: str | None,
    ) -> None:
        self.gate, self.session, self.accept = gate, session, accept
        self._start_response = start_response
        self._write: Any = None
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.committed = False
        self.blocked: bytes | None = None  # the gate's answer, sent instead of the app's content
        # Keeping the answer for retries with a payment identifier (x402 payment-identifier).
        self.recording = False
        self.code = 0
        self.final_headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.size = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
    ) -> Any:
        if exc_info is not None and self.committed:
            raise exc_info[1].with_traceback(exc_info[2])  # PEP 3333: too late to change
        self.status, self.headers = status, list(headers)
        return self.write

    def write(self, data: bytes) -> None:
        # Legacy apps write() before returning: nothing is written before settlement either.
        self.commit()
        if self.blocked is None and data:
            self.seen(data)
            self._write(data)

    def commit(self) -> None:
        """Settle for the app's status, then start the real response (the app's or the gate's)."""
        if self.committed:
            return
        if self.status is None:
            raise RuntimeError("the WSGI app sent a body without calling start_response")
        self.committed = True
        code = int(self.status.split(None, 1)[0])
        recording = self.session.idempotency is not None
        try:
            extra = self.gate.finish_sync(self.session, code, recording=recording)
        except PaymentError as exc:
            status, headers, self.blocked = render_error(exc, self.accept)
            self._write = self._start_response(_status_line(status), headers)
            return
        headers = (
            paid_response_headers(self.headers, extra) if extra or code < 400 else self.headers
        )
        self.recording = recording and self.session.idempotency is not None
        self.code, self.final_headers = code, headers
        self._write = self._start_response(self.status, headers)

    def seen(self, chunk: bytes) -> None:
        if self.recording:
            self.size += len(chunk)
            if self.size <= MAX_IDEMPOTENT_RESPONSE_BYTES:
                self.chunks.append(chunk)

    def ended(self, complete: bool) -> None:
        """The server has taken the whole answer (or closed early): keep it for retries."""
        # A per-second answer ended at its paid maximum is whole: it is all that was paid for.
        self.gate.delivered_sync(self.session, complete or self.gate.answer_overdue(self.session))
        if self.recording:
            self.recording = False
            whole = complete and self.size <= MAX_IDEMPOTENT_RESPONSE_BYTES
            body = b"".join(self.chunks) if whole else None
            self.gate.record_sync(self.session, self.code, self.final_headers, body)

    def respond(self, result: Iterable[bytes]) -> Iterable[bytes]:
        """The iterable to give the server for the app's ``result``."""
        iterator = iter(result)
        first: list[bytes] = []
        # An app that calls start_response lazily (a generator) must produce its first chunk
        # before its status is known: that chunk is held, never sent, until settlement.
        while self.status is None and not self.committed:
            try:
                first.append(next(iterator))
            except StopIteration:
                break
        self.commit()
        if self.blocked is not None:
            _close(result)
            return [self.blocked]
        body = _Replay(first, iterator, result, self)
        if self.session.reservation is not None:
            # Metered route: usage is read as the server pulls the body, then charged.
            content_type = next(
                (v for k, v in self.final_headers if k.lower() == "content-type"), None
            )
            session, gate = self.session, self.gate
            return MeteredBody(
                body,
                content_type,
                lambda usage: gate.complete_sync(session, usage),
                overdue=gate.overdue_check(session),
            )
        return body


class _Replay:
    """The app's iterable with its already pulled chunks put back in front; closes the app's."""

    def __init__(
        self, first: list[bytes], rest: Iterator[bytes], result: Iterable[bytes], owner: _Settling
    ) -> None:
        self._first, self._rest, self._result, self._owner = first, rest, result, owner

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._first:
            self._owner.seen(chunk)
            yield chunk
        for chunk in self._rest:
            self._owner.seen(chunk)
            yield chunk
        self._owner.ended(complete=True)

    def close(self) -> None:
        try:
            _close(self._result)
        finally:
            self._owner.ended(complete=False)


def credit_answer(
    gate: PaymentGate, environ: WSGIEnviron, start_response: StartResponse
) -> list[bytes]:
    """``GET /.well-known/x402/credit``: the balance of the session token's payer."""
    headers = Headers(
        (key[5:].replace("_", "-"), value)
        for key, value in environ.items()
        if key.startswith("HTTP_") and isinstance(value, str)
    )
    status, document = gate.credit_status_sync(headers)
    body = json.dumps(document).encode()
    start_response(
        _status_line(status),
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


class PaymentMiddleware:
    """WSGI middleware that charges for the routes in ``routes`` (see :mod:`x402gate.routing`).

    :param max_body_bytes: largest request body read for pricing on a paid route (413 above).
    :param trust_proxy_headers: deprecated: trust the peer's ``X-Forwarded-*`` headers whatever
        its address. Give the gate ``trusted_proxies`` (and ``public_origin``) instead.
    :param discovery: serve ``GET /.well-known/x402`` listing the paid routes.
    :param check_at_startup: when the middleware is built, check that every key of ``routes``
        matches a route of the app (when it lists them: Flask's ``url_map``, so wrap the app
        after its routes are registered) and run the gate's start-up checks
        (:meth:`~x402gate.gate.PaymentGate.check_startup`); a failure raises
        :class:`~x402gate.errors.ConfigurationError`.
    """

    def __init__(
        self,
        app: WSGIApp,
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
        if check_at_startup:
            # WSGI has no start-up event: the middleware is built when the app is.
            found = framework_routes(app)
            if found is not None:
                check_routes_exist(self.routes, *found)
            gate.check_startup_sync()

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = _text(environ.get("PATH_INFO", "") or "/")
        if self.discovery and method == "GET" and path == WELL_KNOWN_PATH:
            return self._discovery(environ, start_response)
        if method == "GET" and path == CREDIT_PATH:
            return credit_answer(self.gate, environ, start_response)
        route = self.routes.match(method, path)
        if route is None:
            return self.app(environ, start_response)
        accept = environ.get("HTTP_ACCEPT")
        try:
            body = self._read_body(environ)
            info = request_info_from_environ(
                environ,
                body,
                trust_proxy_headers=self.trust_proxy_headers,
                proxies=self.gate.trusted_proxies,
            )
            session = self.gate.begin_sync(route, info)
        except PaymentError as exc:
            return error_response(start_response, exc, accept)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ[PAYMENT_ENVIRON_KEY] = session.payment
        response = _Settling(self.gate, session, start_response, accept)
        result: Iterable[bytes] | None = None
        try:
            result = self.app(environ, response.start_response)
            return response.respond(result)
        except BaseException:
            # The app failed before its answer was committed: charge nothing (a no-op once
            # settled), and still close what it returned (PEP 3333).
            try:
                if result is not None:
                    _close(result)
            finally:
                self.gate.abort_sync(session)
            raise

    def _read_body(self, environ: WSGIEnviron) -> bytes:
        stream = environ.get("wsgi.input")
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            raise PaymentError(400, "invalid_content_length", "invalid Content-Length") from None
        if length > self.max_body_bytes:
            raise PaymentError(413, "request_too_large", "request body too large for a paid route")
        if stream is None or (length < 0 and not environ.get("wsgi.input_terminated")):
            # No length and a stream that may not end: reading it could block (PEP 3333).
            return b""
        limit = length if length >= 0 else self.max_body_bytes + 1
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = stream.read(min(limit - size, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > self.max_body_bytes:
            raise PaymentError(413, "request_too_large", "request body too large for a paid route")
        return b"".join(chunks)

    def _discovery(self, environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        base = base_url_of(environ, trust_proxy_headers=self.trust_proxy_headers, gate=self.gate)
        body = json.dumps(discovery_document(self.gate, self.routes, base)).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "public, max-age=300"),
                ("Access-Control-Allow-Origin", "*"),  # public terms, meant for crawlers
            ],
        )
        return [body]
