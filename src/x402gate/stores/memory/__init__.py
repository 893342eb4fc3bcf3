"""``memory://``: a replay store and credit ledger inside one Python process.

Right for tests and single-process servers. Several worker processes (gunicorn ``-w 4``,
uvicorn ``--workers``) each get their own empty store, so an authorization could be claimed once
per worker: use ``sqlite://`` or ``redis://`` there. Credit lives as long as the process: a
restart forgets every balance, so metered billing with real money needs a shared backend.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, TypeVar

from ...errors import ConfigurationError
from ..base import Store
from ..channels import ChannelState
from ..checks import (
    check_block,
    check_credit_account,
    check_credit_amount,
    check_credit_id,
    check_credit_reserve,
    check_idempotency_args,
    check_idempotency_response,
    check_idempotency_ttl,
    check_in_flight_admit,
)
from ..journal import JournalRow, check_journal_row
from ..records import (
    CREDIT_RECORD_RETENTION_SECONDS,
    IN_FLIGHT_UNSETTLED,
    MAX_CREDIT_AMOUNT,
    ClaimResult,
    CreditBalance,
    CreditReservation,
    IdempotencyOutcome,
    IdempotencyResult,
)
from .channels import MemoryChannels
from .journal import MemoryJournal
from .leases import MemoryLeases

__all__ = ["MemoryStore"]

HELD, RELEASED, SENDING, USED = "held", "released", "sending", "used"

# Expired entries forgotten per claim at most: keeps every call O(log n) however many
# entries expire at once, while still forgetting them faster than new claims arrive.
_PURGE_BATCH = 8


@dataclass(slots=True)
class _Entry:
    state: str
    resource: str
    token: str
    expires_at: float
    checked_at: float | None = None  # last chain look-up for a recovery (recovery_check)
    alive_at: float = 0.0  # while sending: the last sign of life of the request answering


@dataclass(slots=True)
class _IdemEntry:
    fingerprint: str
    ttl_seconds: int
    expires_at: float
    response: bytes | None = None  # None while pending


@dataclass(slots=True)
class _Account:
    available: int = 0
    reserved: int = 0
    topped_up: int = 0
    charged: int = 0
    held: set[str] = field(default_factory=set)  # ids of its held reservations


@dataclass(slots=True)
class _Reservation:
    account: str
    amount: int
    expires_at: float
    state: str = "held"
    charged: int = 0


@dataclass(slots=True)
class _InFlight:
    amount: int
    until_block: int
    expires_at: float


@dataclass(slots=True)
class _TopUp:
    account: str
    amount: int
    at: float


class MemoryStore(MemoryJournal, MemoryChannels, MemoryLeases, Store):
    """A dict behind a lock. Operations never do I/O, so the async gate calls them inline.

    The payments journal is kept in memory too (see :mod:`.journal`): lost on restart.
    """

    scheme: ClassVar[str] = "memory"
    blocking: ClassVar[bool] = False
    shared_across_processes: ClassVar[bool] = False
    supports_idempotency: ClassVar[bool] = True
    supports_credit: ClassVar[bool] = True
    supports_in_flight: ClassVar[bool] = True
    supports_recovery: ClassVar[bool] = True
    supports_channels: ClassVar[bool] = True
    supports_leases: ClassVar[bool] = True
    supports_journal: ClassVar[bool] = True
    supports_outbox: ClassVar[bool] = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._journal_init()
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (holder, expires_at)
        # Payment channels by id, under the same lock. A channel lives as long as its escrow
        # on chain, so channels are never forgotten (one small record per paying client).
        self._channels: dict[str, ChannelState] = {}
        self._entries: dict[str, _Entry] = {}
        # (expires_at, key) of every claim; may hold stale items for entries that were
        # re-claimed later, which the purge simply skips.
        self._expiry: list[tuple[float, str]] = []
        # The same for idempotency entries, under the same lock.
        self._idem: dict[str, _IdemEntry] = {}
        self._idem_expiry: list[tuple[float, str]] = []
        # The credit ledger, under the same lock. Held reservations are few (requests in
        # flight), so reconciling scans them; finished ones are forgotten in time order.
        self._accounts: dict[str, _Account] = {}
        self._topups: dict[str, _TopUp] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._held: dict[str, _Reservation] = {}
        self._finished: list[tuple[float, str]] = []  # (purge time, reservation id)
        # Payments in flight per account, and (expires_at, account) to forget idle accounts.
        self._in_flight: dict[str, dict[str, _InFlight]] = {}
        self._in_flight_expiry: list[tuple[float, str]] = []

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """``memory://`` (nothing may follow: there is nothing to configure)."""
        if url.lower() != "memory://":
            raise ConfigurationError(f"memory store URL must be exactly 'memory://', got {url!r}")
        return cls()

    def claim(
        self, key: str, resource: str, token: str, expires_at: int, now: float
    ) -> ClaimResult:
        with self._lock:
            self._purge(now)
            entry = self._entries.get(key)
            if entry is not None and now < entry.expires_at:
                if entry.state in (USED, SENDING):
                    return ClaimResult.USED
                if entry.resource != resource:
                    return ClaimResult.BOUND_ELSEWHERE
                if entry.state == HELD and entry.token != token:
                    return ClaimResult.IN_FLIGHT
                entry.state, entry.token = HELD, token
                if expires_at > entry.expires_at:
                    entry.expires_at = expires_at
                    heapq.heappush(self._expiry, (expires_at, key))
                return ClaimResult.CLAIMED
            self._entries[key] = _Entry(HELD, resource, token, expires_at)
            heapq.heappush(self._expiry, (expires_at, key))
            return ClaimResult.CLAIMED

    def release(self, key: str, token: str) -> bool:
        return self._finish(key, token, RELEASED)

    def mark_used(
        self, key: str, token: str, now: float | None = None, *, journal: JournalRow | None = None
    ) -> bool:
        if journal is not None:
            check_journal_row(journal)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.token != token or entry.state == RELEASED:
                return False
            if now is None:
                entry.state = USED
            elif entry.state != USED:  # an answered claim stays answered
                entry.state = SENDING
                entry.alive_at = max(entry.alive_at, now)
            if journal is not None:
                self._journal_add(journal)
            return True

    def recovery_check(
        self,
        key: str,
        resource: str,
        now: float,
        min_interval: float,
        answer_grace: float | None = None,
    ) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if (
                entry is None
                or now >= entry.expires_at
                or entry.resource != resource
                or (entry.checked_at is not None and now < entry.checked_at + min_interval)
            ):
                return None
            if entry.state != HELD and not (
                entry.state == SENDING
                and answer_grace is not None
                and now >= entry.alive_at + answer_grace
            ):
                return None
            entry.checked_at = now
            return entry.token

    def take_over(self, key: str, holder: str, token: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            if entry.state == HELD and entry.token in (holder, token):
                entry.token = token
                return True
            if entry.state == SENDING and entry.token == holder:
                entry.state, entry.token = HELD, token
                return True
            return False

    def state(self, key: str, now: float) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or now >= entry.expires_at:
                return None
            return entry.state

    # -- idempotency ------------------------------------------------------------------------

    def idempotency_begin(
        self, payment_id: str, fingerprint: str, ttl_seconds: int, now: float
    ) -> IdempotencyResult:
        check_idempotency_args(payment_id, fingerprint)
        check_idempotency_ttl(ttl_seconds)
        with self._lock:
            self._purge_idem(now)
            entry = self._idem.get(payment_id)
            if entry is not None and now < entry.expires_at:
                if entry.fingerprint != fingerprint:
                    return IdempotencyResult(IdempotencyOutcome.CONFLICT)
                if entry.response is not None:
                    return IdempotencyResult(IdempotencyOutcome.REPLAY, entry.response)
                return IdempotencyResult(IdempotencyOutcome.IN_PROGRESS)
            expires_at = now + ttl_seconds
            self._idem[payment_id] = _IdemEntry(fingerprint, ttl_seconds, expires_at)
            heapq.heappush(self._idem_expiry, (expires_at, payment_id))
            return IdempotencyResult(IdempotencyOutcome.NEW)

    def idempotency_complete(
        self, payment_id: str, fingerprint: str, response: bytes, now: float
    ) -> bool:
        check_idempotency_args(payment_id, fingerprint)
        data = check_idempotency_response(response)
        with self._lock:
            entry = self._idem.get(payment_id)
            if entry is None or now >= entry.expires_at or entry.fingerprint != fingerprint:
                return False
            if entry.response is None:
                entry.response = data
                expires_at = now + entry.ttl_seconds
                if expires_at > entry.expires_at:
                    entry.expires_at = expires_at
                    heapq.heappush(self._idem_expiry, (expires_at, payment_id))
            return True

    def idempotency_abandon(self, payment_id: str, fingerprint: str) -> bool:
        check_idempotency_args(payment_id, fingerprint)
        with self._lock:
            entry = self._idem.get(payment_id)
            if entry is None or entry.response is not None or entry.fingerprint != fingerprint:
                return False
            del self._idem[payment_id]
            return True

    def idempotency_state(self, payment_id: str, now: float) -> str | None:
        with self._lock:
            entry = self._idem.get(payment_id)
            if entry is None or now >= entry.expires_at:
                return None
            return "pending" if entry.response is None else "done"

    # -- credit ledger ----------------------------------------------------------------------

    def credit_topup(self, account: str, amount: int, ref: str, now: float) -> int:
        check_credit_account(account)
        check_credit_amount(amount)
        check_credit_id(ref, "top-up ref")
        with self._lock:
            self._purge_credit(now)
            applied = self._topups.get(ref)
            if applied is not None and (applied.account, applied.amount) != (account, amount):
                raise ValueError(
                    f"credit top-up ref {ref!r:.80} was already applied to another account "
                    "or amount"
                )
            acct = self._accounts.setdefault(account, _Account())
            self._expire_held(acct, now)
            if applied is None:
                if acct.topped_up + amount > MAX_CREDIT_AMOUNT:
                    raise ValueError(f"credit account {account!r} would exceed 2**256 - 1")
                self._topups[ref] = _TopUp(account, amount, now)
                acct.available += amount
                acct.topped_up += amount
            return acct.available

    def credit_reserve(
        self, account: str, amount: int, reservation_id: str, expires_at: float, now: float
    ) -> bool:
        check_credit_reserve(account, amount, reservation_id, expires_at, now)
        with self._lock:
            self._purge_credit(now)
            acct = self._accounts.get(account)
            if acct is not None:
                self._expire_held(acct, now)
            known = self._reservations.get(reservation_id)
            if known is not None:
                return (
                    known.state == "held"
                    and now < known.expires_at
                    and (known.account, known.amount) == (account, amount)
                )
            if acct is None or acct.available < amount:
                return False
            reservation = _Reservation(account, amount, expires_at)
            self._reservations[reservation_id] = self._held[reservation_id] = reservation
            acct.held.add(reservation_id)
            acct.available -= amount
            acct.reserved += amount
            return True

    def credit_commit(
        self, reservation_id: str, charge: int, now: float, *, journal: JournalRow | None = None
    ) -> int:
        check_credit_id(reservation_id, "reservation id")
        check_credit_amount(charge, "charge", zero=True)
        if journal is not None:
            check_journal_row(journal)
        with self._lock:
            self._purge_credit(now)
            reservation = self._live(reservation_id, now)
            if reservation is None:
                known = self._reservations.get(reservation_id)
                if known is None:
                    return 0
                if known.state == "expired":
                    # The answer outlived its hold: the charge is still owed, but only what
                    # is available now can pay it (the rest may be held by other requests).
                    acct = self._accounts[known.account]
                    late = min(charge, known.amount, acct.available)
                    acct.available -= late
                    acct.charged += late
                    known.state, known.charged = "committed", late
                    if journal is not None and late:
                        self._journal_add(journal.with_amount(late))
                    return late
                return known.charged if known.state == "committed" else 0
            charged = min(charge, reservation.amount)
            self._end_reservation(reservation_id, reservation, "committed", charged, now)
            if journal is not None and charged:
                self._journal_add(journal.with_amount(charged))
            return charged

    def credit_extend(self, reservation_id: str, expires_at: float, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")
        with self._lock:
            reservation = self._live(reservation_id, now)
            if reservation is None:
                return False
            if expires_at > reservation.expires_at:
                reservation.expires_at = expires_at
            return True

    def credit_release(self, reservation_id: str, now: float) -> bool:
        check_credit_id(reservation_id, "reservation id")
        with self._lock:
            self._purge_credit(now)
            reservation = self._live(reservation_id, now)
            if reservation is None:
                known = self._reservations.get(reservation_id)
                return known is not None and known.state == "released"
            self._end_reservation(reservation_id, reservation, "released", 0, now)
            return True

    def credit_balance(self, account: str, now: float) -> CreditBalance:
        check_credit_account(account)
        with self._lock:
            acct = self._accounts.get(account)
            if acct is None:
                return CreditBalance(0, 0, 0, 0)
            self._expire_held(acct, now)
            return CreditBalance(acct.available, acct.reserved, acct.topped_up, acct.charged)

    def credit_reservation(self, reservation_id: str, now: float) -> CreditReservation | None:
        with self._lock:
            known = self._reservations.get(reservation_id)
            if known is None:
                return None
            state = "expired" if known.state == "held" and now >= known.expires_at else known.state
            return CreditReservation(
                known.account, known.amount, state, known.charged, known.expires_at
            )

    def credit_reconcile(self, now: float) -> int:
        with self._lock:
            self._purge_credit(now)
            expired = [(rid, r) for rid, r in self._held.items() if now >= r.expires_at]
            for rid, reservation in expired:
                self._end_reservation(rid, reservation, "expired", 0, now)
            return len(expired)

    def _live(self, reservation_id: str, now: float) -> _Reservation | None:
        """The reservation if it is held and live, after expiring its account's dead ones."""
        reservation = self._held.get(reservation_id)
        if reservation is None:
            return None
        self._expire_held(self._accounts[reservation.account], now)
        return reservation if reservation.state == "held" else None

    def _expire_held(self, acct: _Account, now: float) -> None:
        for rid in [rid for rid in acct.held if now >= self._held[rid].expires_at]:
            self._end_reservation(rid, self._held[rid], "expired", 0, now)

    def _end_reservation(
        self, rid: str, reservation: _Reservation, state: str, charged: int, now: float
    ) -> None:
        acct = self._accounts[reservation.account]
        acct.held.discard(rid)
        del self._held[rid]
        acct.reserved -= reservation.amount
        acct.available += reservation.amount - charged
        acct.charged += charged
        reservation.state, reservation.charged = state, charged
        heapq.heappush(
            self._finished, (reservation.expires_at + CREDIT_RECORD_RETENTION_SECONDS, rid)
        )

    def _purge_credit(self, now: float) -> None:
        for _ in range(_PURGE_BATCH):
            if not self._finished or self._finished[0][0] > now:
                return
            _, rid = heapq.heappop(self._finished)
            self._reservations.pop(rid, None)

    # -- payments in flight -------------------------------------------------------------------

    def in_flight_admit(
        self,
        account: str,
        entry_id: str,
        amount: int,
        balance: int,
        block: int,
        expires_at: float,
        now: float,
    ) -> bool:
        check_in_flight_admit(account, entry_id, amount, balance, block, expires_at)
        with self._lock:
            entries = self._live_in_flight(account, now)
            known = entries.get(entry_id)
            if known is not None:
                return known.amount == amount
            held = sum(e.amount for e in entries.values() if e.until_block > block)
            if held + amount > balance:
                return False
            entries[entry_id] = _InFlight(amount, IN_FLIGHT_UNSETTLED, expires_at)
            self._in_flight[account] = entries
            heapq.heappush(self._in_flight_expiry, (expires_at, account))
            return True

    def in_flight_settle(
        self, account: str, entry_id: str, block: int, expires_at: float, now: float
    ) -> bool:
        check_block(block)
        with self._lock:
            entry = self._live_in_flight(account, now).get(entry_id)
            if entry is None:
                return False
            entry.until_block, entry.expires_at = block, expires_at
            heapq.heappush(self._in_flight_expiry, (expires_at, account))
            return True

    def in_flight_release(self, account: str, entry_id: str) -> bool:
        with self._lock:
            entries = self._in_flight.get(account)
            if entries is None or entries.pop(entry_id, None) is None:
                return False
            if not entries:
                del self._in_flight[account]
            return True

    def in_flight_total(self, account: str, block: int, now: float) -> int:
        with self._lock:
            entries = self._live_in_flight(account, now)
            return sum(e.amount for e in entries.values() if e.until_block > block)

    def _live_in_flight(self, account: str, now: float) -> dict[str, _InFlight]:
        """The account's live entries (a fresh dict when it has none), dead ones dropped."""
        for _ in range(_PURGE_BATCH):
            if not self._in_flight_expiry or self._in_flight_expiry[0][0] > now:
                break
            _, idle = heapq.heappop(self._in_flight_expiry)
            self._drop_expired_in_flight(idle, now)
        self._drop_expired_in_flight(account, now)
        return self._in_flight.get(account, {})

    def _drop_expired_in_flight(self, account: str, now: float) -> None:
        entries = self._in_flight.get(account)
        if entries is None:
            return
        for entry_id in [k for k, e in entries.items() if now >= e.expires_at]:
            del entries[entry_id]
        if not entries:
            del self._in_flight[account]

    def __len__(self) -> int:
        """Entries currently kept, expired ones not yet purged included."""
        return len(self._entries)

    def _finish(self, key: str, token: str, new_state: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.token != token or entry.state not in (HELD, new_state):
                return False
            entry.state = new_state
            return True

    def _purge(self, now: float) -> None:
        _purge_expired(self._entries, self._expiry, now)

    def _purge_idem(self, now: float) -> None:
        _purge_expired(self._idem, self._idem_expiry, now)


class _Expiring(Protocol):
    @property
    def expires_at(self) -> float: ...


E = TypeVar("E", bound=_Expiring)


def _purge_expired(entries: dict[str, E], expiry: list[tuple[float, str]], now: float) -> None:
    for _ in range(_PURGE_BATCH):
        if not expiry or expiry[0][0] > now:
            return
        _, key = heapq.heappop(expiry)
        entry = entries.get(key)
        # The entry may have been renewed with a later expiry (or abandoned and begun again)
        # since this item was pushed.
        if entry is not None and entry.expires_at <= now:
            del entries[key]
