"""Price strategies: quotes from requests, checked configuration, deterministic answers."""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import json
import re
from collections.abc import Awaitable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x402gate.errors import ConfigurationError, PaymentError
from x402gate.money import parse_price
from x402gate.pricing import (
    NO_PRICE_CODE,
    DecodedBody,
    Dynamic,
    Flat,
    MatchRules,
    ModelTable,
    PriceStrategy,
    Rule,
    as_strategy,
    resolve_quote,
    resolve_quote_sync,
)
from x402gate.request import RequestInfo


def request(
    method: str = "POST",
    path: str = "/v1/messages",
    *,
    body: Any = None,
    raw: bytes | None = None,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> RequestInfo:
    return RequestInfo(
        method,
        path,
        query_string=urlencode(query or {}),
        headers=headers or {},
        body=raw if raw is not None else (b"" if body is None else json.dumps(body).encode()),
    )


def quote_of(strategy: PriceStrategy, req: RequestInfo) -> int:
    return asyncio.run(resolve_quote(strategy, req))


# --- Flat, Dynamic, as_strategy --------------------------------------------------------------


def test_flat() -> None:
    flat = Flat("$0.05")
    assert flat.quote(request()) == 50_000
    assert flat.describe() == {"type": "flat", "price": "$0.05"}
    assert repr(flat) == "Flat('$0.05')"
    assert not flat.metered
    with pytest.raises(NotImplementedError):
        flat.charge({"tokens": 3})


@pytest.mark.parametrize("price", [0, "-$1", "1 EUR", None, float("nan"), 0.1 + 0.2])
def test_flat_refuses_bad_prices(price: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Flat(price)  # type: ignore[arg-type]
    assert repr(price) in str(caught.value)


async def test_dynamic_sync_and_async() -> None:
    def by_size(req: RequestInfo) -> str:
        return "$0.10" if len(req.body) > 100 else "$0.01"

    async def by_tier(req: RequestInfo) -> Decimal:
        await asyncio.sleep(0)
        return Decimal("0.5") if req.headers.get("x-tier") == "pro" else Decimal("0.2")

    assert Dynamic(by_size).quote(request(raw=b"x")) == 10_000
    assert await resolve_quote(Dynamic(by_size), request(raw=b"x" * 101)) == 100_000
    assert await resolve_quote(Dynamic(by_tier), request(headers={"X-Tier": "pro"})) == 500_000
    assert await resolve_quote(Dynamic(by_tier), request()) == 200_000
    assert Dynamic(by_tier).describe() == {"type": "dynamic"}


@pytest.mark.parametrize("result", [0, "free", None, -1, 0.1 + 0.2, True, "1 EUR"])
async def test_dynamic_bad_results_are_configuration_errors(result: object) -> None:
    def price_fn(req: RequestInfo) -> Any:
        return result

    async def async_price_fn(req: RequestInfo) -> Any:
        return result

    for fn in (price_fn, async_price_fn):
        with pytest.raises(ConfigurationError) as caught:
            await resolve_quote(Dynamic(fn), request())
        assert repr(result) in str(caught.value)
        assert fn.__name__ in str(caught.value)


async def test_dynamic_lets_payment_errors_through() -> None:
    def refuse(req: RequestInfo) -> str:
        raise PaymentError(400, "bad_input", "say what you want")

    with pytest.raises(PaymentError) as caught:
        await resolve_quote(Dynamic(refuse), request())
    assert caught.value.code == "bad_input"


def test_dynamic_needs_a_callable() -> None:
    with pytest.raises(ConfigurationError, match=re.escape("'$0.05'")):
        Dynamic("$0.05")  # type: ignore[arg-type]


def test_sync_resolution_refuses_async_strategies_cleanly() -> None:
    async def price_fn(req: RequestInfo) -> str:
        return "$0.01"

    assert resolve_quote_sync(Dynamic(lambda req: "$0.01"), request()) == 10_000
    with pytest.raises(ConfigurationError, match="asynchronous"):
        resolve_quote_sync(Dynamic(price_fn), request())
    gc.collect()  # a coroutine left unawaited would warn here (and warnings are errors)


class Custom(PriceStrategy):
    def __init__(self, result: object) -> None:
        self.result = result

    def quote(self, request: RequestInfo) -> Any:
        return self.result

    def __repr__(self) -> str:
        return "Custom()"


@pytest.mark.parametrize("result", [0, -5, True, "50000", 1.5, None, 2**256])
def test_resolve_quote_checks_custom_strategies(result: object) -> None:
    for resolve in (quote_of, resolve_quote_sync):
        with pytest.raises(ConfigurationError) as caught:
            resolve(Custom(result), request())
        assert repr(result) in str(caught.value)
        assert "Custom()" in str(caught.value)
    assert Custom(7).describe() == {"type": "Custom"}


def test_resolve_quote_accepts_awaitables() -> None:
    class Later(PriceStrategy):
        def quote(self, request: RequestInfo) -> Awaitable[int]:
            async def later() -> int:
                return 42

            return later()

    assert quote_of(Later(), request()) == 42


def test_as_strategy() -> None:
    flat = Flat("$1")
    assert as_strategy(flat) is flat
    for price in ("$0.05", "0.05", Decimal("0.05"), 0.05):
        strategy = as_strategy(price)
        assert isinstance(strategy, Flat)
        assert strategy.quote(request()) == 50_000
    assert as_strategy(2).quote(request()) == 2_000_000

    async def async_fn(req: RequestInfo) -> str:
        return "$0.02"

    assert isinstance(as_strategy(async_fn), Dynamic)
    assert quote_of(as_strategy(async_fn), request()) == 20_000
    assert quote_of(as_strategy(lambda req: "$0.03"), request()) == 30_000


@pytest.mark.parametrize(
    ("price", "hint"),
    [
        (Flat, "pass an instance"),
        ({"gpt-4o": "$0.05"}, "MatchRules"),
        ([{"match": {}, "price": 1}], "MatchRules"),
        (None, "None"),
        (0, "zero"),
    ],
)
def test_as_strategy_refuses(price: Any, hint: str) -> None:
    with pytest.raises(ConfigurationError, match=hint):
        as_strategy(price)


# --- MatchRules: examples --------------------------------------------------------------------

CLAUDE = MatchRules(
    [
        Rule(price="$0.20", body__model="claude-3-opus*"),
        {"match": {"body.model": "claude-3-5-*", "header.x-tier": "batch"}, "price": "$0.02"},
        Rule(price="$0.05", when={"body.model": "claude-3-5-*"}),
        {"when": {"method": "get", "path": "/v1/models*"}, "price": "$0.001"},
    ],
    fallback="$0.10",
)


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (request(body={"model": "claude-3-opus-20240229"}), 200_000),
        (request(body={"model": "claude-3-5-haiku"}, headers={"X-Tier": "batch"}), 20_000),
        (request(body={"model": "claude-3-5-haiku"}, headers={"X-Tier": "Batch"}), 50_000),
        (request(body={"model": "claude-3-5-haiku"}), 50_000),
        (request(body={"model": "Claude-3-5-haiku"}), 100_000),  # globs are case-sensitive
        (request("GET", "/v1/models/claude"), 1_000),  # method pattern "get" means GET
        (request(body={"model": "gpt-4o"}), 100_000),
        (request(raw=b"not json"), 100_000),
    ],
)
def test_match_rules_examples(req: RequestInfo, expected: int) -> None:
    assert CLAUDE.quote(req) == expected


