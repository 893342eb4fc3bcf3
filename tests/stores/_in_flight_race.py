"""A burst of admissions on one payer's account, run by threads or spawned processes."""

from __future__ import annotations

from typing import Any

from x402gate.stores import Store, open_store

ACCOUNT = "eip155:8453|0xasset|0xpayer"
NOW = 1_700_000_000.0
EXPIRES = NOW + 600
AMOUNT = 10_000
BLOCK = 100


def burst(
    target: str | Store, worker: int, tries: int, balance: int, barrier: Any, results: Any
) -> None:
    """Try ``tries`` admissions of :data:`AMOUNT` against ``balance``; report the ids won."""
    store = open_store(target)
    try:
        barrier.wait(60)
        won = [
            entry
            for entry in (f"w{worker}-{i}" for i in range(tries))
            if store.in_flight_admit(ACCOUNT, entry, AMOUNT, balance, BLOCK, EXPIRES, NOW)
        ]
        results.put((worker, won))
    except BaseException as exc:
        barrier.abort()
        results.put((worker, f"{type(exc).__name__}: {exc}"))
    finally:
        if isinstance(target, str):
            store.close()
