"""What the ``x402gate channels`` commands share: their messages, the ``--config`` gateway, the
authorizer key read from the environment, durations and the facilitator's networks."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...stores import Store

__all__ = [
    "GatewayRefused",
    "Refusal",
    "batch_networks",
    "fail",
    "gateway_or_none",
    "open_gateway",
    "open_store",
    "parse_duration",
    "read_authorizer_key",
    "store_or_config",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit, ``s``, ``m``, ``h``, ``d`` or ``w``
    (``90``, ``30m``, ``7d``). :class:`ValueError` otherwise."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r:.40} (e.g. 3600, 12h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def fail(command: str, message: str, status: int = 2) -> int:
    """Say on stderr why ``x402gate channels COMMAND`` stopped; answers ``status`` (2: the
    arguments do not make a run, 1: the run failed)."""
    print(f"x402gate channels {command}: {message}", file=sys.stderr)
    return status


def store_or_config(parser: argparse.ArgumentParser) -> None:
    """``--store URL`` or ``--config FILE``, one of them required (``list``, ``refund``)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--store",
        help="the gate's store URL (sqlite:///x402gate.db, redis://..., postgresql://...)",
    )
    source.add_argument(
        "--config",
        metavar="FILE",
        help="a gateway file (gateway.yaml): its store, facilitator and channel settings",
    )


def open_store(url: str) -> Store | None:
    """The store at ``url``, or None after saying why not (``list``, ``refund``)."""
    from ...errors import ConfigurationError, StoreError
    from ...stores import open_store as open_url

    try:
        return open_url(url)
    except (ConfigurationError, StoreError, ValueError) as exc:
        print(f"x402gate channels: cannot open the store: {exc}", file=sys.stderr)
        return None


class Refusal(Exception):
    """The arguments do not make a run; ``str()`` says why (exit status 2)."""


def read_authorizer_key(args: argparse.Namespace) -> str | None:
    """The receiver authorizer's private key from the variable ``--authorizer-key-env`` names
    (never from the command line, which other users of the host can read); None without the
    flag. :class:`Refusal` when the variable is unset or empty."""
    name: str | None = args.authorizer_key_env
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise Refusal(f"${name} is not set")
    return key


class GatewayRefused(Exception):
    """``--config FILE`` makes no gateway. ``str()`` says why, without secrets (the file's
    checks name none, and a gate's refusal passes through the file's redactor); ``invalid``
    when the file itself is wrong rather than what it describes."""

    def __init__(self, reason: str, *, invalid: bool) -> None:
        super().__init__(reason)
        self.invalid = invalid


def open_gateway(path: str) -> Any:
    """The gateway the file at ``path`` describes (its gate's store, facilitator, assets,
    ``pay_to`` and channel settings); :class:`GatewayRefused` when it makes none."""
    from ...errors import ConfigurationError
    from ...gateway.app import Gateway
    from ...gateway.config import GatewayConfigError, load_config

    try:
        config = load_config(path)
    except ConfigurationError as exc:
        raise GatewayRefused(str(exc), invalid=isinstance(exc, GatewayConfigError)) from None
    try:
        return Gateway(config)
    except ConfigurationError as exc:
        raise GatewayRefused(config.redactor(str(exc)), invalid=False) from None


def gateway_or_none(path: str) -> Any:
    """The gateway of ``--config FILE``, or None after saying why not (``list``, ``refund``)."""
    try:
        return open_gateway(path)
    except GatewayRefused as exc:
        print(f"{path}: invalid: {exc}" if exc.invalid else f"{path}: {exc}", file=sys.stderr)
        return None


async def batch_networks(facilitator: Any) -> list[str]:
    """The networks ``facilitator`` supports ``batch-settlement`` on, in its order."""
    from ...schemes.batch_settlement import codes

    supported = await facilitator.supported()
    return [k.network for k in supported.kinds if k.scheme == codes.SCHEME]
