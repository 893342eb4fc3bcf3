"""Spend limits of a paying HTTP client: per request, per channel deposit, in total.

Every limit is checked before anything is signed. A payment whose amount passes
``max_per_request``, a channel deposit that would pass ``max_deposit`` (or that the server wants
larger than it), and a payment that would take the running total past ``max_total`` are refused
with :class:`SpendLimitExceeded`; the request that asked for payment is then never retried with
a payment.

The running total counts what the client signed away: the amount of each ``exact`` payment and
the increment of each channel voucher (the request's price, by which the voucher raises the
cumulative amount the seller may claim). When a channel's answer says it charged less than that
(metered routes charge what the work used), the difference is given back to the budget. A
deposit is not spending: it stays the buyer's in the channel until vouchers move it, and what
is left is refunded; ``max_deposit`` bounds it.

Limits are prices as :func:`x402gate.money.parse_price` reads them (``"$0.05"``, ``"0.05"``,
``Decimal``; an ``int`` is whole dollars), scaled to the decimals of the token being paid.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..errors import X402GateError
from ..money import PriceLike, format_usd, parse_price, scale_to_asset

__all__ = ["Budget", "SpendLimitExceeded", "SpendLimits"]


class SpendLimitExceeded(X402GateError):
    """A payment was refused by the client's own spend limits; nothing was signed.

    ``limit`` names the limit (``"max_per_request"``, ``"max_deposit"``, ``"max_total"`` or
    ``"asset"`` for a token the client was not set up to pay); ``amount`` and ``allowed`` are in
    the token's atomic units.
    """

    def __init__(self, limit: str, message: str, *, amount: int = 0, allowed: int = 0) -> None:
        super().__init__(message)
        self.limit = limit
        self.amount = amount
        self.allowed = allowed


@dataclass(frozen=True, slots=True)
class SpendLimits:
    """The three limits of a paying client, in micro-dollars (see :mod:`x402gate.money`)."""

    max_per_request: int
    max_deposit: int
    max_total: int

    @classmethod
    def parse(
        cls, max_per_request: PriceLike, max_deposit: PriceLike, max_total: PriceLike
    ) -> SpendLimits:
        """Read the three limits as prices; zero is allowed (it refuses every payment)."""
        return cls(
            max_per_request=parse_price(max_per_request, allow_zero=True),
            max_deposit=parse_price(max_deposit, allow_zero=True),
            max_total=parse_price(max_total, allow_zero=True),
        )


@dataclass
class Budget:
    """What the client has committed so far, per token, checked against :class:`SpendLimits`.

    Thread-safe: one client may serve several threads (the sync OpenAI and Anthropic clients
    do). A payment is counted when its signature is made (:meth:`reserve`), before it is sent,
    so concurrent requests can never sign more than the total between them.
    """

    limits: SpendLimits
    _spent: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spent(self, network: str, asset: str) -> int:
        """Atomic units of ``asset`` on ``network`` committed so far."""
        with self._lock:
            return self._spent.get((network, asset.lower()), 0)

    def check_request(self, amount: int, decimals: int) -> None:
        """Refuse an amount above ``max_per_request``."""
        allowed = scale_to_asset(self.limits.max_per_request, decimals)
        if amount > allowed:
            raise SpendLimitExceeded(
                "max_per_request",
                f"the server asks {_shown(amount, decimals)} for this request, above "
                f"max_per_request {format_usd(self.limits.max_per_request)}",
                amount=amount,
                allowed=allowed,
            )

    def check_deposit(self, amount: int, decimals: int) -> int:
        """The largest deposit allowed, or refuse when ``amount`` (the least the channel needs)
        is above ``max_deposit``."""
        allowed = scale_to_asset(self.limits.max_deposit, decimals)
        if amount > allowed:
            raise SpendLimitExceeded(
                "max_deposit",
                f"the channel needs a deposit of at least {_shown(amount, decimals)}, above "
                f"max_deposit {format_usd(self.limits.max_deposit)}",
                amount=amount,
                allowed=allowed,
            )
        return allowed

    def reserve(self, network: str, asset: str, amount: int, decimals: int) -> None:
        """Count ``amount`` as committed, or refuse when it would pass ``max_total``."""
        allowed = scale_to_asset(self.limits.max_total, decimals)
        key = (network, asset.lower())
        with self._lock:
            spent = self._spent.get(key, 0)
            if spent + amount > allowed:
                raise SpendLimitExceeded(
                    "max_total",
                    f"paying {_shown(amount, decimals)} would take the total to "
                    f"{_shown(spent + amount, decimals)}, above max_total "
                    f"{format_usd(self.limits.max_total)}",
                    amount=spent + amount,
                    allowed=allowed,
                )
            self._spent[key] = spent + amount

    def give_back(self, network: str, asset: str, amount: int) -> None:
        """Return ``amount`` to the budget: the seller said it charged that much less."""
        if amount <= 0:
            return
        key = (network, asset.lower())
        with self._lock:
            self._spent[key] = max(0, self._spent.get(key, 0) - amount)


def _shown(amount: int, decimals: int) -> str:
    """An atomic amount as dollars when the token has the library's 6 decimals."""
    if decimals == 6:
        return format_usd(amount)
    return f"{amount} atomic units"
