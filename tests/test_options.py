"""The route option list, the suggestions and the check of option mappings."""

from __future__ import annotations

import inspect

import pytest

from x402gate.errors import ConfigurationError
from x402gate.gate import PaymentGate
from x402gate.options import (
    ROUTE_OPTION_NAMES,
    RouteOptions,
    check_route_options,
    suggest,
    unknown_key_message,
)


def test_option_names_are_the_keyword_parameters_of_gate_route() -> None:
    parameters = inspect.signature(PaymentGate.route).parameters
    keywords = [p.name for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert sorted(ROUTE_OPTION_NAMES) == sorted(keywords)
    assert set(RouteOptions.__annotations__) == set(ROUTE_OPTION_NAMES)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("setlement", "settlement"),
        ("SETTLEMENT", "settlement"),
        ("payment_identifer", "payment_identifier"),
        ("max_timeout", "max_timeout_seconds"),
        ("zzz", None),
    ],
)
def test_suggest_finds_the_closest_name(name: str, expected: str | None) -> None:
    assert suggest(name, ROUTE_OPTION_NAMES) == expected


def test_known_options_pass() -> None:
    check_route_options({"settlement": "before", "description": "d"}, "route 'GET /a'")
    check_route_options({"price": "$0.01"}, "route 'GET /a'", also=("price",))


def test_every_unknown_option_is_named_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_route_options({"setlement": "before", "descripton": "d", "zzz": 1}, "route 'GET /a'")
    message = str(caught.value)
    assert message.startswith("route 'GET /a': ")
    assert "unknown route option 'setlement' (did you mean 'settlement'?)" in message
    assert "unknown route option 'descripton' (did you mean 'description'?)" in message
    assert "unknown route option 'zzz'" in message
    assert "'zzz' (did you mean" not in message


def test_a_key_that_is_not_a_string_is_named() -> None:
    assert unknown_key_message(3, ROUTE_OPTION_NAMES) == "unknown key 3"
    with pytest.raises(ConfigurationError, match="unknown route option 3"):
        check_route_options({3: "x"}, "route")
