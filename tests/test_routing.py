"""Route tables: which requests are paid."""

from __future__ import annotations

from typing import Any

import pytest

from x402gate import PaymentGate
from x402gate.assets import usdc
from x402gate.errors import ConfigurationError
from x402gate.routing import RoutePattern, RouteTable, compile_pattern, shadowed_keys


class NoFacilitator:
    async def verify(self, *a: Any) -> Any:
        raise AssertionError

    async def settle(self, *a: Any) -> Any:
        raise AssertionError

    async def supported(self) -> Any:
        raise AssertionError


@pytest.fixture
def gate() -> PaymentGate:
    return PaymentGate(
        pay_to="0x" + "12" * 20,
        assets=usdc("base-sepolia"),
        facilitator=NoFacilitator(),
        store="memory://",
    )


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/weather", "/weather", True),
        ("/weather", "/weather/", True),
        ("/weather", "/weather/today", False),
        ("/weather", "/Weather", False),
        ("/items/{id}", "/items/42", True),
        ("/items/{id}", "/items/42/x", False),
        ("/items/:id/detail", "/items/7/detail", True),
        ("/files/*", "/files", True),
        ("/files/*", "/files/a/b/c", True),
        ("/files/*", "/filesystem", False),
        ("/v1/*.json", "/v1/data.json", True),
        ("/v1/*.json", "/v1/a/data.json", False),
        ("/", "/", True),
        ("/", "/x", False),
        ("/a.b", "/aXb", False),
    ],
)
def test_patterns(pattern: str, path: str, matches: bool) -> None:
    assert bool(compile_pattern(pattern).match(path)) is matches


def test_first_match_wins_and_methods_filter(gate: PaymentGate) -> None:
    table = RouteTable(gate, {"POST /chat": "$0.05", "GET,HEAD /chat": "$0.01", "/chat": "$0.02"})
    assert table.match("post", "/chat").price.amount == 50_000  # type: ignore[union-attr]
    assert table.match("GET", "/chat").price.amount == 10_000  # type: ignore[union-attr]
    assert table.match("DELETE", "/chat").price.amount == 20_000  # type: ignore[union-attr]
    assert table.match("GET", "/other") is None


def test_values_may_be_prices_routes_or_route_arguments(gate: PaymentGate) -> None:
    table = RouteTable(
        gate,
        {
            "/a": 0.05,
            "/b": gate.route("$0.01", settlement="before"),
            "/c": {"price": "$0.02", "description": "C"},
        },
    )
    assert table.match("GET", "/b").settlement == "before"  # type: ignore[union-attr]
    assert table.match("GET", "/c").description == "C"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "routes",
    [
        {},
        {"weather": 0.01},
        {"get/weather /x": 0.01},
        {"GET /items/{id": 0.01},
        {"/x": {"price": 0.01, "colour": "red"}},
        {"/x": -1},
        {"/x": {"price": 0.01, "settlement": "sometimes"}},
    ],
)
def test_bad_tables_are_configuration_errors(gate: PaymentGate, routes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RouteTable(gate, routes)


def test_a_get_route_also_charges_head(gate: PaymentGate) -> None:
    table = RouteTable(gate, {"GET /report": "$0.01", "POST /submit": "$0.02"})
    assert table.match("HEAD", "/report") is not None
    assert table.match("HEAD", "/submit") is None


@pytest.mark.parametrize(
    ("routes", "never_used", "by"),
    [
        ({"GET /v1/*": 0.01, "GET /v1/reports": 0.05}, "GET /v1/reports", "GET /v1/*"),
        ({"/items/{id}": 0.01, "GET /items/{item}": 0.05}, "GET /items/{item}", "/items/{id}"),
        ({"GET /a/": 0.01, "GET /a": 0.05}, "GET /a", "GET /a/"),
        ({"/files/*": 0.01, "/files/*.json": 0.05}, "/files/*.json", "/files/*"),
        ({"GET,POST /x": 0.01, "POST /x": 0.05}, "POST /x", "GET,POST /x"),
    ],
)
def test_a_key_an_earlier_key_always_matches_first_is_refused(
    gate: PaymentGate, routes: dict[str, Any], never_used: str, by: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RouteTable(gate, routes)
    assert f"route {never_used!r} is never used: {by!r}, before it" in str(raised.value)
    assert shadowed_keys(routes) == {never_used: str(raised.value)}


@pytest.mark.parametrize(
    "routes",
    [
        {"GET /v1/reports": 0.05, "GET /v1/*": 0.01},  # specific first: both apply
        {"GET /x": 0.01, "POST /x": 0.05},  # other methods
        {"GET /x": 0.01, "/x": 0.05},  # DELETE /x still reaches the second
        {"/items/export": 0.01, "/items/{id}": 0.05},  # a literal does not cover a parameter
        {"/files/{name}": 0.01, "/files/*": 0.05},  # /files/a/b reaches the second
        {"/files/*.json": 0.01, "/files/{name}": 0.05},
    ],
)
def test_keys_that_each_match_something_are_kept(gate: PaymentGate, routes: dict[str, Any]) -> None:
    assert len(list(RouteTable(gate, routes))) == len(routes)
    assert shadowed_keys(routes) == {}


def test_a_route_pattern_is_parsed_once_with_its_methods_and_parameters() -> None:
    pattern = RoutePattern.parse("GET /users/{user}/files/:name")
    assert pattern.methods == frozenset({"GET", "HEAD"})
    assert pattern.params == ("user", "name")
    assert not pattern.rest
    assert pattern.match("get", "/users/7/files/a.txt") == {"user": "7", "name": "a.txt"}
    assert pattern.match("POST", "/users/7/files/a.txt") is None
    assert pattern.match("GET", "/users/7") is None
    tail = RoutePattern.parse("/files/*")
    assert tail.methods is None and tail.rest
    assert tail.match("PUT", "/files/a/b") == {"*": "a/b"}
    assert tail.match("PUT", "/files") == {"*": ""}


def test_a_table_finds_the_route_and_its_parameters_in_one_match(gate: PaymentGate) -> None:
    table = RouteTable(gate, {"GET /items/{id}": "$0.01", "/files/*": "$0.02"})
    found = table.find("GET", "/items/42")
    assert found is not None
    assert found.params == {"id": "42"}
    assert found.route is table.match("GET", "/items/42")
    assert found.pattern.key == "GET /items/{id}"
    rest = table.find("DELETE", "/files/x/y")
    assert rest is not None and rest.params == {"*": "x/y"}
    assert table.find("POST", "/items/42") is None


def test_a_misspelt_route_option_is_named_with_a_suggestion(gate: PaymentGate) -> None:
    with pytest.raises(ConfigurationError, match=r"'descripton' \(did you mean 'description'\?\)"):
        RouteTable(gate, {"GET /a": {"price": "$0.01", "descripton": "x"}})
