"""The framework-neutral view of an HTTP request that pricing and the gate work on.

Integrations build one :class:`RequestInfo` per request from their framework's request object;
price strategies and hooks read it. ``native`` carries the framework's own request for user
callables that need more (a Flask ``Request``, a Starlette ``Request``, a Django ``HttpRequest``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl

from . import _json
from .errors import PaymentError

T = TypeVar("T")

__all__ = [
    "AMBIGUOUS_CODE",
    "FORM_TYPES",
    "INVALID_BODY_CODE",
    "UNSUPPORTED_BODY_CODE",
    "Headers",
    "RequestInfo",
    "ambiguous",
]

AMBIGUOUS_CODE = "ambiguous_request"
"""``PaymentError.code`` (400) when pricing reads a field the request gives more than once."""

INVALID_BODY_CODE = "invalid_body"
"""``PaymentError.code`` (400) when pricing reads a JSON body that must not be read: another
encoding than UTF-8, nesting deeper than 256 levels, more than 200,000 values, a number of more
than 4300 digits, a key repeated in an object."""

UNSUPPORTED_BODY_CODE = "unsupported_body"
"""``PaymentError.code`` (415) when pricing reads a body it cannot read as the handler would: a
compressed body (``Content-Encoding``) or a form (``multipart/form-data``,
``application/x-www-form-urlencoded``), unless the route's price is wrapped in
:class:`~x402gate.pricing.DecodedBody`."""

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
"""Media types of form bodies: handlers read fields from them that JSON pricing cannot see."""

_NOT_PARSED: Any = object()


class _Refused:
    """The cached outcome of a body that pricing must refuse."""

    __slots__ = ("error",)

    def __init__(self, error: PaymentError) -> None:
        self.error = error


def ambiguous(what: str) -> PaymentError:
    """The 400 for a priced field given more than once (``what`` names it, never its values)."""
    return PaymentError(
        400,
        AMBIGUOUS_CODE,
        f"{what} is given more than once: the price cannot depend on which one counts",
    )


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only header mapping; repeated headers are joined with ``", "``.

    Frameworks disagree on a repeated header (Starlette gives the first, others join them), so
    :meth:`repeated` tells whether a name came more than once: pricing refuses to read it.
    """

    __slots__ = ("_items", "_repeated")

    def __init__(self, raw: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        items: dict[str, str] = {}
        repeated: set[str] = set()
        pairs = raw.items() if isinstance(raw, Mapping) else raw
        for name, value in pairs:
            key = name.lower()
            if key in items:
                items[key] = f"{items[key]}, {value}"
                repeated.add(key)
            else:
                items[key] = value
        self._items = items
        self._repeated = frozenset(repeated)

    def repeated(self, key: str) -> bool:
        """True when the header ``key`` came more than once (its value is then a join)."""
        return key.lower() in self._repeated

    @classmethod
    def from_asgi(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        return cls((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key.lower(), default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class RequestInfo:
    """One HTTP request as the payment layer sees it.

    ``path`` is the decoded path without the query; ``url`` the absolute resource URL put into
    payment requirements; ``body`` the raw body bytes (empty when there is none or when the
    integration could not read it without consuming it); ``client`` the client's IP address
    (the TCP peer, or behind the gate's ``trusted_proxies`` the rightmost ``X-Forwarded-For``
    entry that is not one of them), ``None`` when the server does not say.
    """

    __slots__ = (
        "_json",
        "_memo",
        "_plain",
        "_query",
        "_repeated_query",
        "body",
        "client",
        "headers",
        "method",
        "native",
        "path",
        "query_string",
        "url",
    )

    def __init__(
        self,
        method: str,
        path: str,
        *,
        query_string: str = "",
        headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        url: str | None = None,
        native: Any = None,
        client: str | None = None,
    ) -> None:
        self.method = method.upper()
        self.path = path or "/"
        self.query_string = query_string
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body
        self.url = url if url is not None else self._default_url()
        self.native = native
        self.client = client
        self._json: Any = _NOT_PARSED
        self._memo: dict[object, tuple[bytes, str, Any]] | None = None
        self._plain = False  # the body was decoded for pricing (see pricing.DecodedBody)
        self._query: dict[str, str] | None = None
        self._repeated_query: frozenset[str] = frozenset()

    def _default_url(self) -> str:
        host = self.headers.get("host") or "localhost"
        suffix = f"?{self.query_string}" if self.query_string else ""
        return f"http://{host}{self.path}{suffix}"

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; for a repeated name the first value wins (see :meth:`query_value`)."""
        if self._query is None:
            parsed: dict[str, str] = {}
            repeated: set[str] = set()
            for name, value in parse_qsl(self.query_string, keep_blank_values=True):
                if name in parsed:
                    repeated.add(name)
                else:
                    parsed[name] = value
            self._query = parsed
            self._repeated_query = frozenset(repeated)
        return self._query

    def query_value(self, name: str) -> str | None:
        """The query parameter ``name`` for pricing: ``None`` when absent, and a 400
        ``ambiguous_request`` when it is repeated (frameworks disagree on which value counts:
        Flask takes the first, Starlette, FastAPI and Django the last)."""
        value = self.query.get(name)
        if value is not None and name in self._repeated_query:
            raise ambiguous(f"query parameter {name!r}")
        return value

    def header_value(self, name: str) -> str | None:
        """The header ``name`` for pricing: ``None`` when absent, and a 400
        ``ambiguous_request`` when it came more than once."""
        value: str | None = self.headers.get(name)
        if value is not None and self.headers.repeated(name):
            raise ambiguous(f"header {name.lower()!r}")
        return value

    def memo(self, key: object, compute: Callable[[], T]) -> T:
        """``compute()``, run once per request for ``key`` while the body and query string are
        the ones it read (a figure several steps derive from the body, such as a per-token
        price's bounds, which both the quote and the charge need). An exception is not kept."""
        memo = self._memo
        if memo is None:
            memo = self._memo = {}
        else:
            kept = memo.get(key)
            if kept is not None and kept[0] is self.body and kept[1] is self.query_string:
                return cast("T", kept[2])
        value = compute()
        memo[key] = (self.body, self.query_string, value)
        return value

    def unsupported_body(self) -> str | None:
        """Why the body cannot be read for pricing as the handler would read it, or ``None``."""
        if self._plain:
            return None
        encoding = self.headers.get("content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return "a compressed body (Content-Encoding)"
        media = self.headers.get("content-type")
        if media is not None:
            media = media.split(";", 1)[0].strip().lower()
            if media in FORM_TYPES:
                return f"a {media} body"
        return None

    def json(self) -> Any:
        """The body parsed as JSON for pricing, or ``None`` when it is empty or not JSON.

        A body that must not be read is refused, never read as "not JSON": 415
        ``unsupported_body`` for a compressed body or a form (see :meth:`unsupported_body`), 400
        ``invalid_body`` for JSON in another encoding than UTF-8, too deep, too large, with a
        number too long or a key repeated in an object (see :mod:`x402gate._json`).
        """
        if self._json is _NOT_PARSED:
            try:
                self._json = self._parse_json()
            except PaymentError as exc:
                self._json = _Refused(exc)  # every rule reading the body gets the same answer
        if isinstance(self._json, _Refused):
            raise self._json.error
        return self._json

    def _parse_json(self) -> Any:
        # Before looking at the body: an adapter may leave an upload unread (Django does), and
        # an empty body must not make a form priceable as "no fields".
        reason = self.unsupported_body()
        if reason is not None:
            raise PaymentError(
                415,
                UNSUPPORTED_BODY_CODE,
                f"{reason} cannot be priced on this endpoint: send it as plain JSON",
            )
        if not self.body:
            return None
        try:
            return _json.loads(self.body, unique_keys=True)
        except _json.UnsafeJSON as exc:
            raise PaymentError(
                400, INVALID_BODY_CODE, f"the body cannot be priced: {exc}"
            ) from None
        except ValueError:
            return None  # not JSON: no field of it can match

    def decoded(self, body: bytes, fields: Mapping[str, str] | None = None) -> RequestInfo:
        """A copy of this request whose body is ``body``, already decoded for pricing; with
        ``fields`` (a form's), those are what :meth:`json` gives. Used by
        :class:`~x402gate.pricing.DecodedBody`; ``native`` is the framework's original request.
        """
        copy = RequestInfo(
            self.method,
            self.path,
            query_string=self.query_string,
            headers=self.headers,
            body=body,
            url=self.url,
            native=self.native,
        )
        copy._plain = True
        if fields is not None:
            copy._json = dict(fields)
        return copy

    @property
    def resource(self) -> str:
        """What a payment is bound to: method and path (query excluded)."""
        return f"{self.method} {self.path}"

    def __repr__(self) -> str:
        return f"RequestInfo({self.method} {self.path!r})"
