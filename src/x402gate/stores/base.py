"""The store interface: replay protection for payment authorizations, and the credit ledger.

A *claim* reserves one EIP-3009 authorization — keyed by (network, asset, payer, nonce) — for one
request. The life of a key:

``absent`` --claim--> ``held`` --settle--> ``used``  (kept until the authorization expires)
                       ``held`` --release--> ``released`` (still bound to the first resource)
``released`` --claim for the same resource--> ``held``

* Exactly one concurrent caller can win a claim; everyone else learns why they lost.
* A released key stays bound to the resource (method + path) it was first presented for, so an
  authorization whose request failed can be retried on the same route but never spent elsewhere.
* A held key whose owner died stays held until it expires: the store fails closed.
* Entries are kept until ``expires_at`` (the authorization's ``validBefore``); past it the chain
  refuses the authorization anyway, so the entry can be forgotten.

Precise rules, identical in every backend (``tests/stores`` checks them against a dict model):

* An entry is *live* while ``now < expires_at`` (EIP-3009: valid while ``block.timestamp <
  validBefore``); from ``expires_at`` on it counts as absent for :meth:`Store.claim` and
  :meth:`Store.state` and may be purged at any time.
* :meth:`Store.claim` on a live entry answers, in this order: ``USED`` if settled,
  ``BOUND_ELSEWHERE`` if the resource differs, ``IN_FLIGHT`` if held by another token, else
  (released, or already held by this very token) ``CLAIMED`` for this token; the entry then
  keeps the later of the two ``expires_at`` values, so a retry never shortens the protection.
* Every operation is idempotent for its token: a driver or proxy that re-sends a command whose
  answer was lost (a timeout after the server ran it) gets the same answer again, instead of
  ``IN_FLIGHT`` for its own claim or ``False`` for its own release.
* :meth:`Store.release` and :meth:`Store.mark_used` take no clock: they act on the stored entry.
  Once it has expired the entry may already be purged, so their answer is then unspecified.
* Time is expected to move forward; a backend may forget expired entries relative to the latest
  ``now`` it has seen.

Recovering a paid but unanswered claim: a held key may be held by a request that is gone (its
settlement reached the chain but the answer was lost, or its process died). The gate reads the
chain for such a key and, when the transfer is there, serves the buyer's retry in its place:

``held`` (by a lost token) --take_over--> ``held`` (by the retry's token) --mark_used--> ``used``

A request can also be lost after its claim was marked used, while its answer was still on the
way (the process killed, the connection dropped). The gate therefore marks a claim used in two
steps when it reconciles: ``mark_used(key, token, now)`` makes it *sending* (settled, the answer
on the way; :meth:`Store.claim` answers ``USED`` for it as for a used key), and the request
renews that stamp while its answer runs; ``mark_used(key, token)`` once the whole answer was
handed to the server makes it ``used``. A sending key whose request stopped renewing for
``answer_grace`` seconds is recovered like a held one:

``sending`` (stale) --take_over--> ``held`` (by the retry's token) --mark_used--> ``used``

* :meth:`Store.recovery_check` rations the chain reads: for a live ``held`` key bound to this
  resource, not checked in the last ``min_interval`` seconds, it stamps ``now`` and answers the
  holder's token; in every other case ``None``. Of concurrent retries in one interval exactly
  one gets the token.
* :meth:`Store.take_over` hands a held key from ``holder`` to ``token`` (compare and set): of
  concurrent retries at most one wins, and the lost request's later ``mark_used`` or
  ``release`` with its old token answers False, so one authorization is answered once.
  True also when ``token`` already holds it; False in every other case.

Idempotent retries (x402 ``payment-identifier`` extension): the client names its payment with an
id, and a retry carrying the same id and the same payment gets the first answer again instead of
paying twice. The store keeps, per id, the *fingerprint* the caller computed (a hash of the
payment and the request) and, once the request is answered, the serialized response:

``absent`` --begin--> ``pending`` --complete--> ``done`` (response kept until ``expires_at``)
                       ``pending`` --abandon--> ``absent``

* :meth:`Store.idempotency_begin` reserves the id *before* the payment is verified or settled,
  so of concurrent retries exactly one proceeds. On a live entry it answers ``CONFLICT`` if the
  fingerprint differs (whatever the state), else ``REPLAY`` with the stored response when done,
  else ``IN_PROGRESS``; on an absent or expired id it answers ``NEW``: the entry is now pending
  for this fingerprint until ``now + ttl_seconds``.
* :meth:`Store.idempotency_complete` stores the response of a pending entry with this
  fingerprint: it becomes ``done`` and is kept for the begin's ``ttl_seconds`` counted from
  this ``now`` (never shorter than the reservation). Repeating it on a done entry with this
  fingerprint answers True and keeps the first response; on an expired entry it answers False.
  Responses over :data:`MAX_IDEMPOTENT_RESPONSE_BYTES` are refused.
* :meth:`Store.idempotency_abandon` deletes a pending entry with this fingerprint (the request
  failed before a definitive answer), so that a retry can proceed; a done entry stays. It takes
  no clock: on an expired entry its answer is unspecified.
* Entries are live while ``now < expires_at``, as claims are; a pending entry whose owner died
  stays pending (``IN_PROGRESS``) until it expires. There is no owner token: any caller with the
  same id and fingerprint is the same logical request.
* Ids are checked against the extension's syntax (:func:`check_payment_id`) and answered
  :class:`ValueError` otherwise; the gate answers 400 before it gets here.

Credit ledger (metered billing with plain ``exact`` payments): the payer pays the quote, the
handler reports what it actually used, and the change stays with the payer as credit. Amounts are
integers in the asset's atomic units, never floats, from 0 to :data:`MAX_CREDIT_AMOUNT` (an
EVM ``uint256``), with no other limit in any backend. One *account* per (network, asset, payer),
named by :func:`credit_account`, holds

* ``available``: what a new reservation can take;
* ``reserved``: the sum of the live reservations;
* ``topped_up`` and ``charged``: lifetime totals, so that every account satisfies, at every
  moment and in every backend, ``topped_up == available + reserved + charged`` (conservation),
  with no term ever negative.

The life of a reservation (its id is unique per request, chosen by the caller):

``absent`` --reserve--> ``held`` --commit--> ``committed`` (the charge is taken, the rest returns)
                        ``held`` --release--> ``released`` (everything returns: the refund story)
                        ``held`` --``now >= expires_at``--> ``expired`` (everything returns)

* A held reservation is *live* while ``now < expires_at``. From ``expires_at`` on it counts as
  expired in every answer given at that ``now``, whether or not the store has moved its amount
  back yet: stores do so lazily, in every operation on its account (top-up, reserve, commit,
  release, balance) and in :meth:`Store.credit_reconcile`. That is the crash story: a process
  killed between reserve and commit loses no credit and creates none; the payer gets the
  reservation back once it expires. A request that is still running keeps its reservation
  alive with :meth:`Store.credit_extend` (the gate renews it while the answer runs).
* :meth:`Store.credit_topup` is idempotent per ``ref`` (the settlement transaction hash): a ref
  already applied is a no-op, so a retried settlement can never credit twice. Refs are kept
  forever; the same ref with another account or amount is a bug and raises :class:`ValueError`.
* :meth:`Store.credit_reserve` moves the amount from available to reserved iff available covers
  it, atomically: concurrent requests of one payer can never overdraw. Repeating it with the id
  of a live reservation of the same account and amount answers True again without reserving
  twice; any other known id answers False.
* :meth:`Store.credit_commit` charges ``min(charge, amount)`` (never more than was reserved)
  and returns the rest to available. Repeating it answers the first charge again. A commit of a
  reservation that *expired* (its answer outlived it) still charges, but only from what is
  available at that moment: ``min(charge, amount, available)``, and the reservation becomes
  committed with that charge. Money the expiry returned that another request has reserved since
  is never taken twice. On a released or unknown id it charges nothing and answers 0.
* :meth:`Store.credit_extend` moves the ``expires_at`` of a live held reservation later (never
  earlier); on a committed, released, expired or unknown id it changes nothing and answers
  False.
* :meth:`Store.credit_release` returns the whole reservation; True also when it was already
  released, False for committed, expired or unknown ids.
* Finished reservations are kept at least :data:`CREDIT_RECORD_RETENTION_SECONDS` past their
  ``expires_at`` (the journal behind the idempotent answers); after that they may be purged and
  count as unknown. Accounts and top-up refs are never purged.

Payments in flight (the bound on handler runs per payer): every verified authorization whose
settlement is not known yet holds an *entry* in its payer's account (named by
:func:`credit_account`), with its amount. The gate admits a new payment only when the payer's
balance, read on chain at some block, covers it plus every entry that reading does not reflect
yet, so a burst of authorizations from one wallet can never make the handler run more often than
the wallet can pay for. An entry records ``until_block``:

* :data:`IN_FLIGHT_UNSETTLED` while its settlement is not known: it counts against every
  reading;
* the block of its settlement transaction once settled: it counts against readings taken at an
  earlier block only (a reading at that block or later already shows the money gone).

* :meth:`Store.in_flight_admit` adds the entry iff ``amount`` plus the sum of the live entries
  with ``until_block > block`` is at most ``balance``, atomically: of concurrent admissions of
  one account, never more are admitted than the balance covers. Repeating it for a live entry
  with the same id and amount answers True without adding it twice.
* :meth:`Store.in_flight_settle` records the settlement block of a live entry and how long it
  stays (past that, every reading is newer than the settlement).
* :meth:`Store.in_flight_release` deletes an entry (its payment was refused or not charged).
* Entries are live while ``now < expires_at``: a process killed with entries held does not lock
  its payers out longer than their authorizations could still be settled.

Every operation is atomic across threads, and across processes / hosts for backends that are
shared (SQLite file, Redis). Backends wrap every driver error in
:class:`~x402gate.errors.StoreError`. Methods are synchronous; the gate calls stores whose
:attr:`Store.blocking` is true from a worker thread so the event loop never waits on I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self

from ..errors import ConfigurationError
from .channels import ChannelBegin, ChannelState
from .checks import check_payment_id, credit_account, replay_key
from .journal import JournalMethods, JournalRow
from .leases import LeaseOperations
from .records import (
    CREDIT_RECORD_RETENTION_SECONDS,
    IN_FLIGHT_UNSETTLED,
    MAX_CREDIT_AMOUNT,
    MAX_IDEMPOTENT_RESPONSE_BYTES,
    MAX_KEPT_BODY_BYTES,
    ClaimResult,
    CreditBalance,
    CreditReservation,
    IdempotencyOutcome,
    IdempotencyResult,
)

# The records and checks lived here before they got modules of their own; this module keeps
# exporting them so that ``from x402gate.stores.base import ...`` goes on working.
__all__ = [
    "CREDIT_RECORD_RETENTION_SECONDS",
    "IN_FLIGHT_UNSETTLED",
    "MAX_CREDIT_AMOUNT",
    "MAX_IDEMPOTENT_RESPONSE_BYTES",
    "MAX_KEPT_BODY_BYTES",
    "ClaimResult",
    "CreditBalance",
    "CreditReservation",
    "IdempotencyOutcome",
    "IdempotencyResult",
    "Store",
    "check_payment_id",
    "credit_account",
    "replay_key",
]


class Store(JournalMethods, LeaseOperations, ABC):
    """Base class of every backend.

    Subclasses set :attr:`scheme` (the URL scheme they register under) and implement the
    abstract methods. ``now`` arguments are wall-clock seconds from the gate's clock, so tests
    can move time without sleeping.
    """

    scheme: ClassVar[str] = ""
    """The URL scheme this backend registers under (``"sqlite"`` for ``sqlite:///x.db``)."""

    aliases: ClassVar[tuple[str, ...]] = ()
    """Further URL schemes served by the same backend (``rediss``, ``unix`` for Redis)."""

    blocking: ClassVar[bool] = True
    """True when operations do I/O (the async gate then runs them in a worker thread)."""

    serial: ClassVar[bool] = False
    """True when a blocking backend runs its operations one at a time anyway (one connection
    under one lock): the async gate then gives it one worker thread of its own instead of a
    thread pool, which costs less per call and never makes it serve fewer calls at once."""

    shared_across_processes: ClassVar[bool] = False
    """True when several processes or hosts see the same data (SQLite file, Redis)."""

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Create the backend from its URL; :func:`~x402gate.stores.open_store` calls this.

        Raises :class:`~x402gate.errors.ConfigurationError` for a URL the backend cannot use.
        The default refuses, for backends that can only be built from Python.
        """
        raise ConfigurationError(f"{cls.__name__} cannot be created from a URL")

    @abstractmethod
    def claim(
        self, key: str, resource: str, token: str, expires_at: int, now: float
    ) -> ClaimResult:
        """Try to hold ``key`` for ``resource`` on behalf of ``token`` (unique per request)."""

    @abstractmethod
    def release(self, key: str, token: str) -> bool:
        """Held by ``token`` → released (bound to its resource).

        True also when ``token`` already released it; False in every other case (absent, held by
        another token, used).
        """

    @abstractmethod
    def mark_used(
        self, key: str, token: str, now: float | None = None, *, journal: JournalRow | None = None
    ) -> bool:
        """Held (or sending) by ``token`` → used (settled, and answered).

        With ``journal`` (stores with :attr:`supports_journal`), that row is appended in the
        same transaction when the answer is True.

        With ``now``: held by ``token`` → *sending* (settled, its answer on the way), alive at
        ``now``; repeated on a sending key it moves that stamp later (never earlier), which is
        how a running answer shows it is alive. A key already used stays used.

        True also when ``token`` already marked it used; False in every other case (absent,
        held by another token, released: a released key must be claimed again first).
        """

    @abstractmethod
    def state(self, key: str, now: float) -> str | None:
        """``"held"``, ``"released"``, ``"sending"``, ``"used"`` or ``None`` (absent or expired).

        For tests and tools; the gate itself only needs :meth:`claim`.
        """

    supports_recovery: ClassVar[bool] = False
    """True when the backend implements :meth:`recovery_check` and :meth:`take_over` (all
    built-in ones do); without them the gate never serves a retry of a claimed authorization."""

    def recovery_check(
        self,
        key: str,
        resource: str,
        now: float,
        min_interval: float,
        answer_grace: float | None = None,
    ) -> str | None:
        """The token holding ``key`` for ``resource``, at most once per ``min_interval`` seconds.

        For a live ``held`` key bound to ``resource`` whose last check is ``min_interval`` or
        more seconds before ``now`` (or that was never checked): records ``now`` as its last
        check and answers the holder's token. The same for a live ``sending`` key whose last
        sign of life is ``answer_grace`` or more seconds before ``now`` (never when
        ``answer_grace`` is ``None``). ``None`` in every other case.
        """
        raise ConfigurationError(f"{type(self).__name__} cannot recover claims")

    def take_over(self, key: str, holder: str, token: str) -> bool:
        """Held or sending by ``holder`` → held by ``token``; True also when ``token`` already
        holds it.

        False in every other case (absent, released, used, held by a third token). Takes no
        clock: on an expired entry the answer is unspecified.
        """
        raise ConfigurationError(f"{type(self).__name__} cannot recover claims")

    supports_idempotency: ClassVar[bool] = False
    """True when the backend implements the ``idempotency_*`` operations (all built-in ones do).

    The defaults raise :class:`~x402gate.errors.ConfigurationError`, so a third-party backend
    written before idempotency keeps working for claims; the gate checks this flag when a route
    turns ``payment-identifier`` on.
    """

    def idempotency_begin(
        self, payment_id: str, fingerprint: str, ttl_seconds: int, now: float
    ) -> IdempotencyResult:
        """Reserve ``payment_id`` for ``fingerprint`` before the payment is verified.

        ``NEW`` (now pending until ``now + ttl_seconds``), ``REPLAY`` with the stored response,
        ``IN_PROGRESS`` or ``CONFLICT``; see the module docstring for the order.
        """
        raise self._no_idempotency()

    def idempotency_complete(
        self, payment_id: str, fingerprint: str, response: bytes, now: float
    ) -> bool:
        """Pending for ``fingerprint`` → done, keeping ``response`` until the entry expires.

        True also when it is already done for ``fingerprint`` (the first response is kept);
        False in every other case (absent, expired, other fingerprint). Raises
        :class:`~x402gate.errors.ConfigurationError` for a response over
        :data:`MAX_IDEMPOTENT_RESPONSE_BYTES`.
        """
        raise self._no_idempotency()

    def idempotency_abandon(self, payment_id: str, fingerprint: str) -> bool:
        """Delete the entry if it is pending for ``fingerprint``; True if it was deleted.

        A done entry, or one of another fingerprint, is left alone (False).
        """
        raise self._no_idempotency()

    def idempotency_state(self, payment_id: str, now: float) -> str | None:
        """``"pending"``, ``"done"`` or ``None`` (absent or expired); for tests and tools."""
        raise self._no_idempotency()

    def _no_idempotency(self) -> ConfigurationError:
        return ConfigurationError(
            f"{type(self).__name__} does not support payment-identifier idempotency"
        )

    supports_credit: ClassVar[bool] = False
    """True when the backend implements the ``credit_*`` ledger operations (all built-in ones do).

    The defaults raise :class:`~x402gate.errors.ConfigurationError`; the gate checks this flag
    when a route turns metered billing on.
    """

    def credit_topup(self, account: str, amount: int, ref: str, now: float) -> int:
        """Credit ``amount`` to ``account`` once per ``ref``; answers the new available balance.

        A ``ref`` already applied (same account and amount) changes nothing and answers the
        balance; with another account or amount it raises :class:`ValueError`.
        """
        raise self._no_credit()

    def credit_reserve(
        self, account: str, amount: int, reservation_id: str, expires_at: float, now: float
    ) -> bool:
        """Move ``amount`` from available to reserved iff available covers it.

        True when reserved (also when this live reservation was already made with the same
        account and amount); False otherwise, with nothing changed. The reservation lasts
        until ``expires_at`` (which must be after ``now``) unless committed or released first.
        """
        raise self._no_credit()

    def credit_commit(
        self, reservation_id: str, charge: int, now: float, *, journal: JournalRow | None = None
    ) -> int:
        """Charge ``min(charge, reserved amount)`` of a live reservation, return the rest.

        With ``journal``, that row, its amount set to what this call charged, is appended in the
        same transaction when this call charged something.

        Answers what was charged: the first charge again when it was already committed, 0 for
        a released or unknown reservation (which is charged nothing). An expired reservation
        is charged ``min(charge, amount, available)`` from the account's available credit.
        """
        raise self._no_credit()

    def credit_extend(self, reservation_id: str, expires_at: float, now: float) -> bool:
        """Keep a live held reservation until at least ``expires_at`` (its request still runs).

        True when the reservation is held and live at ``now`` (it now expires at the later of
        its ``expires_at`` and this one); False for committed, released, expired or unknown
        ids, with nothing changed.
        """
        raise self._no_credit()

    def credit_release(self, reservation_id: str, now: float) -> bool:
        """Return the whole of a live reservation to available (the handler failed).

        True also when it was already released; False for committed, expired or unknown ids.
        """
        raise self._no_credit()

    def credit_balance(self, account: str, now: float) -> CreditBalance:
        """The account at ``now`` (zeros for an account never topped up)."""
        raise self._no_credit()

    def credit_reservation(self, reservation_id: str, now: float) -> CreditReservation | None:
        """The journal entry of a reservation as seen at ``now``, or None when unknown/purged.

        A held reservation whose ``expires_at`` has come shows as ``"expired"``. For tests and
        tools; it changes nothing.
        """
        raise self._no_credit()

    def credit_reconcile(self, now: float) -> int:
        """Return every held reservation expired at ``now`` to its account.

        Answers how many this call moved (others may have been moved lazily before). Operations
        on an account already do this for that account; call it after a restart, or from time
        to time, so that balances of payers who never come back are right too.
        """
        raise self._no_credit()

    def _no_credit(self) -> ConfigurationError:
        return ConfigurationError(f"{type(self).__name__} does not support the credit ledger")

    supports_in_flight: ClassVar[bool] = False
    """True when the backend implements the ``in_flight_*`` operations (all built-in ones do).

    The defaults raise :class:`~x402gate.errors.ConfigurationError`; the gate checks this flag
    when it bounds payments in flight (``limit_in_flight``, on by default).
    """

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
        """Add an unsettled entry of ``amount`` iff ``balance`` (read at ``block``) covers it
        plus every live entry of ``account`` with ``until_block > block``.

        True when added (also when this live entry already exists with the same amount);
        False otherwise, with nothing changed. Expired entries may be dropped on the way.
        """
        raise self._no_in_flight()

    def in_flight_settle(
        self, account: str, entry_id: str, block: int, expires_at: float, now: float
    ) -> bool:
        """The entry's payment settled in ``block`` (:data:`IN_FLIGHT_UNSETTLED` when the block
        is not known): from now on it counts against readings before that block only, until
        ``expires_at``. False when there is no live entry ``entry_id`` in ``account``."""
        raise self._no_in_flight()

    def in_flight_release(self, account: str, entry_id: str) -> bool:
        """Delete the entry (its payment was refused or charged nothing); True if it existed."""
        raise self._no_in_flight()

    def in_flight_total(self, account: str, block: int, now: float) -> int:
        """The sum of the live entries of ``account`` a reading at ``block`` does not reflect."""
        raise self._no_in_flight()

    def _no_in_flight(self) -> ConfigurationError:
        return ConfigurationError(
            f"{type(self).__name__} cannot bound payments in flight (limit_in_flight)"
        )

    supports_channels: ClassVar[bool] = False
    """True when the backend keeps payment-channel state (the ``channel_*`` operations; all
    built-in ones do). The rules are in :mod:`x402gate.stores.channels`; the defaults raise
    :class:`~x402gate.errors.ConfigurationError`, and the gate checks this flag before it offers
    the ``batch-settlement`` scheme."""

    def channel_sync(
        self,
        channel_id: str,
        config: str,
        *,
        balance: int,
        total_claimed: int,
        withdraw_requested_at: int,
        refund_nonce: int,
        now: float,
    ) -> ChannelState:
        """Create the channel, or refresh its mirror of the chain read at ``now``.

        ``balance`` and ``withdraw_requested_at`` are taken as read; ``total_claimed`` and
        ``refund_nonce`` never go back. A channel known with another ``config`` raises
        :class:`ValueError`. Answers the channel after the change.
        """
        raise self._no_channels()

    def channel_get(self, channel_id: str) -> ChannelState | None:
        """The channel as stored (its step shown even when expired), or None when unknown."""
        raise self._no_channels()

    def channel_begin(
        self,
        channel_id: str,
        token: str,
        *,
        base: int,
        max_claimable: int,
        signature: str,
        expires_at: float,
        now: float,
    ) -> ChannelBegin:
        """Take the channel's step for ``token`` with a voucher signed on ``base``, atomically.

        See :mod:`x402gate.stores.channels` for the outcomes and their order.
        """
        raise self._no_channels()

    def channel_commit(
        self,
        channel_id: str,
        token: str,
        charge: int,
        now: float,
        *,
        step: int | None = None,
        journal: JournalRow | None = None,
    ) -> ChannelState | None:
        """End ``token``'s step and keep its voucher, atomically.

        With ``journal``, that row, its amount set to what the seller earned by this commit, is
        appended in the same transaction when the commit happens.

        With ``s = min(step, max_claimable - base)`` (``step`` defaults to ``charge``):
        ``charged`` becomes ``base + s``, what the client signs its next voucher on, and
        ``earned`` grows by ``min(charge, s)``, what the seller may claim. A metered answer
        passes the step it announced in its payment response and the usage it measured.
        Answers the channel after the commit, or None (nothing charged) when ``token`` does not
        hold the step (already committed or released, taken over, unknown channel).
        """
        raise self._no_channels()

    def channel_extend(self, channel_id: str, token: str, expires_at: float) -> bool:
        """Move the expiry of ``token``'s step to ``expires_at`` if later (a long answer is
        still running); False when ``token`` does not hold the step."""
        raise self._no_channels()

    def channel_release(self, channel_id: str, token: str) -> bool:
        """End ``token``'s step charging nothing; False when ``token`` does not hold it."""
        raise self._no_channels()

    def channel_mark_claimed(
        self, channel_id: str, claimed: int, now: float, *, journal: JournalRow | None = None
    ) -> bool:
        """Record the vouchers claimed on chain up to ``claimed`` (never beyond ``earned``).

        With ``journal`` (a ``claim`` row), that row, its amount set to what this call adds to
        ``total_claimed``, is appended in the same transaction when it adds something.

        ``total_claimed`` becomes the larger of itself and ``claimed``. False when the channel
        is unknown or ``claimed`` exceeds its earned amount (nothing changed then).
        """
        raise self._no_channels()

    def channel_claimable(self, limit: int = 100) -> list[ChannelState]:
        """Up to ``limit`` channels with ``earned > total_claimed``, ordered by their last
        committed request, oldest first (a withdrawing payer's channel is flagged by
        ``withdraw_requested_at``; the caller decides what to claim first)."""
        raise self._no_channels()

    def channel_list(self, limit: int = 100, after: str | None = None) -> list[ChannelState]:
        """One page of every channel the store keeps, ordered by channel id: up to ``limit``
        channels whose id is above ``after`` (``None`` for the first page; pass the last id of
        a page to get the next). For operators' listings and idle refunds, not for requests."""
        raise self._no_channels()

    def _no_channels(self) -> ConfigurationError:
        return ConfigurationError(
            f"{type(self).__name__} cannot keep payment-channel state (batch-settlement)"
        )

    def ping(self) -> None:
        """Raise :class:`~x402gate.errors.StoreError` when the backend is unreachable."""

    def close(self) -> None:
        """Release connections and files."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
