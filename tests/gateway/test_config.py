"""Gateway files: the examples load, YAML is read strictly, ``${VAR}`` works, and every kind of
mistake fails with a message naming the file, the line and the field, never a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("yaml")

from x402gate.gateway import GatewayConfigError, load_config, parse_config
from x402gate.metering import PerToken
from x402gate.pricing import Flat, MatchRules, ModelTable
from x402gate.request import RequestInfo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "gateway"
SECRET = "sk-very-secret-value-42"
KEY = "0x" + "ab" * 32
ENV = {
    "ANTHROPIC_API_KEY": SECRET,
    "OPENAI_API_KEY": SECRET + "-openai",
    "PAY_TO": "0x1111111111111111111111111111111111111111",
    "X402GATE_SECRET": "x" * 40,
    "PUBLIC_ORIGIN": "https://api.example.com",
    "FACILITATOR_KEY": KEY,
    "CHANNEL_AUTHORIZER_KEY": "0x" + "cd" * 32,
}

BASE = """\
gateway:
  port: 8402
  discovery: true
pay_to: "0x1111111111111111111111111111111111111111"
accepts:
  - base
facilitator: https://x402.org/facilitator
store: sqlite:///x402gate.db
upstreams:
  anthropic:
    url: https://api.anthropic.com
    headers:
      x-api-key: ${ANTHROPIC_API_KEY}
      anthropic-version: "2023-06-01"
routes:
  "POST /v1/messages":
    upstream: anthropic
    price: $0.01
