"""Prices that know the payer: volume discounts from the payer's history in the journal.

:class:`PayerPrice` wraps a function ``fn(request, summary)`` where ``summary`` is a
:class:`PayerSummary` of the payer's paid requests and spend in the current period (read from
the store's payments journal), or ``None`` when the request does not say who pays. ``None`` must
give the full price: it is the price every anonymous 402 quotes, and the most a discount may
lower. :class:`Tiered` is the usual case: cheaper after N requests this month.

The same request still gets the same quote:

* ``batch-settlement`` (payment channels): the 402 quotes the full price, the voucher's ceiling;
  when the voucher is committed the payer is known and is charged the discounted price inside
  that ceiling.
* ``exact``: a discounted quote only when the unpaid request already identifies its payer with
  a session token (``X402GATE-SESSION``): a paid answer of a payer-priced route carries one
  when the gate has a ``public_origin`` (tokens are issued for it), and the client sends it
  back; the paid retry carries the same token and is quoted the same. Any other request is
  quoted the full price.

The period's figures are cached per payer for ``cache_seconds`` (60 by default), so a 402 and
its paid retry see the same summary and a busy payer costs one journal read a minute.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigurationError
from ..money import PriceLike, format_usd, parse_price
from ..request import RequestInfo
from .strategy import PriceStrategy

__all__ = ["PayerPrice", "PayerSummary", "Period", "Tiered", "period_start"]

Period = Literal["month", "week", "day"]


@dataclass(frozen=True, slots=True)
class PayerSummary:
    """One payer's history in the current period, from the payments journal.

    ``requests``: paid requests (settled, charged from credit, or channel charges);
    ``spent``: what they paid, in atomic units of the route's asset (summed per asset by
    ``network`` and ``asset``, for the asset of this request when known, else all).
    """

    payer: str
    requests: int
    spent: int
    since: float


def period_start(now: float, period: Period) -> float:
    """The start (UTC) of the calendar month, ISO week or day containing ``now``."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        day = day.replace(day=1)
    elif period == "week":
        day -= dt.timedelta(days=day.weekday())
    elif period != "day":
        raise ConfigurationError(f"period must be month, week or day, got {period!r}")
    return day.timestamp()


PayerPriceFunction = Callable[[RequestInfo, "PayerSummary | None"], PriceLike]


class PayerPrice(PriceStrategy):
    """A price computed from the request and the payer's history (``None``: unknown payer).

    ``fn(request, None)`` is the full price; ``fn(request, summary)`` may only be lower (a
    higher answer is capped at the full price, since a 402 already promised at most that).
    """

    __slots__ = ("cache_seconds", "fn", "period")

    def __init__(
        self, fn: PayerPriceFunction, *, period: Period = "month", cache_seconds: float = 60.0
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"PayerPrice needs a function, got {fn!r}")
        period_start(0.0, period)  # checks the period
        if not cache_seconds >= 0:
            raise ConfigurationError("cache_seconds must be >= 0")
        self.fn = fn
        self.period: Period = period
        self.cache_seconds = float(cache_seconds)

    def quote(self, request: RequestInfo) -> int:
        """The full price (what an anonymous request is quoted), in micro-dollars."""
        return self._amount(request, None)

    def quote_for(self, request: RequestInfo, summary: PayerSummary | None) -> int:
        """The price for a payer with this history: never above :meth:`quote`."""
        full = self.quote(request)
        if summary is None:
            return full
        return min(full, self._amount(request, summary))

    def _amount(self, request: RequestInfo, summary: PayerSummary | None) -> int:
        return parse_price(self.fn(request, summary))

    def describe(self) -> dict[str, Any]:
        return {"type": "payer_price", "period": self.period}

    def __repr__(self) -> str:
        return f"PayerPrice({getattr(self.fn, '__qualname__', self.fn)!r})"


class Tiered(PayerPrice):
    """A price that drops after a number of paid requests in the period.

    >>> price = Tiered("$0.01", [(100, "$0.008"), (1000, "$0.005")])
    >>> price.quote_for(RequestInfo("GET", "/"), PayerSummary("0xa", 250, 0, 0.0))
    8000

    ``tiers`` are (requests already paid this period, price from then on), any order.
    """

    __slots__ = ("base", "tiers")

    def __init__(
        self,
        base: PriceLike,
        tiers: Sequence[tuple[int, PriceLike]],
        *,
        period: Period = "month",
        cache_seconds: float = 60.0,
    ) -> None:
        self.base = parse_price(base)
        parsed = sorted((int(n), parse_price(p)) for n, p in tiers)
        if not parsed or any(n < 1 for n, _ in parsed):
            raise ConfigurationError("Tiered needs tiers of (requests >= 1, price)")
        self.tiers = tuple(parsed)
        super().__init__(self._price, period=period, cache_seconds=cache_seconds)

    def _price(self, request: RequestInfo, summary: PayerSummary | None) -> str:
        return format_usd(self._amount(request, summary))

    def _amount(self, request: RequestInfo, summary: PayerSummary | None) -> int:
        price = self.base
        if summary is not None:
            for requests, tier_price in self.tiers:
                if summary.requests >= requests:
                    price = tier_price
        return price

    def describe(self) -> dict[str, Any]:
        return {
            "type": "tiered",
            "price": format_usd(self.base),
            "period": self.period,
            "tiers": [{"after": n, "price": format_usd(p)} for n, p in self.tiers],
        }

    def __repr__(self) -> str:
        return f"Tiered({format_usd(self.base)!r}, {len(self.tiers)} tiers)"
