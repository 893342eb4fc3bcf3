"""The payments journal: one row per payment outcome that moved (or promised) money.

Every store keeps it next to the state it records: a settled ``exact`` payment, a charge taken
from credit, a refund, a payment-channel charge, a claim of vouchers on chain. A row is written
*in the same transaction* as the commit it records wherever the store has transactions
(:meth:`~x402gate.stores.base.Store.mark_used`, ``credit_commit`` and ``channel_commit`` take a
``journal=`` row), so no settled payment lacks its row and no row records a commit that did not
happen. :meth:`~x402gate.stores.base.Store.journal_append` writes a row on its own (refusals,
claims, anything recorded by a caller inside its own transaction-free step).

Rules, identical in every backend:

* Rows are keyed by :attr:`JournalRow.id`; appending a row whose id is already present changes
  nothing (a retried commit, a replayed request never count twice).
* ``amount`` is an integer of atomic units (``0 <= amount <= MAX_CREDIT_AMOUNT``); for
  ``credit_commit`` and ``channel_commit`` the store writes what was actually charged or
  earned, whatever the row passed in said.
* :meth:`~x402gate.stores.base.Store.journal_rows` answers rows with ``since <= time < until``
  in time order (ties by id), at most ``limit``, of one ``payer`` when given.
* Retention (:class:`JournalRetention`): rows older than ``days`` and rows beyond the newest
  ``rows`` are pruned by :meth:`~x402gate.stores.base.Store.journal_prune`, which the stores also
  run from time to time on append. Nothing else ever deletes a row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from ..errors import ConfigurationError
from .records import MAX_CREDIT_AMOUNT

__all__ = [
    "OUTCOMES",
    "JournalMethods",
    "JournalRetention",
    "JournalRow",
    "check_journal_row",
    "row_from_json",
    "row_to_json",
]

OUTCOMES = (
    "settled",  # an ``exact`` payment settled on chain (a metered route's top-up too)
    "charged",  # a charge taken from credit
    "refunded",  # money given back (a released reservation, a refund)
    "channel_charge",  # a payment-channel voucher's charge earned by the seller
    "claim",  # vouchers claimed on chain
    "settle",  # claimed channel funds settled to the seller on chain
    "refused",  # a payment refused (its code in ``detail``); amount is what was asked
    "error",  # a payment that failed (facilitator or store); amount is what was asked
)
"""The outcomes a row may record."""

MAX_TEXT = 256
"""Longest text field a row keeps (route, payer, asset, network, transaction, detail)."""


class JournalRow(NamedTuple):
    """One payment outcome.

    ``time`` is wall-clock seconds; ``latency`` the seconds the request took until this outcome
    (``None`` when unknown, for claims written by a background task). ``scheme`` is
    ``exact`` or ``batch-settlement``; ``detail`` a refusal code or a free note.

    A named tuple (immutable, its fields in column order): one is built for every paid
    request, and a tuple costs a fraction of a frozen dataclass to build and to copy.
    """

    id: str
    time: float
    route: str
    payer: str
    amount: int
    asset: str
    network: str
    outcome: str
    transaction: str = ""
    latency: float | None = None
    scheme: str = ""
    detail: str = ""

    def with_amount(self, amount: int) -> JournalRow:
        """This row with the amount the store actually moved (the row itself when that is its
        amount already: no copy on every commit that charged what was asked)."""
        if amount == self.amount:
            return self
        return JournalRow._make((*self[:4], amount, *self[5:]))


@dataclass(frozen=True, slots=True)
class JournalRetention:
    """How long the journal keeps rows: ``days`` of age and/or the newest ``rows`` rows.

    ``None`` means no limit of that kind. The default keeps 400 days, so that a year's report
    and its month of comparison are both there.
    """

    days: float | None = 400.0
    rows: int | None = None

    def __post_init__(self) -> None:
        if self.days is not None and not self.days > 0:
            raise ConfigurationError(f"journal retention days must be positive, got {self.days}")
        if self.rows is not None and (isinstance(self.rows, bool) or self.rows < 1):
            raise ConfigurationError(f"journal retention rows must be >= 1, got {self.rows}")

    def cutoff(self, now: float) -> float | None:
        """Rows with ``time`` before this are pruned (``None``: no age limit)."""
        return None if self.days is None else now - self.days * 86400.0


_TEXT_FIELDS = ("route", "payer", "asset", "network", "transaction", "scheme", "detail")
_OUTCOME_SET = frozenset(OUTCOMES)


def check_journal_row(row: JournalRow) -> JournalRow:
    """Validate a row before it is stored; :class:`ValueError` for a malformed one.

    Run on every journaled commit: the fields are unpacked once and the text ones checked in
    one pass (the field at fault is looked up only for the error)."""
    if not isinstance(row, JournalRow):
        raise ValueError("a journal row must be a JournalRow")
    row_id, _, route, payer, amount, asset, network, outcome, tx, _, scheme, detail = row
    if not row_id or len(row_id) > MAX_TEXT:
        raise ValueError("a journal row needs an id of 1 to 256 characters")
    if outcome not in _OUTCOME_SET:
        raise ValueError(f"unknown journal outcome {outcome!r}")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValueError("a journal amount is an integer of atomic units")
    if not 0 <= amount <= MAX_CREDIT_AMOUNT:
        raise ValueError("a journal amount must be between 0 and 2**256 - 1")
    for value in (route, payer, asset, network, tx, scheme, detail):
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            name = next(
                name
                for name in _TEXT_FIELDS
                if not isinstance(getattr(row, name), str) or len(getattr(row, name)) > MAX_TEXT
            )
            raise ValueError(f"journal field {name} must be text of at most {MAX_TEXT} chars")
    return row


def row_to_json(row: JournalRow) -> str:
    """The row as compact JSON, its amount as decimal text (any ``uint256`` survives)."""
    data: dict[str, Any] = row._asdict()
    data["amount"] = str(row.amount)
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def row_from_json(text: str | bytes) -> JournalRow:
    """The inverse of :func:`row_to_json`."""
    data = json.loads(text)
    data["amount"] = int(data["amount"])
    return JournalRow(**data)


class JournalMethods:
    """The journal part of :class:`~x402gate.stores.base.Store`: its defaults refuse."""

    supports_journal: ClassVar[bool] = False
    """True when the backend keeps the payments journal (:mod:`x402gate.stores.journal`; all
    built-in ones do) and takes ``journal=`` rows in its commits. The defaults raise
    :class:`~x402gate.errors.ConfigurationError`; the gate writes no journal without it."""

    journal_retention: JournalRetention = JournalRetention()
    """How long journal rows are kept: set it on the store before serving."""

    def journal_append(self, row: JournalRow) -> bool:
        """Append ``row`` on its own; False when a row with its id is already there."""
        raise self._no_journal()

    def journal_rows(
        self,
        since: float = float("-inf"),
        until: float = float("inf"),
        limit: int = 1_000_000,
        *,
        payer: str | None = None,
    ) -> list[JournalRow]:
        """The rows with ``since <= time < until`` in time order, at most ``limit``; with
        ``payer``, only that payer's (as stored: lower case)."""
        raise self._no_journal()

    def journal_prune(self, now: float) -> int:
        """Delete the rows :attr:`journal_retention` no longer keeps; answers how many."""
        raise self._no_journal()

    def _no_journal(self) -> ConfigurationError:
        return ConfigurationError(f"{type(self).__name__} does not keep a payments journal")
