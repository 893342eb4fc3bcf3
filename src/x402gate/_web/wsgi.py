"""WSGI translation shared by the WSGI middleware and Flask: an environ into the neutral
request, a bounded request body, and :class:`WSGIFlowResponse`, which holds an app's
``start_response`` until its :class:`~x402gate.flow.PaymentFlow` has settled.

PEP 3333 strings carry raw bytes as latin-1; paths are UTF-8 on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import PaymentError
from ..flow import MAX_HELD_ANSWER_BYTES, Answer, PaymentFlow
from ..proxies import TrustedProxies
from ..request import Headers, RequestInfo
from ..siwx import split_url
from .body import FlowBody, close_iterable, closing
from .middleware import DEFAULT_MAX_BODY
from .types import StartResponse, WSGIEnviron

if TYPE_CHECKING:
    from ..gate import PaymentGate

__all__ = [
    "DEFAULT_MAX_BODY",
    "PAYMENT_ENVIRON_KEY",
    "WSGIFlowResponse",
    "answer_response",
    "base_url_of",
    "environ_headers",
    "environ_text",
    "read_body",
    "request_info_from_environ",
    "status_line",
]

PAYMENT_ENVIRON_KEY = "x402gate.payment"
"""Where the WSGI middleware puts the accepted payment in the environ."""

_NO_PROXIES = TrustedProxies()

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def environ_text(wsgi_str: str) -> str:
    """A WSGI string (raw bytes as latin-1) as the text it encodes in UTF-8."""
    return wsgi_str.encode("latin-1").decode("utf-8", "replace")


def environ_headers(environ: WSGIEnviron) -> Headers:
    """The request headers of a WSGI environ."""
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
        environ_text(raw_path),
        query_string=query,
        headers=environ_headers(environ),
        body=body,
        url=url,
        native=environ if native is None else native,
        client=client,
    )


def status_line(code: int) -> str:
    """``"402 Payment Required"``: the WSGI status string of ``code``."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


def answer_response(start_response: StartResponse, answer: Answer) -> list[bytes]:
    """Send ``answer`` (the gate's, instead of the app's); returns the body iterable."""
    start_response(status_line(answer.status), answer.headers)
    return [answer.body]


def read_body(environ: WSGIEnviron, max_bytes: int) -> bytes:
    """The request body, read once for pricing: 413 above ``max_bytes``, 400 for a bad length.

    A stream with no length that the server does not promise to end is not read (reading it
    could block, PEP 3333): the price sees an empty body."""
    stream = environ.get("wsgi.input")
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        raise PaymentError(400, "invalid_content_length", "invalid Content-Length") from None
    if length > max_bytes:
        raise PaymentError(413, "request_too_large", "request body too large for a paid route")
    if stream is None or (length < 0 and not environ.get("wsgi.input_terminated")):
        return b""
    limit = length if length >= 0 else max_bytes + 1
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = stream.read(min(limit - size, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > max_bytes:
        raise PaymentError(413, "request_too_large", "request body too large for a paid route")
    return b"".join(chunks)


class WSGIFlowResponse:
    """One paid WSGI answer: the app's ``start_response`` is held until the flow has settled
    for its status, so no status line, header or body byte reaches the server unpaid (apps that
    call ``start_response`` lazily, from inside a generator, included).

    Give the app :meth:`start_response`, then hand the server :meth:`respond` of what the app
    returned. When settlement fails the server gets the gate's answer and the app's content is
    dropped.
    """

    def __init__(self, flow: PaymentFlow, start_response: StartResponse) -> None:
        self.flow = flow
        self._start_response = start_response
        self._write: Any = None
        self._status: str | None = None
        self._headers: list[tuple[str, str]] = []
        self._answer: Answer | None = None  # the gate's, sent instead of the app's content
        self.committed = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
    ) -> Any:
        """The ``start_response`` the app calls: remembered, not sent yet."""
        if exc_info is not None and self.committed:
            raise exc_info[1].with_traceback(exc_info[2])  # PEP 3333: too late to change
        self._status, self._headers = status, list(headers)
        return self._legacy_write

    def _legacy_write(self, data: bytes) -> None:
        # Legacy apps write() before returning: nothing is written before settlement either.
        self._commit()
        step = None if self._answer is not None or not data else self.flow.body(data, False)
        if step is not None and step[0]:
            try:
                self._write(step[0])
            except BaseException:
                self.flow.sent_sync(step[0], False, ok=False)
                raise
            self.flow.sent_sync(step[0], step[1])

    def _commit(self, whole: bytes | None = None) -> None:
        """Settle for the app's status, then start the real answer (the app's or the gate's).
        ``whole`` is the app's whole body when it was held (:meth:`PaymentFlow.holds_answer`)."""
        if self.committed:
            return
        if self._status is None:
            raise RuntimeError("the WSGI app sent a body without calling start_response")
        self.committed = True
        code = int(self._status.split(None, 1)[0])
        start = self.flow.response_start_sync(code, self._headers, whole)
        if isinstance(start, Answer):
            self._answer = start
            self._write = self._start_response(status_line(start.status), start.headers)
        else:
            self._write = self._start_response(self._status, start)

    def respond(self, result: Iterable[bytes]) -> Iterable[bytes]:
        """The iterable to give the server for the app's ``result``; closing it closes the
        app's and ends the flow."""
        iterator: Iterator[bytes] = iter(result)
        first: list[bytes] = []
        # An app that calls start_response lazily (a generator) makes its first chunk before
        # its status is known: that chunk is held, never sent, until settlement.
        while self._status is None and not self.committed:
            try:
                first.append(next(iterator))
            except StopIteration:
                break
        whole = None
        if not self.committed and self.flow.holds_answer(self._headers):
            # Metered and paid by a channel voucher: measured whole before the headers go out,
            # unless it outgrows the hold (then it streams).
            try:
                whole = _hold(iterator, first)
            except BaseException:
                try:
                    close_iterable(result)
                finally:
                    self.flow.close_sync()  # the app failed: its step is released
                raise
            if whole is not None:
                first = [whole] if whole else []
        self._commit(whole)
        if self._answer is not None:
            try:
                close_iterable(result)
            finally:
                self.flow.close_sync()
            return [self._answer.body]
        return FlowBody(closing(iterator, result), self.flow, first)


def _hold(iterator: Iterator[bytes], chunks: list[bytes]) -> bytes | None:
    """Read the app's body into ``chunks`` until it ends (its bytes, joined) or outgrows
    :data:`~x402gate.flow.MAX_HELD_ANSWER_BYTES` (``None``: ``chunks`` holds what was read)."""
    size = sum(len(chunk) for chunk in chunks)
    while size <= MAX_HELD_ANSWER_BYTES:
        try:
            chunk = next(iterator)
        except StopIteration:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None
