"""What every ``require_payment`` decorator does when it is applied, whatever the framework.

The decorators share one signature, ``require_payment(price, **options)`` with the options of
:class:`~x402gate.options.RouteOptions`; :func:`paid_terms` checks them at decoration time, so
a misspelt option or a bad price stops the import, not the first paying request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from ..errors import ConfigurationError
from ..options import SettlementPolicy, check_route_options
from ..pricing import as_strategy

__all__ = ["paid_terms"]


def paid_terms(price: Any, options: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``price`` as a pricing strategy and ``options`` checked: unknown names (with a "did you
    mean"), and the settlement policy, raise :class:`~x402gate.errors.ConfigurationError`."""
    check_route_options(options, "@require_payment")
    settlement = options.get("settlement", "after")
    if settlement not in get_args(SettlementPolicy):
        raise ConfigurationError(f"settlement must be 'after' or 'before', not {settlement!r}")
    return as_strategy(price), dict(options)
