"""Start-up checks: the store opens, the facilitator answers and supports the gate's scheme on
every accepted network. Integrations run them when the app starts (:func:`check_startup`); the
first paid request runs them otherwise (:func:`startup`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigurationError, FacilitatorError, FacilitatorUnavailable, StoreError
from ..schemes.batch_settlement.codes import SCHEME as BATCH_SETTLEMENT

if TYPE_CHECKING:
    from .engine import PaymentGate

__all__ = [
    "STARTUP_CHECKS_ENV",
    "STARTUP_MODES",
    "StartupChecks",
    "check_startup",
    "check_startup_mode",
    "startup",
    "startup_mode",
    "startup_problem",
]

logger = logging.getLogger("x402gate")

StartupChecks = Literal["fail", "warn", "off"]
STARTUP_CHECKS_ENV = "X402GATE_STARTUP_CHECKS"
"""Environment variable that overrides every gate's ``startup_checks`` (``fail``, ``warn``,
``off``): how an operator starts a service anyway while a dependency is down."""
STARTUP_MODES = ("fail", "warn", "off")


def check_startup_mode(value: StartupChecks) -> StartupChecks:
    if value not in STARTUP_MODES:
        raise ConfigurationError(
            f"startup_checks must be one of {', '.join(STARTUP_MODES)}, not {value!r}"
        )
    return value


async def startup(gate: PaymentGate) -> None:
    """Check the store and that the facilitator supports every accepted network.

    Called once, lazily, by the first paid request (or by an integration's lifespan).
    Raises :class:`ConfigurationError` when the facilitator supports none of the gate's
    networks (an empty ``/supported`` must never mean "let everything through"), and
    :class:`StoreError` / :class:`FacilitatorError` when a dependency is down; the next
    request tries again.
    """
    if gate._started:
        return
    if gate._start_lock is None:
        gate._start_lock = asyncio.Lock()
    async with gate._start_lock:
        if gate._started:
            return
        await gate._store_call(gate.store.ping)
        supported = await gate.facilitator.supported()
        name = gate.scheme.name
        kinds = {(k.scheme, k.network) for k in supported.kinds if k.x402_version == 2}
        missing = sorted({a.network for a in gate.assets if (name, a.network) not in kinds})
        if missing:
            raise ConfigurationError(
                f"the facilitator does not support the {name} scheme on {', '.join(missing)}"
            )
        if gate.channels is not None:
            # Deposits go through the facilitator: channels need its batch-settlement support.
            from .channels import advertised_authorizer

            name = BATCH_SETTLEMENT
            missing = sorted({a.network for a in gate.assets if (name, a.network) not in kinds})
            if missing:
                raise ConfigurationError(
                    f"the facilitator does not support the {name} scheme on {', '.join(missing)}"
                )
            if gate.channel_scheme is None:
                networks = sorted({a.network for a in gate.assets})
                authorizer = advertised_authorizer(supported, networks)
                gate.channel_scheme = gate.channels.scheme(gate.facilitator, authorizer)
                logger.info("channels: the facilitator's receiver authorizer is %s", authorizer)
        if gate.webhooks is not None:
            gate.webhooks.start()
        gate._started = True
        if gate.channels is not None and gate.channels.claim is not None:
            start_claimer(gate)


def start_claimer(gate: PaymentGate) -> None:
    """Start the gate's background claimer in this process (``ChannelSettings(claim=...)``);
    a claimer that is already running is left alone."""
    from ..channels.claimer import BackgroundClaimer

    assert gate.channels is not None and gate.channels.claim is not None
    if gate.claimer is None:
        gate.claimer = BackgroundClaimer.for_gate(gate, gate.channels.claim)
    gate.claimer.start()


async def startup_problem(gate: PaymentGate) -> str | None:
    """Run :meth:`startup`; what failed, in one sentence, or ``None`` when all is well."""
    try:
        await gate.startup()
    except ConfigurationError as exc:
        return str(exc)
    except StoreError as exc:
        return f"the store cannot be opened: {exc}"
    except FacilitatorUnavailable as exc:
        return f"the facilitator {gate.facilitator!r} cannot be reached: {exc}"
    except FacilitatorError as exc:
        return f"the facilitator {gate.facilitator!r} did not answer properly: {exc}"
    return None


def startup_mode(gate: PaymentGate, configured: StartupChecks | None = None) -> StartupChecks:
    """``startup_checks`` in force: the environment variable wins over ``configured`` (an
    integration's own setting), which wins over the gate's argument."""
    value = os.environ.get(STARTUP_CHECKS_ENV, "").strip().lower()
    if not value:
        return configured or gate.startup_checks
    if value not in STARTUP_MODES:
        raise ConfigurationError(
            f"{STARTUP_CHECKS_ENV} must be one of {', '.join(STARTUP_MODES)}, not {value!r}"
        )
    return value  # type: ignore[return-value]  # checked just above


async def check_startup(gate: PaymentGate, mode: StartupChecks | None = None) -> None:
    """The start-up checks, as integrations run them when the app starts.

    Runs :meth:`startup` (store opened, facilitator reached, the exact scheme supported on
    every accepted network). With ``startup_checks="fail"`` a failure raises one
    :class:`ConfigurationError` saying what failed and how to start anyway; with
    ``"warn"`` it is logged and the first paid request tries again; ``"off"`` does nothing.
    ``mode`` is an integration's own setting for it (see :meth:`startup_mode`).
    """
    mode = gate.startup_mode(mode)
    if gate.webhooks is not None:
        # Events a previous process left in the outbox go out now, not at the first payment.
        gate.webhooks.start()
    if mode == "off":
        return
    problem = await gate.startup_problem()
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
