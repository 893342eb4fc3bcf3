"""The price strategy interface and the simplest strategies.

:class:`PriceStrategy` is what every price is (quote before the work, optionally charge after
it); :class:`Flat` and :class:`Dynamic` are the strategies for a fixed price and a price
function. :func:`as_strategy` turns a route's ``price`` setting into a strategy, and
:func:`resolve_quote` / :func:`resolve_quote_sync` get a checked quote from any strategy. The
overview of every strategy is in :mod:`x402gate.pricing`.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, ClassVar, TypeAlias

from ..errors import ConfigurationError
from ..money import MAX_AMOUNT, PriceLike, format_usd, parse_price
from ..request import RequestInfo

__all__ = [
    "NO_PRICE_CODE",
    "Dynamic",
    "Flat",
    "PriceFunction",
    "PriceStrategy",
    "as_strategy",
    "resolve_quote",
    "resolve_quote_sync",
]

NO_PRICE_CODE = "no_price_for_request"
"""``PaymentError.code`` when a strategy has no price for a request (HTTP 400)."""

PriceFunction: TypeAlias = Callable[[RequestInfo], PriceLike | Awaitable[PriceLike]]
"""A user price function for :class:`Dynamic`: sync, or async (returns an awaitable)."""


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
