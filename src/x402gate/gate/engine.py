"""PaymentGate: the framework-neutral engine that decides *serve*, *402* or *reject*, and settles.

One paid request, as every integration drives it (through :class:`x402gate.flow.PaymentFlow`)::

    session = await gate.begin(route, request)      # raises PaymentError: answer it, stop
    ... run the handler, hold the response start ...
    headers = await gate.finish(session, status)    # settles ("after"); PaymentError on failure
    # on an exception in the handler instead:  await gate.abort(session)

The gate composes a payment scheme (:mod:`x402gate.schemes`), a store, pricing and policy; each
step lives in the module of its concern and is bound here as a method:

=================  ===========================================================================
module             what it does
=================  ===========================================================================
``config``         constructor and :meth:`PaymentGate.route` checks
``startup``        start-up checks (store, facilitator, scheme on every network)
``challenge``      payment requirements, the 402 and its cache
``steps``          the per-request steps: ``begin``, ``finish``, ``abort``
``idempotency``    payment-identifier retries: reserve, record, replay
``credit``         metered routes: credit, session tokens, reservations
``charges``        metered routes: the charge after the answer, commit waits, deadlines
``admission``      payments in flight held on the payer's balance
``settlement``     settle, mark served, recover a settled payment whose answer was lost
``events``         :class:`PaymentEvent` and its kinds
``model``          :class:`Route`, :class:`Payment`, :class:`PaymentSession`
``failures``       the 503/502 of a failed dependency, error codes safe to show
=================  ===========================================================================

Each step is a function of the gate (``def settle(gate, session)``), bound as a method rather
than held by a collaborator object: a paid request makes the same calls as when it was one
class, and the state (store, clock, holds, listeners) stays in one place that tests and
operators may replace.

Fail closed: a store, facilitator or chain error never lets content through; it becomes a
503/502 with a sanitized message, and the detail goes to the ``x402gate`` logger.

Adapters do not call the per-request steps themselves: :class:`x402gate.flow.PaymentFlow`
sequences them (sync adapters through its ``*_sync`` twins, which use the background loop of
:mod:`x402gate._runner` only where a step has asynchronous work).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .._holds import HoldKeeper
from .._runner import run_sync
from .._serial import SerialWorker
from ..assets import Asset
from ..balances import ChainBalances
from ..clock import Clock, SystemClock
from ..credit import SessionTokens
from ..dashboard import Dashboard
from ..errors import ConfigurationError, StoreError
from ..observability.telemetry import Telemetry
from ..proxies import TrustedProxies
from ..ratelimit import (
    RateLimiter,
    RateLimitStrategy,
    check_storage_url,
    check_strategy,
    default_storage_url,
)
from ..reconcile import ChainReconciler
from ..request import RequestInfo
from ..schemes import ExactScheme, PaymentScheme
from ..siwx import SignInWithX, parse_public_origins, split_url
from ..stores import Store, open_store
from ..stores.calls import call_store
from ..stores.journal import JournalRetention
from ..stores.registry import DEFAULT_STORE_URL
from . import (
    admission,
    challenge,
    channels,
    charges,
    config,
    credit,
    idempotency,
    settlement,
    steps,
)
from . import journal as payments_journal
from . import startup as start_up
from .channels import ChannelSettings
from .charges import COMMIT_WAIT_SECONDS
from .events import EventListener, PaymentEvent, emit
from .failures import failure
from .model import Route
from .settled_writes import check_store_retry
from .startup import StartupChecks

if TYPE_CHECKING:
    from ..channels.claimer import BackgroundClaimer
    from ..facilitators import Facilitator
    from ..schemes.batch_settlement import BatchSettlementScheme
    from ..webhooks import WebhookDeliverer, WebhookEndpoint

__all__ = ["PaymentGate"]

T = TypeVar("T")


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
    :param store_retry_seconds: how long a store write that follows a settlement (the claim
        marked used, a metered payment's credit, an answer's charge) is tried again while the
        store fails, before the request gives up; the money has moved by then. A credit top-up
        or charge still refused is applied in the background once the store is back
        (:mod:`x402gate.gate.settled_writes`). ``0`` tries once.
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
    :param scheme: the payment scheme (a :class:`~x402gate.schemes.PaymentScheme`); by default
        :class:`~x402gate.schemes.ExactScheme` over ``facilitator``.
    :param startup_checks: what the integrations do when the app starts and a start-up truth
        does not hold (store cannot be opened, facilitator unreachable or without the exact
        scheme on an accepted network): ``"fail"`` (the default) stops the start with one
        :class:`ConfigurationError`; ``"warn"`` logs it and starts anyway (payments answer 503
        until it holds); ``"off"`` skips the check. The environment variable
        ``X402GATE_STARTUP_CHECKS`` overrides it.
    :param rate_limit_storage: where the counters of routes' ``rate_limit`` live: a ``limits``
        storage URL (``"memory://"``, ``"redis://host:6379/0"``). By default the store's Redis
        when ``store`` is a Redis URL (shared by every instance), memory otherwise.
    :param rate_limit_strategy: ``"moving-window"`` (the default) or ``"fixed-window"``.
    :param journal: keep the payments journal in the store (on by default when the store can:
        every built-in one does): one row per settled payment, charge and channel charge,
        written with the commit it records, plus refusals and failures; read by
        ``x402gate report`` and :mod:`x402gate.analytics`.
    :param journal_retention: how long the journal keeps rows (a
        :class:`~x402gate.stores.journal.JournalRetention`; by default the store's own).
    :param dashboard: serve the operator's dashboard of the journal (a
        :class:`~x402gate.dashboard.Dashboard`, with its token and path) from every
        integration; ``None`` (the default): no dashboard.
    :param webhooks: endpoints sent signed payment events
        (:class:`~x402gate.webhooks.WebhookEndpoint` or mappings of ``url``, ``secret``,
        ``events``, ``name``): queued in the store's outbox with their journal row, delivered
        by a background thread started with the gate (docs/webhooks.md). Needs the journal.
    :param webhook_delivery: options of the :class:`~x402gate.webhooks.WebhookDeliverer`
        (``max_attempts``, ``max_age_seconds``, ``backoff_seconds``, ``max_backoff_seconds``,
        ``timeout_seconds``, ``poll_seconds``, ``page``, ``concurrency``).
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
        store_retry_seconds: float = 10.0,
        public_origin: str | Sequence[str] | None = None,
        trusted_proxies: Sequence[str] = (),
        limit_in_flight: bool = True,
        rpc_url: str | Mapping[str, str] | None = None,
        balance_cache_seconds: float = 1.0,
        reconcile: ChainReconciler | str | Mapping[str, str] | bool | None = None,
        clock: Clock | None = None,
        startup_checks: StartupChecks = "fail",
        scheme: PaymentScheme | None = None,
        channels: ChannelSettings | None = None,
        rate_limit_storage: str | None = None,
        rate_limit_strategy: RateLimitStrategy = "moving-window",
        journal: bool = True,
        journal_retention: JournalRetention | None = None,
        dashboard: Dashboard | None = None,
        webhooks: Sequence[WebhookEndpoint | Mapping[str, Any]] | None = None,
        webhook_delivery: Mapping[str, Any] | None = None,
    ) -> None:
        self.startup_checks: StartupChecks = start_up.check_startup_mode(startup_checks)
        self.assets = config.resolve_assets(network, assets)
        self.pay_to = config.resolve_pay_to(pay_to, self.assets)
        self.facilitator = config.check_facilitator(facilitator)
        if scheme is not None and not isinstance(scheme, PaymentScheme):
            raise ConfigurationError("scheme must be a x402gate.schemes.PaymentScheme")
        self.scheme: PaymentScheme = scheme if scheme is not None else ExactScheme(facilitator)
        self.store = open_store(store)
        self.rate_limit_storage = (
            check_storage_url(rate_limit_storage)
            if rate_limit_storage is not None
            else default_storage_url(store)
        )
        self.rate_limit_strategy: RateLimitStrategy = check_strategy(rate_limit_strategy)
        self.rate_limiter: RateLimiter | None = None
        # The payments journal: kept whenever the store can keep it, unless turned off.
        self.journal = bool(journal) and bool(getattr(self.store, "supports_journal", False))
        if journal_retention is not None:
            self.store.journal_retention = journal_retention
        self._refusal_budget = payments_journal.RefusalBudget()
        # A store that serves one call at a time gets one thread of its own (see _serial).
        self._store_worker = (
            SerialWorker("x402gate-store") if self.store.blocking and self.store.serial else None
        )
        if dashboard is not None and not isinstance(dashboard, Dashboard):
            raise ConfigurationError("dashboard must be a x402gate.dashboard.Dashboard")
        self.dashboard = dashboard
        self.webhooks: WebhookDeliverer | None = config.webhook_deliverer(
            self, webhooks, webhook_delivery, clock
        )
        self.channels = channels
        self.channel_scheme: BatchSettlementScheme | None = None
        self.channels_sync_seconds = 0.0
        self.claimer: BackgroundClaimer | None = None
        """The background claimer of this process, once started (``ChannelSettings(claim=)``)."""
        if channels is not None:
            if not isinstance(channels, ChannelSettings):
                raise ConfigurationError("channels must be a x402gate.gate.ChannelSettings")
            if not getattr(self.store, "supports_channels", False):
                raise ConfigurationError("this store keeps no payment-channel state")
            channels.check()
            self.channels_sync_seconds = float(channels.sync_seconds)
            if not channels.delegated:
                # Delegated: the facilitator's authorizer is taken at start-up; no channel is
                # offered before.
                self.channel_scheme = channels.scheme(facilitator)
        self.max_timeout_seconds = config.check_timeout(max_timeout_seconds)
        self.verify_with_facilitator = bool(verify_with_facilitator)
        self.allow_smart_wallets = bool(allow_smart_wallets)
        self.idempotency_ttl_seconds = config.check_idempotency_ttl(idempotency_ttl_seconds)
        key = config.secret_key(secret)
        self.session_tokens = session_tokens or SessionTokens(key)
        self.sign_in = SignInWithX(config.sign_in_key(key))
        self.credit_ttl_seconds = config.check_credit_ttl(credit_ttl_seconds)
        self.store_retry_seconds = check_store_retry(store_retry_seconds)
        self.public_origins: tuple[str, ...] = (
            parse_public_origins(public_origin) if public_origin is not None else ()
        )
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self.limit_in_flight = config.check_limit_in_flight(limit_in_flight, self.store)
        self.balances = ChainBalances(
            config.resolve_rpc_urls(rpc_url, facilitator, self.assets),
            cache_seconds=balance_cache_seconds,
        )
        self.reconciler = config.resolve_reconciler(reconcile, facilitator, self.store)
        self.clock: Clock = clock or SystemClock()
        # Renews the holds of requests still running, so an answer never outlives its hold.
        self.holds = HoldKeeper(self.store, self.clock, credit_ttl_seconds)
        self._listeners: list[EventListener] = []
        self.telemetry = Telemetry()
        """Payment logs, metrics and spans (:mod:`x402gate.observability`)."""
        # Credit accounts whose charge is being committed after the answer went out: the next
        # request of that payer waits for the commit before reserving (see hold_commit).
        self._pending_commits: dict[str, set[concurrent.futures.Future[None]]] = {}
        # (id(route), url) -> (route, headers, body) of the plain 402 of flat-priced routes.
        self._challenges: dict[tuple[int, str], tuple[Route, dict[str, str], Any]] = {}
        # A route's offers at one quote (challenge.requirements): (route, quote, channel
        # scheme) -> (route, offers).
        self._offers: dict[tuple[int, int, int], tuple[Route, tuple[Any, ...]]] = {}
        self._pending_lock = threading.Lock()
        self._commits: set[asyncio.Future[int]] = set()
        self._deliveries: set[asyncio.Future[None]] = set()
        self._started = False
        # Payer summaries of payer-priced routes: payer -> (until, (network, asset, period), it).
        self._payer_summaries: dict[str, tuple[float, tuple[str, str, float], Any]] = {}
        self._start_lock: asyncio.Lock | None = None

    # -- public entry points, each defined in the module of its concern --------------------

    route = config.route
    startup = start_up.startup
    startup_problem = start_up.startup_problem
    startup_mode = start_up.startup_mode
    check_startup = start_up.check_startup
    requirements = challenge.requirements
    cached_challenge = challenge.cached_challenge
    begin = steps.begin
    finish = steps.finish
    abort = steps.abort
    record = idempotency.record
    hold_commit = charges.hold_commit
    complete = charges.complete
    complete_after_send = charges.complete_after_send
    credit_status = credit.credit_status
    balance = credit.balance
    answer_overdue = charges.answer_overdue
    delivered = settlement.delivered
    start_delivered = settlement.start_delivered

    # -- the steps' parts --------------------------------------------------------------------

    _challenge = challenge.challenge
    _plain_challenge = challenge.plain_challenge
    _remember_challenge = challenge.remember_challenge
    _resource_info = staticmethod(challenge.resource_info)
    _failure = staticmethod(failure)
    _release = steps.release
    _payment_id = staticmethod(idempotency.payment_id)
    _fingerprint = staticmethod(idempotency.fingerprint)
    _begin_idempotent = idempotency.begin
    _abandon = idempotency.abandon
    _drop_idempotency = idempotency.drop
    _credit_path = credit.credit_path
    _token_claims = credit.token_claims
    _identify = credit.identify
    _with_topup = credit.with_topup
    _credit_session = credit.credit_session
    _credit_payment = credit.credit_payment
    _fund_reservation = credit.fund_reservation
    _credit_headers = credit.credit_headers
    _channel_complete = channels.channel_complete
    _drop_hold = charges.drop_hold
    _await_commits = charges.await_commits
    _release_credit = charges.release_credit
    _deadline = staticmethod(charges.deadline)
    _admit = admission.admit
    _release_in_flight = admission.release_in_flight
    _settle_in_flight = admission.settle_in_flight
    _unknown_outcome_in_flight = admission.unknown_outcome_in_flight
    _store_call_quietly = admission.store_call_quietly
    _settle = settlement.settle
    _recover = settlement.recover
    _complete_recovery = settlement.complete_recovery
    _mark_served = settlement.mark_served
    _record_delivery = settlement.record_delivery
    _abandon_recovered = settlement.abandon_recovered
    _give_up = settlement.give_up

    def on_event(self, listener: EventListener) -> EventListener:
        """Call ``listener(event)`` (sync or async) on each event; usable as a decorator."""
        self._listeners.append(listener)
        return listener

    async def _emit(self, event: PaymentEvent) -> None:
        self.telemetry.observe(event)
        if self.journal and event.kind in payments_journal.EVENT_OUTCOMES:
            # Only refusals, failures and refunds have a row of their own (a served request's
            # row is written by its commit): the others cost no call.
            await payments_journal.record_event(self, event)
        if self._listeners:
            await emit(self._listeners, event)

    async def _store_call(self, fn: Callable[..., T], *args: Any, refusals: bool = False) -> T:
        """``fn(*args)`` on the store (in a thread when it would block: :func:`call_store`);
        any failure is a :class:`StoreError` (503, fail closed). With ``refusals``, a
        :class:`ValueError` passes through as it is: the store refused what the client sent (a
        channel config it knows otherwise), which the caller answers as the client's bad
        payment, not an outage."""
        try:
            return await call_store(self.store, fn, *args, worker=self._store_worker)
        except (StoreError, ConfigurationError):
            raise
        except Exception as exc:  # a backend bug must fail closed too
            if refusals and isinstance(exc, ValueError):
                raise
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

    # -- sync facade (WSGI, Flask, Django) ---------------------------------------------------

    def credit_status_sync(self, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        return run_sync(self.credit_status(headers))

    def check_startup_sync(self, mode: StartupChecks | None = None) -> None:
        """:meth:`check_startup` from synchronous code (WSGI, Flask, Django)."""
        run_sync(self.check_startup(mode))

    def close(self) -> None:
        """Close the store (sync code; async code prefers :meth:`aclose`)."""
        if self.claimer is not None:
            self.claimer.stop()
        if self.webhooks is not None:
            self.webhooks.stop()
        self.holds.close()
        if self._store_worker is not None:
            self._store_worker.close()
        self.store.close()

    async def aclose(self) -> None:
        """Close the facilitator's connections on this event loop and the store."""
        pending: list[asyncio.Future[Any]] = [*self._commits, *self._deliveries]
        if pending:  # charges and deliveries of answers already sent: let them reach the store
            await asyncio.wait(pending, timeout=COMMIT_WAIT_SECONDS)
        if self.claimer is not None:
            await asyncio.to_thread(self.claimer.stop)
        closer = getattr(self.facilitator, "aclose", None)
        if closer is not None:
            await closer()
        if self.webhooks is not None:
            await asyncio.to_thread(self.webhooks.stop)
        self.holds.close()
        if self._store_worker is not None:
            self._store_worker.close()
        self.store.close()