def test_match_rules_without_fallback_answers_400_without_echo() -> None:
    rules = MatchRules([Rule(price="$0.05", body__model="cheap")])
    secret = "sk-live-very-secret"
    with pytest.raises(PaymentError) as caught:
        rules.quote(request(body={"model": secret}, headers={"authorization": secret}))
    error = caught.value
    assert (error.status_code, error.code) == (400, NO_PRICE_CODE)
    assert "no pricing rule matches" in error.message
    assert secret not in json.dumps(error.body) and secret not in str(error)


@pytest.mark.parametrize(
    ("conditions", "body", "matches"),
    [
        ({"body.stream": True}, {"stream": True}, True),
        ({"body.stream": "true"}, {"stream": True}, True),
        ({"body.stream": True}, {"stream": "true"}, True),  # strings are matched as they are
        ({"body.stream": False}, {"stream": True}, False),
        ({"body.n": 3}, {"n": 3}, True),
        ({"body.n": "[1-3]"}, {"n": 2}, True),
        ({"body.t": 0.5}, {"t": 0.5}, True),
        ({"body.x": None}, {"x": None}, True),
        ({"body.x": "*"}, {"x": None}, True),  # present null is present
        ({"body.x": "*"}, {}, False),  # absent never matches, not even "*"
        ({"body.x": "*"}, {"x": {"a": 1}}, True),
        ({"body.x": '{"a":1}'}, {"x": {"a": 1}}, True),
        ({"body.x": "[[]1,2]"}, {"x": [1, 2]}, True),
        ({"body.messages.0.role": "system"}, {"messages": [{"role": "system"}]}, True),
        ({"body.messages.1.role": "*"}, {"messages": [{"role": "system"}]}, False),
        ({"body.messages.-1.role": "*"}, {"messages": [{"role": "system"}]}, False),
        ({"body.messages.role": "*"}, {"messages": [{"role": "system"}]}, False),
        ({"body.a.0": "x"}, {"a": {"0": "x"}}, True),
        ({"body.a.b": "*"}, {"a": "string"}, False),
        ({"body.model": ["gpt-4o", "gpt-4o-mini"]}, {"model": "gpt-4o-mini"}, True),
        ({"body.model": ["gpt-4o", "o1*"]}, {"model": "gpt-4"}, False),
        ({"body.model": "gpt-4o", "method": "POST"}, {"model": "gpt-4o"}, True),
        ({"body.model": "gpt-4o", "method": "GET"}, {"model": "gpt-4o"}, False),
        ({}, {}, True),
    ],
)
def test_rule_conditions(conditions: dict[str, Any], body: Any, matches: bool) -> None:
    assert Rule(price=1, when=conditions).matches(request(body=body)) is matches


