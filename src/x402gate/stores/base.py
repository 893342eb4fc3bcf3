"""The store interface: replay protection for payment authorizations.

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

Every operation is atomic across threads, and across processes / hosts for backends that are
shared (SQLite file, Redis). Backends wrap every driver error in
:class:`~x402gate.errors.StoreError`. Methods are synchronous; the gate calls stores whose
:attr:`Store.blocking` is true from a worker thread so the event loop never waits on I/O.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import ClassVar, Self

from ..errors import ConfigurationError

__all__ = ["ClaimResult", "Store", "replay_key"]


class ClaimResult(enum.Enum):
    """Outcome of :meth:`Store.claim`."""

    CLAIMED = "claimed"
    """The caller now holds the key (it was absent, expired, or released for this resource)."""

    IN_FLIGHT = "in_flight"
    """Another request holds the key right now."""

    USED = "used"
    """The authorization was already settled."""

    BOUND_ELSEWHERE = "bound_elsewhere"
    """The key was first presented for another resource."""


def replay_key(network: str, asset: str, payer: str, nonce: str) -> str:
    """The canonical key of one authorization (addresses and nonce lower-cased)."""
    return f"{network}|{asset.lower()}|{payer.lower()}|{nonce.lower()}"


class Store(ABC):
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
    def mark_used(self, key: str, token: str) -> bool:
        """Held by ``token`` → used (settled).

        True also when ``token`` already marked it used; False in every other case (absent,
        held by another token, released: a released key must be claimed again first).
        """

    @abstractmethod
    def state(self, key: str, now: float) -> str | None:
        """``"held"``, ``"released"``, ``"used"`` or ``None`` (absent or expired).

        For tests and tools; the gate itself only needs :meth:`claim`.
        """

    def ping(self) -> None:  # noqa: B027 - optional hook, a no-op is the right default
        """Raise :class:`~x402gate.errors.StoreError` when the backend is unreachable."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
