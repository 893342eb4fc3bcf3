"""One model of a gate's settings, whichever way they are written.

Flask config (``X402GATE_PAY_TO``), Django settings (``X402GATE = {"PAY_TO": ...}``) and the
gateway file (``pay_to:``) name the same settings; :mod:`x402gate.settings.reading` maps each
spelling onto :class:`GateSettings`, which checks every value with the shared
:mod:`~x402gate.settings.validators` so the rules (and their wording) are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..assets import Asset
from ..errors import ConfigurationError
from ..stores.registry import DEFAULT_STORE_URL
from . import validators as check
from .channels import read_channels

__all__ = ["GATE_FIELDS", "SETTING_NAMES", "GateSettings", "given_names"]


class GateSettings(BaseModel):
    """Every setting of a gate and its routes, checked; field order is checking order.

    Build with ``GateSettings(**values)`` or :meth:`of`: whether ``pay_to``, ``network`` or
    ``facilitator_url`` are required depends on what else is written.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, arbitrary_types_allowed=True
    )

    gate: Any = None
    """An existing :class:`~x402gate.gate.PaymentGate` (or its dotted path), instead of the
    settings that describe one."""
    network: str | None = None
    assets: tuple[Asset, ...] = ()
    pay_to: str | dict[str, str] | None = None
    facilitator: Any = None
    facilitator_url: tuple[str, ...] = ()
    facilitator_headers: Any = None
    facilitator_timeout: float = 20.0
    store_url: Any = DEFAULT_STORE_URL
    max_timeout_seconds: int = 300
    verify_with_facilitator: bool = True
    allow_smart_wallets: bool = False
    public_origin: tuple[str, ...] | None = None
    trusted_proxies: tuple[str, ...] = ()
    secret: bytes | None = Field(default=None, repr=False)
    """Key (32 bytes or more) of session tokens and sign-in challenges. Processes behind one
    load balancer need the same: without it each draws its own, and a token issued by one
    worker is refused by the next."""
    limit_in_flight: bool = True
    rpc_url: str | dict[str, str] | None = None
    routes: dict[Any, Any] = Field(default_factory=dict)
    discovery: bool = False
    startup_checks: str = "fail"
    channels: Any = None
    """``batch-settlement`` terms (:mod:`x402gate.settings.channels`); ``None``: no channels."""
    rate_limit_storage: str | None = None
    """Where routes' ``rate_limit`` counters live (:mod:`x402gate.ratelimit`); ``None``: the
    store's Redis when the store is one, memory otherwise."""
    rate_limit_strategy: str = "moving-window"
    metrics: Any = None
    """Prometheus metrics (:func:`x402gate.observability.metrics.check_metrics_options`):
    ``{"path": "/metrics", "token": ..., "port": ...}``; ``None``: none."""
    journal: bool = True
    """Keep the payments journal in the store (docs/analytics.md)."""
    journal_retention: Any = None
    """``{"days": …, "rows": …}``: how long the journal keeps rows (``None``: the store's)."""
    dashboard_token: str | None = None
    """The token of the operator's dashboard (``None``: no dashboard; docs/analytics.md)."""
    dashboard_path: str = "/x402/dashboard"
    """Where the dashboard is served."""
    webhooks: Any = None
    """Endpoints sent signed payment events: a list of ``{"url", "secret", "events", "name"}``
    (docs/webhooks.md)."""
    webhook_delivery: Any = None
    """Options of the webhook deliverer (``{"max_attempts": 12, ...}``)."""

    def __init__(self, **values: Any) -> None:
        """Check ``values`` (setting name → value as written); ``ValidationError`` otherwise."""
        self.__pydantic_validator__.validate_python(
            values, self_instance=self, context={"given": given_names(values)}
        )

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> GateSettings:
        """The settings ``values`` writes (what is required depends on what else is written)."""
        return cls.model_validate(dict(values), context={"given": given_names(values)})

    @staticmethod
    def _given(info: ValidationInfo) -> frozenset[str]:
        context = info.context if isinstance(info.context, dict) else {}
        given = context.get("given")
        return frozenset(given) if given is not None else frozenset()

    @field_validator("gate", mode="plain")
    @classmethod
    def _gate(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        combined = tuple(sorted(GATE_FIELDS & cls._given(info)))
        if combined:
            raise check.Conflict("cannot be combined with settings that describe a gate", combined)
        from ..gate import PaymentGate

        gate = check.load_object(value)
        if not isinstance(gate, PaymentGate):
            raise ConfigurationError(f"must be a PaymentGate, not {type(gate).__name__}")
        return gate

    @field_validator("network", mode="plain")
    @classmethod
    def _network(cls, value: Any, info: ValidationInfo) -> str | None:
        if value is None or value == "":
            given = cls._given(info)
            if "assets" in given or "gate" in given:
                return None
            raise check.Missing("e.g. 'base'", instead=("assets",))
        return check.check_network(value)

    @field_validator("assets", mode="plain")
    @classmethod
    def _assets(cls, value: Any, info: ValidationInfo) -> tuple[Asset, ...]:
        if value is not None and value != ():
            return check.check_assets(value)
        network = info.data.get("network")
        if network is None:
            return ()
        from ..assets import usdc

        return (usdc(network),)

    @field_validator("pay_to", mode="plain")
    @classmethod
    def _pay_to(cls, value: Any, info: ValidationInfo) -> str | dict[str, str] | None:
        if value is None or value == "":
            if "gate" in cls._given(info):
                return None
            raise check.Missing("the address that receives payments")
        return check.check_pay_to(value, info.data.get("assets") or ())

    @field_validator("facilitator", mode="plain")
    @classmethod
    def _facilitator(cls, value: Any) -> Any:
        return None if value is None else check.check_facilitator(value)

    @field_validator("facilitator_url", mode="plain")
    @classmethod
    def _facilitator_url(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        if value is None or value == "" or value == ():
            if {"facilitator", "gate"} & cls._given(info):
                return ()
            raise check.Missing("e.g. 'https://x402.org/facilitator'", instead=("facilitator",))
        return check.check_facilitator_urls(value)

    @field_validator("facilitator_headers", mode="plain")
    @classmethod
    def _facilitator_headers(cls, value: Any) -> Any:
        headers = check.load_object(value)
        if headers is not None and not isinstance(headers, dict) and not callable(headers):
            raise ConfigurationError("must be a mapping of headers or a callable")
        return headers

    @field_validator("facilitator_timeout", mode="plain")
    @classmethod
    def _facilitator_timeout(cls, value: Any) -> float:
        return check.check_positive_seconds(value)

    @field_validator("store_url", mode="plain")
    @classmethod
    def _store_url(cls, value: Any) -> Any:
        return check.check_store_url(DEFAULT_STORE_URL if value in (None, "") else value)

    @field_validator("max_timeout_seconds", mode="plain")
    @classmethod
    def _max_timeout(cls, value: Any) -> int:
        return check.check_max_timeout(value)

    @field_validator(
        "verify_with_facilitator",
        "allow_smart_wallets",
        "limit_in_flight",
        "discovery",
        "journal",
        mode="plain",
    )
    @classmethod
    def _flag(cls, value: Any) -> bool:
        return check.check_flag(value)

    @field_validator("public_origin", mode="plain")
    @classmethod
    def _public_origin(cls, value: Any) -> tuple[str, ...] | None:
        return None if value is None else check.check_public_origin(value)

    @field_validator("trusted_proxies", mode="plain")
    @classmethod
    def _trusted_proxies(cls, value: Any) -> tuple[str, ...]:
        return () if value is None else check.check_trusted_proxies(value)

    @field_validator("secret", mode="plain")
    @classmethod
    def _secret(cls, value: Any) -> bytes | None:
        if value is None or value == "":
            return None
        key = value.encode() if isinstance(value, str) else value
        # The value is never echoed: it is a secret.
        if not isinstance(key, bytes) or len(key) < 32:
            raise ConfigurationError(
                "must be a string of at least 32 bytes (e.g. openssl rand -hex 32)"
            )
        return key

    @field_validator("rpc_url", mode="plain")
    @classmethod
    def _rpc_url(cls, value: Any) -> str | dict[str, str] | None:
        return None if value in (None, "") else check.check_rpc_url(value)

    @field_validator("routes", mode="plain")
    @classmethod
    def _routes(cls, value: Any) -> dict[Any, Any]:
        return {} if value is None else check.check_route_table(value)

    @field_validator("startup_checks", mode="plain")
    @classmethod
    def _startup_checks(cls, value: Any) -> str:
        return check.check_startup_checks("fail" if value in (None, "") else value)

    @field_validator("rate_limit_storage", mode="plain")
    @classmethod
    def _rate_limit_storage(cls, value: Any) -> str | None:
        from ..ratelimit import check_storage_url

        return None if value in (None, "") else check_storage_url(value)

    @field_validator("rate_limit_strategy", mode="plain")
    @classmethod
    def _rate_limit_strategy(cls, value: Any) -> str:
        from ..ratelimit import check_strategy

        return check_strategy("moving-window" if value in (None, "") else value)

    @field_validator("journal_retention", mode="plain")
    @classmethod
    def _journal_retention(cls, value: Any) -> Any:
        return None if value is None else check.check_journal_retention(value)

    @field_validator("dashboard_token", mode="plain")
    @classmethod
    def _dashboard_token(cls, value: Any) -> str | None:
        return None if value in (None, "") else check.check_dashboard_token(value)

    @field_validator("dashboard_path", mode="plain")
    @classmethod
    def _dashboard_path(cls, value: Any) -> str:
        return check.check_dashboard_path("/x402/dashboard" if value in (None, "") else value)

    @field_validator("webhooks", mode="plain")
    @classmethod
    def _webhooks(cls, value: Any) -> Any:
        return check.check_webhooks(value)

    @field_validator("webhook_delivery", mode="plain")
    @classmethod
    def _webhook_delivery(cls, value: Any) -> Any:
        return check.check_webhook_delivery(value)

    @field_validator("channels", mode="plain")
    @classmethod
    def _channels(cls, value: Any) -> Any:
        return read_channels(value)

    @field_validator("metrics", mode="plain")
    @classmethod
    def _metrics(cls, value: Any) -> Any:
        from ..observability.metrics import check_metrics_options

        return check_metrics_options(value)


def given_names(values: Mapping[str, Any]) -> frozenset[str]:
    """The settings ``values`` actually sets (``None`` counts as not written)."""
    return frozenset(name for name, value in values.items() if value is not None)


SETTING_NAMES: tuple[str, ...] = tuple(GateSettings.model_fields)
"""Every setting, in the model's lower-case spelling."""

GATE_FIELDS = frozenset(SETTING_NAMES) - {
    "gate",
    "routes",
    "discovery",
    "startup_checks",
    "metrics",
}
"""Settings that describe a gate: they cannot be combined with ``gate``."""
