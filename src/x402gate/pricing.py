"""Price strategies: what a request costs before any work is done.

A :class:`PriceStrategy` turns a :class:`~x402gate.request.RequestInfo` into a **quote**, an ``int``
of micro-dollars (see :mod:`x402gate.money`) that the client must authorize. The quote is computed
twice for one paid call (once for the 402 challenge, once for the paid retry) and both must agree,
so a strategy must be deterministic: the same request always gets the same quote.

Built-in strategies:

* :class:`Flat`: one price for every request;
* :class:`Dynamic`: a sync or async function of the request;
* :class:`MatchRules`: ordered glob rules over method, path, query, headers and JSON body fields;
* :class:`ModelTable`: an LLM model name (``body.model`` by default) to a price;
* :class:`DecodedBody`: another strategy, over compressed bodies and forms decoded (bounded).

Field paths, used by :class:`MatchRules` and :class:`ModelTable`:

* ``method`` and ``path``;
* ``query.<name>``: a query parameter, name case-sensitive;
* ``header.<name>``: a header, name case-insensitive;
* ``body.<dotted.path>``: a field of the JSON body; list items by index (``body.messages.0.role``).
  Keys that contain dots cannot be addressed.

What is priced must be what the handler reads, so a request read ambiguously is refused, never
priced: a query parameter or header given more than once is answered 400 ``ambiguous_request``
(frameworks disagree on which value counts); a body read for a ``body.`` field is answered 400
``invalid_body`` when it is JSON that must not be read (another encoding than UTF-8, a key
repeated in an object, too deep or too large, see :meth:`RequestInfo.json
<x402gate.request.RequestInfo.json>`) and 415 ``unsupported_body`` when it is compressed or a
form, unless the price is wrapped in :class:`DecodedBody`.

A field that is absent (or a body that is not JSON) never matches, not even the pattern ``"*"``:
rules then fall through to the next rule or the fallback instead of pricing requests that lack
what the rule is about. Strings are matched as they are; other JSON values through their compact
JSON text (``true``, ``false``, ``null``, ``3``, ``0.5``, ``{"a":1}``).

No rule, model or fallback for a request is the client's problem: :class:`PaymentError` 400 with
code ``no_price_for_request`` (one code for every strategy, the message says what was missing and
never echoes the request).

Metered strategies (:class:`~x402gate.metering.PerToken`, :class:`~x402gate.metering.PerSecond`,
in :mod:`x402gate.metering`) set ``metered = True`` and implement ``charge(usage, request)``: the
actual cost of the request's measured usage, never above its quote.
"""

from __future__ import annotations

import abc
import fnmatch
import json
import math
import re
import zlib
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from typing import Any, ClassVar, TypeAlias
from urllib.parse import parse_qsl

from .errors import ConfigurationError, PaymentError
from .money import MAX_AMOUNT, PriceLike, format_usd, parse_price
from .request import (
    FORM_TYPES,
    INVALID_BODY_CODE,
    UNSUPPORTED_BODY_CODE,
    RequestInfo,
    ambiguous,
)

__all__ = [
    "MAX_FORM_FIELDS",
    "NO_PRICE_CODE",
    "DecodedBody",
    "Dynamic",
    "Flat",
    "MatchRules",
    "ModelTable",
    "PatternLike",
    "PriceFunction",
    "PriceStrategy",
    "Rule",
    "as_strategy",
    "resolve_quote",
    "resolve_quote_sync",
]

NO_PRICE_CODE = "no_price_for_request"
"""``PaymentError.code`` when a strategy has no price for a request (HTTP 400)."""

PriceFunction: TypeAlias = Callable[[RequestInfo], PriceLike | Awaitable[PriceLike]]
"""A user price function for :class:`Dynamic`: sync, or async (returns an awaitable)."""

PatternLike: TypeAlias = str | bool | int | float | list[Any] | tuple[Any, ...] | None
"""A condition in a rule: a glob, a JSON scalar (compared as JSON text) or a list of those."""


