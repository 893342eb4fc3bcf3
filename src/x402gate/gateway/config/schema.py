"""The shape of a gateway file: pydantic models of every section and field.

Unknown fields, wrong types and ranges are found here; what the values mean (networks, addresses,
prices, route keys) is checked by :mod:`~x402gate.gateway.config.compile`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from ...stores.registry import DEFAULT_STORE_URL
from .._yaml import Loc

__all__ = [
    "ALIASES",
    "DEFAULT_MAX_BODY_BYTES",
    "HOP_BY_HOP",
    "KNOWN_NAMES",
    "AcceptSpec",
    "BreakerSpec",
    "DecodeBodySpec",
    "FacilitatorSpec",
    "GatewayFile",
    "GatewaySection",
    "MetricsSpec",
    "RateLimitSpec",
    "RouteSpec",
    "RuleSpec",
    "TargetSpec",
    "UpstreamSpec",
    "WebhookDeliverySpec",
    "WebhookSpec",
]

DEFAULT_MAX_BODY_BYTES = 10 << 20
"""Largest request body the gateway reads (10 MiB): LLM requests carry images and documents."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection, not the message (RFC 9110 §7.6.1): never forwarded."""


class _Model(BaseModel):
    # strict: YAML already gives real types, so "8402" for a port or "yes" for a flag is a
    # mistake worth naming rather than a value to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)


def _network_shorthand(value: Any) -> Any:
    return {"network": value} if isinstance(value, str) else value


def _url_shorthand(value: Any) -> Any:
    return {"url": value} if isinstance(value, str | list) else value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class MetricsSpec(_Model):
    """``gateway.metrics``: Prometheus metrics (needs ``x402gate[metrics]``), on a path of
    the gateway (never charged, before the routes) and/or a port of their own."""

    path: str | None = Field(default="/metrics", pattern=r"^/")
    token: SecretStr | None = Field(default=None, min_length=8)
    """When set, a scrape on ``path`` needs ``Authorization: Bearer <token>``."""
    port: int | None = Field(default=None, ge=0, le=65535)
    """Also serve them on this port (no token there: bind ``host`` where only the scraper
    reaches)."""
    host: str = "127.0.0.1"


class DashboardSpec(_Model):
    """``gateway.dashboard:``: the operator's dashboard of the journal (docs/analytics.md)."""

    token: SecretStr = Field(min_length=16)
    """The token that opens it (``${ENV_VAR}`` keeps it out of the file)."""
    path: str = Field(default="/x402/dashboard", pattern=r"^/[^?#]*$")
    days: int = Field(default=30, ge=1, le=400)


class GatewaySection(_Model):
    """``gateway:``: how the gateway serves and takes payments."""

    host: str = "127.0.0.1"
    port: int = Field(default=8402, ge=0, le=65535)
    discovery: bool = False
    trust_proxy_headers: bool = False
    """Deprecated: believe ``X-Forwarded-*`` from any peer. Use ``trusted_proxies``."""
    public_origin: str | list[str] | None = None
    trusted_proxies: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=1 << 30)
    secret: SecretStr | None = None
    max_timeout_seconds: int = Field(default=300, ge=10, le=86_400)
    verify_with_facilitator: bool = True
    limit_in_flight: bool = True
    balance_rpc_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("balance_rpc_url", "rpc_url")
    )
    balance_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    startup_checks: Literal["fail", "warn", "off"] = "fail"
    upstream_client: Literal["aiohttp", "httpx", "builtin"] = "aiohttp"
    """The HTTP client that forwards to upstreams (:mod:`x402gate.gateway.clients`)."""
    rate_limit_storage: str | None = None
    """Where routes' ``rate_limit`` counters live (``memory://``, ``redis://...``); by default
    the store's Redis when the store is one, memory otherwise."""
    rate_limit_strategy: Literal["moving-window", "fixed-window"] = "moving-window"
    metrics: MetricsSpec | None = None
    journal: bool = True
    """Keep the payments journal in the store (``x402gate report`` reads it)."""
    journal_retention_days: float | None = Field(default=400.0, gt=0)
    journal_retention_rows: int | None = Field(default=None, ge=1)
    dashboard: DashboardSpec | None = None
    """Serve the operator's dashboard (off unless given, with its token)."""


