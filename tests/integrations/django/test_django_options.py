"""``@require_payment`` for Django shares the other frameworks' signature: a misspelt route
option fails when the decorator is applied (at import), naming it with a suggestion."""

from __future__ import annotations

import pytest

pytest.importorskip("django")

from x402gate.django import require_payment
from x402gate.errors import ConfigurationError


def test_a_misspelt_route_option_fails_at_decoration_time() -> None:
    with pytest.raises(ConfigurationError, match=r"'setlement' \(did you mean 'settlement'\?\)"):
        require_payment("$0.01", setlement="before")  # type: ignore[call-arg]


def test_the_price_comes_first_or_by_name_and_options_are_keywords() -> None:
    assert callable(require_payment(price="$0.01"))
    decorate = require_payment("$0.01", settlement="before", description="A report")
    assert callable(decorate)