class PriceStrategy(abc.ABC):
    """Base class of price strategies; subclass it for a custom one.

    ``quote`` may return an ``int`` or an awaitable of one; :func:`resolve_quote` handles both.

    >>> class PerKilobyte(PriceStrategy):
    ...     def quote(self, request: RequestInfo) -> int:
    ...         return 1_000 + len(request.body)  # $0.001 plus $0.000001 per byte
    ...     def describe(self) -> dict[str, Any]:
    ...         return {"type": "per_kilobyte", "min": "$0.001"}
    """

    __slots__ = ()

    metered: ClassVar[bool] = False
    """True for strategies that charge measured usage after the work (``charge``)."""

    @abc.abstractmethod
    def quote(self, request: RequestInfo) -> int | Awaitable[int]:
        """Micro-dollars to authorize before the handler runs; same request, same quote.

        Raise :class:`~x402gate.errors.PaymentError` to refuse a request that cannot be priced.
        """

    def describe(self) -> dict[str, Any]:
        """A JSON-safe summary for discovery documents.

        For example ``{"type": "flat", "price": "$0.05"}``; the default gives the class name.
        """
        return {"type": type(self).__name__}

    def charge(self, usage: Any, request: RequestInfo | None = None) -> int:
        """What the measured ``usage`` of ``request`` cost (metered strategies only).

        Never above ``quote(request)``; ``usage=None`` (nothing measured) costs the quote.
        Strategies whose price depends on the request (``PerToken``) require ``request``.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a metered price strategy")


class Flat(PriceStrategy):
    """The same price for every request.

    >>> Flat("$0.05").amount
    50000
    >>> Flat(0.05).describe()
    {'type': 'flat', 'price': '$0.05'}
    """

    __slots__ = ("amount",)

    def __init__(self, price: PriceLike) -> None:
        self.amount = parse_price(price)

    def quote(self, request: RequestInfo) -> int:
        return self.amount

    def describe(self) -> dict[str, Any]:
        return {"type": "flat", "price": format_usd(self.amount)}

    def __repr__(self) -> str:
        return f"Flat({format_usd(self.amount)!r})"


class Dynamic(PriceStrategy):
    """A price computed by your function, sync or async, from the request.

    The function returns any :data:`~x402gate.money.PriceLike` (``"$0.05"``, ``Decimal``, ...),
    checked by :func:`~x402gate.money.parse_price` on every call: a bad result raises
    :class:`~x402gate.errors.ConfigurationError` (a server bug, answered 500). It must be
    deterministic, since the paid retry is quoted again and must get the same price.

    >>> def by_size(request: RequestInfo) -> str:
    ...     return "$0.10" if len(request.body) > 10_000 else "$0.01"
    >>> Dynamic(by_size).quote(RequestInfo("POST", "/v1/summarize", body=b"short"))
    10000
    """

    __slots__ = ("fn",)

    def __init__(self, fn: PriceFunction) -> None:
        if not callable(fn):
            raise ConfigurationError(f"Dynamic needs a function of the request, got {fn!r}")
        self.fn = fn

    def quote(self, request: RequestInfo) -> int | Awaitable[int]:
        result = self.fn(request)
        if isinstance(result, Awaitable):
            return _Parsed(result, self._parse)
        return self._parse(result)

    def _parse(self, result: object) -> int:
        try:
            return parse_price(result)
        except ConfigurationError as exc:
            raise ConfigurationError(f"price function {_name_of(self.fn)}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        return {"type": "dynamic"}

    def __repr__(self) -> str:
        return f"Dynamic({_name_of(self.fn)})"


class _Parsed(Awaitable[int]):
    """The awaited result of a price function, parsed; ``close`` reaches the user's coroutine.

    A plain ``async def`` wrapper would hide the user's coroutine: a sync server that refuses an
    async price could close only the wrapper, leaving a "never awaited" warning behind.
    """

    __slots__ = ("_parse", "_pending")

    def __init__(self, pending: Awaitable[object], parse: Callable[[object], int]) -> None:
        self._pending = pending
        self._parse = parse

    def __await__(self) -> Generator[Any, None, int]:
        result = yield from self._pending.__await__()
        return self._parse(result)

    def close(self) -> None:
        close = getattr(self._pending, "close", None)
        if callable(close):
            close()


# --- fields and patterns ---------------------------------------------------------------------

_ROOTS = "'method', 'path', 'query.<name>', 'header.<name>' or 'body.<dotted.path>'"


class _Field:
    """A compiled field path; ``read`` gives the field's text, or None when it is absent."""

    __slots__ = ("kind", "name", "parts", "path")

    def __init__(self, path: object) -> None:
        if not isinstance(path, str):
            raise ConfigurationError(f"field must be a string such as 'body.model', got {path!r}")
        self.path = path
        kind, dot, name = path.partition(".")
        self.kind = kind
        self.name = name
        self.parts: tuple[str, ...] = ()
        if kind in ("method", "path") and not dot:
            return
        if kind in ("query", "header") and name:
            return
        if kind == "body" and name:
            self.parts = tuple(name.split("."))
            if all(self.parts):
                return
        raise ConfigurationError(f"unknown field {path!r}: use {_ROOTS}")

    def read(self, request: RequestInfo) -> str | None:
        if self.kind == "method":
            return request.method
        if self.kind == "path":
            return request.path
        if self.kind == "query":
            return request.query_value(self.name)
        if self.kind == "header":
            return request.header_value(self.name)
        node = request.json()  # parsed once per request and cached by RequestInfo
        for part in self.parts:
            if isinstance(node, dict):
                if part not in node:
                    return None
                node = node[part]
            elif isinstance(node, list) and part.isascii() and part.isdigit():
                index = int(part)
                if index >= len(node):
                    return None
                node = node[index]
            else:
                return None
        return node if isinstance(node, str) else _json_text(node)