class AcceptSpec(_Model):
    """One item of ``accepts:``: USDC on a network, or another EIP-3009 token."""

    network: str
    asset: str = "USDC"
    name: str | None = None
    version: str | None = None
    decimals: int = Field(default=6, ge=0, le=36)
    symbol: str | None = None


class FacilitatorSpec(_Model):
    """``facilitator:``: a facilitator service (``url``), or local settlement (``rpc_url``)."""

    url: Annotated[list[str] | None, BeforeValidator(_one_or_many)] = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout: float = Field(default=20.0, gt=0, le=600)
    rpc_url: str | None = None
    private_key: SecretStr | None = None
    chain_rpc_url: str | None = None
    """With ``url``: a JSON-RPC URL of the chain, to serve the retry of a payment whose
    settlement reached the chain while the facilitator's answer was lost."""


class BreakerSpec(_Model):
    """An upstream's ``breaker:``: after ``failures`` failed calls in a row, routes with several
    targets skip it for ``open_seconds``, then let one call through to probe it."""

    failures: int = Field(default=5, ge=1, le=1000)
    open_seconds: float = Field(default=30.0, gt=0, le=86_400)


class UpstreamSpec(_Model):
    """One entry of ``upstreams:``: where requests go and what the gateway adds to them."""

    url: str
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout: float = Field(default=60.0, gt=0, le=3600)
    max_connections: int = Field(default=100, ge=1, le=10_000)
    breaker: BreakerSpec = Field(default_factory=BreakerSpec)


def _target_shorthand(value: Any) -> Any:
    return {"upstream": value} if isinstance(value, str) else value


class TargetSpec(_Model):
    """One item of a route's ``targets:``: an upstream that serves the route's logical model."""

    upstream: str
    model: str | None = Field(default=None, min_length=1)
    """The model name this upstream is sent instead of the client's (its own name for it)."""
    weight: int = Field(default=1, ge=1, le=1_000_000)
    priority: int | None = Field(default=None, ge=0, le=1000)
    """Lower levels are tried first; by default a target's position in its list."""


TargetList = Annotated[
    list[Annotated[TargetSpec, BeforeValidator(_target_shorthand)]], Field(min_length=1)
]


Encoding = Literal["gzip", "deflate"]


def _every_encoding() -> list[Encoding]:
    return ["gzip", "deflate"]


class DecodeBodySpec(_Model):
    """A route's ``decode_body:``: compressed bodies and forms priced by what they hold (see
    :class:`~x402gate.pricing.DecodedBody`); without it they are answered 415."""

    encodings: list[Encoding] = Field(default_factory=_every_encoding)
    forms: bool = False
    max_bytes: int = Field(default=1 << 20, ge=1, le=1 << 30)


def _rate_shorthand(value: Any) -> Any:
    return {"per_ip": value} if isinstance(value, str) else value


class RateLimitSpec(_Model):
    """A route's ``rate_limit:``: a rate per client address (``"60/minute"``, also the
    shorthand ``rate_limit: 60/minute``) and per payer (see :mod:`x402gate.ratelimit`)."""

    per_ip: str | None = None
    per_payer: str | None = None
    scope: str | None = None


class RuleSpec(_Model):
    """One item of a route's ``match:`` list: conditions (``when``, or ``where``) and a price."""

    when: dict[str, Any] = Field(
        default_factory=dict, validation_alias=AliasChoices("when", "where")
    )
    price: Any


RouteType = Literal[
    "flat",
    "match",
    "token-based",
    "per-token",
    "images",
    "speech",
    "transcription",
    "embeddings",
]


