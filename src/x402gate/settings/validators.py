"""Checks shared by every settings reader (Flask config, Django settings, the gateway file).

Each check takes a value as written and returns it in the form the gate takes, or raises
:class:`~x402gate.errors.ConfigurationError` with a message that does not name the key: the
reader prefixes the key in the user's own spelling (``X402GATE_PAY_TO``, ``PAY_TO``,
``pay_to``). :class:`Missing` marks a required setting that is absent.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Mapping, Sequence
from typing import Any, get_args
from urllib.parse import urlsplit

from ..assets import Asset, checksum_address, normalize_network, usdc
from ..errors import ConfigurationError
from ..options import PaymentIdentifierMode, SettlementPolicy, check_route_options
from ..proxies import TrustedProxies
from ..siwx import parse_public_origins
from ..stores.registry import accepted_schemes, redact_url

__all__ = [
    "MAX_TIMEOUT_RANGE",
    "STARTUP_MODES",
    "Conflict",
    "Missing",
    "check_address",
    "check_assets",
    "check_facilitator",
    "check_facilitator_urls",
    "check_flag",
    "check_http_url",
    "check_max_timeout",
    "check_network",
    "check_pay_to",
    "check_payment_identifier",
    "check_positive_seconds",
    "check_public_origin",
    "check_route_table",
    "check_rpc_url",
    "check_settlement",
    "check_startup_checks",
    "check_store_url",
    "check_trusted_proxies",
    "load_object",
]

MAX_TIMEOUT_RANGE = (10, 86_400)
"""The least and most seconds a payment authorization may be asked to stay valid."""

STARTUP_MODES: tuple[str, ...] = ("fail", "warn", "off")
"""What a failing start-up check does: stop the start, warn, or nothing."""


class Missing(ConfigurationError):
    """A required setting is absent; ``instead`` names settings that may be written instead."""

    def __init__(self, message: str, instead: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.instead = instead


class Conflict(ConfigurationError):
    """A setting cannot be combined with ``others`` (named in the reader's spelling)."""

    def __init__(self, message: str, others: tuple[str, ...]) -> None:
        super().__init__(message)
        self.others = others


def load_object(value: Any) -> Any:
    """``value`` itself, or the object a dotted path (``"pkg.module.name"``) names.

    Settings name objects by path when they cannot be built at settings import time.
    """
    if not isinstance(value, str):
        return value
    try:
        return pkgutil.resolve_name(value)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"{value!r} does not import ({exc})") from None


def check_flag(value: Any) -> bool:
    """``True`` or ``False`` only: ``"no"`` from an environment variable is a mistake to name."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"must be True or False, not {value!r}")
    return value


def _whole_number(value: Any) -> int:
    # Settings often come from the environment as strings: "300" is fine, "5m" is not.
    if isinstance(value, bool | float):
        raise ConfigurationError(f"must be a whole number of seconds, not {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"must be a whole number of seconds, not {value!r}") from None


def check_max_timeout(value: Any) -> int:
    """Seconds a payment authorization must stay valid: a whole number from 10 to 86400."""
    seconds = _whole_number(value)
    low, high = MAX_TIMEOUT_RANGE
    if not low <= seconds <= high:
        raise ConfigurationError(f"must be from {low} to {high} seconds, not {seconds}")
    return seconds


def check_dashboard_token(value: Any) -> str:
    """The dashboard's token: a string of at least 16 characters."""
    if not isinstance(value, str) or len(value.strip()) < 16:
        raise ConfigurationError("must be a string of at least 16 characters")
    return value


def check_dashboard_path(value: Any) -> str:
    """The dashboard's path: starts with ``/``, no query."""
    if not isinstance(value, str) or not value.startswith("/") or "?" in value:
        raise ConfigurationError(f"must be a path starting with '/', not {value!r}")
    return value