"""

ROUTE = '  "POST /v1/messages":\n    upstream: anthropic\n    price: $0.01\n'


def route(body: str, key: str = "POST /v1/messages") -> tuple[str, str]:
    """A replacement of the base route by ``body`` (the lines under the key)."""
    lines = "".join(f"    {line}\n" for line in body.strip().splitlines())
    return ROUTE, f'  "{key}":\n{lines}'


# (id, (old, new) replacements of BASE or a whole text, env changes, field, message fragment)
INVALID: list[tuple[str, list[tuple[str, str]] | str, dict[str, str | None], str, str]] = [
    ("not YAML", [("  port: 8402", "  port: [8402")], {}, "", "expected ','"),
    ("empty file", "", {}, "", "got an empty file"),
    ("a list, not a mapping", "- gateway\n- routes\n", {}, "", "expected a mapping"),
    (
        "duplicate route key",
        [(ROUTE, ROUTE + ROUTE)],
        {},
        "",
        "duplicate key 'POST /v1/messages'",
    ),
    (
        "misspelt field",
        [("  port: 8402", "  prot: 8402")],
        {},
        "gateway.prot",
        "did you mean 'port'",
    ),
    ("port as text", [("port: 8402", 'port: "8402"')], {}, "gateway.port", "whole number"),
    ("port out of range", [("port: 8402", "port: 70000")], {}, "gateway.port", "65535"),
    (
        "yes for a flag",
        [("discovery: true", "discovery: yes")],
        {},
        "gateway.discovery",
        "true or false",
    ),
    (
        "short secret",
        [("  discovery: true", "  discovery: true\n  secret: abc")],
        {},
        "gateway.secret",
        "32 bytes",
    ),
    (
        "timeout out of range",
        [("  discovery: true", "  discovery: true\n  max_timeout_seconds: 5")],
        {},
        "gateway.max_timeout_seconds",
        "greater than or equal to 10",
    ),
    (
        "missing variable",
        [],
        {"ANTHROPIC_API_KEY": None},
        'upstreams.anthropic.headers["x-api-key"]',
        "ANTHROPIC_API_KEY is not set",
    ),
    (
        "unterminated variable",
        [("${ANTHROPIC_API_KEY}", "${ANTHROPIC_API_KEY")],
        {},
        'upstreams.anthropic.headers["x-api-key"]',
        "unterminated",
    ),
    (
        "pay_to not an address",
        [('"0x1111111111111111111111111111111111111111"', '"0x1234"')],
        {},
        "pay_to",
        "not an EVM address",
    ),
    (
        "pay_to wrong checksum",
        [
            (
                '"0x1111111111111111111111111111111111111111"',
                '"0x833589fcd6eDb6E08f4c7C32D4f71b54bdA02913"',
            )
        ],
        {},
        "pay_to",
        "checksum",
    ),
    (
        "pay_to zero address",
        [('"0x1111111111111111111111111111111111111111"', '"0x' + "0" * 40 + '"')],
        {},
        "pay_to",
        "zero address",
    ),
    (
        "pay_to for a network not accepted",
        [
            (
                'pay_to: "0x1111111111111111111111111111111111111111"',
                'pay_to:\n  polygon: "0x1111111111111111111111111111111111111111"',
            )
        ],
        {},
        "pay_to.polygon",
        "not in accepts",
    ),
    (
        "unknown network",
        [("  - base", "  - mars")],
        {},
        "accepts[0].network",
        "unsupported network 'mars'",
    ),
    (
        "no accepted asset",
        [("accepts:\n  - base", "accepts: []")],
        {},
        "accepts",
        "at least 1 item",
    ),
    (
        "token address without its domain",
        [
            (
                "  - base",
                '  - network: base\n    asset: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"',
            )
        ],
        {},
        "accepts[0]",
        "'name' and 'version'",
    ),
    (
        "facilitator URL not http",
        [("facilitator: https://x402.org/facilitator", "facilitator: ftp://x402.org")],
        {},
        "facilitator.url[0]",
        "http:// or https://",
    ),
    (
        "facilitator service and local at once",
        [
            (
                "facilitator: https://x402.org/facilitator",
                "facilitator:\n  url: https://x402.org/facilitator\n  rpc_url: http://127.0.0.1:8545",
            )
        ],
        {},
        "facilitator",
        "either url",
    ),
    (
        "local settlement with a bad key",
        [
            (
                "facilitator: https://x402.org/facilitator",
                "facilitator:\n  rpc_url: http://127.0.0.1:8545\n"
                "  private_key: ${ANTHROPIC_API_KEY}",
            )
        ],
        {},
        "facilitator.private_key",
        "64 hexadecimal digits",
    ),
    (
        "chain RPC URL for reconciling not http",
        [
            (
                "facilitator: https://x402.org/facilitator",
                "facilitator:\n  url: https://x402.org/facilitator\n  chain_rpc_url: ws://node",
            )
        ],
        {},
        "facilitator.chain_rpc_url",
        "http:// or https://",
    ),
    (
        "chain RPC URL for reconciling with local settlement",
        [
            (
                "facilitator: https://x402.org/facilitator",
                "facilitator:\n  rpc_url: http://127.0.0.1:8545\n"
                "  private_key: ${FACILITATOR_KEY}\n  chain_rpc_url: http://127.0.0.1:8545",
            )
        ],
        {"FACILITATOR_KEY": "11" * 32},
        "facilitator.chain_rpc_url",
        "only for a facilitator service",
    ),
    (
        "unknown store",
        [("sqlite:///x402gate.db", "mongodb://app:hunter22@db/x402")],
        {},
        "store",
        "mongodb://app:***@db/x402",
    ),
    (
        "no upstream",
        [("upstreams:\n  anthropic:", "upstreams: {}\nunused:\n  anthropic:")],
        {},
        "upstreams",
        "at least 1 item",
    ),
    (
        "upstream URL without scheme",
        [("url: https://api.anthropic.com", "url: api.anthropic.com")],
        {},
        "upstreams.anthropic.url",
        "http:// or https://",
    ),
    (
        "upstream URL with a query",
        [("url: https://api.anthropic.com", "url: https://api.anthropic.com/?beta=1")],
        {},
        "upstreams.anthropic.url",
        "no query",
    ),
    (
        "injecting a hop-by-hop header",
        [('anthropic-version: "2023-06-01"', "connection: close")],
        {},
        "upstreams.anthropic.headers.connection",
        "not injectable",
    ),
    (
        "header value with a line break",
        [],
        {"ANTHROPIC_API_KEY": SECRET + "\nX-Evil: 1"},
        'upstreams.anthropic.headers["x-api-key"]',
        "line break",
    ),
    (
        "unquoted number as a header",
        [('anthropic-version: "2023-06-01"', "anthropic-version: 2023")],
        {},
        'upstreams.anthropic.headers["anthropic-version"]',
        "put it in quotes",
    ),
    (
        "upstream timeout zero",
        [('anthropic-version: "2023-06-01"', 'anthropic-version: "2023-06-01"\n    timeout: 0')],
        {},
        "upstreams.anthropic.timeout",
        "greater than 0",
    ),
    ("no route", [(ROUTE, ""), ("routes:\n", "routes: {}\n")], {}, "routes", "at least 1 item"),
    (
        "lower-case method",
        [route("upstream: anthropic\nprice: $0.01", key="post /v1/messages")],
        {},
        'routes["post /v1/messages"]',
        "METHOD /path",
    ),
    (
        "path without a slash",
        [route("upstream: anthropic\nprice: $0.01", key="POST v1/messages")],
        {},
        'routes["POST v1/messages"]',
        "must start with '/'",
    ),
    (
        "unknown upstream",
        [route("upstream: anthropc\nprice: $0.01")],
        {},
        'routes["POST /v1/messages"].upstream',
        "no upstream named 'anthropc'",
    ),
    (
        "no price at all",
        [route("upstream: anthropic")],
        {},
        'routes["POST /v1/messages"]',
        "no price",
    ),
    (
        "price not an amount",
        [route("upstream: anthropic\nprice: ten cents")],
        {},
        'routes["POST /v1/messages"].price',
        "not a dollar amount",
    ),
    (
        "negative price",
        [route("upstream: anthropic\nprice: -0.01")],
        {},
        'routes["POST /v1/messages"].price',
        "negative",
    ),
    (
        "price finer than a micro-dollar",
        [route("upstream: anthropic\nprice: $0.0000001")],
        {},
        'routes["POST /v1/messages"].price',
        "0.0000001",
    ),
    (
        "unknown route type",
        [route("upstream: anthropic\ntype: per-call\nprice: $0.01")],
        {},
        'routes["POST /v1/messages"].type',
        "'token-based'",
    ),
    (
        "bad settlement",
        [route("upstream: anthropic\nprice: $0.01\nsettlement: later")],
        {},
        'routes["POST /v1/messages"].settlement',
        "'after' or 'before'",
    ),
    (
        "rule on an unknown field",
        [
            route(
                'upstream: anthropic\nmatch:\n  - when: {bodyy.model: "claude-*"}\n    price: $0.01'
            )
        ],
        {},
        'routes["POST /v1/messages"].match[0].when',
        "unknown field 'bodyy.model'",
    ),
    (
        "rule with a misspelt key",
        [
            route(
                'upstream: anthropic\nmatch:\n  - when: {body.model: "claude-*"}\n    prize: $0.01'
            )
        ],
        {},
        'routes["POST /v1/messages"].match[0].prize',
        "did you mean 'price'",
    ),
    (
        "rule with a bad price",
        [route('upstream: anthropic\nmatch:\n  - when: {body.model: "claude-*"}\n    price: free')],
        {},
        'routes["POST /v1/messages"].match[0].price',
        "not a dollar amount",
    ),
    (
        "match rules and a flat price",
        [
            route(
                "upstream: anthropic\nprice: $0.01\n"
                'match:\n  - when: {body.model: "a"}\n    price: $0.01'
            )
        ],
        {},
        'routes["POST /v1/messages"].price',
        "not used by a match route",
    ),
    (
        "model table with token prices",
        [
            route(
                "upstream: anthropic\ntype: token-based\n"
                "models:\n  claude-opus-4-5: {input: $15, output: $75}"
            )
        ],
        {},
        'routes["POST /v1/messages"].models["claude-opus-4-5"]',
        "type: per-token",
    ),
    (
        "model table without models",
        [route("upstream: anthropic\ntype: token-based")],
        {},
        'routes["POST /v1/messages"].models',
        "needs models",
    ),
    (
        "token price without output",
        [route('upstream: anthropic\ntype: per-token\nmodels:\n  "claude-*": {input: $3}')],
        {},
        'routes["POST /v1/messages"].models["claude-*"]',
        "'input' and 'output'",
    ),
    (
        "per-token settled before",
        [
            route(
                "upstream: anthropic\ntype: per-token\nsettlement: before\n"
                'models:\n  "claude-*": {input: $3, output: $15}'
            )
        ],
        {},
        'routes["POST /v1/messages"].settlement',
        "'before' is not available",
    ),
    (
        "top-up on a flat route",
        [route("upstream: anthropic\nprice: $0.01\ncredit_topup: $1")],
        {},
        'routes["POST /v1/messages"].credit_topup',
        "not used by a flat route",
    ),
    (
        "rewrite with an unknown parameter",
        [route("upstream: anthropic\npath: /v2/{id}\nprice: $0.01")],
        {},
        'routes["POST /v1/messages"].path',
        "{id} is not a parameter",
    ),
    (
        "metered route without a public origin",
        [
            route(
                "upstream: anthropic\ntype: per-token\n"
                'models:\n  "claude-*": {input: $3, output: $15}'
            )
        ],
        {},
        'routes["POST /v1/messages"]',
        "set gateway.public_origin",
    ),
    (
        "public origin with a path",
        [("discovery: true", "discovery: true\n  public_origin: https://api.example.com/v1")],
        {},
        "gateway.public_origin",
        "is not an origin",
    ),
    (
        "trusted proxy that is a host name",
        [("discovery: true", "discovery: true\n  trusted_proxies: [proxy.internal]")],
        {},
        "gateway.trusted_proxies",
        "not an IP address or CIDR block",
    ),
    (
        "rest of a path without /*",
        [route("upstream: anthropic\npath: /v2/{*}\nprice: $0.01")],
        {},
        'routes["POST /v1/messages"].path',
        "ending in /*",
    ),
    (
        "balance node not an http URL",
        [("  discovery: true", "  discovery: true\n  balance_rpc_url: ftp://node.example/KEY")],
        {},
        "gateway.balance_rpc_url",
        "http:// or https://",
    ),
    (
        "balance cache too long",
        [("  discovery: true", "  discovery: true\n  balance_cache_seconds: 61")],
        {},
        "gateway.balance_cache_seconds",
        "60",
    ),
    (
        "in-flight bound not a boolean",
        [("  discovery: true", "  discovery: true\n  limit_in_flight: sometimes")],
        {},
        "gateway.limit_in_flight",
        "expected true or false",
    ),
]


def apply(changes: list[tuple[str, str]] | str) -> str:
    if isinstance(changes, str):
        return changes
    text = BASE
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


@pytest.mark.parametrize(
    ("changes", "env_changes", "field", "fragment"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_each_mistake_names_the_file_the_field_and_what_is_wrong(
    changes: list[tuple[str, str]] | str,
    env_changes: dict[str, str | None],
    field: str,
    fragment: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(apply(changes))
    env = {k: v for k, v in {**ENV, **env_changes}.items() if v is not None}
    with pytest.raises(GatewayConfigError) as caught:
        load_config(path, env=env)
    error = caught.value
    matching = [p for p in error.problems if p.field == field and fragment in p.message]
    assert matching, f"no problem on {field!r} saying {fragment!r} in:\n{error}"
    line = str(error).splitlines()[error.problems.index(matching[0])]
    prefix = f"{path}:{matching[0].line}: " if matching[0].line else f"{path}: "
    assert line.startswith(prefix), line
    assert (f"{field}: " in line) if field else True
    for secret in (SECRET, "hunter22", KEY):
        assert secret not in str(error)


def test_the_table_covers_many_kinds_of_mistake() -> None:
    assert len(INVALID) >= 15
    assert len({case[0] for case in INVALID}) == len(INVALID)


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = apply(
        [
            ("port: 8402", "port: -1"),
            ("  - base", "  - mars"),
            route("upstream: nowhere\nprice: free"),
        ]
    )
    with pytest.raises(GatewayConfigError) as caught:
        parse_config(text, source="gw.yaml", env=ENV)
    fields = [problem.field for problem in caught.value.problems]
    assert fields == ["gateway.port"]  # shape errors stop before meaning is checked
    text = apply([("  - base", "  - mars"), route("upstream: nowhere\nprice: free")])
    with pytest.raises(GatewayConfigError) as caught:
        parse_config(text, source="gw.yaml", env=ENV)
    fields = [problem.field for problem in caught.value.problems]
    assert fields == [
        "accepts[0].network",
        'routes["POST /v1/messages"].upstream',
        'routes["POST /v1/messages"].price',
    ]
    assert [p.line for p in caught.value.problems] == [6, 17, 18]


@pytest.mark.parametrize("name", ["anthropic-glob", "anthropic-model-table", "llm-per-token"])
def test_the_examples_are_valid(name: str) -> None:
    config = load_config(EXAMPLES / f"{name}.yaml", env=ENV)
    assert config.routes
    assert SECRET not in repr(config)
    # Every example offers payment channels, with no top-up forcing credit on exact payers.
    assert config.channels is not None
    assert "cd" * 32 not in repr(config)
    assert all(plan.credit_topup is None for plan in config.routes)


def test_example_prices() -> None:
    glob = load_config(EXAMPLES / "anthropic-glob.yaml", env=ENV).routes[0].strategy
    table = load_config(EXAMPLES / "anthropic-model-table.yaml", env=ENV).routes[0].strategy
    tokens = load_config(EXAMPLES / "llm-per-token.yaml", env=ENV).routes
    assert isinstance(glob, MatchRules) and isinstance(table, ModelTable)
    assert all(isinstance(plan.strategy, PerToken) for plan in tokens)

    def ask(strategy: object, body: str) -> int:
        assert isinstance(strategy, MatchRules | ModelTable)
        return strategy.quote(RequestInfo("POST", "/v1/messages", body=body.encode()))

    assert ask(glob, '{"model": "claude-opus-4-1"}') == 60_000
    assert ask(glob, '{"model": "claude-sonnet-4-5", "stream": true}') == 20_000
    assert ask(glob, '{"model": "claude-sonnet-4-5"}') == 15_000
    assert ask(glob, '{"model": "claude-3-5-haiku-latest"}') == 4_000
    assert ask(glob, '{"model": "mistral"}') == 30_000
    assert ask(table, '{"model": "claude-opus-4-5"}') == 50_000
    assert ask(table, '{"model": "claude-3-opus"}') == 10_000
    assert ask(table, '{"model": "other"}') == 30_000


def test_yaml_is_read_as_plain_data() -> None:
    text = BASE.replace(
        'pay_to: "0x1111111111111111111111111111111111111111"',
        "pay_to: 0x1111111111111111111111111111111111111111",  # unquoted: still text
    ).replace('anthropic-version: "2023-06-01"', "anthropic-version: 2023-06-01")  # not a date
    config = parse_config(text, env=ENV)
    assert config.pay_to == {"eip155:8453": "0x1111111111111111111111111111111111111111"}
    header = config.upstreams["anthropic"].headers["anthropic-version"]
    assert header.get_secret_value() == "2023-06-01"


def test_variables_are_substituted_and_their_values_kept_secret() -> None:
    text = BASE.replace("price: $0.01", "price: ${PRICE}\n    description: costs $${PRICE}")
    config = parse_config(text, env={**ENV, "PRICE": "$0.02"})
    plan = config.routes[0]
    assert isinstance(plan.strategy, Flat) and plan.strategy.amount == 20_000
    assert plan.description == "costs ${PRICE}"
    assert config.redactor(f"key {SECRET}") == "key ***"
    assert SECRET not in repr(config) and SECRET not in str(config.file)


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match=r"nope\.yaml: no such file"):
        load_config(tmp_path / "nope.yaml", env=ENV)


def test_decode_body_wraps_the_price_and_is_checked() -> None:
    from x402gate.pricing import DecodedBody

    text = BASE.replace(
        *route("upstream: anthropic\nprice: $0.01\ndecode_body: {encodings: [gzip], forms: true}")
    )
    strategy = parse_config(text, source="gateway.yaml", env=ENV).routes[0].strategy
    assert isinstance(strategy, DecodedBody)
    assert strategy.encodings == frozenset({"gzip"})
    assert (strategy.forms, strategy.max_bytes) == (True, 1 << 20)
    assert isinstance(strategy.price, Flat)
    for bad in ("{encodings: [br]}", "{max_bytes: 0}", "{forms: yes}", "{zip: true}"):
        text = BASE.replace(*route(f"upstream: anthropic\nprice: $0.01\ndecode_body: {bad}"))
        with pytest.raises(GatewayConfigError) as caught:
            parse_config(text, source="gateway.yaml", env=ENV)
        assert "decode_body" in str(caught.value), bad
