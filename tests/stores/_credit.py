"""Credit ledger helpers run by threads, spawned processes and killed subprocesses.

Imported by the ``test_credit*`` modules and, in other processes, by their workers: keep it
cheap to import (no pytest, no hypothesis).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from x402gate.stores import Store, credit_account, open_store

NOW = 1_700_000_000.0
ACCOUNT = credit_account("eip155:8453", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "0xPAYER")


def conserved(store: Store, account: str, now: float) -> bool:
    """Whether ``account`` satisfies conservation with no negative term."""
    b = store.credit_balance(account, now)
    terms = (b.available, b.reserved, b.topped_up, b.charged)
    return min(terms) >= 0 and b.topped_up == b.available + b.reserved + b.charged


def reserve_race(
    target: str | Store, ids: list[str], amount: int, barrier: Any, results: Any
) -> None:
    """Reserve ``amount`` under every id, as fast as possible, once the barrier opens.

    Reports the ids that were reserved, or the error. ``target`` is a URL (the worker opens its
    own store) or a store shared by all workers.
    """
    store = open_store(target)
    try:
        barrier.wait(60)
        won = [rid for rid in ids if store.credit_reserve(ACCOUNT, amount, rid, NOW + 60, NOW)]
        results.put(won)
    except BaseException as exc:
        barrier.abort()
        results.put(f"{type(exc).__name__}: {exc}")
    finally:
        if isinstance(target, str):
            store.close()


def late_race(url: str, mode: str, ids: list[str], barrier: Any, results: Any) -> None:
    """Once the barrier opens, at ``NOW + 61``: commit each expired reservation of ``ids`` late
    (``mode == "commit"``, charge 10) or reserve 10 under each id (``"reserve"``). Reports the
    answers, or the error."""
    store = open_store(url)
    try:
        barrier.wait(60)
        late = NOW + 61
        if mode == "commit":
            results.put((mode, [store.credit_commit(rid, 10, late) for rid in ids]))
        else:
            answers = [store.credit_reserve(ACCOUNT, 10, rid, late + 600, late) for rid in ids]
            results.put((mode, answers))
    except BaseException as exc:
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        store.close()


def crash_worker() -> None:
    """``python -c 'from stores._credit import crash_worker; crash_worker()' URL MODE NAME``.

    The body of a server that gets SIGKILLed. Every step is announced on stdout *before* it
    runs (``T``: top-up, ``R``: reserve) or reported after (``C``: charged), so the test knows
    which operations may have happened.

    * ``hang``: reserve 700 of :data:`ACCOUNT` under id ``NAME``, say ``reserved``, then wait
      (the handler is running) until killed.
    * ``loop``: forever: top up 100 (ref ``NAME-t<i>``), reserve 100 (id ``NAME-r<i>``,
      expiring at ``NOW + 30``), run the handler (1 ms), commit ``i % 101``.
    """
    url, mode, name = sys.argv[1:4]
    store = open_store(url)
    store.ping()

    def say(*words: object) -> None:
        print(*words, flush=True)

    say("ready")
    if mode == "hang":
        if not store.credit_reserve(ACCOUNT, 700, name, NOW + 30, NOW):
            say("refused")
            return
        say("reserved")
        sys.stdin.read()  # blocks until the test kills us
        return
    i = 0
    while True:
        say("T", i)
        store.credit_topup(ACCOUNT, 100, f"{name}-t{i}", NOW)
        say("R", i)
        if store.credit_reserve(ACCOUNT, 100, f"{name}-r{i}", NOW + 30, NOW):
            time.sleep(0.001)  # the handler runs (and another process gets the SQLite lock)
            say("C", i, store.credit_commit(f"{name}-r{i}", i % 101, NOW))
        i += 1
