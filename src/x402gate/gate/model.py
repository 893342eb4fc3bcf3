"""What a paid route, an accepted payment and one request's payment state are.

:class:`Route` is built once per route (:meth:`~x402gate.gate.PaymentGate.route`);
:class:`Payment` is what handlers see; :class:`PaymentSession` carries one request from
:meth:`~x402gate.gate.PaymentGate.begin` to :meth:`~x402gate.gate.PaymentGate.finish`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..assets import Asset
from ..options import PaymentIdentifierMode, SettlementPolicy
from ..pricing import PriceStrategy
from ..ratelimit import RateLimit
from ..request import RequestInfo

if TYPE_CHECKING:
    from x402.schemas import PaymentPayload, PaymentRequirements

__all__ = ["Payment", "PaymentIdentifier", "PaymentSession", "Route", "Settlement"]

Settlement = SettlementPolicy
"""When a payment settles: ``after`` the handler succeeded (the default) or ``before`` it runs."""
PaymentIdentifier = PaymentIdentifierMode
"""Whether a route accepts (or requires) the x402 ``payment-identifier`` extension."""


@dataclass(frozen=True, slots=True)
class Route:
    """How one route is paid for. Build it with :meth:`PaymentGate.route`."""

    price: PriceStrategy
    settlement: Settlement = "after"
    description: str | None = None
    mime_type: str | None = None
    assets: tuple[Asset, ...] | None = None
    pay_to: Mapping[str, str] | None = None
    max_timeout_seconds: int | None = None
    verify_with_facilitator: bool | None = None
    extensions: Mapping[str, Any] | None = None
    payment_identifier: PaymentIdentifier = "optional"
    credit_topup: int = 0
    """Metered routes: the least a payment tops up (micro-dollars); the rest stays as credit."""
    rate_limit: RateLimit | None = None
    """Requests allowed per client address and per payer (see :mod:`x402gate.ratelimit`)."""
    name: str | None = None
    """How reports name the route: its route-table key (``"GET /weather/{city}"``); ``None``
    names each request by its method and path."""


@dataclass(slots=True)
class Payment:
    """A payment accepted for this request, as handlers see it.

    ``amount`` is in the asset's atomic units (USDC: 1 = $0.000001). ``transaction`` is the
    settlement transaction hash once settled (with policy ``after`` the handler runs before
    settlement, so it is ``None`` there).
    """

    payer: str
    amount: int
    asset: Asset
    pay_to: str
    nonce: str
    resource: str
    valid_before: int
    transaction: str | None = None
    from_credit: bool = False
    """True when the request was served from the payer's credit, without a new payment."""

    @property
    def network(self) -> str:
        return self.asset.network

    @property
    def settled(self) -> bool:
        return self.transaction is not None


@dataclass(slots=True)
class PaymentSession:
    """Per-request state between :meth:`PaymentGate.begin` and :meth:`PaymentGate.finish`."""

    route: Route
    request: RequestInfo
    payment: Payment
    payload: PaymentPayload | None
    requirements: PaymentRequirements
    version: int
    key: str
    token: str
    response_headers: dict[str, str] = field(default_factory=dict)
    done: bool = False
    idempotency: tuple[str, str] | None = None
    """(payment id, fingerprint) while an answer is to be stored for retries."""
    quote: int = 0
    """Metered routes: the most this request may cost, in the asset's atomic units."""
    reservation: str | None = None
    """Metered routes: the credit reservation holding the quote until the charge is known."""
    started: float = 0.0
    charged: int | None = None
    meter: Any = None
    """Metered routes: what the integration reads usage from while the answer goes out."""
    ended: float | None = None
    """Metered routes: when the answer ended (set by :meth:`PaymentGate.hold_commit`)."""
    commit_hold: tuple[str, concurrent.futures.Future[None]] | None = None
    """Metered routes: (account, future) while the charge is being committed after the answer
    went out; the payer's next request waits for it (see :meth:`PaymentGate.hold_commit`)."""
    session_started: float | None = None
    """Served from credit: when the payer's session (payment or sign-in) began. Renewed session
    tokens keep it, so no token outlives the session's maximum lifetime."""
    deadline: float | None = None
    """Per-second routes: when the paid maximum runs out (``started + max_seconds``); the
    integrations end the answer there (see :meth:`PaymentGate.answer_overdue`)."""
    cut: bool = False
    """Set by an integration that ended the answer at :attr:`deadline`."""
    in_flight: tuple[str, str] | None = None
    """(account, entry id) of the payment's hold on the payer's balance until it settles."""
    on_chain: bool = False
    """True when the payer's balance was read on chain (else the facilitator vouched for it)."""
    recovered: bool = False
    """A retry of a payment already settled on chain whose first request was never answered:
    it is served without settling again (see :meth:`PaymentGate.begin`)."""
    note: str = ""
    """What the app noted about how it served the request (the gateway: the upstream that
    answered), kept as the ``detail`` of the payment's journal row."""
    channel: Any = None
    """Paid by a ``batch-settlement`` voucher: the channel step it holds
    (:class:`~x402gate.gate.channels.ChannelStepHold`) until the charge is committed."""
    answering: bool = False
    """Settled, its answer on the way: the claim is *sending* until :meth:`PaymentGate.delivered`
    (with reconciliation on; see :meth:`PaymentGate._mark_served`)."""
