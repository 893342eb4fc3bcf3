"""The ``channels`` setting: a gate's ``batch-settlement`` terms, as every settings source writes
them.

Flask (``X402GATE_CHANNELS = {...}``), Django (``X402GATE = {"CHANNELS": {...}}``), a mapping
for :func:`~x402gate.settings.gate_from_settings` and the gateway file (``channels:``) give the
same keys, in lower case (or, in Flask and Django, upper case)::

    channels:
      receiver_authorizer: facilitator     # or an address; or receiver_authorizer_key instead
      withdraw_delay: 900                  # seconds, 900 to 2592000 (30 days)
      min_deposit: 100000                  # atomic units of the token
      sync_seconds: 60
      prefer: false                        # true: flat routes offer batch-settlement first
      claim:                               # the background claimer (or: true for defaults)
        every: 3600                        # seconds between periodic rounds (false: none)
        threshold: 5000000                 # a round once this much is unclaimed
        withdrawals: true                  # a round when a payer starts a timed withdrawal
        settle: true                       # sweep to pay_to after each round

:func:`read_channels` turns that into a :class:`~x402gate.gate.ChannelSettings`, or raises
:class:`ChannelSettingsError` naming every wrong key as it was written. A private key never
appears in a message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError
from ..options import suggest
from ..schemes.batch_settlement import codes

__all__ = ["CHANNEL_KEYS", "CLAIM_KEYS", "ChannelSettingsError", "read_channels"]

CHANNEL_KEYS: tuple[str, ...] = (
    "receiver_authorizer",
    "receiver_authorizer_key",
    "withdraw_delay",
    "min_deposit",
    "sync_seconds",
    "prefer",
    "claim",
)
"""The keys of the ``channels`` setting, in the model's lower-case spelling."""


class ChannelSettingsError(ConfigurationError):
    """Every problem of one ``channels`` setting: ``(key as written or None, message)``."""

    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(_sentence(k, m) for k, m in self.problems))


def _sentence(key: str | None, message: str) -> str:
    if key is None:
        return message
    verb = message.startswith(("is ", "must ", "cannot ", "has "))
    return f"{key} {message}" if verb else f"{key}: {message}"


def _name(key: Any) -> str | None:
    """The setting a key names: ``min_deposit`` or ``MIN_DEPOSIT``, not ``Min_Deposit``."""
    if not isinstance(key, str) or key not in (key.lower(), key.upper()):
        return None
    name = key.lower()
    return name if name in CHANNEL_KEYS else None


def _whole(value: Any, what: str) -> int:
    # Environment variables give strings: "900" is fine, "15m" and 900.5 are not.
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"must be a whole number of {what}, not {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _receiver_authorizer(value: Any) -> str:
    from ..gate.channels import FACILITATOR
    from .validators import check_address

    if value == FACILITATOR:
        return FACILITATOR
    try:
        return check_address(value.strip() if isinstance(value, str) else value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} (or 'facilitator' to delegate it)") from None


def _withdraw_delay(value: Any) -> int:
    seconds = _whole(value, "seconds")
    low, high = codes.MIN_WITHDRAW_DELAY, codes.MAX_WITHDRAW_DELAY
    if not low <= seconds <= high:
        raise ConfigurationError(f"must be from {low} to {high} seconds (30 days), not {seconds}")
    return seconds


def _min_deposit(value: Any) -> int:
    amount = _whole(value, "atomic units of the token")
    if amount <= 0:
        raise ConfigurationError(f"must be above 0 (atomic units of the token), not {amount}")
    return amount


def _sync_seconds(value: Any) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 86_400:
        raise ConfigurationError(
            f"must be a number of seconds from 0 to below a day, not {_shown(value)}"
        )
    return float(value)


def _prefer(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"must be True or False, not {_shown(value)}")
    return value


def _key(value: Any) -> str:
    from ..gate.channels import authorizer_key_address

    authorizer_key_address(value)  # the message of a refused key shows none of it
    assert isinstance(value, str)
    return value.strip()


def _number(value: Any, name: str) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"claim {name} must be a positive number, not {_shown(value)}")
    return float(value)


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ConfigurationError(f"claim {name} must be true or false, not {_shown(value)}")
    return value