def test_rule_fields_query_header_method_path() -> None:
    req = request(
        "GET", "/v1/search", query={"q": "cats", "tier": "pro"}, headers={"X-Api-Tier": "gold"}
    )
    assert Rule(price=1, when={"query.tier": "pro", "header.x-api-tier": "gold"}).matches(req)
    assert Rule(price=1, when={"header.X-API-TIER": "g*"}).matches(req)
    assert not Rule(price=1, when={"header.X-API-TIER": "GOLD"}).matches(req)
    assert not Rule(price=1, when={"query.Tier": "pro"}).matches(req)
    assert not Rule(price=1, when={"query.missing": "*"}).matches(req)
    assert Rule(price=1, method="GET", path="/v1/*").matches(req)
    assert not Rule(price=1, path="/v2/*").matches(req)
    repeated = RequestInfo("GET", "/", query_string="tier=a&tier=b", headers=[("X-T", "a")] * 2)
    for field in ("query.tier", "header.x-t"):
        with pytest.raises(PaymentError) as info:
            Rule(price=1, when={field: "a"}).matches(repeated)
        assert (info.value.status_code, info.value.code) == (400, "ambiguous_request")
    # Repeated fields that no rule reads do not matter.
    assert Rule(price=1, when={"method": "GET"}).matches(repeated)


