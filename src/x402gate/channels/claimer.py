"""The background claimer: claims and settles while a long-running server serves vouchers.

A gate built with ``ChannelSettings(claim=ClaimSettings(...))`` starts one claimer per process
when it starts (:meth:`~x402gate.PaymentGate.startup`, which every integration runs at start-up
or on the first paid request) and stops it when the gate is closed. Every worker and instance
sharing the store runs one; only the one holding the store's claim lease
(:mod:`x402gate.stores.leases`, :data:`CLAIM_LEASE`, which ``x402gate channels claim`` takes
too) does anything, so one claim transaction goes out per round whatever the number of
processes. The holder renews its lease every tick; when it dies the lease expires after
``lease_seconds`` and another claimer takes over.

Each tick the holder lists the channels with unclaimed value, reads the ones whose mirror is
older than ``refresh_seconds`` from the chain, and runs a round when a strategy says so:
a channel whose payer started a timed withdrawal, the unclaimed total at the threshold, or the
period elapsed. The claimer runs in a thread of its own with its own event loop, so neither an
ASGI server's loop nor a WSGI server's threads ever wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
from typing import TYPE_CHECKING

from ..errors import FacilitatorError, StoreError
from ..stores.channels import ChannelState
from .claims import ClaimEngine, ClaimReport, ClaimSettings, unclaimed

if TYPE_CHECKING:
    from ..gate.engine import PaymentGate

__all__ = ["CLAIM_LEASE", "BackgroundClaimer", "gate_engine"]

logger = logging.getLogger("x402gate")


def _holder() -> str:
    """A holder token unique to this claimer: host, process id and a random part."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(6)}"


CLAIM_LEASE = "channel-claimer"
"""The lease whose holder claims a store's channels: the background claimers of every process
and ``x402gate channels claim``, whatever gave them the store (a gate, a gateway file, flags).
One per store, as a claim round takes every claimable channel in it."""


def gate_engine(gate: PaymentGate, batch: int) -> ClaimEngine:
    """The claim engine of ``gate`` (its store, facilitator, assets, ``pay_to``, RPC URLs, clock
    and journal setting), signing with its ``receiver_authorizer_key`` or letting its
    facilitator sign; for its background claimer and for ``x402gate channels claim --config``."""
    channels = gate.channels
    assert channels is not None
    return ClaimEngine(
        gate.store,
        gate.facilitator,
        assets=gate.assets,
        pay_to=gate.pay_to,
        rpc_urls=gate.balances.rpc_urls,
        authorizer_key=channels.receiver_authorizer_key,
        batch=batch,
        clock=gate.clock,
        journal=gate.journal,
    )


