"""Leases: one holder at a time for a named background job (the channel claimer), across every
worker, process and instance sharing a store.

A lease is a name, a holder (a token unique per claimer, chosen by the caller) and an expiry. The
life of a name:

``free`` --acquire(holder)--> ``held`` by holder until ``now + ttl_seconds``
``held`` --acquire(same holder)--> ``held``, expiry moved to ``now + ttl_seconds`` (renewed)
``held`` --release(same holder)--> ``free``
``held`` --``now >= expires_at``--> ``free`` (its holder died or stalled: another may take it)

* :meth:`LeaseOperations.lease_acquire` is one atomic check-and-set in every backend: of
  concurrent callers on a free (or expired) lease exactly one gets True; a live lease held by
  another holder answers False and changes nothing.
* A holder that stops renewing loses the lease at its expiry, so a killed process hands over
  after at most ``ttl_seconds``. A holder must therefore renew well within ``ttl_seconds`` and
  stop the guarded work when a renewal answers False.
* ``now`` comes from the caller's clock, as for every other store operation; the holders of one
  lease must share a clock (wall-clock seconds).
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import ConfigurationError

__all__ = ["MAX_LEASE_NAME_LENGTH", "MAX_LEASE_TTL_SECONDS", "LeaseOperations", "check_lease"]

MAX_LEASE_NAME_LENGTH = 200
"""Longest lease name or holder token, in characters."""

MAX_LEASE_TTL_SECONDS = 86_400
"""Longest lease: a day."""


def _check_text(value: str, what: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_LEASE_NAME_LENGTH
        or not value.isprintable()
    ):
        raise ValueError(
            f"lease {what} must be printable text of 1 to {MAX_LEASE_NAME_LENGTH} characters"
        )
    return value


def check_lease(name: str, holder: str, ttl_seconds: float | None = None) -> None:
    """The checks every backend runs first (:class:`ValueError` naming the wrong argument)."""
    _check_text(name, "name")
    _check_text(holder, "holder")
    if ttl_seconds is not None and (
        isinstance(ttl_seconds, bool)
        or not isinstance(ttl_seconds, int | float)
        or not 0 < ttl_seconds <= MAX_LEASE_TTL_SECONDS
    ):
        raise ValueError(f"lease ttl must be above 0 and at most {MAX_LEASE_TTL_SECONDS} seconds")


class LeaseOperations:
    """The lease operations of :class:`~x402gate.stores.base.Store` (see the module).

    The defaults raise :class:`~x402gate.errors.ConfigurationError`; every built-in backend
    implements them and sets :attr:`supports_leases`.
    """

    supports_leases: ClassVar[bool] = False
    """True when the backend implements the ``lease_*`` operations."""

    def lease_acquire(self, name: str, holder: str, ttl_seconds: float, now: float) -> bool:
        """Take or renew lease ``name`` for ``holder`` until ``now + ttl_seconds``.

        True when ``holder`` now holds it (it was free, expired, or already held by
        ``holder``); False when another holder's lease is live at ``now`` (nothing changed).
        """
        raise self._no_leases()

    def lease_release(self, name: str, holder: str) -> bool:
        """Free lease ``name`` if ``holder`` holds it (True); False otherwise, nothing changed.

        Takes no clock: a lease that expired but was not taken by anyone is still released."""
        raise self._no_leases()

    def lease_holder(self, name: str, now: float) -> str | None:
        """The holder of lease ``name`` if it is live at ``now``; for tests and tools."""
        raise self._no_leases()

    def _no_leases(self) -> ConfigurationError:
        return ConfigurationError(f"{type(self).__name__} does not support leases")