def test_rule_forms_are_equivalent() -> None:
    forms = [
        Rule(price="$0.05", body__model="gpt-*", method="POST"),
        Rule("$0.05", {"body.model": "gpt-*"}, method="POST"),
        Rule.from_dict({"match": {"body.model": "gpt-*", "method": "POST"}, "price": "$0.05"}),
        Rule.from_dict({"when": {"body.model": "gpt-*", "method": "POST"}, "price": 0.05}),
    ]
    for rule in forms:
        assert rule.price == 50_000
        assert rule.when == {"body.model": "gpt-*", "method": "POST"}
    assert repr(forms[0]) == "Rule(price='$0.05', when={'body.model': 'gpt-*', 'method': 'POST'})"


@pytest.mark.parametrize(
    ("rules", "fallback", "message"),
    [
        ([], None, "at least one rule"),
        ("$0.05", None, "list of rules"),
        ({"match": {}, "price": 1}, None, "list of rules"),
        ([{"match": {"body.model": "x"}}], None, "rule 0: rule has no 'price'"),
        ([{"price": 1, "macth": {}}], None, "rule 0: unknown rule key(s) ['macth']"),
        ([{"price": 1, "match": {}, "when": {}}], None, "both 'match' and 'when'"),
        ([{"price": 1, "match": ["body.model"]}], None, "must be a mapping"),
        (["$0.05"], None, "rule 0: a rule must be a mapping, got '$0.05'"),
        ([{"price": 1}, {"price": 0}], None, "rule 1: price 0 is zero"),
        ([{"price": "1 EUR"}], None, "rule 0: price '1 EUR' is in 'EUR'"),
        ([{"price": 1, "match": {"bdy.model": "x"}}], None, "unknown field 'bdy.model'"),
        ([{"price": 1, "match": {"body": "x"}}], None, "unknown field 'body'"),
        ([{"price": 1, "match": {"body.": "x"}}], None, "unknown field 'body.'"),
        ([{"price": 1, "match": {"body.a..b": "x"}}], None, "unknown field 'body.a..b'"),
        ([{"price": 1, "match": {"query.": "x"}}], None, "unknown field 'query.'"),
        ([{"price": 1, "match": {"header": "x"}}], None, "unknown field 'header'"),
        ([{"price": 1, "match": {"method.x": "x"}}], None, "unknown field 'method.x'"),
        ([{"price": 1, "match": {"body.a": {"b": 1}}}], None, "got {'b': 1}"),
        ([{"price": 1, "match": {"body.a": float("nan")}}], None, "got nan"),
        ([{"price": 1, "match": {"body.a": []}}], None, "empty list of patterns"),
        ([{"price": 1, "match": {"body.a": ["x", b"y"]}}], None, "got b'y'"),
        ([{"price": 1}], "-1", "fallback: price '-1' is negative"),
        ([{"price": 1}], 0, "fallback: price 0 is zero"),
    ],
)
def test_match_rules_are_checked_at_construction(rules: Any, fallback: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MatchRules(rules, fallback=fallback)
    assert message in str(caught.value)


def test_rule_refuses_a_field_given_twice() -> None:
    with pytest.raises(ConfigurationError, match=re.escape("'body.model' twice")):
        Rule(price=1, when={"body.model": "a"}, body__model="b")


def test_match_rules_describe() -> None:
    assert CLAUDE.describe() == {
        "type": "match",
        "min": "$0.001",
        "max": "$0.20",
        "fallback": "$0.10",
    }
    assert MatchRules([Rule(price=2), Rule(price="$0.5")]).describe() == {
        "type": "match",
        "min": "$0.50",
        "max": "$2.00",
    }


# --- MatchRules: properties against a reference ----------------------------------------------

KEYS = ["a", "b", "model", "0", "1"]
WORDS = ["", "a", "b", "ab", "gpt-4o", "A", "true", "1", "[", "*"]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.sampled_from([0.5, -1.25])
    | st.sampled_from(WORDS),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5).map(
        lambda value: json.dumps(value).encode()
    ),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.sampled_from([b"", b"not json", b"{", b"\xff"]),
)
queries = st.dictionaries(st.sampled_from(["a", "b", "tier"]), st.sampled_from(WORDS), max_size=3)
headers = st.dictionaries(
    st.sampled_from(["x-a", "X-B", "X-Tier"]), st.sampled_from(WORDS), max_size=3
)
field_paths = st.one_of(
    st.sampled_from(["method", "path"]),
    st.sampled_from(["a", "b", "tier", "A"]).map("query.{}".format),
    st.sampled_from(["x-a", "X-A", "x-b", "x-tier", "X-TIER", "x-c"]).map("header.{}".format),
    st.lists(st.sampled_from([*KEYS, "2", "c"]), min_size=1, max_size=3).map(
        lambda parts: "body." + ".".join(parts)
    ),
)
glob_patterns = st.one_of(
    st.sampled_from(
        [
            "*",
            "?",
            "a*",
            "*b",
            "[ab]",
            "[!a]*",
            "gpt-*",
            "GET",
            "POST",
            "/v1/*",
            "null",
            "true",
            "1",
            "[[]*",
            "{*}",
            "[*]",
            '"*"',
        ]
    ),
    st.sampled_from(WORDS),
    st.none() | st.booleans() | st.integers(-3, 3),
)
conditions = st.dictionaries(
    field_paths,
    st.one_of(glob_patterns, st.lists(glob_patterns, min_size=1, max_size=3)),
    max_size=3,
)
requests = st.builds(
    lambda method, path, query, header, body: RequestInfo(
        method, path, query_string=urlencode(query), headers=header, body=body
    ),
    st.sampled_from(["GET", "POST", "get"]),
    st.sampled_from(["/", "/v1/messages", "/v2/x"]),
    queries,
    headers,
    bodies,
)

