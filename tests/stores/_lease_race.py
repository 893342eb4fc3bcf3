"""A lease race run by spawned processes (so it must import cheaply)."""

from __future__ import annotations

from typing import Any

from x402gate.stores import open_store

NOW = 1_700_000_000.0


def lease_race(url: str, names: list[str], worker: int, barrier: Any, results: Any) -> None:
    """Try every lease at one moment; then, once all expired, try them all again.

    Reports which leases this worker won in each round (or the error it met)."""
    store = open_store(url)
    try:
        barrier.wait(60)
        first = [name for name in names if store.lease_acquire(name, f"w{worker}", 30, NOW)]
        barrier.wait(60)
        # Round two races on expired rows: the update path rather than the insert path.
        later = NOW + 31
        second = [name for name in names if store.lease_acquire(name, f"v{worker}", 30, later)]
        results.put((worker, first, second))
    except BaseException as exc:
        barrier.abort()
        results.put((worker, f"{type(exc).__name__}: {exc}", None))
    finally:
        store.close()
