"""Prices that know the payer (:mod:`x402gate.pricing.payer`), as the gate applies them.

The payer's :class:`~x402gate.pricing.payer.PayerSummary` comes from the store's payments
journal, cached per payer for the strategy's ``cache_seconds`` in a bounded map, and forgotten
as soon as this gate journals a new payment of that payer (:func:`forget`).
``exact``: :func:`exact_quote` discounts the quote of a request whose session token names the
payer (the 402 and its paid retry carry the same token). ``batch-settlement``:
:func:`channel_charge` lowers the charge of a committed voucher inside its ceiling.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..analytics import SERVED
from ..errors import ConfigurationError, StoreError
from ..money import scale_to_asset
from ..pricing.payer import PayerPrice, PayerSummary, period_start
from ..request import RequestInfo

if TYPE_CHECKING:
    from .engine import PaymentGate
    from .model import PaymentSession

__all__ = ["channel_charge", "exact_quote", "forget", "payer_summary"]

logger = logging.getLogger("x402gate")

MAX_CACHED_PAYERS = 10_000
"""Summaries kept at most; the map is emptied when full (memory stays bounded)."""


async def payer_summary(
    gate: PaymentGate, price: PayerPrice, payer: str, network: str, asset: str
) -> PayerSummary | None:
    """The payer's paid requests and spend in ``asset`` this period; None when the journal
    cannot be read (the full price is then charged: never a discount by accident)."""
    if not gate.journal:
        return None
    now = gate.clock.now()
    since = period_start(now, price.period)
    payer, asset = payer.lower(), asset.lower()
    key = (network, asset, since)
    cache = gate._payer_summaries
    hit = cache.get(payer)
    if hit is not None and hit[0] > now and hit[1] == key:
        cached: PayerSummary = hit[2]
        return cached
    try:
        rows = await gate._store_call(
            lambda: gate.store.journal_rows(since, now + 1.0, payer=payer)
        )
    except (StoreError, ConfigurationError) as exc:
        logger.error("payments journal read failed, full price charged: %s", exc)
        return None
    requests = spent = 0
    for row in rows:
        if row.payer == payer and row.outcome in SERVED:
            requests += 1
            if row.network == network and row.asset == asset and row.outcome != "charged":
                spent += row.amount
    summary = PayerSummary(payer=payer, requests=requests, spent=spent, since=since)
    if len(cache) >= MAX_CACHED_PAYERS:
        cache.clear()
    cache[payer] = (now + price.cache_seconds, key, summary)
    return summary


def forget(gate: PaymentGate, payer: str) -> None:
    """This gate just journaled a payment of ``payer``: its next quote reads the journal anew
    (other processes see it once their cached summary expires)."""
    gate._payer_summaries.pop(payer.lower(), None)


async def exact_quote(gate: PaymentGate, price: PayerPrice, request: RequestInfo, full: int) -> int:
    """The quote of an unpaid or paid ``exact`` request: discounted only when a valid session
    token names its payer."""
    claims = gate._token_claims(request.headers, gate.clock.now())
    if claims is None:
        return full
    summary = await payer_summary(gate, price, claims.payer, claims.network, claims.asset)
    return min(full, price.quote_for(request, summary))


async def channel_charge(gate: PaymentGate, session: PaymentSession, ceiling: int) -> int:
    """What a committed voucher of a payer-priced route charges, in atomic units: the payer's
    price, never above the voucher's ``ceiling``."""
    price = session.route.price
    if not isinstance(price, PayerPrice):
        return ceiling
    payment = session.payment
    summary = await payer_summary(
        gate, price, payment.payer, payment.network, payment.asset.address
    )
    if summary is None:
        return ceiling
    try:
        amount = scale_to_asset(price.quote_for(session.request, summary), payment.asset.decimals)
    except ConfigurationError as exc:
        logger.error("payer price failed, full price charged: %s", exc)
        return ceiling
    return min(ceiling, amount)
