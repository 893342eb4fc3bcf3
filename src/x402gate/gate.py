"""PaymentGate: the framework-neutral engine that decides *serve*, *402* or *reject*, and settles.

One paid request, as every integration drives it::

    session = await gate.begin(route, request)      # raises PaymentError: answer it, stop
    ... run the handler, hold the response start ...
    headers = await gate.finish(session, status)    # settles ("after"); PaymentError on failure
    # on an exception in the handler instead:  await gate.abort(session)

``begin`` prices the request, answers 402 when there is no payment, decodes and matches the
payment (400 when malformed, 402 when for other terms), verifies it locally (fields, window,
EIP-712 signature), claims the authorization atomically in the replay store (exactly one request
can hold it, bound to this resource), asks the facilitator to verify it, and — with policy
``before`` — settles it. ``finish`` settles with policy ``after`` only when the handler succeeded.

Fail closed: a store, facilitator or chain error never lets content through; it becomes a
503/502 with a sanitized message, and the detail goes to the ``x402gate`` logger.

Sync integrations call :meth:`PaymentGate.begin_sync` & co., which run the same coroutines on a
background loop (:mod:`x402gate._runner`).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import inspect
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import protocol
from ._holds import HoldKeeper
from ._runner import run_sync
from .assets import Asset, checksum_address, normalize_network, usdc
from .balances import ChainBalances
from .clock import Clock, SystemClock
from .credit import SESSION_HEADER, SessionTokens, TokenClaims
from .errors import (
    ConfigurationError,
    FacilitatorError,
    FacilitatorUnavailable,
    PaymentError,
    StoredAnswer,
    StoreError,
)
from .money import parse_price, scale_to_asset
from .pricing import Flat, PriceStrategy, as_strategy, resolve_quote
from .proxies import TrustedProxies
from .reconcile import ChainReadError, ChainReconciler
from .request import RequestInfo
from .siwx import SIWX_HEADER, SIWX_KEY, SignInWithX, parse_public_origins, split_url
from .stores import ClaimResult, Store, open_store, replay_key
from .stores.base import (
    MAX_KEPT_BODY_BYTES,
    IdempotencyOutcome,
    check_payment_id,
    credit_account,
)
from .stores.registry import DEFAULT_STORE_URL

if TYPE_CHECKING:
    from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

    from .facilitators import Facilitator

__all__ = [
    "HOLD_MARGIN_SECONDS",
    "STARTUP_CHECKS_ENV",
    "Payment",
    "PaymentEvent",
    "PaymentGate",
    "PaymentSession",
    "Route",
    "Settlement",
    "StartupChecks",
]

logger = logging.getLogger("x402gate")

_UNPAID = "this resource requires payment"
PAYING_HEADERS = (protocol.PAYMENT_SIGNATURE, protocol.X_PAYMENT, SESSION_HEADER, SIWX_HEADER)
"""Request headers that make a request more than a plain "what does it cost?": a payment, a
session token or a sign-in. Integrations that answer unpaid requests early check the same."""
_CHALLENGE_CACHE_SIZE = 1024

T = TypeVar("T")
Settlement = Literal["after", "before"]
PaymentIdentifier = Literal["off", "optional", "required"]
EventListener = Callable[["PaymentEvent"], "Awaitable[None] | None"]
StartupChecks = Literal["fail", "warn", "off"]
STARTUP_CHECKS_ENV = "X402GATE_STARTUP_CHECKS"
"""Environment variable that overrides every gate's ``startup_checks`` (``fail``, ``warn``,
``off``): how an operator starts a service anyway while a dependency is down."""
_STARTUP_MODES = ("fail", "warn", "off")

_CODE_RE = re.compile(r"^[A-Za-z0-9_]{1,80}$")
_SETTLEMENT_POLICIES = ("after", "before")
_PAYMENT_IDENTIFIER_MODES = ("off", "optional", "required")
PAYMENT_IDENTIFIER = "payment-identifier"
GAVE_UP = "gave-up:"
"""Prefix of the token a request hands its claim to when it stops waiting for its settlement's
answer: a retry that finds the transfer on chain may then take the claim over at once."""
COMMIT_WAIT_SECONDS = 5.0
"""How long a payer's next credit request waits for the commit of its previous answer."""
SETTLED_IN_FLIGHT_SECONDS = 120
"""How long a settled payment keeps counting against balance readings of earlier blocks (cached
or from a lagging node); past it every reading in use is newer than the settlement."""
IN_FLIGHT_GRACE_SECONDS = 60
"""How long past its ``validBefore`` an unsettled payment's hold lasts (clock skew): a process
that died mid-request never locks its payer's balance longer than this."""

HOLD_MARGIN_SECONDS = 30
"""How much longer than a per-second route's ``max_seconds`` ``credit_ttl_seconds`` must be."""


def payment_identifier_extension(required: bool) -> dict[str, Any]:
    """The x402 ``payment-identifier`` declaration put on 402 answers."""
    return {
        "info": {"required": required},
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "required": {"type": "boolean"},
                "id": {
                    "type": "string",
                    "minLength": 16,
                    "maxLength": 128,
                    "pattern": "^[a-zA-Z0-9_-]+$",
                },
            },
            "required": ["required"],
        },
    }


def _safe_code(code: str | None, default: str) -> str:
    # Facilitators put free text in reason fields; only well-formed codes reach the client.
    return code if code and _CODE_RE.match(code) else default


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
    answering: bool = False
    """Settled, its answer on the way: the claim is *sending* until :meth:`PaymentGate.delivered`
    (with reconciliation on; see :meth:`PaymentGate._mark_served`)."""


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """What happened to a paid request; given to listeners added with :meth:`PaymentGate.on_event`.

    ``kind`` is one of ``challenged`` (402 without payment), ``rejected`` (bad or refused
    payment), ``verified`` (claimed and verified, handler about to run), ``settled``,
    ``settle_failed``, ``released`` (handler failed: nothing charged, claim released),
    ``recovered`` (a retry of a payment found settled on chain, its first answer lost),
    ``error`` (store or facilitator failure).
    """

    kind: str
    request: RequestInfo
    route: Route
    payment: Payment | None = None
    code: str | None = None
    status: int | None = None


