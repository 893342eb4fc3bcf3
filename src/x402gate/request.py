"""The framework-neutral view of an HTTP request that pricing and the gate work on.

Integrations build one :class:`RequestInfo` per request from their framework's request object;
price strategies and hooks read it. ``native`` carries the framework's own request for user
callables that need more (a Flask ``Request``, a Starlette ``Request``, a Django ``HttpRequest``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

from . import _json

__all__ = ["Headers", "RequestInfo"]

_NOT_PARSED: Any = object()


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only header mapping; repeated headers are joined with ``", "``."""

    __slots__ = ("_items",)

    def __init__(self, raw: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        items: dict[str, str] = {}
        pairs = raw.items() if isinstance(raw, Mapping) else raw
        for name, value in pairs:
            key = name.lower()
            items[key] = f"{items[key]}, {value}" if key in items else value
        self._items = items

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
        "_query",
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
        self._query: dict[str, str] | None = None

    def _default_url(self) -> str:
        host = self.headers.get("host") or "localhost"
        suffix = f"?{self.query_string}" if self.query_string else ""
        return f"http://{host}{self.path}{suffix}"

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; for a repeated name the first value wins."""
        if self._query is None:
            parsed: dict[str, str] = {}
            for name, value in parse_qsl(self.query_string, keep_blank_values=True):
                parsed.setdefault(name, value)
            self._query = parsed
        return self._query

    def json(self) -> Any:
        """The body parsed as JSON, or ``None`` when it is empty or not JSON."""
        if self._json is _NOT_PARSED:
            value: Any = None
            if self.body:
                try:
                    value = _json.loads(self.body)
                except (ValueError, UnicodeDecodeError):
                    value = None
            self._json = value
        return self._json

    @property
    def resource(self) -> str:
        """What a payment is bound to: method and path (query excluded)."""
        return f"{self.method} {self.path}"

    def __repr__(self) -> str:
        return f"RequestInfo({self.method} {self.path!r})"