class RouteSpec(_Model):
    """One entry of ``routes:``, keyed ``"METHOD /path"``."""

    upstream: str | None = None
    targets: TargetList | None = None
    """Several upstreams for the route: tried by priority and weight, with fallback."""
    targets_by_model: dict[str, TargetList] | None = None
    """Several upstreams for each model the route serves (``"*"``: any other model)."""
    path: str | None = None
    type: RouteType | None = None
    price: Any = None
    match: list[RuleSpec] | None = None
    models: dict[str, Any] | None = None
    fallback: Any = None
    model_field: str = "body.model"
    settlement: Literal["after", "before"] = "after"
    description: str | None = None
    mime_type: str | None = None
    credit_topup: Any = None
    max_input_tokens: int | None = Field(default=None, ge=0)
    max_output_tokens: int | None = Field(default=None, ge=0)
    max_price: Any = None
    bytes_per_token: int = Field(default=1, ge=1, le=16)
    decode_body: DecodeBodySpec | None = None
    # The built-in model price table and the units of AI APIs (gateway/config/units.py).
    price_table: Literal["builtin"] | None = None
    per: int | None = Field(default=None, ge=1)
    sizes: dict[str, Any] | None = None
    default_size: str | None = None
    default_quality: str | None = None
    max_images: int | None = Field(default=None, ge=1, le=100)
    max_characters: int | None = Field(default=None, ge=1)
    min_bitrate: int | None = Field(default=None, ge=100)
    max_seconds: int | None = Field(default=None, ge=1)
    other_formats: Literal["size", "refuse"] | None = None
    rate_limit: Annotated[RateLimitSpec | None, BeforeValidator(_rate_shorthand)] = None


class WebhookSpec(_Model):
    """One item of ``webhooks:``: a receiver of signed payment events (docs/webhooks.md)."""

    url: str
    secret: SecretStr
    events: list[str] | None = None
    name: str | None = None


class WebhookDeliverySpec(_Model):
    """``webhook_delivery:``: how the outbox is delivered (retries, backoff, timeouts)."""

    max_attempts: int = Field(default=12, ge=1, le=1000)
    max_age_seconds: float = Field(default=3 * 86400.0, gt=0)
    backoff_seconds: float = Field(default=1.0, gt=0, le=3600)
    max_backoff_seconds: float = Field(default=3600.0, gt=0, le=86_400)
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    poll_seconds: float = Field(default=1.0, gt=0, le=60)


class GatewayFile(_Model):
    """The whole file, as written (after ``${VAR}`` substitution)."""

    gateway: GatewaySection = Field(default_factory=GatewaySection)
    pay_to: Any
    # Each top-level name may also be written as the gate's settings name it (Flask's
    # X402GATE_STORE_URL, Django's "STORE_URL", here store_url): one vocabulary everywhere.
    accepts: Annotated[
        list[Annotated[AcceptSpec, BeforeValidator(_network_shorthand)]],
        BeforeValidator(_one_or_many),
        Field(min_length=1, validation_alias=AliasChoices("accepts", "network")),
    ]
    facilitator: Annotated[
        FacilitatorSpec,
        BeforeValidator(_url_shorthand),
        Field(validation_alias=AliasChoices("facilitator", "facilitator_url")),
    ]
    store: str = Field(
        default=DEFAULT_STORE_URL, validation_alias=AliasChoices("store", "store_url")
    )
    upstreams: Annotated[dict[str, UpstreamSpec], Field(min_length=1)]
    routes: Annotated[dict[str, RouteSpec], Field(min_length=1)]
    webhooks: list[WebhookSpec] = Field(default_factory=list)
    webhook_delivery: WebhookDeliverySpec | None = None
    channels: dict[str, Any] | None = Field(default=None, repr=False)
    """``batch-settlement`` terms (:mod:`x402gate.settings.channels`), checked when compiled;
    kept out of ``repr``: they may hold the receiver authorizer's private key."""


ALIASES: dict[Loc, str] = {
    ("accepts",): "network",
    ("facilitator",): "facilitator_url",
    ("store",): "store_url",
    ("gateway", "balance_rpc_url"): "rpc_url",
}
"""Fields that may also be written under the name of the gate setting they are."""


def known_names() -> list[str]:
    names: set[str] = set()
    for model in (
        GatewayFile,
        GatewaySection,
        AcceptSpec,
        FacilitatorSpec,
        UpstreamSpec,
        BreakerSpec,
        TargetSpec,
        RuleSpec,
        RouteSpec,
        RateLimitSpec,
        WebhookSpec,
        WebhookDeliverySpec,
    ):
        names.update(model.model_fields)
    names.update(("where", *ALIASES.values()))
    return sorted(names)


KNOWN_NAMES = known_names()