_MISSING = object()


def reference_field(req: RequestInfo, path: str) -> str | None:
    """Deliberately naive: the documented semantics, written a second way."""
    root, _, rest = path.partition(".")
    if root == "method":
        return req.method
    if root == "path":
        return req.path
    if root == "query":
        values = [v for k, v in _parse_query(req.query_string) if k == rest]
        return values[0] if values else None
    if root == "header":
        found = [v for k, v in req.headers.items() if k.lower() == rest.lower()]
        return found[0] if found else None
    try:
        node: Any = json.loads(req.body.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    for part in rest.split("."):
        if type(node) is dict:
            node = node.get(part, _MISSING)
        elif type(node) is list and part.isdigit():
            node = node[int(part)] if int(part) < len(node) else _MISSING
        else:
            node = _MISSING
        if node is _MISSING:
            return None
    return node if type(node) is str else json.dumps(node, separators=(",", ":"))


def _parse_query(query_string: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query_string, keep_blank_values=True)


def reference_pattern_texts(path: str, pattern: Any) -> list[str]:
    texts = []
    for item in pattern if isinstance(pattern, list) else [pattern]:
        text = item if isinstance(item, str) else json.dumps(item)
        texts.append(text.upper() if path == "method" else text)
    return texts


def reference_matches(req: RequestInfo, when: Mapping[str, Any]) -> bool:
    for path, pattern in when.items():
        value = reference_field(req, path)
        if value is None:
            return False
        if not any(
            fnmatch.fnmatchcase(value, text) for text in reference_pattern_texts(path, pattern)
        ):
            return False
    return True


def present_paths(value: Any, prefix: str = "body") -> list[str]:
    """Every body field path that exists in ``value``."""
    children = (
        value.items() if type(value) is dict else enumerate(value) if type(value) is list else ()
    )
    paths = []
    for key, child in children:
        path = f"{prefix}.{key}"
        paths += [path, *present_paths(child, path)]
    return paths


@st.composite
def aimed_cases(draw: st.DrawFn) -> tuple[RequestInfo, dict[str, Any]]:
    """A request and conditions aimed at fields it has, so matches are common, not luck."""
    body = draw(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5) | json_values)
    query = draw(queries)
    header = draw(headers)
    req = RequestInfo(
        draw(st.sampled_from(["GET", "POST"])),
        draw(st.sampled_from(["/", "/v1/messages"])),
        query_string=urlencode(query),
        headers=header,
        body=json.dumps(body).encode(),
    )
    present = [*present_paths(body), *(f"query.{k}" for k in query), "method", "path"]
    present += [f"header.{name.swapcase()}" for name in header]
    when: dict[str, Any] = {}
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(present) | field_paths)
        actual = reference_field(req, path)
        if actual is None:
            when[path] = draw(glob_patterns)
            continue
        when[path] = draw(
            st.sampled_from([actual, actual[:1] + "*", "*" + actual[-1:], "?" * len(actual), "*"])
            | glob_patterns
        )
    return req, when