def check_journal_retention(value: Any) -> Any:
    """How long the payments journal keeps rows: ``{"days": 90, "rows": 1000000}`` (either or
    both; ``None`` for no limit of that kind) or an existing ``JournalRetention``."""
    from collections.abc import Mapping

    from ..stores.journal import JournalRetention

    if isinstance(value, JournalRetention):
        return value
    if not isinstance(value, Mapping) or not set(value) <= {"days", "rows"} or not value:
        raise ConfigurationError('must be a mapping such as {"days": 90} or {"rows": 1000000}')
    days, rows = value.get("days"), value.get("rows")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int | float)):
        raise ConfigurationError(f"days must be a number, not {days!r}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int)):
        raise ConfigurationError(f"rows must be a whole number, not {rows!r}")
    return JournalRetention(days=days, rows=rows)


def check_webhooks(value: Any) -> Any:
    """Webhook endpoints: a list of mappings ``{"url", "secret", "events", "name"}`` (or
    :class:`~x402gate.webhooks.WebhookEndpoint` objects); ``None`` for none."""
    from ..webhooks import webhook_endpoints

    return webhook_endpoints(value) or None


def check_webhook_delivery(value: Any) -> Any:
    """Options of the webhook deliverer, checked (``None``: the defaults)."""
    from collections.abc import Mapping

    from ..webhooks.deliverer import check_delivery_options

    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError('must be a mapping such as {"max_attempts": 12}')
    return check_delivery_options(value)


def check_positive_seconds(value: Any, most: float = 600.0) -> float:
    """A timeout in seconds: a number above zero and at most ``most``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= most:
        raise ConfigurationError(f"must be a number of seconds above 0 and at most {most:g}")
    return float(value)


def check_settlement(value: Any) -> SettlementPolicy:
    """When a route settles: ``"after"`` the answer is ready, or ``"before"`` the handler."""
    choices: tuple[SettlementPolicy, ...] = get_args(SettlementPolicy)
    for choice in choices:
        if value == choice:
            return choice
    raise ConfigurationError(f"must be one of {', '.join(choices)}, not {value!r}")


def check_payment_identifier(value: Any) -> PaymentIdentifierMode:
    """Whether payments may or must carry an idempotency key: off, optional, required."""
    choices: tuple[PaymentIdentifierMode, ...] = get_args(PaymentIdentifierMode)
    for choice in choices:
        if value == choice:
            return choice
    raise ConfigurationError(f"must be one of {', '.join(choices)}, not {value!r}")


def check_startup_checks(value: Any) -> str:
    """``"fail"``, ``"warn"`` or ``"off"``."""
    if value not in STARTUP_MODES:
        raise ConfigurationError(f"must be one of {', '.join(STARTUP_MODES)}, not {value!r}")
    return str(value)


def check_network(value: Any) -> str:
    """A network with known USDC, by name (``"base"``) or CAIP-2 id (``"eip155:8453"``)."""
    if not isinstance(value, str):
        raise ConfigurationError(f"must be a network name such as 'base', not {value!r}")
    return usdc(value).network


def check_assets(value: Any) -> tuple[Asset, ...]:
    """One :class:`~x402gate.assets.Asset` or a non-empty list of them."""
    items = (value,) if isinstance(value, Asset) else value
    if (
        not isinstance(items, Sequence)
        or isinstance(items, str)
        or not items
        or not all(isinstance(item, Asset) for item in items)
    ):
        raise ConfigurationError("must be one or more x402gate.Asset")
    return tuple(items)


def check_pay_to(value: Any, assets: Sequence[Asset] = ()) -> str | dict[str, str]:
    """The receiving address, or a mapping network → address covering every asset's network.

    Each address must be a 20-byte hex address other than zero (payments sent there are lost).
    """
    if isinstance(value, Mapping):
        mapping: dict[str, str] = {}
        for network, address in value.items():
            mapping[normalize_network(network)] = check_address(address)
        for asset in assets:
            if asset.network not in mapping:
                raise ConfigurationError(f"has no address for network {asset.network}")
        return dict(value)
    check_address(value)
    return str(value)


def check_address(value: Any) -> str:
    """An address that can receive payments, EIP-55 checksummed: 20 bytes in hex, not zero."""
    if not isinstance(value, str):
        raise ConfigurationError(f"must be an address (0x and 40 hex digits), not {value!r}")
    address = checksum_address(value)
    if int(address, 16) == 0:
        raise ConfigurationError("must not be the zero address: payments sent there are lost")
    return address


def check_http_url(value: Any) -> str:
    """An ``http://`` or ``https://`` URL with a host."""
    if not isinstance(value, str):
        raise ConfigurationError(f"must be an http(s) URL, not {value!r}")
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"must be an http(s) URL, not {redact_url(value)!r}")
    return value


def check_facilitator_urls(value: Any) -> tuple[str, ...]:
    """One facilitator URL or a non-empty list of them (verification fails over in order)."""
    urls = [value] if isinstance(value, str) else value
    if isinstance(urls, Sequence) and urls:
        return tuple(check_http_url(url) for url in urls)
    raise ConfigurationError("must be an http(s) URL or a list of them")


def check_facilitator(value: Any) -> Any:
    """A facilitator object (or its dotted path) with ``verify``, ``settle`` and ``supported``."""
    facilitator = load_object(value)
    if not all(callable(getattr(facilitator, m, None)) for m in ("verify", "settle", "supported")):
        raise ConfigurationError("must have async verify, settle and supported methods")
    return facilitator


def check_store_url(value: Any) -> Any:
    """A store URL with a known scheme, or a store object (taken as it is)."""
    if not isinstance(value, str):
        return value
    if value.partition("://")[0].lower() not in accepted_schemes():
        schemes = ", ".join(f"{s}://" for s in accepted_schemes())
        raise ConfigurationError(
            f"unknown store URL {redact_url(value)!r}: use one of {schemes} "
            "(e.g. sqlite:///path.db, redis://host:port/db)"
        )
    return value


def check_rpc_url(value: Any) -> str | dict[str, str]:
    """A chain node's JSON-RPC URL, or a mapping network → URL."""
    if isinstance(value, Mapping):
        return {normalize_network(k): check_http_url(v) for k, v in value.items()}
    return check_http_url(value)


def check_public_origin(value: Any) -> tuple[str, ...]:
    """The origins clients reach the service at (``https://api.example.com``)."""
    try:
        return parse_public_origins(value, "value")
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc).removeprefix("value: ")) from None


def check_trusted_proxies(value: Any) -> tuple[str, ...]:
    """IP addresses or CIDR blocks of the reverse proxies whose forwarded headers count."""
    if isinstance(value, str):
        value = [value]
    try:
        proxies = TrustedProxies(value, setting="value")
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc).removeprefix("value: ")) from None
    return tuple(str(network) for network in proxies.networks)


def check_route_table(value: Any) -> dict[Any, Any]:
    """``ROUTES``: keys ``"METHOD /path"`` (or ``view:name``), values a price, a built route or
    a mapping of ``price`` and route options, every misspelt option named at once."""
    if not isinstance(value, Mapping):
        raise ConfigurationError("must map 'METHOD /path' keys to prices")
    problems: list[str] = []
    for key, spec in value.items():
        if not isinstance(key, str):
            problems.append(f"route key {key!r} is not text")
        elif isinstance(spec, Mapping):
            try:
                check_route_options(spec, f"route {key!r}", also=("price",))
                if "price" not in spec:
                    raise ConfigurationError(f"route {key!r}: price is required")
            except ConfigurationError as exc:
                problems.append(str(exc))
    if problems:
        raise ConfigurationError("; ".join(problems))
    return dict(value)
