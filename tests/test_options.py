"""The route option list, the suggestions and the check of option mappings."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from x402gate.errors import ConfigurationError
from x402gate.facilitators import HTTPFacilitator
from x402gate.gate import PaymentGate, Route
from x402gate.options import (
    ROUTE_OPTION_NAMES,
    RouteOptions,
    check_route_options,
    suggest,
    unknown_key_message,
)


def make_gate() -> PaymentGate:
    # Never reached: routes are built without a request.
    facilitator = HTTPFacilitator("http://127.0.0.1:9")
    return PaymentGate(
        pay_to="0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        network="base",
        facilitator=facilitator,
        store="memory://",
        startup_checks="off",
    )


def test_option_names_are_the_fields_a_route_keeps() -> None:
    kept = {f.name for f in dataclasses.fields(Route)}
    # ``network`` is resolved into the route's ``assets``; ``name`` (how reports name the
    # route) comes from the route table's key, not from an option.
    assert set(ROUTE_OPTION_NAMES) == (kept - {"price", "name"}) | {"network"}
    assert set(RouteOptions.__annotations__) == set(ROUTE_OPTION_NAMES)


def test_gate_route_refuses_a_misspelt_option_by_name_with_a_suggestion() -> None:
    gate = make_gate()
    options: dict[str, Any] = {"setlement": "before", "description": "kept"}
    with pytest.raises(ConfigurationError) as refused:
        gate.route("$0.01", **options)
    assert "PaymentGate.route" in str(refused.value)
    assert "'setlement'" in str(refused.value)
    assert "did you mean 'settlement'?" in str(refused.value)
    gate.close()


def test_gate_route_keeps_every_option_it_is_given() -> None:
    gate = make_gate()
    route = gate.route(
        "$0.01",
        settlement="before",
        description="a report",
        mime_type="text/csv",
        max_timeout_seconds=60,
        verify_with_facilitator=False,
        extensions={"bazaar": {}},
        payment_identifier="off",
    )
    assert (route.settlement, route.description, route.mime_type) == (
        "before",
        "a report",
        "text/csv",
    )
    assert (route.max_timeout_seconds, route.verify_with_facilitator) == (60, False)
    assert (route.extensions, route.payment_identifier) == ({"bazaar": {}}, "off")
    gate.close()


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