@settings(max_examples=300)
@given(requests, conditions)
def test_rule_matching_equals_reference(req: RequestInfo, when: dict[str, Any]) -> None:
    assert Rule(price=1, when=when).matches(req) is reference_matches(req, when)


@settings(max_examples=300)
@given(aimed_cases())
def test_aimed_rule_matching_equals_reference(case: tuple[RequestInfo, dict[str, Any]]) -> None:
    req, when = case
    assert Rule(price=1, when=when).matches(req) is reference_matches(req, when)


@settings(max_examples=200)
@given(
    requests,
    st.lists(st.tuples(conditions, st.integers(1, 10**9)), min_size=1, max_size=5),
    st.none() | st.integers(1, 10**9),
)
def test_first_matching_rule_wins(
    req: RequestInfo, table: list[tuple[dict[str, Any], int]], fallback: int | None
) -> None:
    strategy = MatchRules(
        [{"match": when, "price": Decimal(micros).scaleb(-6)} for when, micros in table],
        fallback=None if fallback is None else Decimal(fallback).scaleb(-6),
    )
    expected = next((micros for when, micros in table if reference_matches(req, when)), fallback)
    if expected is None:
        with pytest.raises(PaymentError) as caught:
            strategy.quote(req)
        assert caught.value.code == NO_PRICE_CODE
    else:
        assert strategy.quote(req) == expected
        # Determinism: the paid retry is a new RequestInfo with the same content.
        again = RequestInfo(
            req.method, req.path, query_string=req.query_string, headers=req.headers, body=req.body
        )
        assert strategy.quote(again) == strategy.quote(req) == expected


# --- ModelTable ------------------------------------------------------------------------------

MODELS = ModelTable(
    {
        "gpt-4o": "$0.05",
        "gpt-4o-mini": "$0.005",
        "gpt-4o*": "$0.06",
        "gpt-4*": "$0.08",
        "o[13]-*": "$0.50",
    }
)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", 50_000),
        ("gpt-4o-mini", 5_000),
        ("gpt-4o-2024-08-06", 60_000),  # first glob in insertion order, not the longest
        ("gpt-4.1", 80_000),
        ("o1-preview", 500_000),
        ("o3-mini", 500_000),
        ("gpt-4*", 80_000),  # the key itself, exactly
    ],
)
def test_model_table(model: str, expected: int) -> None:
    assert MODELS.quote(request(body={"model": model})) == expected


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request(body={"model": "llama-3"}), "the requested model has no price"),
        (request(body={"model": "GPT-4O"}), "the requested model has no price"),
        (request(body={"messages": []}), "the request names no model (expected in body.model)"),
        (request(raw=b"garbage"), "names no model"),
        (request(body=["gpt-4o"]), "names no model"),
    ],
)
def test_model_table_unpriced_is_400(req: RequestInfo, message: str) -> None:
    with pytest.raises(PaymentError) as caught:
        MODELS.quote(req)
    assert (caught.value.status_code, caught.value.code) == (400, NO_PRICE_CODE)
    assert message in caught.value.message
    assert "llama" not in caught.value.message