CLAIM_KEYS: tuple[str, ...] = (
    "every",
    "threshold",
    "withdrawals",
    "refresh_seconds",
    "batch",
    "settle",
    "tick_seconds",
    "lease_seconds",
)
"""The keys of ``claim`` (:class:`~x402gate.channels.ClaimSettings`)."""


def _claim(value: Any) -> Any:
    """``true`` (the defaults), ``false`` (no claimer), a mapping of :data:`CLAIM_KEYS`, or
    a :class:`~x402gate.channels.ClaimSettings`."""
    from ..channels.claims import ClaimSettings

    if isinstance(value, ClaimSettings):
        value.check()
        return value
    if value is True or value is False or isinstance(value, str):
        return ClaimSettings() if _flag(value, "") else None
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"must be true, false or a mapping, not {_shown(value)}")
    fields: dict[str, Any] = {}
    for key, item in value.items():
        name = key.lower() if isinstance(key, str) and key in (key.lower(), key.upper()) else None
        if name not in CLAIM_KEYS:
            guess = suggest(key, list(CLAIM_KEYS)) if isinstance(key, str) else None
            hint = f" (did you mean {guess!r}?)" if guess is not None else ""
            raise ConfigurationError(f"{key!s:.40} is not a claim setting{hint}")
        if item is None:
            continue
        if name in ("withdrawals", "settle"):
            fields[name] = _flag(item, name)
        elif name == "every" and item is False:
            fields[name] = None
        elif name in ("threshold", "batch"):
            fields[name] = _whole(item, "atomic units" if name == "threshold" else "channels")
        else:
            fields[name] = _number(item, name)
    settings = ClaimSettings(**fields)
    settings.check()
    return settings


_CHECKS = {
    "receiver_authorizer": _receiver_authorizer,
    "receiver_authorizer_key": _key,
    "withdraw_delay": _withdraw_delay,
    "min_deposit": _min_deposit,
    "sync_seconds": _sync_seconds,
    "prefer": _prefer,
    "claim": _claim,
}


def read_channels(value: Any) -> Any:
    """The :class:`~x402gate.gate.ChannelSettings` a ``channels`` setting writes.

    ``value`` is a mapping of the keys above, a ``ChannelSettings`` (checked, then taken as
    it is) or ``None`` (no channels). :class:`ChannelSettingsError` lists every unknown key
    (with the closest known one), every invalid value and a missing or doubled receiver
    authorizer.
    """
    from ..gate.channels import ChannelSettings

    if value is None:
        return None
    if isinstance(value, ChannelSettings):
        try:
            value.check()
        except ConfigurationError as exc:
            raise ChannelSettingsError([(None, str(exc))]) from None
        return value
    if not isinstance(value, Mapping):
        raise ChannelSettingsError(
            [(None, f"must be a mapping of channel settings, not {type(value).__name__}")]
        )
    problems: list[tuple[str | None, str]] = []
    fields: dict[str, Any] = {}
    written: dict[str, str] = {}
    given: set[str] = set()
    for key, item in value.items():
        name = _name(key)
        if name is None:
            guess = suggest(key, list(CHANNEL_KEYS)) if isinstance(key, str) else None
            if guess is not None and isinstance(key, str) and key.isupper():
                guess = guess.upper()  # in the writer's own spelling
            hint = f" (did you mean {guess!r}?)" if guess is not None else ""
            problems.append((str(key), f"is not a channel setting{hint}"))
            continue
        if name in written:
            problems.append((str(key), f"is written twice (also as {written[name]})"))
            continue
        written[name] = str(key)
        if item is None:
            continue
        given.add(name)
        try:
            fields[name] = _CHECKS[name](item)
        except ConfigurationError as exc:
            problems.append((str(key), str(exc).removeprefix(f"{name} ")))
    authorizers = [n for n in ("receiver_authorizer", "receiver_authorizer_key") if n in given]
    if not authorizers:
        problems.append(
            (
                None,
                "receiver_authorizer is required: an address, or 'facilitator' to take the one "
                "the facilitator advertises (or receiver_authorizer_key)",
            )
        )
    elif len(authorizers) == 2:
        problems.append(
            (
                written["receiver_authorizer"],
                f"cannot be combined with {written['receiver_authorizer_key']}: give one",
            )
        )
    if problems:
        raise ChannelSettingsError(problems)
    return ChannelSettings(**fields)
