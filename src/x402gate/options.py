"""The options of a paid route, written out once.

``PaymentGate.route(price, **options)``, the ``require_payment`` decorators, Flask and Django
``ROUTES`` entries and the gateway's route sections all take the same options. :class:`RouteOptions`
types them (so ``Unpack[RouteOptions]`` makes a misspelt keyword a type error), and
:func:`check_route_options` refuses a misspelt one at start-up, naming it with the closest known
name, for code that builds options from settings or keyword arguments at run time.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .assets import Asset

__all__ = [
    "ROUTE_OPTION_NAMES",
    "PaymentIdentifierMode",
    "RouteOptions",
    "SettlementPolicy",
    "check_route_options",
    "suggest",
    "unknown_key_message",
]

SettlementPolicy = Literal["after", "before"]
"""When a payment is settled: once the answer is ready (``after``) or before the handler runs."""

PaymentIdentifierMode = Literal["off", "optional", "required"]
"""Whether a payment may (``optional``) or must (``required``) carry an idempotency key."""


class RouteOptions(TypedDict, total=False):
    """Every keyword option of a paid route, beside its price (see ``PaymentGate.route``)."""

    settlement: SettlementPolicy
    description: str | None
    mime_type: str | None
    assets: Asset | Sequence[Asset] | None
    network: str | None
    pay_to: str | Mapping[str, str] | None
    max_timeout_seconds: int | None
    verify_with_facilitator: bool | None
    extensions: Mapping[str, Any] | None
    payment_identifier: PaymentIdentifierMode
    credit_topup: Any
    rate_limit: Any
    """A :class:`~x402gate.ratelimit.RateLimit`, a per-IP rate (``"10/minute"``) or a mapping
    with ``per_ip``/``per_payer``."""


ROUTE_OPTION_NAMES: tuple[str, ...] = tuple(RouteOptions.__annotations__)
"""The names of :class:`RouteOptions`, in declaration order."""


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (case aside), or ``None`` when none is close."""
    by_folded: dict[str, str] = {}
    for candidate in known:
        by_folded.setdefault(candidate.casefold(), candidate)
    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=0.6)
    return by_folded[close[0]] if close else None


def unknown_key_message(name: object, known: Iterable[str], what: str = "key") -> str:
    """``unknown key 'x' (did you mean 'y'?)``: the one wording every settings reader uses."""
    guess = suggest(name, known) if isinstance(name, str) else None
    hint = f" (did you mean {guess!r}?)" if guess is not None else ""
    return f"unknown {what} {name!r}{hint}"


def check_route_options(
    options: Mapping[Any, Any], where: str, *, also: Iterable[str] = ()
) -> None:
    """Refuse keys of ``options`` that are no route option (nor one of ``also``, e.g. ``price``).

    Every unknown key is named in one :class:`~x402gate.errors.ConfigurationError`, prefixed by
    ``where`` (the route or setting the options come from), each with a suggestion when a known
    name is close: a misspelt option must stop the start, not silently drop a policy.
    """
    known = (*ROUTE_OPTION_NAMES, *also)
    unknown = [key for key in options if key not in known]
    if unknown:
        problems = "; ".join(unknown_key_message(key, known, "route option") for key in unknown)
        raise ConfigurationError(f"{where}: {problems}")
