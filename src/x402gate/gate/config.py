"""The gate's configuration checks: what the constructor and :meth:`PaymentGate.route` accept.

Every check raises :class:`~x402gate.errors.ConfigurationError` with the option named, so a
misconfigured service stops at start-up instead of answering payments wrongly.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

from ..assets import Asset, checksum_address, normalize_network, usdc
from ..errors import ConfigurationError
from ..money import parse_price
from ..options import RouteOptions, check_route_options
from ..pricing import as_strategy
from ..ratelimit import as_rate_limit
from ..reconcile import ChainReconciler
from ..stores import Store
from . import throttle
from .model import Route

logger = logging.getLogger("x402gate")

if TYPE_CHECKING:
    from ..clock import Clock
    from ..webhooks import WebhookDeliverer
    from .engine import PaymentGate

__all__ = [
    "HOLD_MARGIN_SECONDS",
    "PAYMENT_IDENTIFIER_MODES",
    "SETTLEMENT_POLICIES",
    "check_credit_ttl",
    "check_facilitator",
    "check_idempotency_ttl",
    "check_limit_in_flight",
    "check_longest_answer",
    "check_timeout",
    "resolve_assets",
    "resolve_pay_to",
    "resolve_reconciler",
    "resolve_rpc_urls",
    "route",
    "secret_key",
    "sign_in_key",
]

SETTLEMENT_POLICIES = ("after", "before")
PAYMENT_IDENTIFIER_MODES = ("off", "optional", "required")
HOLD_MARGIN_SECONDS = 30
"""How much longer than a per-second route's ``max_seconds`` ``credit_ttl_seconds`` must be."""