def test_model_table_fallback_and_field() -> None:
    table = ModelTable({"fast": 0.01}, fallback="$0.02", field="header.x-model")
    assert table.quote(request(headers={"X-Model": "fast"})) == 10_000
    assert table.quote(request(headers={"X-Model": "slow"})) == 20_000
    assert table.quote(request(body={"model": "fast"})) == 20_000
    assert ModelTable({}, fallback=1).quote(request()) == 1_000_000
    assert MODELS.prices["o[13]-*"] == 500_000


def test_model_table_describe() -> None:
    summary = ModelTable({"a": "$0.01", "b*": "$0.5"}, fallback="$0.10").describe()
    assert summary == {
        "type": "model_table",
        "field": "body.model",
        "models": {"a": "$0.01", "b*": "$0.50"},
        "min": "$0.01",
        "max": "$0.50",
        "fallback": "$0.10",
    }
    assert json.loads(json.dumps(summary)) == summary


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (({},), {}, "at least one model or a fallback"),
        ((["gpt-4o"],), {}, "mapping of model to price"),
        (({"gpt-4o": 0},), {}, "model 'gpt-4o': price 0 is zero"),
        (({"gpt-4o": "5 EUR"},), {}, "model 'gpt-4o': price '5 EUR'"),
        (({"": 1},), {}, "non-empty strings, got ''"),
        (({3: 1},), {}, "non-empty strings, got 3"),
        (({"a": 1},), {"fallback": "x"}, "fallback: price 'x'"),
        (({"a": 1},), {"field": "model"}, "unknown field 'model'"),
    ],
)
def test_model_table_is_checked_at_construction(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ModelTable(*args, **kwargs)
    assert message in str(caught.value)


model_names = st.sampled_from(["a", "ab", "abc", "b", "ba", "a*", "[ab]", "x"])


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from(["a", "ab", "a*", "*b", "?", "[ab]*", "b", "*"]),
        st.integers(1, 10**6),
        min_size=1,
    ),
    st.one_of(model_names, st.none(), st.integers(0, 3), st.booleans()),
    st.none() | st.integers(1, 10**6),
)
def test_model_table_equals_reference(
    prices: dict[str, int], model: Any, fallback: int | None
) -> None:
    table = ModelTable(
        {name: f"{Decimal(micros).scaleb(-6):f}" for name, micros in prices.items()},
        fallback=None if fallback is None else Decimal(fallback).scaleb(-6),
    )
    body = {} if model is None else {"model": model}
    text = None if model is None else (model if isinstance(model, str) else json.dumps(model))
    expected: int | None
    if text is not None and text in prices:
        expected = prices[text]
    else:
        expected = next(
            (
                micros
                for name, micros in prices.items()
                if text is not None and fnmatch.fnmatchcase(text, name)
            ),
            fallback,
        )
    req = request(body=body)
    if expected is None:
        with pytest.raises(PaymentError):
            table.quote(req)
    else:
        assert table.quote(req) == table.quote(request(body=body)) == expected


# --- everything --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [Flat(1), CLAUDE, MODELS, Dynamic(lambda req: 1)])
def test_describe_is_json(strategy: PriceStrategy) -> None:
    summary = strategy.describe()
    assert json.loads(json.dumps(summary)) == summary
    assert isinstance(summary["type"], str)


@given(requests)
def test_quotes_are_deterministic_and_valid(req: RequestInfo) -> None:
    for strategy in (CLAUDE, MODELS, Flat("$0.05")):
        try:
            first = resolve_quote_sync(strategy, req)
        except PaymentError as error:
            assert error.code == NO_PRICE_CODE
            continue
        assert first == resolve_quote_sync(strategy, req) > 0
        assert first == parse_price(Decimal(first).scaleb(-6))


# --- DecodedBody ---------------------------------------------------------------------------

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _refusal(strategy: PriceStrategy, req: RequestInfo) -> tuple[int, str]:
    with pytest.raises(PaymentError) as info:
        strategy.quote(req)
    return info.value.status_code, info.value.code


