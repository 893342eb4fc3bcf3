"""Keeping the credit reservations of running requests alive.

A reservation expires after ``credit_ttl_seconds`` so that the hold of a request whose process
died goes back to the payer. A request that is still running must not lose its hold that way:
the money would fund the payer's next request while the answer still streams, and the late
commit could then only charge what is left (see :meth:`~x402gate.stores.base.Store.credit_commit`).
:class:`HoldKeeper` renews, from one daemon thread per gate, every hold of this process whose
remaining life fell under half the TTL. When the process dies the renewals stop with it, and
its holds expire as before: the crash story is unchanged.

It also renews the steps of payment channels held by running requests
(:meth:`~x402gate.stores.base.Store.channel_extend`): a streamed answer paid by a voucher keeps
its channel's step however long it runs, so that no other request takes the step over and its
charge is not forfeited while it is still being served.

The same thread renews the sign of life of paid answers on the way (a claim *sending*, see
:meth:`~x402gate.stores.base.Store.mark_used`): a retry of the payment is served in their place
only once they stopped renewing for the reconciler's grace time, so a long answer that is
still running is never answered a second time.

Last, it applies the store writes a settlement left owed (:meth:`HoldKeeper.owe`): a credit
top-up or the charge of a metered answer that the store refused even after the request's own
retries (a database restarting, a primary failing over). The money has moved on chain by then;
each such write is idempotent, so the thread repeats it every pass until the store takes it.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ConfigurationError, StoreError

if TYPE_CHECKING:
    from .clock import Clock
    from .stores.base import Store

__all__ = ["MAX_OWED", "HoldKeeper"]

logger = logging.getLogger("x402gate")

_KEEPERS: weakref.WeakSet[HoldKeeper] = weakref.WeakSet()

MAX_OWED = 10_000
"""How many owed writes one process keeps at most: past it, a write is logged and dropped
rather than let an outage grow the process's memory without bound."""


def _after_fork_in_child() -> None:
    # A forked worker (gunicorn --preload, multiprocessing) has none of its parent's threads
    # and may inherit a lock taken by one of them: start over with its own.
    for keeper in list(_KEEPERS):
        keeper._forget_parent()


