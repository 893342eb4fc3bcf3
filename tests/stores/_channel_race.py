"""A burst of begin-steps on one channel, run by threads or spawned processes."""

from __future__ import annotations

from typing import Any

from x402gate.stores import Store, open_store
from x402gate.stores.channels import ChannelBeginOutcome

CHANNEL = "0x" + "ab" * 32
CONFIG = '{"payer":"0x01","receiver":"0x02","salt":"0x00"}'
NOW = 1_700_000_000.0
SIGNATURE = "0x" + "11" * 65
BALANCE = 10**9
PRICE = 1_000


def race_step(target: str | Store, worker: int, base: int, barrier: Any, results: Any) -> None:
    """Begin the step on ``base``; if won, commit the full price. Report (worker, outcome)."""
    store = open_store(target) if isinstance(target, str) else target
    try:
        barrier.wait(60)
        token = f"w{worker}"
        answer = store.channel_begin(
            CHANNEL,
            token,
            base=base,
            max_claimable=base + PRICE,
            signature=SIGNATURE,
            expires_at=NOW + 60,
            now=NOW,
        )
        if answer.outcome is ChannelBeginOutcome.STARTED:
            committed = store.channel_commit(CHANNEL, token, PRICE, NOW + 1)
            results.put((worker, "committed" if committed is not None else "lost"))
        else:
            results.put((worker, answer.outcome.value))
    except BaseException as exc:
        barrier.abort()
        results.put((worker, f"{type(exc).__name__}: {exc}"))
    finally:
        if isinstance(target, str):
            store.close()


def chase_steps(target: str | Store, worker: int, steps: int, barrier: Any, results: Any) -> None:
    """Serve ``steps`` consecutive steps as one of many clients of one channel, as a client
    would: sign on the charged amount last seen, retry when busy, re-sign on a mismatch.

    Reports (worker, the bases of the steps this worker committed)."""
    import time

    store = open_store(target) if isinstance(target, str) else target
    try:
        barrier.wait(60)
        won: list[int] = []
        state = store.channel_get(CHANNEL)
        assert state is not None
        base, attempt = state.charged, 0
        while len(won) < steps:
            attempt += 1
            if attempt > 100_000:
                raise RuntimeError("no progress")
            token = f"w{worker}-{attempt}"
            answer = store.channel_begin(
                CHANNEL,
                token,
                base=base,
                max_claimable=base + PRICE,
                signature=SIGNATURE,
                expires_at=NOW + 60,
                now=NOW,
            )
            if answer.outcome is ChannelBeginOutcome.STARTED:
                committed = store.channel_commit(CHANNEL, token, PRICE, NOW)
                assert committed is not None and committed.charged == base + PRICE
                won.append(base)
                base = committed.charged
            elif answer.outcome is ChannelBeginOutcome.MISMATCH:
                assert answer.state is not None
                base = answer.state.charged
            else:
                assert answer.outcome is ChannelBeginOutcome.BUSY, answer.outcome
                time.sleep(0.0005)
        results.put((worker, won))
    except BaseException as exc:
        barrier.abort()
        results.put((worker, f"{type(exc).__name__}: {exc}"))
    finally:
        if isinstance(target, str):
            store.close()


def begin_and_die(url: str) -> None:
    """Take the channel's first step, then die by SIGKILL before committing it."""
    import os
    import signal

    store = open_store(url)
    answer = store.channel_begin(
        CHANNEL,
        "doomed",
        base=0,
        max_claimable=PRICE,
        signature=SIGNATURE,
        expires_at=NOW + 30,
        now=NOW,
    )
    assert answer.outcome is ChannelBeginOutcome.STARTED
    os.kill(os.getpid(), signal.SIGKILL)