def test_decoded_body_prices_what_compressed_bodies_and_forms_hold() -> None:
    import gzip
    import zlib

    table = ModelTable({"mini": "$0.01", "opus": "$0.20"})
    opus = b'{"model": "opus"}'
    zipped = RequestInfo(
        "POST", "/", headers={"Content-Encoding": "gzip"}, body=gzip.compress(opus)
    )
    form = RequestInfo("POST", "/", headers=FORM, body=b"model=opus&n=1")
    # Without DecodedBody: refused, not priced as "no model".
    assert _refusal(table, zipped) == (415, "unsupported_body")
    assert _refusal(table, form) == (415, "unsupported_body")
    decoded = DecodedBody(table, forms=True, max_bytes=1_000)
    assert decoded.quote(zipped) == 200_000
    assert decoded.quote(form) == 200_000
    deflated = RequestInfo(
        "POST", "/", headers={"Content-Encoding": "Deflate"}, body=zlib.compress(opus)
    )
    assert decoded.quote(deflated) == 200_000
    plain = RequestInfo("POST", "/", body=b'{"model": "mini"}')
    assert decoded.quote(plain) == 10_000
    assert decoded.describe() == table.describe()

    def zipped_as(body: bytes, encoding: str = "gzip") -> RequestInfo:
        return RequestInfo("POST", "/", headers={"Content-Encoding": encoding}, body=body)

    bomb = gzip.compress(b'{"model": "mini", "pad": "' + b"0" * (50 << 20) + b'"}')
    assert _refusal(decoded, zipped_as(bomb)) == (413, "request_too_large")
    two_members = gzip.compress(b'{"model": "mini"}') + gzip.compress(opus)
    assert _refusal(decoded, zipped_as(two_members)) == (400, "invalid_body")
    assert _refusal(decoded, zipped_as(gzip.compress(opus)[:-5])) == (400, "invalid_body")
    assert _refusal(decoded, zipped_as(b"not gzip")) == (400, "invalid_body")
    assert _refusal(decoded, zipped_as(gzip.compress(opus), "br")) == (415, "unsupported_body")
    assert _refusal(decoded, zipped_as(gzip.compress(opus), "gzip, gzip")) == (
        415,
        "unsupported_body",
    )
    repeated = RequestInfo("POST", "/", headers=FORM, body=b"model=mini&model=opus")
    assert _refusal(decoded, repeated) == (400, "ambiguous_request")
    many = RequestInfo("POST", "/", headers=FORM, body=b"&".join([b"a=1"] * 2_000))
    assert _refusal(decoded, many) == (400, "invalid_body")
    multipart = RequestInfo(
        "POST", "/", headers={"Content-Type": "multipart/form-data; boundary=x"}, body=b"--x--"
    )
    assert _refusal(decoded, multipart) == (415, "unsupported_body")
    no_forms = DecodedBody(table)
    assert _refusal(no_forms, form) == (415, "unsupported_body")


def test_decoded_body_keeps_a_metered_price_metered() -> None:
    from x402gate.metering import PerToken, TokenPrice, Usage

    metered = DecodedBody(PerToken(TokenPrice(input="$1", output="$1", per=1)))
    assert metered.metered and not DecodedBody("$0.01").metered
    import gzip

    req = RequestInfo(
        "POST", "/", headers={"Content-Encoding": "gzip"}, body=gzip.compress(b'{"max_tokens": 2}')
    )
    quote = metered.quote(req)
    assert isinstance(quote, int) and quote > 2_000_000  # the decoded text, not the gzip bytes
    assert metered.charge(Usage(input_tokens=1, output_tokens=1), req) == 2_000_000


def test_decoded_body_configuration_errors() -> None:
    for kwargs in ({"encodings": ("br",)}, {"max_bytes": 0}, {"max_bytes": True}):
        with pytest.raises(ConfigurationError):
            DecodedBody("$0.01", **kwargs)
