"""The gate checked settings describe."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .model import GateSettings
from .reading import MAPPING, SettingProblem, SettingsError, read_flask_config, read_settings

if TYPE_CHECKING:
    from ..gate import PaymentGate
    from ..routing import RouteTable

__all__ = ["build_gate", "build_route_table", "gate_from_flask_config", "gate_from_settings"]


def build_gate(settings: GateSettings) -> tuple[PaymentGate, bool]:
    """The gate of ``settings``, and whether the caller owns (and so closes) it.

    A ``gate`` setting is returned as it is (its owner closes it); otherwise a new gate is built
    with an :class:`~x402gate.facilitators.HTTPFacilitator` on ``facilitator_url`` unless a
    ``facilitator`` object is set.
    """
    from ..gate import PaymentGate

    if settings.gate is not None:
        gate: PaymentGate = settings.gate
        return gate, False
    facilitator: Any = settings.facilitator
    if facilitator is None:
        from ..facilitators import HTTPFacilitator

        facilitator = HTTPFacilitator(
            list(settings.facilitator_url),
            headers=settings.facilitator_headers,
            timeout=settings.facilitator_timeout,
        )
    assert settings.pay_to is not None  # GateSettings requires it without a gate
    gate = PaymentGate(
        pay_to=settings.pay_to,
        assets=settings.assets,
        facilitator=facilitator,
        store=settings.store_url,
        max_timeout_seconds=settings.max_timeout_seconds,
        verify_with_facilitator=settings.verify_with_facilitator,
        allow_smart_wallets=settings.allow_smart_wallets,
        public_origin=settings.public_origin,
        trusted_proxies=settings.trusted_proxies,
        secret=settings.secret,
        limit_in_flight=settings.limit_in_flight,
        rpc_url=settings.rpc_url,
        startup_checks=settings.startup_checks,  # type: ignore[arg-type]
        channels=settings.channels,
        rate_limit_storage=settings.rate_limit_storage,
        rate_limit_strategy=settings.rate_limit_strategy,  # type: ignore[arg-type]
        journal=settings.journal,
        journal_retention=settings.journal_retention,
        dashboard=_dashboard(settings),
        webhooks=settings.webhooks,
        webhook_delivery=settings.webhook_delivery,
    )
    return gate, True


def _dashboard(settings: GateSettings) -> Any:
    if settings.dashboard_token is None:
        return None
    from ..dashboard import Dashboard

    return Dashboard(settings.dashboard_token, path=settings.dashboard_path)


def gate_from_flask_config(config: Mapping[str, Any]) -> PaymentGate:
    """A gate from the ``X402GATE_*`` keys of a Flask ``app.config`` (see ``docs/flask.md``).

    Every unknown ``X402GATE_*`` key, missing and invalid value is named in one
    :class:`~x402gate.settings.SettingsError`, each with its key.
    """
    gate, _ = build_gate(read_flask_config(config))
    return gate


def build_route_table(settings: GateSettings, gate: PaymentGate) -> RouteTable | None:
    """The ``routes`` setting as a route table on ``gate`` (``None`` when there are none)."""
    from ..routing import RouteTable

    return RouteTable(gate, settings.routes) if settings.routes else None


def gate_from_settings(settings: Mapping[str, Any]) -> PaymentGate:
    """A gate from a mapping of settings: the keys of Django's ``X402GATE`` setting and of the
    gateway file, in lower case (``{"pay_to": "0x...", "network": "base", "facilitator_url":
    "https://...", "store_url": "sqlite:///x402gate.db"}``), for apps that keep their
    configuration in a file or the environment (ASGI, FastAPI, WSGI).

    Every unknown key (with a "did you mean"), missing and invalid value is named in one
    :class:`~x402gate.settings.SettingsError`. ``routes`` and ``discovery`` belong to a
    middleware or extension, not to the gate, and are refused here.
    """
    elsewhere = ("gate", "routes", "discovery")
    misplaced = tuple(
        SettingProblem(key, "is not a gate setting: give it to a middleware or extension")
        for key in elsewhere
        if key in settings
    )
    rest = {key: value for key, value in settings.items() if key not in elsewhere}
    try:
        read = read_settings(rest, MAPPING)
    except SettingsError as exc:
        raise SettingsError(MAPPING.source, misplaced + exc.problems) from None
    if misplaced:
        raise SettingsError(MAPPING.source, misplaced)
    gate, _ = build_gate(read)
    return gate