class HoldKeeper:
    """Renews the live credit reservations of this process until they are committed or released.

    :param store: the ledger (its :meth:`~x402gate.stores.base.Store.credit_extend`).
    :param clock: the gate's clock: expiries are in its time.
    :param ttl_seconds: the lifetime a renewal gives (the gate's ``credit_ttl_seconds``).
    :param poll_seconds: how often (real time) the thread looks for holds to renew; one second
        by default, far below any TTL the gate accepts.
    """

    def __init__(
        self, store: Store, clock: Clock, ttl_seconds: int, *, poll_seconds: float = 1.0
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl_seconds
        self._poll = poll_seconds
        self._holds: dict[str, float] = {}  # reservation id -> the expiry last given to it
        # (claim key, token) -> (last sign of life given, grace): answers on the way.
        self._answers: dict[tuple[str, str], tuple[float, float]] = {}
        # (channel id, token) -> (the expiry last given to the step, its lifetime).
        self._steps: dict[tuple[str, str], tuple[float, float]] = {}
        # What -> the write (given the time of the attempt): applied once the store takes it.
        self._owed: dict[str, Callable[[float], object]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        """Renewal passes done so far (tests wait on it instead of sleeping)."""
        _KEEPERS.add(self)

    def _forget_parent(self) -> None:
        self._lock = threading.Lock()
        stopped = self._stop.is_set()
        self._stop = threading.Event()
        if stopped:
            self._stop.set()
        self._thread = None
        self._holds = {}  # the parent's requests are the parent's to renew
        self._answers = {}
        self._steps = {}
        # Writes owed by the parent's requests: applied by the parent (the child never saw them).
        self._owed = {}

    def add(self, reservation_id: str, expires_at: float) -> None:
        """Keep ``reservation_id`` (expiring at ``expires_at``) alive from now on."""
        with self._lock:
            self._holds[reservation_id] = expires_at
            self._start()

    def add_answer(self, key: str, token: str, grace: float) -> None:
        """Renew the sign of life of the claim ``key`` (held by ``token``) while its answer is
        on the way: every quarter of ``grace``, so that a stall of most of it still renews."""
        with self._lock:
            self._answers[(key, token)] = (self._clock.now(), grace)
            self._start()

    def discard_answer(self, key: str, token: str) -> None:
        """The answer was handed over (or lost): stop renewing its sign of life."""
        with self._lock:
            self._answers.pop((key, token), None)

    def add_step(self, channel_id: str, token: str, expires_at: float, lifetime: float) -> None:
        """Keep the channel step ``token`` holds (expiring at ``expires_at``) alive from now
        on, ``lifetime`` seconds at a time."""
        with self._lock:
            self._steps[(channel_id, token)] = (expires_at, lifetime)
            self._start()

    def discard_step(self, channel_id: str, token: str) -> None:
        """The step was committed or released: stop renewing it."""
        with self._lock:
            self._steps.pop((channel_id, token), None)

    def owe(self, what: str, write: Callable[[float], object]) -> bool:
        """Apply ``write(now)`` on a later pass, and on every pass until it succeeds: a store
        write a settlement left owed. ``what`` names it in the logs (no secret in it) and keys
        it: owing the same ``what`` twice keeps one. False when :data:`MAX_OWED` writes are
        already waiting: then it is logged as lost."""
        with self._lock:
            if what not in self._owed and len(self._owed) >= MAX_OWED:
                logger.error("too many store writes owed; dropped: %s", what)
                return False
            self._owed[what] = write
            self._start()
        logger.warning("store write owed after settlement, retried in the background: %s", what)
        return True

    def owed(self) -> list[str]:
        """What is still owed (for tests and the operator)."""
        with self._lock:
            return list(self._owed)

    def _apply_owed(self, now: float) -> int:
        with self._lock:
            owed = list(self._owed.items())
        applied = 0
        for what, write in owed:
            try:
                write(now)
            except Exception as exc:  # a store outage in any shape: tried again next pass
                logger.debug("an owed store write failed again (will retry): %s", exc)
                continue
            with self._lock:
                self._owed.pop(what, None)
            applied += 1
            logger.warning("an owed store write was applied: %s", what)
        return applied

    def _start(self) -> None:
        # Called with the lock held. Started on demand and ended when nothing is left to renew:
        # an idle gate has no thread.
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(
                target=self._run, name="x402gate-credit-holds", daemon=True
            )
            self._thread.start()

    def discard(self, reservation_id: str) -> None:
        """The request is over (committing or releasing): stop renewing its hold."""
        with self._lock:
            self._holds.pop(reservation_id, None)

    def counts(self) -> tuple[int, int]:
        """(credit reservations, distinct channels) this process holds now."""
        with self._lock:
            return len(self._holds), len({channel for channel, _ in self._steps})

    def __contains__(self, reservation_id: object) -> bool:
        with self._lock:
            return reservation_id in self._holds

    def renew(self) -> int:
        """One pass: extend every hold with less than half the TTL left; answers how many."""
        now = self._clock.now()
        with self._lock:
            due = [rid for rid, expiry in self._holds.items() if expiry - now <= self._ttl / 2]
        renewed = 0
        for rid in due:
            expires_at = int(now) + self._ttl
            try:
                kept = self._store.credit_extend(rid, expires_at, now)
            except (StoreError, ConfigurationError) as exc:
                # Tried again on the next pass; if the hold expires meanwhile, the late commit
                # still charges what the payer has left.
                logger.warning("could not renew a credit hold (will retry): %s", exc)
                continue
            with self._lock:
                if rid not in self._holds:
                    continue  # finished meanwhile
                if kept:
                    self._holds[rid] = expires_at
                    renewed += 1
                else:
                    # Already expired (the process stalled longer than the TTL): nothing to
                    # keep; the commit charges late from what is available.
                    del self._holds[rid]
                    logger.warning("a credit hold expired while its request was still running")
        with self._lock:
            answers = [
                (key, token)
                for (key, token), (alive_at, grace) in self._answers.items()
                if now - alive_at >= grace / 4
            ]
        for key, token in answers:
            try:
                alive = self._store.mark_used(key, token, now)
            except (StoreError, ConfigurationError) as exc:
                logger.warning("could not renew an answer on the way (will retry): %s", exc)
                continue
            with self._lock:
                entry = self._answers.get((key, token))
                if entry is None:
                    continue
                if alive:
                    self._answers[(key, token)] = (now, entry[1])
                    renewed += 1
                else:
                    # Taken over by a retry (this request stalled past the grace): the retry
                    # answers the payment now; nothing more to keep alive here.
                    del self._answers[(key, token)]
                    logger.warning("an answer on the way was taken over by a retry")
        renewed += self._renew_steps(now)
        renewed += self._apply_owed(now)
        with self._lock:
            self.passes += 1
        return renewed

    def _renew_steps(self, now: float) -> int:
        with self._lock:
            due = [
                (key, lifetime)
                for key, (expiry, lifetime) in self._steps.items()
                if expiry - now <= lifetime / 2
            ]
        renewed = 0
        for (channel_id, token), lifetime in due:
            expires_at = now + lifetime
            try:
                kept = self._store.channel_extend(channel_id, token, expires_at)
            except (StoreError, ConfigurationError, ValueError) as exc:
                logger.warning("could not renew a channel step (will retry): %s", exc)
                continue
            with self._lock:
                if (channel_id, token) not in self._steps:
                    continue  # committed or released meanwhile
                if kept:
                    self._steps[(channel_id, token)] = (expires_at, lifetime)
                    renewed += 1
                else:
                    # Taken over (this process stalled past the step's expiry): the charge of
                    # this step is forfeited; its commit will say so.
                    del self._steps[(channel_id, token)]
                    logger.warning("a channel step expired while its request was still running")
        return renewed

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self.renew()
            with self._lock:
                if not (self._holds or self._answers or self._steps or self._owed):
                    self._thread = None
                    return

    def close(self) -> None:
        """Stop renewing (the gate is closing); holds left expire by themselves. Owed writes
        get one last try; any still refused are logged, since nothing applies them after."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if self._owed:
            self._apply_owed(self._clock.now())
            for what in self.owed():
                logger.error("store write owed after settlement left unapplied: %s", what)


os.register_at_fork(after_in_child=_after_fork_in_child)
