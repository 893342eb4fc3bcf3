"""The gate's side of rate limits (:mod:`x402gate.ratelimit`): when each limit is counted.

``limit_ip`` runs first in :func:`~x402gate.gate.steps.begin`, before pricing; ``limit_payer``
runs once a payment named its payer (its signature checked offline) and before the store,
the credit ledger, a channel or the facilitator is touched. Either raises the 429 to answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import StoreError
from ..ratelimit import RateLimiter
from .events import EventKind, PaymentEvent
from .failures import failure

if TYPE_CHECKING:
    from limits import RateLimitItem

    from ..ratelimit import RateLimit
    from ..request import RequestInfo
    from .engine import PaymentGate
    from .model import Route

__all__ = ["limit_ip", "limit_payer", "rate_limiter"]

logger = logging.getLogger("x402gate")


def rate_limiter(gate: PaymentGate) -> RateLimiter:
    """The gate's counter, built on first use (a gate without limits needs no ``limits``)."""
    if gate.rate_limiter is None:
        gate.rate_limiter = RateLimiter(gate.rate_limit_storage, gate.rate_limit_strategy)
    return gate.rate_limiter


async def _count(
    gate: PaymentGate,
    route: Route,
    request: RequestInfo,
    limit: RateLimit,
    items: tuple[RateLimitItem, ...],
    kind: str,
    identity: str | None,
) -> None:
    scope = limit.scope or request.path
    try:
        refusal = await rate_limiter(gate).acheck(items, kind, scope, identity)
    except StoreError as exc:
        logger.error("rate limit check failed: %s", exc)
        await gate._emit(PaymentEvent(EventKind.ERROR, request, route, code="rate_limit"))
        raise failure(exc) from None
    if refusal is not None:
        await gate._emit(
            PaymentEvent(EventKind.REJECTED, request, route, code=refusal.code, status=429)
        )
        raise refusal


async def limit_ip(gate: PaymentGate, route: Route, request: RequestInfo) -> None:
    """Count this request against the route's per-IP limit; the 429 when it is exhausted."""
    limit = route.rate_limit
    if limit is not None and limit.ip_items:
        await _count(gate, route, request, limit, limit.ip_items, "ip", request.client)


async def limit_payer(gate: PaymentGate, route: Route, request: RequestInfo, payer: str) -> None:
    """Count this request against the route's per-payer limit; the 429 when it is exhausted."""
    limit = route.rate_limit
    if limit is not None and limit.payer_items:
        await _count(gate, route, request, limit, limit.payer_items, "payer", payer.lower())