def resolve_assets(
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


def resolve_pay_to(pay_to: str | Mapping[str, str], assets: Iterable[Asset]) -> dict[str, str]:
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


def resolve_rpc_urls(
    rpc_url: str | Mapping[str, str] | None, facilitator: Any, assets: Iterable[Asset]
) -> dict[str, str]:
    """Network → JSON-RPC URL to read payers' balances from."""
    if rpc_url is None:
        # A local facilitator settles through its own node: read balances there too.
        url = getattr(facilitator, "rpc_url", None)
        networks = getattr(facilitator, "networks", None)
        if isinstance(url, str) and isinstance(networks, list | tuple):
            return {normalize_network(n): url for n in networks if isinstance(n, str)}
        return {}
    if isinstance(rpc_url, str):
        return {a.network: rpc_url for a in assets}
    if isinstance(rpc_url, Mapping):
        return {normalize_network(k): v for k, v in rpc_url.items()}
    raise ConfigurationError("rpc_url must be a URL or a mapping network → URL")


def resolve_reconciler(
    reconcile: ChainReconciler | str | Mapping[str, str] | bool | None,
    facilitator: Any,
    store: Store,
) -> ChainReconciler | None:
    if reconcile is False:
        return None
    if reconcile is None or reconcile is True:
        from ..facilitators import LocalFacilitator

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


def check_timeout(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 10 <= value <= 86_400:
        raise ConfigurationError("max_timeout_seconds must be an integer from 10 to 86400")
    return value


def route(gate: PaymentGate, price: Any, **options: Unpack[RouteOptions]) -> Route:
    """A paid route: ``price`` is a price (``0.05``, ``"$0.05"``, ``Decimal``), a strategy
    (``MatchRules``, ``ModelTable``, ...) or a callable of the request (sync or async).

    ``options`` are :class:`~x402gate.options.RouteOptions`; a misspelt one is refused by name,
    with a suggestion, before anything else is checked.
    """
    check_route_options(options, "PaymentGate.route")
    settlement = options.get("settlement", "after")
    description = options.get("description")
    mime_type = options.get("mime_type")
    assets = options.get("assets")
    network = options.get("network")
    pay_to = options.get("pay_to")
    max_timeout_seconds = options.get("max_timeout_seconds")
    verify_with_facilitator = options.get("verify_with_facilitator")
    extensions = options.get("extensions")
    payment_identifier = options.get("payment_identifier", "optional")
    credit_topup = options.get("credit_topup")
    rate_limit = as_rate_limit(options.get("rate_limit"))
    if rate_limit is not None:
        throttle.rate_limiter(gate)  # the storage is checked when the route is built
    if payment_identifier not in PAYMENT_IDENTIFIER_MODES:
        raise ConfigurationError(
            "payment_identifier must be one of "
            f"{', '.join(PAYMENT_IDENTIFIER_MODES)}, not {payment_identifier!r}"
        )
    if payment_identifier != "off" and not gate.store.supports_idempotency:
        raise ConfigurationError(
            f"{type(gate.store).__name__} cannot keep answers for payment identifiers: "
            "use payment_identifier='off' or another store"
        )
    if settlement not in SETTLEMENT_POLICIES:
        raise ConfigurationError(
            f"settlement must be one of {', '.join(SETTLEMENT_POLICIES)}, not {settlement!r}"
        )
    strategy = as_strategy(price)
    if strategy.metered:
        if not gate.store.supports_credit:
            raise ConfigurationError(
                f"{type(gate.store).__name__} has no credit ledger: metered prices need one"
            )
        if settlement == "before":
            raise ConfigurationError(
                "metered routes settle when the answer starts; settlement='before' is not "
                "available for them"
            )
        if not gate.public_origins:
            # Sign-ins and session tokens are bound to the service's name; taken from the
            # request's Host, anyone could have a wallet sign for their own site and relay it.
            raise ConfigurationError(
                "metered routes accept sign-in-with-x and session tokens: set the gate's "
                "public_origin (e.g. public_origin='https://api.example.com')"
            )
        check_longest_answer(strategy, gate.credit_ttl_seconds)
    elif credit_topup is not None:
        raise ConfigurationError("credit_topup applies to metered prices only")
    topup = parse_price(credit_topup) if credit_topup is not None else 0
    route_assets: tuple[Asset, ...] | None = None
    if assets is not None or network is not None:
        route_assets = resolve_assets(network, assets)
    route_pay_to = (
        resolve_pay_to(pay_to, route_assets or gate.assets) if pay_to is not None else None
    )
    if route_assets is not None and route_pay_to is None:
        resolve_pay_to(gate.pay_to, route_assets)  # every asset needs a recipient
    return Route(
        price=strategy,
        settlement=settlement,
        description=description,
        mime_type=mime_type,
        assets=route_assets,
        pay_to=route_pay_to,
        max_timeout_seconds=(
            check_timeout(max_timeout_seconds) if max_timeout_seconds is not None else None
        ),
        verify_with_facilitator=verify_with_facilitator,
        extensions=extensions,
        payment_identifier=payment_identifier,
        credit_topup=topup,
        rate_limit=rate_limit,
    )


def check_longest_answer(strategy: Any, credit_ttl_seconds: int) -> None:
    """A per-second route's longest answer must fit in a credit hold, with a margin."""
    from ..metering import PerSecond

    if not isinstance(strategy, PerSecond):
        return
    # The hold is renewed while the answer runs; this keeps even a process that cannot
    # renew (a stalled thread, a store hiccup) from losing it before the paid maximum.
    if strategy.max_seconds + HOLD_MARGIN_SECONDS > credit_ttl_seconds:
        raise ConfigurationError(
            f"credit_ttl_seconds ({credit_ttl_seconds}) must exceed PerSecond "
            f"max_seconds ({float(strategy.max_seconds):g}) by at least "
            f"{HOLD_MARGIN_SECONDS} seconds: a credit hold must outlive the longest answer"
        )


def check_facilitator(facilitator: Any) -> Any:
    """The facilitator, once it has the three async methods the gate calls."""
    if facilitator is None or not all(
        callable(getattr(facilitator, m, None)) for m in ("verify", "settle", "supported")
    ):
        raise ConfigurationError("facilitator must have async verify, settle and supported")
    return facilitator


def check_idempotency_ttl(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 30 * 86_400:
        raise ConfigurationError("idempotency_ttl_seconds must be an integer from 1 to 2592000")
    return value


def check_credit_ttl(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 60:
        raise ConfigurationError("credit_ttl_seconds must be an integer of at least 60")
    return value


def check_limit_in_flight(value: bool, store: Store) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError("limit_in_flight must be true or false")
    if value and not store.supports_in_flight:
        raise ConfigurationError(
            f"{type(store).__name__} cannot bound payments in flight: "
            "use limit_in_flight=False or another store"
        )
    return value


def secret_key(secret: bytes | str | None) -> bytes:
    """The key of session tokens and sign-in challenges; random (one process only) if omitted."""
    key = secret.encode() if isinstance(secret, str) else secret
    if key is None:
        key = secrets.token_bytes(32)  # one process only: share a secret across instances
    return key


def sign_in_key(key: bytes) -> bytes:
    """The sign-in challenges' key: ``key`` itself when long enough, else its digest."""
    return key if len(key) >= 32 else hashlib.sha256(key).digest()


def webhook_deliverer(
    gate: PaymentGate, webhooks: Any, delivery: Mapping[str, Any] | None, clock: Clock | None
) -> WebhookDeliverer | None:
    """The deliverer of the gate's webhook endpoints (None without endpoints); tells the store
    which journal outcomes to queue for which endpoint."""
    from ..webhooks import WebhookDeliverer, webhook_endpoints
    from ..webhooks.deliverer import check_delivery_options

    endpoints = webhook_endpoints(webhooks)
    if not endpoints:
        return None
    if not gate.journal or not getattr(gate.store, "supports_outbox", False):
        raise ConfigurationError("webhooks need the payments journal and a store with an outbox")
    if getattr(gate.store, "cluster", False) is True:
        # The outbox row is written in the commit's own script, whose keys share the record's
        # slot; one outbox cannot share a slot with every record of a cluster.
        raise ConfigurationError(
            "webhooks are not available on a Redis Cluster store: use a single Redis server, "
            "a Sentinel-managed one, SQLite or PostgreSQL for a gate that sends webhooks"
        )
    options = check_delivery_options(delivery or {})
    if not getattr(gate.store, "shared_across_processes", True):
        logger.warning(
            "webhooks: the %s store keeps its outbox in this process's memory; events not yet "
            "delivered are lost on restart (use SQLite, Redis or PostgreSQL to keep them)",
            getattr(gate.store, "scheme", "memory"),
        )
    gate.store.outbox_targets = tuple(endpoint.target() for endpoint in endpoints)
    return WebhookDeliverer(gate.store, endpoints, clock=clock, **options)
