"""The interface of a payment scheme: how a route's price is asked for, checked and collected.

The gate composes one scheme with its store, pricing and policy; the scheme knows the wire
format and the money movement of one x402 ``scheme`` (``exact`` today; ``upto`` and
``batch-settlement`` fit the same shape). A scheme does:

* :meth:`~PaymentScheme.requirements`: one ``accepts`` entry for an asset, an amount (atomic
  units, the route's price or, for ``upto``, its maximum), a recipient and a validity window;
* :meth:`~PaymentScheme.check`: the local checks of a payload against the requirements it
  claims to meet (fields, window, signature), with no I/O, returning the :class:`Authorization`
  it carries; a refusal raises :class:`~x402gate.errors.PaymentError` with one of its
  :attr:`~PaymentScheme.error_codes`;
* :meth:`~PaymentScheme.verify`: the remote check (the facilitator: balance, nonce, simulation);
* :meth:`~PaymentScheme.settle`: collect the payment after (or before) the answer.

``verify`` and ``settle`` return awaitables rather than being coroutines of their own, so a
scheme that hands the call on (to a facilitator) adds no await to a paid request.
tests/test_schemes.py shows an ``upto``-like scheme (authorize a maximum, settle what was
used) that fits this interface.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse, VerifyResponse

    from ..assets import Asset

__all__ = ["Authorization", "PaymentScheme"]


class Authorization(Protocol):
    """What a checked payload authorizes: who pays how much, until when, under which nonce."""

    @property
    def payer(self) -> str: ...

    @property
    def value(self) -> int: ...

    @property
    def nonce(self) -> str: ...

    @property
    def valid_before(self) -> int: ...

    @property
    def signature(self) -> bytes: ...

    @property
    def recovered(self) -> bool:
        """True when the signature was proven offline (else only the facilitator can judge)."""
        ...


@runtime_checkable
class PaymentScheme(Protocol):
    """One x402 payment scheme, as the gate uses it (see the module documentation)."""

    name: str
    """The x402 ``scheme`` name (``"exact"``), as in requirements and ``/supported``."""
    error_codes: frozenset[str]
    """The error codes :meth:`check` and :meth:`verify` may refuse a payment with."""

    def requirements(
        self, asset: Asset, amount: int, pay_to: str, max_timeout_seconds: int
    ) -> PaymentRequirements:
        """One ``accepts`` entry: pay (at most) ``amount`` atomic units of ``asset``."""
        ...

    def check(
        self,
        payload: Mapping[str, Any],
        requirements: PaymentRequirements,
        *,
        now: float,
        allow_unrecovered: bool = False,
    ) -> Authorization:
        """Check a payload offline against ``requirements``; raise ``PaymentError`` if not."""
        ...

    def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> Awaitable[VerifyResponse]:
        """Ask whether the payment would settle now (balance, nonce, simulation)."""
        ...

    def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> Awaitable[SettleResponse]:
        """Collect the payment; ``error_reason="settlement_pending"`` when sent, unconfirmed."""
        ...