def _json_text(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _compile_patterns(field: _Field, pattern: object) -> tuple[re.Pattern[str], ...]:
    """Validate one condition's pattern(s) and compile them."""
    alternatives = list(pattern) if isinstance(pattern, list | tuple) else [pattern]
    if not alternatives:
        raise ConfigurationError(f"condition on {field.path!r} has an empty list of patterns")
    texts = []
    for item in alternatives:
        if isinstance(item, str):
            # RequestInfo upper-cases the method, so a lower-case pattern would never match.
            texts.append(item.upper() if field.kind == "method" else item)
        elif (
            item is None
            or isinstance(item, bool | int)
            or (isinstance(item, float) and math.isfinite(item))
        ):
            texts.append(_json_text(item))  # YAML `stream: true` means the JSON value true
        else:
            raise ConfigurationError(
                f"condition on {field.path!r} must be a glob string, a JSON scalar or a list "
                f"of those, got {item!r}"
            )
    # fnmatch.translate + re is exactly fnmatch.fnmatchcase, compiled once at construction.
    return tuple(re.compile(fnmatch.translate(text)) for text in texts)


class _Condition:
    __slots__ = ("field", "globs")

    def __init__(self, path: object, pattern: object) -> None:
        self.field = _Field(path)
        self.globs = _compile_patterns(self.field, pattern)

    def matches(self, request: RequestInfo) -> bool:
        value = self.field.read(request)
        return value is not None and any(glob.match(value) for glob in self.globs)


# --- MatchRules ------------------------------------------------------------------------------


class Rule:
    """One pricing rule: all conditions must match (AND), then ``price`` applies.

    Conditions are globs (:func:`fnmatch.fnmatchcase`: ``*``, ``?``, ``[abc]``; case-sensitive)
    over field paths, given in ``when`` or as keywords, where ``__`` stands for ``.``
    (``body__model`` is ``body.model``). A list of patterns matches any of them; ``True``,
    ``False``, ``None`` and numbers match the JSON value. A rule without conditions matches every
    request.

    >>> Rule(price="$0.01", method="GET")
    Rule(price='$0.01', when={'method': 'GET'})
    >>> Rule(price="$0.20", when={"body.model": "claude-3-opus*", "body.stream": True}).price
    200000
    """

    __slots__ = ("_conditions", "price", "when")

    def __init__(
        self,
        price: PriceLike,
        when: Mapping[str, PatternLike] | None = None,
        **conditions: PatternLike,
    ) -> None:
        merged: dict[str, Any] = {}
        if when is not None:
            if not isinstance(when, Mapping):
                raise ConfigurationError(
                    f"rule conditions must be a mapping of field to pattern, got {when!r}"
                )
            merged.update(when)
        for key, pattern in conditions.items():
            path = key.replace("__", ".")
            if path in merged:
                raise ConfigurationError(f"rule gives field {path!r} twice")
            merged[path] = pattern
        self.price = parse_price(price)
        self.when: dict[str, Any] = merged
        self._conditions = tuple(_Condition(path, pattern) for path, pattern in merged.items())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """A rule from ``{"match": {field: pattern, ...}, "price": ...}`` (``when`` also works).

        >>> Rule.from_dict({"match": {"query.tier": "pro"}, "price": "$0.10"}).price
        100000
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a rule must be a mapping, got {data!r}")
        unknown = set(data) - {"match", "when", "price"}
        if unknown:
            raise ConfigurationError(
                f"unknown rule key(s) {sorted(map(str, unknown))}: a rule has 'match' and 'price'"
            )
        if "price" not in data:
            raise ConfigurationError("rule has no 'price'")
        if "match" in data and "when" in data:
            raise ConfigurationError("rule gives both 'match' and 'when': use one")
        when = data.get("match", data.get("when"))
        return cls(data["price"], {} if when is None else when)

    def matches(self, request: RequestInfo) -> bool:
        """True when every condition matches the request."""
        return all(condition.matches(request) for condition in self._conditions)

    def __repr__(self) -> str:
        return f"Rule(price={format_usd(self.price)!r}, when={self.when!r})"


class MatchRules(PriceStrategy):
    """Ordered rules, first match wins; ``fallback`` prices requests no rule matches.

    Rules are :class:`Rule` objects or dicts ``{"match": {...}, "price": ...}``. Every price and
    pattern is checked here, at construction. Without a fallback an unmatched request is answered
    400 ``no_price_for_request``.

    >>> pricing = MatchRules(
    ...     [
    ...         Rule(price="$0.20", body__model="claude-3-opus*"),
    ...         {"match": {"body.model": "claude-3-5-*", "header.x-tier": "batch"},
    ...          "price": "$0.02"},
    ...         Rule(price="$0.05", body__model="claude-3-5-*"),
    ...     ],
    ...     fallback="$0.10",
    ... )
    >>> pricing.quote(RequestInfo("POST", "/v1/messages", body=b'{"model": "claude-3-5-haiku"}'))
    50000
    """

    __slots__ = ("fallback", "rules")

    def __init__(
        self,
        rules: Iterable[Rule | Mapping[str, Any]],
        fallback: PriceLike | None = None,
    ) -> None:
        if isinstance(rules, str | bytes | Mapping) or not isinstance(rules, Iterable):
            raise ConfigurationError(f"rules must be a list of rules, got {rules!r}")
        built: list[Rule] = []
        for index, rule in enumerate(rules):
            if isinstance(rule, Rule):
                built.append(rule)
                continue
            try:
                built.append(Rule.from_dict(rule))
            except ConfigurationError as exc:
                raise ConfigurationError(f"rule {index}: {exc}") from None
        if not built:
            raise ConfigurationError("MatchRules needs at least one rule (use Flat for one price)")
        self.rules: tuple[Rule, ...] = tuple(built)
        self.fallback = _parse_fallback(fallback)

    def quote(self, request: RequestInfo) -> int:
        for rule in self.rules:
            if rule.matches(request):
                return rule.price
        if self.fallback is not None:
            return self.fallback
        raise PaymentError(400, NO_PRICE_CODE, "no pricing rule matches this request")

    def describe(self) -> dict[str, Any]:
        # Only the range: rules may test headers (API tiers, keys) that are not for publishing.
        return {"type": "match", **_price_range([rule.price for rule in self.rules], self.fallback)}

    def __repr__(self) -> str:
        return f"MatchRules({list(self.rules)!r}, fallback={_usd_or_none(self.fallback)!r})"


class ModelTable(PriceStrategy):
    """Price by model name: an exact name first, then glob keys in insertion order, then fallback.

    The model is read from ``field`` (any field path, ``body.model`` by default). A request that
    names no model or an unpriced one without a fallback is answered 400 ``no_price_for_request``.

    >>> table = ModelTable({"gpt-4o": "$0.05", "gpt-4o-mini": "$0.005", "gpt-4*": "$0.08"})
    >>> table.quote(RequestInfo("POST", "/v1/chat/completions", body=b'{"model": "gpt-4.1"}'))
    80000
    """

    __slots__ = ("_exact", "_globs", "fallback", "field")

    def __init__(
        self,
        prices: Mapping[str, PriceLike],
        *,
        fallback: PriceLike | None = None,
        field: str = "body.model",
    ) -> None:
        if not isinstance(prices, Mapping):
            raise ConfigurationError(
                f"ModelTable needs a mapping of model to price, got {prices!r}"
            )
        if not prices and fallback is None:
            raise ConfigurationError("ModelTable needs at least one model or a fallback")
        self.field = _Field(field)
        self._exact: dict[str, int] = {}
        self._globs: list[tuple[re.Pattern[str], int]] = []
        for model, price in prices.items():
            if not isinstance(model, str) or not model:
                raise ConfigurationError(f"model names must be non-empty strings, got {model!r}")
            try:
                amount = parse_price(price)
            except ConfigurationError as exc:
                raise ConfigurationError(f"model {model!r}: {exc}") from None
            self._exact[model] = amount
            if any(char in model for char in "*?["):
                self._globs.append((re.compile(fnmatch.translate(model)), amount))
        self.fallback = _parse_fallback(fallback)

    def quote(self, request: RequestInfo) -> int:
        model = self.field.read(request)
        if model is not None:
            price = self._exact.get(model)
            if price is not None:
                return price
            for glob, amount in self._globs:
                if glob.match(model):
                    return amount
        if self.fallback is not None:
            return self.fallback
        if model is None:
            message = f"the request names no model (expected in {self.field.path})"
        else:
            message = "the requested model has no price on this endpoint"
        raise PaymentError(400, NO_PRICE_CODE, message)

    @property
    def prices(self) -> dict[str, int]:
        """Model name or glob to micro-dollars, in lookup order for globs."""
        return dict(self._exact)

    def describe(self) -> dict[str, Any]:
        # Model prices are the public menu: publishing them lets agents choose before paying.
        summary: dict[str, Any] = {
            "type": "model_table",
            "field": self.field.path,
            "models": {model: format_usd(amount) for model, amount in self._exact.items()},
        }
        summary.update(_price_range(list(self._exact.values()), self.fallback))
        return summary

    def __repr__(self) -> str:
        models = {model: format_usd(amount) for model, amount in self._exact.items()}
        return f"ModelTable({models!r}, fallback={_usd_or_none(self.fallback)!r})"


# --- DecodedBody -----------------------------------------------------------------------------

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_FORM = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 1_000
"""Fields of one form body :class:`DecodedBody` reads; more is answered 400 ``invalid_body``."""


class DecodedBody(PriceStrategy):
    """Prices compressed bodies and forms by what they hold: the body is decoded, within
    ``max_bytes``, and ``price`` quotes the decoded request.

    Without it, a route priced by its body answers such bodies 415 ``unsupported_body``: priced
    as "not JSON" they would cost the fallback while the handler reads the fields inside.

    :param price: the strategy (or price) that quotes the decoded request, metered ones too.
    :param encodings: ``Content-Encoding`` values decompressed: ``"gzip"`` and ``"deflate"``
        (one coding; a list of codings stays 415).
    :param forms: read ``application/x-www-form-urlencoded`` bodies as a flat object of their
        fields (``body.<name>``); a field given twice is 400 ``ambiguous_request``, more than
        :data:`MAX_FORM_FIELDS` fields 400 ``invalid_body``. ``multipart/form-data`` stays 415.
    :param max_bytes: the largest decoded body (1 MiB by default): a larger one, a zip bomb
        say, is answered 413 ``request_too_large`` after decompressing at most that much.

    >>> import gzip
    >>> pricing = DecodedBody(ModelTable({"mini": "$0.01", "opus": "$0.20"}), forms=True)
    >>> pricing.quote(RequestInfo("POST", "/", headers={"Content-Encoding": "gzip"},
    ...                           body=gzip.compress(b'{"model": "opus"}')))
    200000
    >>> pricing.quote(RequestInfo("POST", "/", body=b"model=mini",
    ...                           headers={"Content-Type": "application/x-www-form-urlencoded"}))
    10000
    """

    __slots__ = ("encodings", "forms", "max_bytes", "price")

    def __new__(cls, price: Any, *args: Any, **kwargs: Any) -> DecodedBody:
        # ``metered`` is a class attribute the gate reads: a metered price gets the metered twin.
        if cls is DecodedBody and as_strategy(price).metered:
            cls = _MeteredDecodedBody
        return super().__new__(cls)

    def __init__(
        self,
        price: PriceStrategy | PriceLike | PriceFunction,
        *,
        encodings: Iterable[str] = ("gzip", "deflate"),
        forms: bool = False,
        max_bytes: int = 1 << 20,
    ) -> None:
        self.price = as_strategy(price)
        if isinstance(encodings, str):
            encodings = (encodings,)
        names = tuple(str(name).lower() for name in encodings)
        unknown = [name for name in names if name not in _WBITS]
        if unknown:
            raise ConfigurationError(
                f"DecodedBody encodings: {unknown!r} unknown (use 'gzip' or 'deflate')"
            )
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigurationError(f"DecodedBody max_bytes must be a positive int: {max_bytes!r}")
        self.encodings = frozenset(names)
        self.forms = bool(forms)
        self.max_bytes = max_bytes

    def decode(self, request: RequestInfo) -> RequestInfo:
        """``request`` with its body decoded (itself when there is nothing to decode).

        Raises the 4xx :class:`PaymentError` the class documents.
        """
        if request.unsupported_body() is None:
            return request
        body = request.body
        coding = request.headers.get("content-encoding", "").strip().lower()
        if coding not in ("", "identity"):
            if coding not in self.encodings:
                raise PaymentError(
                    415, UNSUPPORTED_BODY_CODE, "this Content-Encoding is not accepted here"
                )
            body = self._inflate(body, _WBITS[coding])
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media == _FORM and self.forms:
            return request.decoded(body, self._form_fields(body))
        if media in FORM_TYPES:
            raise PaymentError(
                415, UNSUPPORTED_BODY_CODE, f"a {media} body cannot be priced on this endpoint"
            )
        return request.decoded(body)

    def _inflate(self, body: bytes, wbits: int) -> bytes:
        inflater = zlib.decompressobj(wbits)
        try:
            # Never more than max_bytes + 1 out, whatever the ratio: a zip bomb stops here.
            out = inflater.decompress(body, self.max_bytes + 1)
        except zlib.error:
            raise PaymentError(
                400, INVALID_BODY_CODE, "the body is not validly compressed"
            ) from None
        if len(out) > self.max_bytes or inflater.unconsumed_tail:
            raise PaymentError(
                413, "request_too_large", "the decompressed body is too large for this endpoint"
            )
        if not inflater.eof or inflater.unused_data:
            # Cut short, or more after the end (readers differ on further gzip members).
            raise PaymentError(400, INVALID_BODY_CODE, "the body is not validly compressed")
        return out

    def _form_fields(self, body: bytes) -> dict[str, str]:
        try:
            text = body.decode("ascii")
            pairs = parse_qsl(
                text,
                keep_blank_values=True,
                errors="strict",
                max_num_fields=MAX_FORM_FIELDS,
            )
        except (UnicodeDecodeError, ValueError):
            raise PaymentError(400, INVALID_BODY_CODE, "the form body cannot be read") from None
        fields: dict[str, str] = {}
        for name, value in pairs:
            if name in fields:
                raise ambiguous(f"form field {name!r}")
            fields[name] = value
        return fields

    def quote(self, request: RequestInfo) -> int | Awaitable[int]:
        return self.price.quote(self.decode(request))

    def charge(self, usage: Any, request: RequestInfo | None = None) -> int:
        return self.price.charge(usage, None if request is None else self.decode(request))

    def describe(self) -> dict[str, Any]:
        return self.price.describe()

    def __repr__(self) -> str:
        return (
            f"DecodedBody({self.price!r}, encodings={sorted(self.encodings)!r}, forms={self.forms})"
        )


class _MeteredDecodedBody(DecodedBody):
    __slots__ = ()
    metered: ClassVar[bool] = True


# --- helpers ---------------------------------------------------------------------------------


def _price_range(amounts: list[int], fallback: int | None) -> dict[str, str]:
    every = amounts + ([] if fallback is None else [fallback])
    summary = {"min": format_usd(min(every)), "max": format_usd(max(every))}
    if fallback is not None:
        summary["fallback"] = format_usd(fallback)
    return summary


def _parse_fallback(fallback: PriceLike | None) -> int | None:
    if fallback is None:
        return None
    try:
        return parse_price(fallback)
    except ConfigurationError as exc:
        raise ConfigurationError(f"fallback: {exc}") from None


def _usd_or_none(amount: int | None) -> str | None:
    return None if amount is None else format_usd(amount)


def _name_of(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def as_strategy(price: PriceLike | PriceStrategy | PriceFunction) -> PriceStrategy:
    """The strategy for a route's ``price`` setting: strategies as they are, a callable becomes
    :class:`Dynamic`, anything else a :class:`Flat` price.

    >>> as_strategy("$0.05")
    Flat('$0.05')
    >>> as_strategy(lambda request: "$0.01").quote(RequestInfo("GET", "/"))
    10000
    """
    if isinstance(price, PriceStrategy):
        return price
    if isinstance(price, type):
        raise ConfigurationError(
            f"price {price.__name__} is a class: pass an instance, e.g. {price.__name__}(...)"
        )
    if callable(price):
        return Dynamic(price)
    if isinstance(price, Mapping | list | tuple):
        raise ConfigurationError(
            f"price {price!r} is not an amount: build MatchRules([...]) or ModelTable({{...}})"
        )
    return Flat(price)


def _checked_quote(strategy: PriceStrategy, quote: object) -> int:
    if isinstance(quote, bool) or not isinstance(quote, int) or not 0 < quote <= MAX_AMOUNT:
        raise ConfigurationError(
            f"{strategy!r} quoted {quote!r}: a quote must be a positive int of micro-dollars "
            "(use x402gate.money.parse_price to convert a price)"
        )
    return quote


async def resolve_quote(strategy: PriceStrategy, request: RequestInfo) -> int:
    """The strategy's quote for ``request``, awaited if needed and checked to be a positive int.

    >>> import asyncio
    >>> asyncio.run(resolve_quote(Flat("$0.05"), RequestInfo("GET", "/")))
    50000
    """
    quote: object = strategy.quote(request)
    if isinstance(quote, Awaitable):
        quote = await quote
    return _checked_quote(strategy, quote)


def resolve_quote_sync(strategy: PriceStrategy, request: RequestInfo) -> int:
    """:func:`resolve_quote` for sync servers (WSGI); an async strategy there is a configuration
    error, because running an event loop per request behind the user's back would hide the cost.

    >>> resolve_quote_sync(Flat("$0.05"), RequestInfo("GET", "/"))
    50000
    """
    quote: object = strategy.quote(request)
    if isinstance(quote, Awaitable):
        close = getattr(quote, "close", None)
        if callable(close):
            close()  # avoid a "coroutine was never awaited" warning
        raise ConfigurationError(
            f"{strategy!r} is asynchronous and cannot price requests on a sync (WSGI) server: "
            "use a sync price function there"
        )
    return _checked_quote(strategy, quote)