class PaymentGate:
    """The payment engine shared by every integration.

    :param pay_to: the address that receives payments, or a mapping network → address.
    :param network: accept USDC on this network (``"base"``, ``"base-sepolia"``, ``"eip155:8453"``).
    :param assets: accept these tokens instead (several networks or tokens per route are fine).
    :param facilitator: an :class:`~x402gate.facilitators.HTTPFacilitator`,
        :class:`~x402gate.facilitators.LocalFacilitator` or any object with the same methods.
    :param store: replay store URL (``sqlite:///x402gate.db`` by default, ``memory://``,
        ``redis://...``) or a :class:`~x402gate.stores.Store`.
    :param max_timeout_seconds: how long a signed authorization may stay valid.
    :param verify_with_facilitator: ask the facilitator to verify (balance, nonce, simulation)
        before the handler runs. Local verification always runs.
    :param allow_smart_wallets: accept signatures that do not recover to the payer offline
        (EIP-1271 / ERC-6492 smart wallets) and leave them to the facilitator. Off by default:
        such signatures from ordinary wallets are forgeries and are refused in microseconds.
    :param idempotency_ttl_seconds: how long the answer to a payment that carried an x402
        ``payment-identifier`` is kept for retries.
    :param secret: key (32 bytes or more) for the session tokens and sign-in challenges of
        metered routes; give every instance of a service the same one. Random per process when
        omitted.
    :param session_tokens: issues the ``X402GATE-SESSION`` tokens returning payers of metered
        routes use to spend their credit (built from ``secret`` by default).
    :param credit_ttl_seconds: how long a credit reservation lives without renewal: the hold
        of a crashed request returns to the payer after it. Holds of running requests are
        renewed (every second, when less than half of it is left), so an answer may run longer;
        a per-second route's ``max_seconds`` must still fit in it with
        :data:`HOLD_MARGIN_SECONDS` to spare.
    :param public_origin: the origin clients reach the service at (``"https://api.example.com"``),
        or a list of them. Payment requirements, sign-in challenges and session tokens name it
        instead of the request's ``Host``, and sign-ins and tokens are accepted for it only.
        Required by metered routes (they accept sign-in-with-x and session tokens).
    :param trusted_proxies: IP addresses or CIDR blocks of the reverse proxies in front of the
        service. The client address (``RequestInfo.client``) is then the rightmost
        ``X-Forwarded-For`` entry that is not one of them, and ``X-Forwarded-Host``/``-Proto``
        are read only from them. Empty by default: the client is the TCP peer.
    :param limit_in_flight: bound the payments of one payer that are verified but not settled
        yet (so the handlers they run) by the payer's balance: a wallet that can pay ``K`` times
        never gets more than ``K`` handler runs, however many authorizations it signs at once.
        On by default; the bound lives in the store, so it holds across threads, processes and
        instances.
    :param rpc_url: JSON-RPC URL of the chain (or a mapping network → URL) to read payers'
        balances from. Defaults to the :class:`~x402gate.facilitators.LocalFacilitator`'s node.
        On networks without one the facilitator's verify vouches for the balance of one payment
        only, so each payer has one payment in flight at a time there.
    :param balance_cache_seconds: how long a balance reading is reused for the same payer
        (0 to 60). A cached reading never admits beyond the balance.
    :param reconcile: serve the retry of a payment whose settlement reached the chain while its
        answer was lost (facilitator connection dropped, process killed): a
        :class:`~x402gate.reconcile.ChainReconciler`, or the JSON-RPC URL (or mapping network
        → URL) to read the token contracts with. By default the RPC URL of a
        :class:`~x402gate.facilitators.LocalFacilitator` is used; ``False`` turns it off (such a
        retry is then refused as a replay).
    :param clock: time source (tests inject one).
    :param startup_checks: what the integrations do when the app starts and a start-up truth
        does not hold (store cannot be opened, facilitator unreachable or without the exact
        scheme on an accepted network): ``"fail"`` (the default) stops the start with one
        :class:`ConfigurationError`; ``"warn"`` logs it and starts anyway (payments answer 503
        until it holds); ``"off"`` skips the check. The environment variable
        ``X402GATE_STARTUP_CHECKS`` overrides it.
    """

    def __init__(
        self,
        *,
        pay_to: str | Mapping[str, str],
        facilitator: Facilitator,
        network: str | None = None,
        assets: Asset | Sequence[Asset] | None = None,
        store: str | Store | Any = DEFAULT_STORE_URL,
        max_timeout_seconds: int = 300,
        verify_with_facilitator: bool = True,
        allow_smart_wallets: bool = False,
        idempotency_ttl_seconds: int = 3600,
        secret: bytes | str | None = None,
        session_tokens: SessionTokens | None = None,
        credit_ttl_seconds: int = 3600,
        public_origin: str | Sequence[str] | None = None,
        trusted_proxies: Sequence[str] = (),
        limit_in_flight: bool = True,
        rpc_url: str | Mapping[str, str] | None = None,
        balance_cache_seconds: float = 1.0,
        reconcile: ChainReconciler | str | Mapping[str, str] | bool | None = None,
        clock: Clock | None = None,
        startup_checks: StartupChecks = "fail",
    ) -> None:
        if startup_checks not in _STARTUP_MODES:
            raise ConfigurationError(
                f"startup_checks must be one of {', '.join(_STARTUP_MODES)}, not {startup_checks!r}"
            )
        self.startup_checks: StartupChecks = startup_checks
        self.assets = self._resolve_assets(network, assets)
        self.pay_to = self._resolve_pay_to(pay_to, self.assets)
        if facilitator is None or not all(
            callable(getattr(facilitator, m, None)) for m in ("verify", "settle", "supported")
        ):
            raise ConfigurationError("facilitator must have async verify, settle and supported")
        self.facilitator = facilitator
        self.store = open_store(store)
        self.max_timeout_seconds = self._check_timeout(max_timeout_seconds)
        self.verify_with_facilitator = bool(verify_with_facilitator)
        self.allow_smart_wallets = bool(allow_smart_wallets)
        if (
            isinstance(idempotency_ttl_seconds, bool)
            or not isinstance(idempotency_ttl_seconds, int)
            or not 1 <= idempotency_ttl_seconds <= 30 * 86_400
        ):
            raise ConfigurationError("idempotency_ttl_seconds must be an integer from 1 to 2592000")
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        key = secret.encode() if isinstance(secret, str) else secret
        if key is None:
            key = secrets.token_bytes(32)  # one process only: share a secret across instances
        self.session_tokens = session_tokens or SessionTokens(key)
        self.sign_in = SignInWithX(key if len(key) >= 32 else hashlib.sha256(key).digest())
        if (
            isinstance(credit_ttl_seconds, bool)
            or not isinstance(credit_ttl_seconds, int)
            or credit_ttl_seconds < 60
        ):
            raise ConfigurationError("credit_ttl_seconds must be an integer of at least 60")
        self.credit_ttl_seconds = credit_ttl_seconds
        self.public_origins: tuple[str, ...] = (
            parse_public_origins(public_origin) if public_origin is not None else ()
        )
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        if not isinstance(limit_in_flight, bool):
            raise ConfigurationError("limit_in_flight must be true or false")
        self.limit_in_flight = limit_in_flight
        if limit_in_flight and not self.store.supports_in_flight:
            raise ConfigurationError(
                f"{type(self.store).__name__} cannot bound payments in flight: "
                "use limit_in_flight=False or another store"
            )
        self.balances = ChainBalances(
            self._resolve_rpc_urls(rpc_url, facilitator), cache_seconds=balance_cache_seconds
        )
        self.reconciler = self._resolve_reconciler(reconcile, facilitator, self.store)
        self.clock: Clock = clock or SystemClock()
        # Renews the holds of requests still running, so an answer never outlives its hold.
        self.holds = HoldKeeper(self.store, self.clock, credit_ttl_seconds)
        self._listeners: list[EventListener] = []
        # Credit accounts whose charge is being committed after the answer went out: the next
        # request of that payer waits for the commit before reserving (see hold_commit).
        self._pending_commits: dict[str, set[concurrent.futures.Future[None]]] = {}
        # (id(route), url) -> (route, headers, body) of the plain 402 of flat-priced routes.
        self._challenges: dict[tuple[int, str], tuple[Route, dict[str, str], Any]] = {}
        self._pending_lock = threading.Lock()
        self._commits: set[asyncio.Future[int]] = set()
        self._deliveries: set[asyncio.Future[None]] = set()
        self._started = False
        self._start_lock: asyncio.Lock | None = None

    # -- configuration ---------------------------------------------------------------------

    @staticmethod
    def _resolve_assets(
        network: str | None, assets: Asset | Sequence[Asset] | None
    ) -> tuple[Asset, ...]:
        if assets is not None:
            items = (assets,) if isinstance(assets, Asset) else tuple(assets)
            if not items or not all(isinstance(a, Asset) for a in items):
                raise ConfigurationError("assets must be one or more x402gate.Asset")
            return items
        if network is None:
            raise ConfigurationError("say which network to accept payments on: network= or assets=")
        return (usdc(network),)

    @staticmethod
    def _resolve_pay_to(pay_to: str | Mapping[str, str], assets: Iterable[Asset]) -> dict[str, str]:
        if isinstance(pay_to, str):
            address = checksum_address(pay_to)
            mapping = {a.network: address for a in assets}
        elif isinstance(pay_to, Mapping):
            mapping = {normalize_network(k): checksum_address(v) for k, v in pay_to.items()}
        else:
            raise ConfigurationError("pay_to must be an address or a mapping network → address")
        for asset in assets:
            if asset.network not in mapping:
                raise ConfigurationError(f"no pay_to address for network {asset.network}")
            if int(mapping[asset.network], 16) == 0:
                raise ConfigurationError("pay_to must not be the zero address")
        return mapping

    def _resolve_rpc_urls(
        self, rpc_url: str | Mapping[str, str] | None, facilitator: Any
    ) -> dict[str, str]:
        if rpc_url is None:
            # A local facilitator settles through its own node: read balances there too.
            url = getattr(facilitator, "rpc_url", None)
            networks = getattr(facilitator, "networks", None)
            if isinstance(url, str) and isinstance(networks, list | tuple):
                return {normalize_network(n): url for n in networks if isinstance(n, str)}
            return {}
        if isinstance(rpc_url, str):
            return {a.network: rpc_url for a in self.assets}
        if isinstance(rpc_url, Mapping):
            return {normalize_network(k): v for k, v in rpc_url.items()}
        raise ConfigurationError("rpc_url must be a URL or a mapping network → URL")

    @staticmethod
    def _resolve_reconciler(
        reconcile: ChainReconciler | str | Mapping[str, str] | bool | None,
        facilitator: Any,
        store: Store,
    ) -> ChainReconciler | None:
        if reconcile is False:
            return None
        if reconcile is None or reconcile is True:
            from .facilitators import LocalFacilitator

            if isinstance(facilitator, LocalFacilitator):
                if reconcile is None and not getattr(store, "supports_recovery", False):
                    return None  # a store of its own without it: off unless asked for
                # The chain the facilitator settles on is the chain to reconcile from.
                reconcile = {n: facilitator.rpc_url for n in facilitator.networks}
            elif reconcile is None:
                return None
            else:
                raise ConfigurationError(
                    "reconcile=True needs a LocalFacilitator; give the chain's RPC URL instead"
                )
        if not getattr(store, "supports_recovery", False):
            raise ConfigurationError(
                f"reconcile: {type(store).__name__} cannot recover claims; use another store "
                "or reconcile=False"
            )
        if isinstance(reconcile, ChainReconciler):
            return reconcile
        if isinstance(reconcile, str | Mapping):
            return ChainReconciler(reconcile)
        raise ConfigurationError(
            "reconcile must be a ChainReconciler, an RPC URL, a mapping network → URL, or False"
        )

    @staticmethod
    def _check_timeout(value: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 10 <= value <= 86_400:
            raise ConfigurationError("max_timeout_seconds must be an integer from 10 to 86400")
        return value

    def route(
        self,
        price: Any,
        *,
        settlement: Settlement = "after",
        description: str | None = None,
        mime_type: str | None = None,
        assets: Asset | Sequence[Asset] | None = None,
        network: str | None = None,
        pay_to: str | Mapping[str, str] | None = None,
        max_timeout_seconds: int | None = None,
        verify_with_facilitator: bool | None = None,
        extensions: Mapping[str, Any] | None = None,
        payment_identifier: PaymentIdentifier = "optional",
        credit_topup: Any = None,
    ) -> Route:
        """A paid route: ``price`` is a price (``0.05``, ``"$0.05"``, ``Decimal``), a strategy
        (``MatchRules``, ``ModelTable``, ...) or a callable of the request (sync or async)."""
        if payment_identifier not in _PAYMENT_IDENTIFIER_MODES:
            raise ConfigurationError(
                "payment_identifier must be one of "
                f"{', '.join(_PAYMENT_IDENTIFIER_MODES)}, not {payment_identifier!r}"
            )
        if payment_identifier != "off" and not self.store.supports_idempotency:
            raise ConfigurationError(
                f"{type(self.store).__name__} cannot keep answers for payment identifiers: "
                "use payment_identifier='off' or another store"
            )
        if settlement not in _SETTLEMENT_POLICIES:
            raise ConfigurationError(
                f"settlement must be one of {', '.join(_SETTLEMENT_POLICIES)}, not {settlement!r}"
            )
        strategy = as_strategy(price)
        if strategy.metered:
            if not self.store.supports_credit:
                raise ConfigurationError(
                    f"{type(self.store).__name__} has no credit ledger: metered prices need one"
                )
            if settlement == "before":
                raise ConfigurationError(
                    "metered routes settle when the answer starts; settlement='before' is not "
                    "available for them"
                )
            if not self.public_origins:
                # Sign-ins and session tokens are bound to the service's name; taken from the
                # request's Host, anyone could have a wallet sign for their own site and relay it.
                raise ConfigurationError(
                    "metered routes accept sign-in-with-x and session tokens: set the gate's "
                    "public_origin (e.g. public_origin='https://api.example.com')"
                )
            self._check_longest_answer(strategy)
        elif credit_topup is not None:
            raise ConfigurationError("credit_topup applies to metered prices only")
        topup = parse_price(credit_topup) if credit_topup is not None else 0
        route_assets: tuple[Asset, ...] | None = None
        if assets is not None or network is not None:
            route_assets = self._resolve_assets(network, assets)
        route_pay_to = (
            self._resolve_pay_to(pay_to, route_assets or self.assets)
            if pay_to is not None
            else None
        )
        if route_assets is not None and route_pay_to is None:
            self._resolve_pay_to(self.pay_to, route_assets)  # every asset needs a recipient
        return Route(
            price=strategy,
            settlement=settlement,
            description=description,
            mime_type=mime_type,
            assets=route_assets,
            pay_to=route_pay_to,
            max_timeout_seconds=(
                self._check_timeout(max_timeout_seconds)
                if max_timeout_seconds is not None
                else None
            ),
            verify_with_facilitator=verify_with_facilitator,
            extensions=extensions,
            payment_identifier=payment_identifier,
            credit_topup=topup,
        )

    def _check_longest_answer(self, strategy: Any) -> None:
        from .metering import PerSecond

        if not isinstance(strategy, PerSecond):
            return
        # The hold is renewed while the answer runs; this keeps even a process that cannot
        # renew (a stalled thread, a store hiccup) from losing it before the paid maximum.
        if strategy.max_seconds + HOLD_MARGIN_SECONDS > self.credit_ttl_seconds:
            raise ConfigurationError(
                f"credit_ttl_seconds ({self.credit_ttl_seconds}) must exceed PerSecond "
                f"max_seconds ({float(strategy.max_seconds):g}) by at least "
                f"{HOLD_MARGIN_SECONDS} seconds: a credit hold must outlive the longest answer"
            )

    @staticmethod
    def _deadline(route: Route, started: float) -> float | None:
        from .metering import PerSecond

        price = route.price
        if isinstance(price, PerSecond):
            return started + float(price.max_seconds)
        return None

    def answer_overdue(self, session: PaymentSession) -> bool:
        """True once a per-second answer has run its paid maximum (``max_seconds``).

        Integrations check it before each body chunk and end the answer there: what comes
        after was not paid for. :attr:`PaymentSession.deadline` is ``None`` on other routes.
        """
        return session.deadline is not None and self.clock.now() >= session.deadline

    def overdue_check(self, session: PaymentSession) -> Callable[[], bool] | None:
        """:meth:`answer_overdue` of ``session`` as a function for body wrappers; ``None`` when
        the route has no paid maximum (nothing to check per chunk)."""
        if session.deadline is None:
            return None
        return lambda: self.answer_overdue(session)

    def on_event(self, listener: EventListener) -> EventListener:
        """Call ``listener(event)`` (sync or async) on each event; usable as a decorator."""
        self._listeners.append(listener)
        return listener

    # -- start-up ----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Check the store and that the facilitator supports every accepted network.

        Called once, lazily, by the first paid request (or by an integration's lifespan).
        Raises :class:`ConfigurationError` when the facilitator supports none of the gate's
        networks (an empty ``/supported`` must never mean "let everything through"), and
        :class:`StoreError` / :class:`FacilitatorError` when a dependency is down; the next
        request tries again.
        """
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self._store_call(self.store.ping)
            supported = await self.facilitator.supported()
            kinds = {(k.scheme, k.network) for k in supported.kinds if k.x402_version == 2}
            missing = sorted({a.network for a in self.assets if ("exact", a.network) not in kinds})
            if missing:
                raise ConfigurationError(
                    f"the facilitator does not support the exact scheme on {', '.join(missing)}"
                )
            self._started = True

    async def startup_problem(self) -> str | None:
        """Run :meth:`startup`; what failed, in one sentence, or ``None`` when all is well."""
        try:
            await self.startup()
        except ConfigurationError as exc:
            return str(exc)
        except StoreError as exc:
            return f"the store cannot be opened: {exc}"
        except FacilitatorUnavailable as exc:
            return f"the facilitator {self.facilitator!r} cannot be reached: {exc}"
        except FacilitatorError as exc:
            return f"the facilitator {self.facilitator!r} did not answer properly: {exc}"
        return None

    def startup_mode(self, configured: StartupChecks | None = None) -> StartupChecks:
        """``startup_checks`` in force: the environment variable wins over ``configured`` (an
        integration's own setting), which wins over the gate's argument."""
        value = os.environ.get(STARTUP_CHECKS_ENV, "").strip().lower()
        if not value:
            return configured or self.startup_checks
        if value not in _STARTUP_MODES:
            raise ConfigurationError(
                f"{STARTUP_CHECKS_ENV} must be one of {', '.join(_STARTUP_MODES)}, not {value!r}"
            )
        return value  # type: ignore[return-value]  # checked just above

    async def check_startup(self, mode: StartupChecks | None = None) -> None:
        """The start-up checks, as integrations run them when the app starts.

        Runs :meth:`startup` (store opened, facilitator reached, the exact scheme supported on
        every accepted network). With ``startup_checks="fail"`` a failure raises one
        :class:`ConfigurationError` saying what failed and how to start anyway; with
        ``"warn"`` it is logged and the first paid request tries again; ``"off"`` does nothing.
        ``mode`` is an integration's own setting for it (see :meth:`startup_mode`).
        """
        mode = self.startup_mode(mode)
        if mode == "off":
            return
        problem = await self.startup_problem()
        if problem is None:
            return
        if mode == "warn":
            logger.warning(
                "x402gate start-up check failed, starting anyway (%s=warn): %s; paid requests "
                "answer 503 until this is fixed",
                STARTUP_CHECKS_ENV,
                problem,
            )
            return
        raise ConfigurationError(
            f"x402gate start-up check failed: {problem}. Fix it, or start anyway with "
            f"startup_checks='warn' (or the environment variable {STARTUP_CHECKS_ENV}=warn); "
            "paid requests then answer 503 until it is fixed"
        )

    def check_startup_sync(self, mode: StartupChecks | None = None) -> None:
        """:meth:`check_startup` from synchronous code (WSGI, Flask, Django)."""
        run_sync(self.check_startup(mode))

    # -- helpers -----------------------------------------------------------------------------

    async def _emit(self, event: PaymentEvent) -> None:
        for listener in self._listeners:
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a listener must never break a payment
                logger.exception("x402gate event listener failed on %s", event.kind)

    async def _store_call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            if self.store.blocking:
                return await asyncio.to_thread(fn, *args)
            return fn(*args)
        except (StoreError, ConfigurationError):
            raise
        except Exception as exc:  # a backend bug must fail closed too
            raise StoreError(f"store operation failed: {type(exc).__name__}") from exc

    def public_url(self, request: RequestInfo) -> str:
        """The request's URL under the configured public origin: the one whose host the request
        named when there is one, the first otherwise. Without ``public_origin``, the URL the
        integration built (from ``Host``, or trusted proxy headers)."""
        if not self.public_origins:
            return request.url
        origin, rest = split_url(request.url)
        if origin not in self.public_origins:
            lowered = origin.lower()
            origin = next((o for o in self.public_origins if o == lowered), self.public_origins[0])
        return origin + rest

    def _resource_info(self, route: Route, request: RequestInfo) -> Any:
        from x402.schemas import ResourceInfo

        return ResourceInfo(
            url=request.url, description=route.description, mime_type=route.mime_type
        )

    async def requirements(self, route: Route, request: RequestInfo) -> list[PaymentRequirements]:
        """The payment requirements of this request (its quote in each accepted asset)."""
        try:
            quote = await resolve_quote(route.price, request)
        except PaymentError:
            raise
        except ConfigurationError as exc:
            logger.error("pricing failed for %s: %s", request.resource, exc)
            raise PaymentError(
                500, "pricing_error", "the price of this request could not be computed"
            ) from exc
        assets = route.assets or self.assets
        pay_to = route.pay_to or self.pay_to
        timeout = route.max_timeout_seconds or self.max_timeout_seconds
        accepts = []
        for asset in assets:
            try:
                amount = scale_to_asset(quote, asset.decimals)
            except ConfigurationError as exc:
                logger.error("price %s not payable in %s: %s", quote, asset.symbol, exc)
                raise PaymentError(
                    500, "pricing_error", "the price of this request could not be computed"
                ) from exc
            accepts.append(
                protocol.build_requirements(asset, amount, pay_to[asset.network], timeout)
            )
        return accepts

    def _challenge(
        self,
        route: Route,
        request: RequestInfo,
        accepts: Sequence[PaymentRequirements],
        code: str,
        message: str,
        status: int = 402,
        extra_headers: Mapping[str, str] | None = None,
    ) -> PaymentError:
        extensions = dict(route.extensions or {})
        if route.payment_identifier != "off":
            extensions[PAYMENT_IDENTIFIER] = payment_identifier_extension(
                route.payment_identifier == "required"
            )
        if route.price.metered:
            # Returning payers sign in to spend the credit left from earlier payments.
            networks = sorted({a.network for a in (route.assets or self.assets)})
            extensions[SIWX_KEY] = self.sign_in.declaration(request.url, networks, self.clock.now())
        resource = self._resource_info(route, request)
        required = protocol.build_payment_required(accepts, resource, code, extensions)
        document = required.model_dump(mode="json", by_alias=True, exclude_none=True)
        headers = {
            protocol.PAYMENT_REQUIRED: protocol.b64json(document),
            "Cache-Control": "no-store",
        }
        # v2 clients read the header; v1 clients (x402-fetch 1.x, x402-axios 0.x) only read the
        # body, so where a network has a v1 name the body is the v1 document, else they could
        # never pay. It keeps the v2 resource and extensions, which v1 readers ignore.
        v1_document = protocol.build_payment_required_v1(accepts, resource, code)
        body = {**document, **(v1_document or {}), "message": message}
        if extra_headers:
            headers.update(extra_headers)
        return PaymentError(status, code, message, headers=headers, body=body)

    def _plain_challenge(self, route: Route, request: RequestInfo) -> PaymentError | None:
        """The 402 for a request without any payment on a flat-priced route, from a small cache
        (its terms depend only on the route and the URL), or ``None`` when that does not apply."""
        if type(route.price) is not Flat:
            return None
        headers = request.headers
        if any(headers.get(name) is not None for name in PAYING_HEADERS):
            return None
        key = (id(route), request.url)
        cached = self._challenges.get(key)
        if cached is None or cached[0] is not route:
            return None
        return PaymentError(
            402, "payment_required", _UNPAID, headers=dict(cached[1]), body=dict(cached[2])
        )

    def _remember_challenge(self, route: Route, request: RequestInfo, answer: PaymentError) -> None:
        if type(route.price) is not Flat:
            return
        challenges = self._challenges
        challenges[(id(route), request.url)] = (route, dict(answer.headers), answer.body)
        while len(challenges) > _CHALLENGE_CACHE_SIZE:
            challenges.pop(next(iter(challenges)))

    @staticmethod
    def _failure(exc: Exception) -> PaymentError:
        headers = {"Cache-Control": "no-store", "Retry-After": "1"}
        if isinstance(exc, StoreError):
            return PaymentError(
                503, "store_unavailable", "payment store unavailable, try again", headers=headers
            )
        if isinstance(exc, FacilitatorUnavailable):
            return PaymentError(
                503,
                "facilitator_unavailable",
                "payment facilitator unavailable, try again",
                headers=headers,
            )
        return PaymentError(
            502, "facilitator_error", "payment facilitator failed, try again", headers=headers
        )

    # -- payment identifiers (idempotent retries) --------------------------------------------

    @staticmethod
    def _payment_id(route: Route, payload: PaymentPayload) -> str | None:
        if route.payment_identifier == "off":
            return None
        ext = (payload.extensions or {}).get(PAYMENT_IDENTIFIER)
        info = ext.get("info") if isinstance(ext, Mapping) else None
        value = info.get("id") if isinstance(info, Mapping) else None
        if value is None:
            if route.payment_identifier == "required":
                raise PaymentError(
                    400, "payment_identifier_required", "this route requires a payment identifier"
                )
            return None
        try:
            return check_payment_id(value)
        except ValueError:
            raise PaymentError(
                400,
                "invalid_payment_identifier",
                "payment identifier must be 16-128 characters of [A-Za-z0-9_-]",
            ) from None

    @staticmethod
    def _fingerprint(request: RequestInfo, requirements: PaymentRequirements, auth: Any) -> str:
        # The same identifier may only ever stand for this payment of this request.
        material = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "body": hashlib.sha256(request.body).hexdigest(),
            "terms": requirements.model_dump(mode="json", by_alias=True),
            "payer": auth.payer,
            "nonce": auth.nonce,
            "signature": auth.signature.hex(),
        }
        encoded = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()

    async def _begin_idempotent(
        self,
        route: Route,
        request: RequestInfo,
        accepts: Sequence[PaymentRequirements],
        payment_id: str,
        fingerprint: str,
    ) -> PaymentError | None:
        """Reserve the payment identifier, or raise the answer for it (stored, conflict, busy).

        With reconciliation on, the "in progress" answer is returned instead of raised: that
        request may be gone (process killed) with its payment settled, and the claim decides.
        """
        try:
            result = await self._store_call(
                self.store.idempotency_begin,
                payment_id,
                fingerprint,
                self.idempotency_ttl_seconds,
                self.clock.now(),
            )
        except StoreError as exc:
            logger.error("idempotency store failed: %s", exc)
            raise self._failure(exc) from None
        if result.outcome is IdempotencyOutcome.NEW:
            return None
        if result.outcome is IdempotencyOutcome.REPLAY and result.response is not None:
            stored = json.loads(result.response)
            await self._emit(PaymentEvent("replayed", request, route, status=stored["status"]))
            raise StoredAnswer(
                int(stored["status"]),
                dict(stored["headers"]),
                base64.b64decode(stored["body"]),
            )
        headers = {"Cache-Control": "no-store"}
        if result.outcome is IdempotencyOutcome.IN_PROGRESS:
            headers["Retry-After"] = "1"
            busy = PaymentError(
                409,
                "payment_identifier_in_progress",
                "a request with this payment identifier is being processed; retry shortly",
                headers=headers,
            )
            if self.reconciler is None:
                raise busy
            return busy
        await self._emit(
            PaymentEvent("rejected", request, route, code="payment_identifier_conflict")
        )
        raise PaymentError(
            409,
            "payment_identifier_conflict",
            "this payment identifier was already used with another payment or request",
            headers=headers,
        )

    async def _abandon(self, idempotency: tuple[str, str] | None) -> None:
        if idempotency is None:
            return
        try:
            await self._store_call(self.store.idempotency_abandon, *idempotency)
        except StoreError as exc:
            # The reservation expires with its TTL: retries wait, nothing is charged twice.
            logger.error("idempotency abandon failed: %s", exc)

    async def record(
        self,
        session: PaymentSession,
        status_code: int,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
    ) -> None:
        """Keep the answer of a paid request for retries with the same payment identifier.

        Integrations call it once the whole answer is known; ``body=None`` means it could not
        be kept (streamed or too large), and retries then learn the payment was processed.
        """
        idempotency, session.idempotency = session.idempotency, None
        if idempotency is None:
            return
        if body is None or len(body) > MAX_KEPT_BODY_BYTES:
            answer = {
                "status": 409,
                "headers": [["Content-Type", "application/json"], ["Cache-Control", "no-store"]],
                "body": base64.b64encode(
                    json.dumps(
                        {
                            "error": "payment_already_processed",
                            "message": "this payment was processed; its answer was not kept",
                        }
                    ).encode()
                ).decode(),
            }
        else:
            kept = [
                [k, v]
                for k, v in headers
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            answer = {
                "status": status_code,
                "headers": kept,
                "body": base64.b64encode(body).decode(),
            }
        data = json.dumps(answer, separators=(",", ":")).encode()
        try:
            await self._store_call(
                self.store.idempotency_complete, *idempotency, data, self.clock.now()
            )
        except (StoreError, ConfigurationError) as exc:
            logger.error("could not keep the answer for a payment identifier: %s", exc)

    def record_sync(
        self,
        session: PaymentSession,
        status_code: int,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
    ) -> None:
        run_sync(self.record(session, status_code, headers, body))

    # -- the flow ------------------------------------------------------------------------------

    # -- metered routes: credit ---------------------------------------------------------------

    async def _credit_path(
        self, route: Route, request: RequestInfo, accepts: list[PaymentRequirements]
    ) -> tuple[PaymentSession | None, list[PaymentRequirements]]:
        """A session served from a returning payer's credit, or the requirements to pay: the
        whole quote, or only what the payer's credit lacks."""
        claims = await self._identify(route, request)
        if claims is None:
            return None, accepts
        adjusted: list[PaymentRequirements] = []
        for req in accepts:
            if req.network != claims.network or req.asset.lower() != claims.asset:
                adjusted.append(req)
                continue
            account = credit_account(req.network, req.asset, claims.payer)
            if self._pending_commits:
                await self._await_commits(account)
            quote = int(req.amount)
            reservation = secrets.token_hex(16)
            now = self.clock.now()
            try:
                reserved = await self._store_call(
                    self.store.credit_reserve,
                    account,
                    quote,
                    reservation,
                    int(now) + self.credit_ttl_seconds,
                    now,
                )
                balance = (
                    None
                    if reserved
                    else await self._store_call(self.store.credit_balance, account, now)
                )
            except StoreError as exc:
                logger.error("credit ledger failed: %s", exc)
                raise self._failure(exc) from None
            if reserved:
                self.holds.add(reservation, int(now) + self.credit_ttl_seconds)
                session = self._credit_session(
                    route, request, req, claims.payer, quote, reservation
                )
                session.session_started = claims.started
                return session, accepts
            assert balance is not None
            missing = max(quote - balance.available, 1)
            adjusted.append(req.model_copy(update={"amount": str(missing)}))
        return None, adjusted

    def _token_claims(self, headers: Mapping[str, str], now: float) -> TokenClaims | None:
        claims = self.session_tokens.check(headers.get(SESSION_HEADER), now)
        if claims is None or claims.origin not in self.public_origins:
            return None  # issued for another service sharing the secret, or malformed
        return claims

    async def _identify(self, route: Route, request: RequestInfo) -> TokenClaims | None:
        """The payer a session token or a sign-in vouches for, if any."""
        now = self.clock.now()
        claims = self._token_claims(request.headers, now)
        if claims is not None:
            return claims
        header = request.headers.get(SIWX_HEADER)
        if header is None:
            return None
        assets = route.assets or self.assets
        proof = self.sign_in.verify(
            header,
            request.url,
            sorted({a.network for a in assets}),
            now,
            origins=self.public_origins,
        )
        try:
            # A signed challenge opens the credit once: its nonce is spent like a payment.
            key = f"siwx|{proof.nonce}"
            token = secrets.token_hex(16)
            used = await self._store_call(
                self.store.claim, key, request.resource, token, proof.expires_at, now
            )
            if used is ClaimResult.CLAIMED:
                await self._store_call(self.store.mark_used, key, token)
        except StoreError as exc:
            raise self._failure(exc) from None
        if used is not ClaimResult.CLAIMED:
            raise PaymentError(402, "invalid_siwx_nonce_reused", "this sign-in was already used")
        asset = next(a for a in assets if a.network == proof.network)
        return TokenClaims(
            proof.address.lower(),
            proof.network,
            asset.address.lower(),
            proof.expires_at,
            origin=split_url(request.url)[0],
            started=int(now),
        )

    def _with_topup(self, route: Route, req: PaymentRequirements) -> PaymentRequirements:
        asset = next(
            a
            for a in (route.assets or self.assets)
            if a.network == req.network and a.address == req.asset
        )
        floor = scale_to_asset(route.credit_topup, asset.decimals)
        return req if int(req.amount) >= floor else req.model_copy(update={"amount": str(floor)})

    def _credit_session(
        self,
        route: Route,
        request: RequestInfo,
        req: PaymentRequirements,
        payer: str,
        quote: int,
        reservation: str,
    ) -> PaymentSession:
        asset = next(
            a
            for a in (route.assets or self.assets)
            if a.network == req.network and a.address == req.asset
        )
        payment = Payment(
            payer=checksum_address(payer),
            amount=quote,
            asset=asset,
            pay_to=req.pay_to,
            nonce="",
            resource=request.resource,
            valid_before=0,
            from_credit=True,
        )
        started = self.clock.now()
        return PaymentSession(
            route=route,
            request=request,
            payment=payment,
            payload=None,
            requirements=req,
            version=2,
            key="",
            token="",
            quote=quote,
            reservation=reservation,
            started=started,
            deadline=self._deadline(route, started),
        )

    async def _credit_payment(self, session: PaymentSession) -> None:
        """Credit what a metered payment paid on chain, once per authorization; a failure is
        logged (the next retry of the payment credits it)."""
        payment = session.payment
        account = credit_account(payment.network, payment.asset.address, payment.payer)
        try:
            await self._store_call(
                self.store.credit_topup, account, payment.amount, session.key, self.clock.now()
            )
        except StoreError as exc:
            logger.error("credit ledger failed after a recovered payment: %s", exc)

    async def _fund_reservation(self, session: PaymentSession) -> None:
        """After a metered payment settled: credit what was paid, then hold the quote."""
        payment = session.payment
        account = credit_account(payment.network, payment.asset.address, payment.payer)
        reservation = secrets.token_hex(16)
        now = self.clock.now()
        try:
            await self._store_call(
                self.store.credit_topup, account, payment.amount, session.key, now
            )
            reserved = await self._store_call(
                self.store.credit_reserve,
                account,
                session.quote,
                reservation,
                int(now) + self.credit_ttl_seconds,
                now,
            )
        except StoreError as exc:
            logger.error("credit ledger failed after settlement: %s", exc)
            raise self._failure(exc) from None
        if not reserved:
            # Paid, but another request of the same payer took the credit meanwhile: nothing is
            # lost (the payment is credit now); the payer retries with its session token.
            raise PaymentError(
                402,
                "insufficient_credit",
                "your payment was added to your credit, but it does not cover this request yet",
                headers=self._credit_headers(session),
            )
        self.holds.add(reservation, int(now) + self.credit_ttl_seconds)
        session.reservation = reservation

    def _credit_headers(self, session: PaymentSession) -> dict[str, str]:
        payment = session.payment
        now = self.clock.now()
        started = session.session_started if session.session_started is not None else now
        if self.session_tokens.expiry(started, now) <= now:
            return {}  # the session reached its maximum lifetime: pay or sign in again
        token = self.session_tokens.issue(
            payment.payer,
            payment.network,
            payment.asset.address,
            now,
            origin=split_url(session.request.url)[0],
            started=started,
        )
        return {SESSION_HEADER: token}

    def hold_commit(self, session: PaymentSession) -> None:
        """The answer of a metered request is about to end: call it right before sending the last
        body message, then :meth:`complete` right after.

        It fixes the end of the measured time (per-second routes are not charged for the send)
        and, until :meth:`complete` returns, makes the next credit request of the same payer in
        this process wait for the commit, so that it sees the new balance although the charge is
        committed after the client got its answer. Waiting only keeps balances fresh: until the
        commit, the reservation keeps the whole quote out of the payer's available credit, so
        nothing can be overdrawn meanwhile.
        """
        if session.reservation is None or session.commit_hold is not None:
            return
        session.ended = self.clock.now()
        payment = session.payment
        account = credit_account(payment.network, payment.asset.address, payment.payer)
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._pending_lock:
            self._pending_commits.setdefault(account, set()).add(future)
        session.commit_hold = (account, future)

    def _drop_hold(self, session: PaymentSession) -> None:
        hold, session.commit_hold = session.commit_hold, None
        if hold is None:
            return
        account, future = hold
        with self._pending_lock:
            pending = self._pending_commits.get(account)
            if pending is not None:
                pending.discard(future)
                if not pending:
                    del self._pending_commits[account]
        if not future.done():
            future.set_result(None)

    async def _await_commits(self, account: str) -> None:
        with self._pending_lock:
            pending = list(self._pending_commits.get(account, ()))
        if not pending:
            return
        # Futures of any loop or thread (sync integrations run on the background loop);
        # asyncio.wait never cancels them, even when this request is cancelled.
        _, late = await asyncio.wait(
            [asyncio.wrap_future(future) for future in pending], timeout=COMMIT_WAIT_SECONDS
        )
        if late:
            # Freshness only: the late commit's reservation still holds its whole quote.
            logger.warning("a credit commit is late; serving from the balance as it stands")

    async def complete_after_send(self, session: PaymentSession, usage: Any = None) -> int:
        """:meth:`complete`, run to its end even when the request's task is cancelled.

        Once the last body message is out, servers report the request as over (uvicorn's
        ``receive`` answers ``http.disconnect``) and frameworks cancel what is still running
        (Starlette's streaming responses do): the commit must not be cut short by that, and the
        payer's next request must keep waiting for it (:meth:`hold_commit`).
        """
        task = asyncio.ensure_future(self.complete(session, usage))
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        return await asyncio.shield(task)

    async def complete(self, session: PaymentSession, usage: Any = None) -> int:
        """A metered request is over: charge what it used (capped at its quote), return the rest
        to the payer's credit. ``usage`` is what the response reported (tokens), or ``None``;
        per-second routes measure the time themselves. Returns the charge, in atomic units.

        Called after the last body message went out (see :meth:`hold_commit`), the commit is off
        the client's critical path. Until then the reservation is renewed (:attr:`holds`), however
        long the answer ran; a commit that still comes after its expiry charges what the payer
        has available (see ``Store.credit_commit``). When the commit fails, nothing is charged:
        the reservation is no longer renewed, stays held until it expires
        (``credit_ttl_seconds``) and then returns whole to the payer — never a double charge,
        never credit out of nothing."""
        reservation, session.reservation = session.reservation, None
        if reservation is None:
            self._drop_hold(session)
            return session.charged or 0
        self.holds.discard(reservation)
        try:
            from .metering import PerSecond, Usage

            if isinstance(session.route.price, PerSecond):
                # Per-second routes charge the time from the handler's start to the answer's end.
                ended = session.ended if session.ended is not None else self.clock.now()
                usage = Usage(seconds=max(0.0, ended - session.started))
            # No usage reported costs the quote, as documented.
            micros = session.route.price.charge(usage, session.request)
            charge = min(scale_to_asset(micros, session.payment.asset.decimals), session.quote)
            try:
                charged = await self._store_call(
                    self.store.credit_commit, reservation, charge, self.clock.now()
                )
            except StoreError as exc:
                # The reservation expires and returns to the payer: the request was not charged.
                logger.error(
                    "credit commit failed for %s (reservation left to expire back to the "
                    "payer, nothing charged): %s",
                    session.request.resource,
                    exc,
                )
                return 0
        finally:
            self._drop_hold(session)
        session.charged = charged
        await self._emit(
            PaymentEvent("charged", session.request, session.route, session.payment, status=charged)
        )
        return charged

    async def _release_credit(self, session: PaymentSession) -> None:
        reservation, session.reservation = session.reservation, None
        if reservation is None:
            self._drop_hold(session)
            return
        self.holds.discard(reservation)
        try:
            await self._store_call(self.store.credit_release, reservation, self.clock.now())
        except StoreError as exc:
            logger.error("credit release failed (the hold expires by itself): %s", exc)
        finally:
            self._drop_hold(session)
        await self._emit(PaymentEvent("refunded", session.request, session.route, session.payment))

    async def credit_status(self, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """The answer to ``GET /.well-known/x402/credit``: the balance of the payer whose
        ``X402GATE-SESSION`` token the request carries (401 without a valid one)."""
        claims = self._token_claims(headers, self.clock.now())
        if claims is None:
            return 401, {
                "error": "session_required",
                "message": f"send the {SESSION_HEADER} token of a paid metered request",
            }
        account = credit_account(claims.network, claims.asset, claims.payer)
        if self._pending_commits:
            await self._await_commits(account)  # the balance after the answers already sent
        try:
            result = await self._store_call(self.store.credit_balance, account, self.clock.now())
        except StoreError as exc:
            failure = self._failure(exc)
            return failure.status_code, failure.body
        return 200, {
            "payer": checksum_address(claims.payer),
            "network": claims.network,
            "asset": checksum_address(claims.asset),
            "available": str(result.available),
            "reserved": str(result.reserved),
        }

    def credit_status_sync(self, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        return run_sync(self.credit_status(headers))

    async def balance(self, payer: str, asset: Asset | None = None) -> int:
        """A payer's available credit in atomic units of ``asset`` (default: the gate's first)."""
        asset = asset or self.assets[0]
        account = credit_account(asset.network, asset.address, payer)
        if self._pending_commits:
            await self._await_commits(account)  # the balance after the answers already sent
        result = await self._store_call(self.store.credit_balance, account, self.clock.now())
        return int(result.available)

    async def begin(self, route: Route, request: RequestInfo) -> PaymentSession:
        """Everything before the handler. Returns the session, or raises the answer to send."""
        try:
            await self.startup()
        except ConfigurationError:
            logger.exception("x402gate start-up check failed")
            raise PaymentError(
                503, "payment_unavailable", "payments are not available on this server"
            ) from None
        except (StoreError, FacilitatorError) as exc:
            logger.error("x402gate start-up check failed: %s", exc)
            await self._emit(PaymentEvent("error", request, route, code="startup"))
            raise self._failure(exc) from None

        # Everything after this names the configured public origin, never the client's Host.
        request.url = self.public_url(request)
        cached = self._plain_challenge(route, request)
        if cached is not None:
            await self._emit(PaymentEvent("challenged", request, route, status=402))
            raise cached
        accepts = await self.requirements(route, request)
        full_quotes: dict[tuple[str, str], int] = {}
        if route.price.metered:
            full_quotes = {(r.network, r.asset): int(r.amount) for r in accepts}
            credit, accepts = await self._credit_path(route, request, accepts)
            if credit is not None:
                await self._emit(PaymentEvent("verified", request, route, credit.payment))
                return credit
            if route.credit_topup:
                accepts = [self._with_topup(route, r) for r in accepts]
        try:
            decoded = protocol.decode_payment(request.headers)
        except PaymentError as exc:
            await self._emit(PaymentEvent("rejected", request, route, code=exc.code, status=400))
            raise self._challenge(
                route, request, accepts, exc.code, exc.message, status=400
            ) from None
        if decoded is None:
            await self._emit(PaymentEvent("challenged", request, route, status=402))
            answer = self._challenge(route, request, accepts, "payment_required", _UNPAID)
            self._remember_challenge(route, request, answer)
            raise answer

        async def reject(code: str, message: str, status: int = 402) -> PaymentError:
            await self._emit(PaymentEvent("rejected", request, route, code=code, status=status))
            return self._challenge(route, request, accepts, code, message, status=status)

        try:
            requirements = protocol.match_requirements(decoded, accepts)
        except PaymentError as exc:
            raise await reject(exc.code, exc.message) from None
        from .verify import verify_exact

        try:
            auth = verify_exact(
                decoded.payload.payload,
                requirements,
                now=self.clock.now(),
                allow_unrecovered=self.allow_smart_wallets,
            )
        except PaymentError as exc:
            raise await reject(exc.code, exc.message, exc.status_code) from None

        try:
            payment_id = self._payment_id(route, decoded.payload)
        except PaymentError as exc:
            raise await reject(exc.code, exc.message, exc.status_code) from None
        fingerprint = ""
        busy: PaymentError | None = None
        if payment_id is not None:
            fingerprint = self._fingerprint(request, requirements, auth)
            busy = await self._begin_idempotent(route, request, accepts, payment_id, fingerprint)

        payload = decoded.payload
        if decoded.version == 1:
            payload = payload.model_copy(update={"accepted": requirements})
        asset = next(
            a
            for a in (route.assets or self.assets)
            if a.network == requirements.network and a.address == requirements.asset
        )
        payment = Payment(
            payer=auth.payer,
            amount=auth.value,
            asset=asset,
            pay_to=requirements.pay_to,
            nonce=auth.nonce,
            resource=request.resource,
            valid_before=auth.valid_before,
        )
        key = replay_key(requirements.network, requirements.asset, auth.payer, auth.nonce)
        token = secrets.token_hex(16)
        # A busy identifier is another request's: this one must not abandon its record.
        idempotency = (payment_id, fingerprint) if payment_id and busy is None else None
        transaction: str | None = None
        if busy is not None:
            # Another request holds the identifier. It may be gone (process killed) with its
            # payment settled: only a recovery from the chain may answer here. Claiming the nonce
            # would race that request's own claim and refuse it.
            transaction = await self._recover(request, route, payment, requirements, key, token)
            if transaction is None:
                raise busy
            # The request that reserved the identifier is gone (its claim was recovered): its
            # pending record is this request's to complete (any request with the same identifier
            # and fingerprint is the same logical request).
            idempotency = (payment_id, fingerprint) if payment_id is not None else None
            claim = ClaimResult.CLAIMED
        else:
            try:
                claim = await self._store_call(
                    self.store.claim,
                    key,
                    request.resource,
                    token,
                    auth.valid_before,
                    self.clock.now(),
                )
            except StoreError as exc:
                logger.error("replay store claim failed: %s", exc)
                await self._abandon(idempotency)
                await self._emit(PaymentEvent("error", request, route, payment, code="store"))
                raise self._failure(exc) from None
            if claim is ClaimResult.IN_FLIGHT or claim is ClaimResult.USED:
                # USED may be a claim whose answer never went out (sending): _recover tells.
                try:
                    transaction = await self._recover(
                        request, route, payment, requirements, key, token
                    )
                except PaymentError:
                    await self._abandon(idempotency)
                    raise
                if transaction is not None:
                    claim = ClaimResult.CLAIMED
        if claim is not ClaimResult.CLAIMED:
            await self._abandon(idempotency)
            if claim is ClaimResult.BOUND_ELSEWHERE:
                raise await reject(
                    "payment_bound_to_other_resource",
                    "this payment was presented for another resource and cannot be used here",
                )
            raise await reject(
                "invalid_exact_evm_nonce_already_used",
                "this payment authorization was already used or is being used",
            )
        session = PaymentSession(
            route=route,
            request=request,
            payment=payment,
            payload=payload,
            requirements=requirements,
            version=decoded.version,
            key=key,
            token=token,
            idempotency=idempotency,
            started=self.clock.now(),
        )
        session.deadline = self._deadline(route, session.started)
        if route.price.metered:
            session.quote = full_quotes[(requirements.network, requirements.asset)]
        if transaction is not None:
            # Paid on chain already, by this very authorization: nothing to verify or settle.
            session.recovered = True
            payment.transaction = transaction
            await self._emit(PaymentEvent("recovered", request, route, payment))
            if route.settlement == "before":
                await self._complete_recovery(session)
            return session
        if self.limit_in_flight:
            await self._admit(session, accepts)

        use_facilitator = (
            route.verify_with_facilitator
            if route.verify_with_facilitator is not None
            else self.verify_with_facilitator
        )
        # Without a balance read on chain, the facilitator's verify is what vouches that the
        # payer can pay this one payment: it runs even when verification is turned off.
        vouch = self.limit_in_flight and not session.on_chain
        if use_facilitator or vouch or not auth.recovered:
            try:
                verdict = await self.facilitator.verify(payload, requirements)
            except FacilitatorError as exc:
                await self._release(session)
                await self._emit(PaymentEvent("error", request, route, payment, code="verify"))
                raise self._failure(exc) from None
            if not verdict.is_valid:
                await self._release(session)
                code = _safe_code(verdict.invalid_reason, "payment_invalid")
                raise await reject(code, "the facilitator refused this payment")
        await self._emit(PaymentEvent("verified", request, route, payment))

        if route.settlement == "before":
            await self._settle(session)
        # Per-second routes measure from here: the payment checks are not the handler's time.
        session.started = self.clock.now()
        return session

    async def finish(
        self, session: PaymentSession, status_code: int, *, recording: bool = False
    ) -> dict[str, str]:
        """After the handler answered with ``status_code``: the headers to add to its response.

        Policy ``after``: a status below 400 settles now, and the handler's content may be sent
        only if this returns; a failed settlement raises the 402 to send instead. A status of
        400 or more charges nothing and releases the claim.

        ``recording=True`` promises a later :meth:`record` of the whole answer (for retries with
        a payment identifier); otherwise retries are told the payment was already processed.
        Once the answer was handed to the server, integrations call :meth:`delivered`.
        """
        if session.done:
            return session.response_headers
        if session.recovered and session.route.settlement == "after":
            session.done = True
            if status_code >= 400:
                # The claim stays with this retry's token, unanswered: a later retry of the same
                # payment is recovered again, so the buyer still gets one answer for it.
                await self._abandon_recovered(session)
                return {}
            await self._complete_recovery(session)
            if session.route.price.metered:
                await self._fund_reservation(session)
                session.response_headers.update(self._credit_headers(session))
            if not recording:
                await self.record(session, status_code, (), None)
            return session.response_headers
        if session.route.settlement == "before":
            session.done = True
            if not recording:
                await self.record(session, status_code, (), None)
            return session.response_headers
        # Done before settling: whatever happens next, _settle alone decides whether the claim
        # is released (definitive refusal) or stays held (outcome unknown) — abort() must not.
        session.done = True
        if session.payment.from_credit:
            if status_code >= 400:
                await self._release_credit(session)
                return {}
            session.response_headers = self._credit_headers(session)
            return session.response_headers
        if status_code >= 400:
            await self._release(session)
            return {}
        await self._settle(session)
        if session.route.price.metered:
            await self._fund_reservation(session)
            session.response_headers.update(self._credit_headers(session))
        if not recording:
            await self.record(session, status_code, (), None)
        return session.response_headers

    async def abort(self, session: PaymentSession) -> None:
        """The handler raised: charge nothing and release the claim (if not settled yet)."""
        # A settled answer that never went out whole: a retry of the payment is served.
        await self.delivered(session, complete=False)
        if session.done:
            await self._release_credit(session)
            return
        session.done = True
        if session.payment.from_credit:
            await self._release_credit(session)
        elif session.recovered:
            await self._abandon_recovered(session)
        elif not session.payment.settled:
            await self._release(session)

    async def _release(self, session: PaymentSession) -> None:
        idempotency, session.idempotency = session.idempotency, None
        await self._abandon(idempotency)
        try:
            await self._store_call(self.store.release, session.key, session.token)
        except StoreError as exc:
            # The claim stays held until the authorization expires: nothing can double-spend it.
            logger.error("replay store release failed: %s", exc)
        await self._release_in_flight(session)
        await self._emit(PaymentEvent("released", session.request, session.route, session.payment))

    async def _settle(self, session: PaymentSession) -> None:
        request, route, payment = session.request, session.route, session.payment
        assert session.payload is not None  # sessions served from credit never settle
        result: SettleResponse | None = None
        try:
            for _ in range(2):
                result = await self.facilitator.settle(session.payload, session.requirements)
                # settlement_pending: broadcast but unconfirmed; asking again reconciles the same
                # transaction (the facilitator keys it by signature), it never sends a second one.
                if result.success or result.error_reason != "settlement_pending":
                    break
        except FacilitatorError as exc:
            # Outcome unknown: keep the claim held so the authorization cannot be spent twice.
            # A retry of the same payment is served once the transfer shows on chain (_recover),
            # so a payment identifier must not hold it back with a stored "already processed".
            logger.error("settlement failed for %s: %s", request.resource, exc)
            await self._unknown_outcome_in_flight(session)
            await self._drop_idempotency(session)
            await self._give_up(session)
            await self._emit(PaymentEvent("error", request, route, payment, code="settle"))
            raise self._failure(exc) from None
        assert result is not None
        # A v1 client gets its receipt in the v1 header and shape, networks by v1 name.
        if session.version == 1:
            header_name, encode = protocol.X_PAYMENT_RESPONSE, protocol.encode_settle_response_v1
        else:
            header_name, encode = protocol.PAYMENT_RESPONSE, protocol.encode_settle_response
        if result.success:
            payment.transaction = result.transaction
            await self._settle_in_flight(session)
            await self._mark_served(session)
            session.response_headers = {header_name: encode(result)}
            await self._emit(PaymentEvent("settled", request, route, payment))
            return
        code = _safe_code(result.error_reason, "settlement_failed")
        if code == "settlement_pending":
            await self._drop_idempotency(session)
            await self._give_up(session)
            logger.error(
                "settlement still pending for %s (tx %s)", request.resource, result.transaction
            )
            await self._unknown_outcome_in_flight(session)
            await self._emit(PaymentEvent("error", request, route, payment, code=code, status=503))
            raise PaymentError(
                503,
                "settlement_pending",
                "the payment was sent but is not confirmed yet; do not pay again",
                headers={"Cache-Control": "no-store", "Retry-After": "5"},
            )
        await self._release(session)
        await self._emit(
            PaymentEvent("settle_failed", request, route, payment, code=code, status=402)
        )
        clean = result.model_copy(update={"error_message": None, "error_reason": code})
        accepts = await self.requirements(route, request)
        raise self._challenge(
            route,
            request,
            accepts,
            code,
            "the payment could not be settled",
            extra_headers={header_name: encode(clean)},
        )

    # -- payments in flight per payer -----------------------------------------------------------

    async def _admit(self, session: PaymentSession, accepts: Sequence[PaymentRequirements]) -> None:
        """Hold this payment's amount on the payer's balance, or refuse it (releasing the claim)
        when the balance does not cover it plus the payer's other payments in flight."""
        payment, request, route = session.payment, session.request, session.route
        account = credit_account(payment.network, payment.asset.address, payment.payer)
        entry = secrets.token_hex(16)
        try:
            reading = await self.balances.read(payment.asset, payment.payer)
            if reading is None:
                # No node to read from: the facilitator's verify vouches for this one payment
                # only, so the payer may have nothing else in flight.
                balance, block = payment.amount, 0
            else:
                balance, block = reading.balance, reading.block
            admitted = balance >= payment.amount and await self._store_call(
                self.store.in_flight_admit,
                account,
                entry,
                payment.amount,
                balance,
                block,
                payment.valid_before + IN_FLIGHT_GRACE_SECONDS,
                self.clock.now(),
            )
        except (StoreError, FacilitatorError) as exc:
            logger.error("payments in flight could not be checked: %s", exc)
            await self._release(session)
            await self._emit(PaymentEvent("error", request, route, payment, code="in_flight"))
            raise self._failure(exc) from None
        if admitted:
            session.in_flight = (account, entry)
            session.on_chain = reading is not None
            return
        await self._release(session)
        headers = {"Cache-Control": "no-store"}
        if balance < payment.amount:
            code, message = "insufficient_funds", "the payer's balance does not cover this payment"
        else:
            # Retryable: the hold ends when the payer's earlier payments settle or fail.
            code, message = (
                "payments_in_flight",
                "the payer's balance is held by its payments in flight; retry shortly",
            )
            headers["Retry-After"] = "1"
        await self._emit(PaymentEvent("rejected", request, route, payment, code=code, status=402))
        raise self._challenge(route, request, accepts, code, message, extra_headers=headers)

    async def _release_in_flight(self, session: PaymentSession) -> None:
        held, session.in_flight = session.in_flight, None
        if held is None:
            return
        try:
            await self._store_call(self.store.in_flight_release, *held)
        except StoreError as exc:
            # Fails safe: the hold only makes the payer wait until it expires.
            logger.error("payment in flight could not be released: %s", exc)

    async def _settle_in_flight(self, session: PaymentSession) -> None:
        held, session.in_flight = session.in_flight, None
        if held is None:
            return
        payment = session.payment
        if not session.on_chain:
            # The facilitator vouched for the balance after its own settlement: nothing to keep.
            await self._store_call_quietly(self.store.in_flight_release, *held)
            return
        self.balances.forget(payment.asset, payment.payer)
        block: int | None = None
        if payment.transaction:
            try:
                block = await self.balances.settlement_block(payment.network, payment.transaction)
            except FacilitatorError as exc:
                logger.warning("settlement block unknown, the hold stays until it lapses: %s", exc)
        from .stores.base import IN_FLIGHT_UNSETTLED

        # Readings of earlier blocks still show the money: the payment counts against them.
        until = IN_FLIGHT_UNSETTLED if block is None else block
        now = self.clock.now()
        await self._store_call_quietly(
            self.store.in_flight_settle, *held, until, now + SETTLED_IN_FLIGHT_SECONDS, now
        )

    async def _unknown_outcome_in_flight(self, session: PaymentSession) -> None:
        # Read on chain, the payment keeps its hold until its authorization lapses: the money
        # may still move, and a balance reading cannot see a transaction not yet mined. Vouched
        # for by the facilitator, the next payment's verify is the judge of the balance.
        if not session.on_chain:
            await self._release_in_flight(session)

    async def _store_call_quietly(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await self._store_call(fn, *args)
        except StoreError as exc:
            # Only ever leaves a hold in place until it expires: the payer waits, nobody gains.
            logger.error("payment in flight could not be updated: %s", exc)

    # -- paid but unanswered: recovery from the chain -----------------------------------------

    async def _recover(
        self,
        request: RequestInfo,
        route: Route,
        payment: Payment,
        requirements: PaymentRequirements,
        key: str,
        token: str,
    ) -> str | None:
        """The settlement transaction of an authorization held by a request that never answered,
        once this request (its retry) has taken the claim over; ``None`` to refuse it as today.

        The claim is held by another token. Either that request is still running, or its
        settlement reached the chain and its answer was lost (facilitator connection dropped,
        process killed). Only the chain can tell: if this authorization's transfer to us is
        there, the claim is handed to this request (compare and set: one retry wins). A request
        that stopped waiting for its settlement said so (its token starts with
        :data:`GAVE_UP`); any other holder is left the reconciler's ``owner_grace_seconds``
        after the transfer's block (in the chain's clock) to answer itself, and should it
        answer later still, it finds its token gone and sends nothing (:meth:`_mark_served`).
        A claim marked *sending* (settled, its answer on the way) is offered by the store only
        once its request stopped renewing it for ``owner_grace_seconds``: its process is gone.
        """
        reconciler = self.reconciler
        if reconciler is None or not reconciler.covers(payment.network):
            return None
        try:
            holder = await self._store_call(
                self.store.recovery_check,
                key,
                request.resource,
                self.clock.now(),
                reconciler.min_interval_seconds,
                # A claim whose answer was on the way: its request renews it while alive.
                reconciler.owner_grace_seconds,
            )
        except StoreError as exc:
            logger.error("replay store recovery check failed: %s", exc)
            raise self._failure(exc) from None
        if holder is None:  # not held for this resource, or looked up on chain moments ago
            return None
        try:
            found = await reconciler.find_transfer(
                network=payment.network,
                asset=requirements.asset,
                payer=payment.payer,
                nonce=payment.nonce,
                pay_to=requirements.pay_to,
                value=payment.amount,
            )
        except ValueError:
            return None  # not an EVM authorization the reconciler can look up
        except ChainReadError as exc:
            logger.error("reading the chain to reconcile a claimed payment failed: %s", exc)
            await self._emit(PaymentEvent("error", request, route, payment, code="reconcile"))
            raise PaymentError(
                503,
                "chain_unavailable",
                "the outcome of this payment cannot be checked now; retry it later",
                headers={
                    "Cache-Control": "no-store",
                    "Retry-After": str(max(1, int(reconciler.min_interval_seconds + 0.999))),
                },
            ) from None
        if found is None:
            return None
        if not holder.startswith(GAVE_UP) and found.age < reconciler.owner_grace_seconds:
            # Its request may still be alive and about to answer: leave it its answer.
            return None
        try:
            won = await self._store_call(self.store.take_over, key, holder, token)
        except StoreError as exc:
            logger.error("replay store take-over failed: %s", exc)
            raise self._failure(exc) from None
        if not won:  # another retry (or the original request) got there first
            return None
        logger.warning(
            "serving a retry of a payment settled on chain whose answer was lost (tx %s)",
            found.transaction,
        )
        return found.transaction

    async def _complete_recovery(self, session: PaymentSession) -> None:
        """A recovered payment is answered now: mark it used and give its receipt."""
        from x402.schemas import SettleResponse

        await self._mark_served(session)
        receipt = SettleResponse(
            success=True,
            transaction=session.payment.transaction or "",
            network=session.payment.network,
            payer=session.payment.payer,
        )
        if session.version == 1:
            header_name, encoded = (
                protocol.X_PAYMENT_RESPONSE,
                protocol.encode_settle_response_v1(receipt),
            )
        else:
            header_name, encoded = (
                protocol.PAYMENT_RESPONSE,
                protocol.encode_settle_response(receipt),
            )
        session.response_headers = {header_name: encoded}
        await self._emit(PaymentEvent("settled", session.request, session.route, session.payment))

    async def _mark_served(self, session: PaymentSession) -> None:
        """Settled: mark the claim used before any content goes out.

        With reconciliation on it is marked *sending* (its sign of life renewed by
        :attr:`holds` while the answer runs) until :meth:`delivered`: a request lost before its
        answer went out whole leaves a claim that a retry can recover (see :meth:`_recover`).

        With reconciliation on, a claim that is no longer this request's (a retry took it over
        after reading the transfer on chain) is answered by that retry: this request must send
        nothing, or the payment would be answered twice.
        """
        try:
            if self.reconciler is None:
                kept = await self._store_call(self.store.mark_used, session.key, session.token)
            else:
                # "Sending" until the whole answer was handed to the server (delivered()): if
                # this request is lost before that, a retry of the payment is served instead.
                kept = await self._store_call(
                    self.store.mark_used, session.key, session.token, self.clock.now()
                )
                if kept:
                    session.answering = True
                    self.holds.add_answer(
                        session.key, session.token, self.reconciler.owner_grace_seconds
                    )
        except StoreError as exc:
            logger.error("replay store mark_used failed after settlement: %s", exc)
            if self.reconciler is None:
                return  # paid on chain; the chain itself now refuses the nonce
            # Unrecorded, a retry of this payment is served from the chain: answer nothing here.
            await self._drop_idempotency(session)
            raise self._failure(exc) from None
        if not kept and self.reconciler is not None:
            await self._drop_idempotency(session)
            await self._emit(
                PaymentEvent(
                    "error", session.request, session.route, session.payment, code="taken_over"
                )
            )
            raise PaymentError(
                409,
                "payment_already_processed",
                "this payment was settled and is answered to a retry of it",
                headers={"Cache-Control": "no-store"},
            )

    async def delivered(self, session: PaymentSession, complete: bool = True) -> None:
        """The paid answer was handed to the server: whole (``complete``), or not (the app
        failed, the connection dropped, the answer was cut short).

        Integrations call it once per paid request after the last body chunk went out (it is a
        no-op for requests with nothing to record). A complete answer marks the claim used for
        good, so that a retry of the payment is a replay; an incomplete one hands the claim
        over, so that a retry is served (the buyer paid and did not get the answer).
        """
        task = self.start_delivered(session, complete)
        if task is not None:
            await asyncio.shield(task)

    def start_delivered(
        self, session: PaymentSession, complete: bool = True
    ) -> asyncio.Future[None] | None:
        """:meth:`delivered` started as a task of its own (``None`` when there is nothing to
        record), for code about to be cancelled: the record runs to its end all the same."""
        if not session.answering:
            return None
        session.answering = False
        self.holds.discard_answer(session.key, session.token)
        # Servers report a request whose last body message went out as over, and frameworks
        # then cancel what still runs (Starlette's streaming responses do): a task of its own.
        task = asyncio.ensure_future(self._record_delivery(session, complete))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return task

    async def _record_delivery(self, session: PaymentSession, complete: bool) -> None:
        if not complete:
            # Nothing whole was answered: a retry with the same payment identifier is served
            # (not told "processed, answer not kept").
            await self._drop_idempotency(session)
            await self._give_up(session)
            return
        try:
            await self._store_call(self.store.mark_used, session.key, session.token)
        except StoreError as exc:
            # The claim stays "sending": a retry is served once more after the grace time.
            logger.error("replay store could not record a delivered answer: %s", exc)

    def delivered_sync(self, session: PaymentSession, complete: bool = True) -> None:
        """:meth:`delivered` for synchronous integrations."""
        if session.answering:
            run_sync(self.delivered(session, complete))

    async def _abandon_recovered(self, session: PaymentSession) -> None:
        """A recovered retry failed: nothing more is charged, and the claim stays held (by this
        request's token) for the next retry to recover. A metered payment is credit meanwhile
        (once: the top-up is keyed by the claim, and the next retry's top-up is a no-op)."""
        await self._drop_idempotency(session)
        await self._release_credit(session)
        if session.route.price.metered and not session.payment.from_credit:
            await self._credit_payment(session)
        await self._give_up(session)

    async def _give_up(self, session: PaymentSession) -> None:
        """This request answers nothing for its claim: say so, so that a retry of the payment
        can be served as soon as its transfer shows on chain (see :meth:`_recover`)."""
        if self.reconciler is None or session.token.startswith(GAVE_UP):
            return
        if session.answering:  # no answer of this request's is on the way any more
            session.answering = False
            self.holds.discard_answer(session.key, session.token)
        try:
            await self._store_call(
                self.store.take_over, session.key, session.token, GAVE_UP + session.token
            )
        except StoreError as exc:
            # The retry then waits for the owner's grace time instead.
            logger.error("replay store hand-over failed: %s", exc)

    async def _drop_idempotency(self, session: PaymentSession) -> None:
        idempotency, session.idempotency = session.idempotency, None
        await self._abandon(idempotency)

    # -- sync facade ---------------------------------------------------------------------------

    def begin_sync(self, route: Route, request: RequestInfo) -> PaymentSession:
        return run_sync(self.begin(route, request))

    def finish_sync(
        self, session: PaymentSession, status_code: int, *, recording: bool = False
    ) -> dict[str, str]:
        return run_sync(self.finish(session, status_code, recording=recording))

    def complete_sync(self, session: PaymentSession, usage: Any = None) -> int:
        return run_sync(self.complete(session, usage))

    def abort_sync(self, session: PaymentSession) -> None:
        run_sync(self.abort(session))

    def close(self) -> None:
        """Close the store (sync code; async code prefers :meth:`aclose`)."""
        self.holds.close()
        self.store.close()

    async def aclose(self) -> None:
        """Close the facilitator's connections on this event loop and the store."""
        pending: list[asyncio.Future[Any]] = [*self._commits, *self._deliveries]
        if pending:  # charges and deliveries of answers already sent: let them reach the store
            await asyncio.wait(pending, timeout=COMMIT_WAIT_SECONDS)
        closer = getattr(self.facilitator, "aclose", None)
        if closer is not None:
            await closer()
        self.holds.close()
        self.store.close()