class BackgroundClaimer:
    """The claimer of one gate in one process (see the module)."""

    def __init__(self, engine: ClaimEngine, settings: ClaimSettings, name: str) -> None:
        self.engine = engine
        self.settings = settings
        self.name = name
        self.holder = _holder()
        self.rounds = 0
        """Claim rounds this claimer ran (for tests and tools)."""
        self.last_report: ClaimReport | None = None
        self._last_round = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lost = False
        self._taken_over = False

    @classmethod
    def for_gate(cls, gate: PaymentGate, settings: ClaimSettings) -> BackgroundClaimer:
        """The claimer of ``gate``, signing claims with its ``receiver_authorizer_key`` (or
        letting its facilitator sign them)."""
        return cls(gate_engine(gate, settings.batch), settings, CLAIM_LEASE)

    @property
    def forked(self) -> bool:
        """Started in the parent of this process (a server that forks its workers after the
        gate started): the thread did not survive the fork and must be started again."""
        return self._thread is not None and self._pid != os.getpid()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def start(self) -> None:
        """Start the thread (again after a fork: threads do not survive one)."""
        if self.running:
            return
        if self._pid != os.getpid():
            # A forked copy: its own holder token, never its parent's.
            self.holder = _holder()
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="x402gate-claimer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread (a round in progress ends first) and free the lease."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        # What a round imports, imported before any lease is taken (a first import can take
        # seconds on a loaded machine).
        import x402.mechanisms.evm.batch_settlement.authorizer_signer
        import x402.mechanisms.evm.batch_settlement.types
        import x402.schemas  # noqa: F401

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._loop())
        finally:
            loop.run_until_complete(self._close_facilitator())
            loop.close()

    async def _close_facilitator(self) -> None:
        # An HTTP facilitator keeps one client per event loop: close this loop's (other
        # facilitators belong to the gate, which closes them).
        from ..facilitators import HTTPFacilitator

        facilitator = self.engine.facilitator
        if isinstance(facilitator, HTTPFacilitator):
            try:
                await facilitator.aclose()
            except Exception:  # closing is best effort
                logger.debug("claimer: closing the facilitator client failed", exc_info=True)

    async def _loop(self) -> None:
        store = self.engine.store
        held = False
        try:
            while not self._stop.is_set():
                try:
                    was_held = held
                    held = await self.engine._store(
                        store.lease_acquire,
                        self.name,
                        self.holder,
                        self.settings.lease_seconds,
                        self.engine.clock.now(),
                    )
                    if held:
                        if not was_held:
                            # Taken over: the last holder may have died with a claim in
                            # flight, so every channel is read on chain before it is claimed.
                            self._taken_over = True
                        self._lost = False
                        done = threading.Event()
                        keeper = threading.Thread(
                            target=self._keep, args=(done,), name="x402gate-lease", daemon=True
                        )
                        keeper.start()
                        try:
                            await self.tick()
                        finally:
                            done.set()
                            await asyncio.to_thread(keeper.join)
                except (StoreError, FacilitatorError) as exc:
                    logger.warning("claimer: round failed, retried next tick: %s", exc)
                except Exception:
                    logger.exception("claimer: unexpected error, retried next tick")
                await asyncio.to_thread(self._stop.wait, self.settings.tick_seconds)
        finally:
            if held:
                try:
                    await self.engine._store(store.lease_release, self.name, self.holder)
                except StoreError as exc:
                    logger.warning("claimer: lease not released (it expires): %s", exc)

    async def tick(self) -> ClaimReport | None:
        """One look at the channels; a claim round (and a settle) when a strategy says so."""
        settings = self.settings
        engine = self.engine
        now = engine.clock.now()
        listed = await engine.claimable()
        if not listed:
            return None
        if self._taken_over:
            engine._suspect.update(s.channel_id for s in listed)
            self._taken_over = False
        if settings.withdrawals or engine._suspect:
            stale = [
                s
                for s in listed
                if (settings.withdrawals and now - s.synced_at >= settings.refresh_seconds)
                or s.channel_id in engine._suspect
            ]
            if stale:
                fresh = {s.channel_id: s for s in await engine.refresh(stale)}
                listed = [fresh.get(s.channel_id, s) for s in listed]
                listed = [s for s in listed if s.earned > s.total_claimed]
        if not listed:
            return None
        reason = self._due(listed, now)
        if reason is None:
            return None
        if not await self._renew():
            return None
        logger.info("claimer: claim round (%s) over %d channels", reason, len(listed))
        report = await engine.claim(guard=self._renew)
        self.rounds += 1
        self._last_round = now
        self.last_report = report
        if settings.settle and report.settle and await self._renew():
            settled = await engine.settle(report.settle)
            report.failures.extend(settled.failures)
        return report

    def _due(self, listed: list[ChannelState], now: float) -> str | None:
        settings = self.settings
        listed = [s for s in listed if unclaimed(s) > 0]  # what a round could collect
        if not listed:
            return None
        if settings.withdrawals and any(s.withdraw_requested_at for s in listed):
            return "withdrawal"
        if settings.threshold is not None and sum(map(unclaimed, listed)) >= settings.threshold:
            return "threshold"
        if settings.every is not None and now - self._last_round >= settings.every:
            return "periodic"
        return None

    def _keep(self, done: threading.Event) -> None:
        """Renew the lease while a round runs (a claim waits for its receipt, which may take
        longer than the lease), from a thread of its own so that nothing the round does can
        delay it: the lease only expires when its holder stops."""
        pause = min(self.settings.tick_seconds, self.settings.lease_seconds / 3)
        store, clock = self.engine.store, self.engine.clock
        while not done.wait(pause) and not self._lost:
            try:
                held = store.lease_acquire(
                    self.name, self.holder, self.settings.lease_seconds, clock.now()
                )
            except StoreError as exc:
                logger.warning("claimer: lease not renewed: %s", exc)
                held = False
            if not held:
                self._lost = True
                logger.warning("claimer: the lease was lost during a round; it stops")

    async def _renew(self) -> bool:
        """Renew the lease before sending anything: a holder that lost it sends nothing."""
        if self._lost:
            return False
        held: bool = await self.engine._store(
            self.engine.store.lease_acquire,
            self.name,
            self.holder,
            self.settings.lease_seconds,
            self.engine.clock.now(),
        )
        if not held:
            self._lost = True
            logger.warning("claimer: the lease moved to another claimer; this one stands by")
        return held
