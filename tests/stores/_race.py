"""A claim race run by threads or by spawned processes (so it must import cheaply)."""

from __future__ import annotations

from typing import Any

from x402gate.stores import Store, open_store

RESOURCE = "GET /paid"
NOW = 1_700_000_000.0
EXP = 1_700_000_600

Outcome = tuple[int, dict[str, str], dict[str, str]] | tuple[int, str, None]


def race(target: str | Store, keys: list[str], worker: int, barrier: Any, results: Any) -> None:
    """Claim every key; release what was won; claim every key again. Report both rounds.

    All workers walk the keys in the same order so that they collide on each key. ``target``
    is a URL (each worker opens its own store) or one store shared by all workers.
    """
    store = open_store(target)
    try:
        barrier.wait(60)
        first = {key: store.claim(key, RESOURCE, f"w{worker}a", EXP, NOW).value for key in keys}
        barrier.wait(60)  # nobody releases before everybody has tried
        for key, outcome in first.items():
            if outcome == "claimed" and not store.release(key, f"w{worker}a"):
                raise AssertionError(f"worker {worker} could not release {key} it had won")
        barrier.wait(60)
        # Round two races on released keys: the update path rather than the insert path.
        second = {key: store.claim(key, RESOURCE, f"w{worker}b", EXP, NOW).value for key in keys}
        results.put((worker, first, second))
    except BaseException as exc:
        barrier.abort()
        results.put((worker, f"{type(exc).__name__}: {exc}", None))
    finally:
        if isinstance(target, str):
            store.close()
