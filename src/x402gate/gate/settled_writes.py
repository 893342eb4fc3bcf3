"""Store writes that follow a settlement, retried: the money has already moved.

Once a payment settled on chain, the store's records of it are owed to the payer and to the
seller: the claim marked used, the credit a metered payment buys, the charge of a metered
answer. A store that fails at that moment (a PostgreSQL restart, a Redis primary failing over)
is usually back within seconds, so each of these writes is tried again for up to the gate's
``store_retry_seconds`` before the request gives up. Every one of them is idempotent (a top-up
per settlement, a reservation and a commit per id, a claim per token), so repeating a write
that did commit but whose answer was lost changes nothing.

A top-up or a charge the store still refuses after that is handed to the gate's background
thread (:meth:`~x402gate._holds.HoldKeeper.owe`), which applies it once the store is back:
a payer whose top-up settled during an outage finds it in the credit afterwards, and a seller
is paid for an answer that went out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StoreError

if TYPE_CHECKING:
    from .engine import PaymentGate

__all__ = ["MAX_STORE_RETRY_SECONDS", "check_store_retry", "settled_write"]

logger = logging.getLogger("x402gate")

T = TypeVar("T")

MAX_STORE_RETRY_SECONDS = 60.0
"""The longest ``store_retry_seconds`` the gate accepts: a request waits that long at most."""

_FIRST_PAUSE = 0.05
_LONGEST_PAUSE = 1.0


def check_store_retry(seconds: float) -> float:
    """``store_retry_seconds`` as a float, or a clear error."""
    from ..errors import ConfigurationError

    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigurationError("store_retry_seconds must be a number of seconds")
    if not 0 <= seconds <= MAX_STORE_RETRY_SECONDS:
        raise ConfigurationError(
            f"store_retry_seconds must be between 0 and {MAX_STORE_RETRY_SECONDS:g}"
        )
    return float(seconds)


async def settled_write(
    gate: PaymentGate, fn: Callable[..., T], *args: Any, budget: float | None = None
) -> T:
    """``gate._store_call(fn, *args)``, tried again while the store fails, for up to
    ``budget`` seconds (the gate's ``store_retry_seconds`` by default) of real time; then the
    last :class:`StoreError` is raised. Pauses double from 50 ms to one second."""
    budget = gate.store_retry_seconds if budget is None else budget
    give_up = time.monotonic() + budget
    pause = _FIRST_PAUSE
    failed = False
    while True:
        try:
            result = await gate._store_call(fn, *args)
        except StoreError as exc:
            left = give_up - time.monotonic()
            if left <= 0:
                raise
            if not failed:
                logger.warning("a store write after settlement failed; retrying: %s", exc)
                failed = True
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _LONGEST_PAUSE)
            continue
        if failed:
            logger.warning("a store write after settlement went through on a retry")
        return result
