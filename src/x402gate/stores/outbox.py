"""The webhook outbox: one row per (journal row, webhook endpoint) still to be delivered.

A store that keeps the payments journal writes the outbox rows of a journal row *in the same
transaction* as the row itself (SQLite, PostgreSQL: the same SQL transaction; Redis: the same
Lua script; memory: under the same lock, and lost on restart like the rest of that store), so
an event the journal records is never missing from the outbox and a restart loses none. Which
endpoints get a row is :attr:`OutboxMethods.outbox_targets`, set by the gate from its webhook
configuration: (endpoint name, outcomes) pairs.

An outbox row names its journal row by id (the event id receivers deduplicate on); the
deliverer builds the event's body from the journal row, so a redelivery sends the same body.
Rows leave the outbox when delivered (:meth:`OutboxMethods.outbox_done`), or become *dead*
(:meth:`OutboxMethods.outbox_dead`) after too many attempts or too long; the newest
:data:`DEAD_KEPT` dead rows are kept for ``x402gate webhooks dead`` and the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigurationError
from .journal import MAX_TEXT, JournalRow

__all__ = ["DEAD_KEPT", "OutboxEntry", "OutboxMethods", "OutboxTarget", "targets_of"]

DEAD_KEPT = 10_000
"""Dead rows a store keeps (the newest); older ones are deleted as new ones die."""


@dataclass(frozen=True, slots=True)
class OutboxTarget:
    """An endpoint name and the journal outcomes it receives."""

    endpoint: str
    outcomes: frozenset[str]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One outbox row: the endpoint, the journal row id (the event id), when it is due next,
    how many attempts failed so far, when it was written, the last error, and the journal row
    itself (``None`` when retention pruned it before it was delivered)."""

    endpoint: str
    event: str
    due: float
    attempts: int
    created: float
    error: str = ""
    row: JournalRow | None = None


def targets_of(targets: tuple[OutboxTarget, ...], row: JournalRow) -> list[str]:
    """The endpoints that receive ``row``."""
    return [target.endpoint for target in targets if row.outcome in target.outcomes]


def check_endpoint_name(name: str) -> str:
    """An endpoint name fits a row: 1 to 256 characters without a newline."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_TEXT or "\n" in name:
        raise ConfigurationError("a webhook endpoint name has 1 to 256 characters, no newline")
    return name


class OutboxMethods:
    """The outbox part of :class:`~x402gate.stores.base.Store`; its defaults refuse."""

    supports_outbox: ClassVar[bool] = False
    """True when journal rows also write outbox rows for :attr:`outbox_targets`."""

    outbox_targets: tuple[OutboxTarget, ...] = ()
    """The endpoints journal rows are queued for (set by the gate before serving)."""

    def outbox_due(self, now: float, limit: int) -> list[OutboxEntry]:
        """At most ``limit`` pending rows due at ``now``, the earliest first."""
        raise self._no_outbox()

    def outbox_retry(self, endpoint: str, event: str, due: float, error: str) -> None:
        """Count a failed attempt of a pending row and make it due again at ``due``."""
        raise self._no_outbox()

    def outbox_done(self, endpoint: str, event: str) -> None:
        """Delete a delivered row (nothing when it is gone already)."""
        raise self._no_outbox()

    def outbox_dead(self, endpoint: str, event: str, now: float, error: str) -> None:
        """Move a pending row to the dead rows (kept: the newest :data:`DEAD_KEPT`)."""
        raise self._no_outbox()

    def outbox_dead_rows(self, limit: int = 100) -> list[OutboxEntry]:
        """The newest dead rows (``due`` is when they died), newest first."""
        raise self._no_outbox()

    def outbox_pending(self) -> int:
        """How many rows wait for delivery."""
        raise self._no_outbox()

    def _no_outbox(self) -> ConfigurationError:
        return ConfigurationError(f"{type(self).__name__} keeps no webhook outbox")
