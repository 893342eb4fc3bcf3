"""``targets:`` and ``breaker:`` in gateway files: what they compile to, and every mistake named
with the file, the line, the field and a suggestion (as ``x402gate proxy --check`` prints)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("yaml")

from x402gate.cli import main
from x402gate.gateway import GatewayConfigError, parse_config
from x402gate.gateway.config.compile import TargetPlan

from .test_config import BASE, ENV, ROUTE

UPSTREAMS = """\
upstreams:
  anthropic:
    url: https://api.anthropic.com
    headers:
      x-api-key: ${ANTHROPIC_API_KEY}
      anthropic-version: "2023-06-01"
  bedrock:
    url: https://bedrock.example.com/anthropic
    breaker: {failures: 3, open_seconds: 10}
  local:
    url: http://127.0.0.1:9000
"""


def with_route(body: str) -> str:
    """BASE with the three upstreams above and its route's lines replaced by ``body``."""
    base_upstreams = BASE[BASE.index("upstreams:") : BASE.index("routes:")]
    lines = "".join(f"    {line}\n" for line in body.strip("\n").splitlines())
    return BASE.replace(base_upstreams, UPSTREAMS).replace(
        ROUTE, f'  "POST /v1/messages":\n{lines}'
    )


def plan_of(body: str) -> object:
    return parse_config(with_route(body), source="gw.yaml", env=ENV).routes[0]


def test_a_target_list_keeps_its_order_as_priorities_unless_given() -> None:
    plan = plan_of(
        """
price: $0.01
targets:
  - upstream: anthropic
    weight: 3
    priority: 0
  - {upstream: bedrock, model: anthropic.claude-sonnet, priority: 0}
  - local
"""
    )
    assert plan.targets == (  # type: ignore[attr-defined]
        TargetPlan("anthropic", None, 3, 0),
        TargetPlan("bedrock", "anthropic.claude-sonnet", 1, 0),
        TargetPlan("local", None, 1, 2),
    )
    assert plan.upstream == "anthropic"  # type: ignore[attr-defined]
    assert plan.fallback  # type: ignore[attr-defined]
    assert plan.model_field == "model"  # type: ignore[attr-defined]


def test_targets_by_model() -> None:
    plan = plan_of(
        """
price: $0.01
targets_by_model:
  claude-sonnet-4-5: [anthropic, {upstream: bedrock, model: anthropic.claude-sonnet-4-5}]
  "*": [local]
"""
    )
    by_model = plan.model_targets  # type: ignore[attr-defined]
    assert set(by_model) == {"claude-sonnet-4-5", "*"}
    assert by_model["*"] == (TargetPlan("local"),)
    assert plan.targets == (TargetPlan("local"),)  # type: ignore[attr-defined]


def test_one_upstream_has_no_fallback() -> None:
    plan = plan_of("upstream: anthropic\nprice: $0.01")
    assert plan.targets == (TargetPlan("anthropic"),)  # type: ignore[attr-defined]
    assert not plan.fallback  # type: ignore[attr-defined]


ROUTE_FIELD = 'routes["POST /v1/messages"]'

# (id, route body, field, message fragment)
INVALID: list[tuple[str, str, str, str]] = [
    (
        "unknown upstream",
        "price: $0.01\ntargets: [anthropic, bedrok]",
        f"{ROUTE_FIELD}.targets[1].upstream",
        "did you mean 'bedrock'?",
    ),
    (
        "upstream and targets",
        "upstream: anthropic\nprice: $0.01\ntargets: [bedrock]",
        ROUTE_FIELD,
        "give one of upstream (one upstream), targets",
    ),
    (
        "neither upstream nor targets",
        "price: $0.01",
        ROUTE_FIELD,
        "give one of upstream",
    ),
    (
        "targets and targets by model",
        "price: $0.01\ntargets: [bedrock]\ntargets_by_model: {claude-x: [local]}",
        ROUTE_FIELD,
        "targets_by_model (several for each model)",
    ),
    (
        "misspelt targets",
        "price: $0.01\ntragets: [bedrock]",
        f"{ROUTE_FIELD}.tragets",
        "did you mean 'targets'",
    ),
    (
        "a target listed twice",
        "price: $0.01\ntargets: [anthropic, local, anthropic]",
        f"{ROUTE_FIELD}.targets[2].upstream",
        "raise its weight instead",
    ),
    (
        "weight zero",
        "price: $0.01\ntargets:\n  - {upstream: anthropic, weight: 0}",
        f"{ROUTE_FIELD}.targets[0].weight",
        "greater than or equal to 1",
    ),
    (
        "negative priority",
        "price: $0.01\ntargets:\n  - {upstream: anthropic, priority: -1}",
        f"{ROUTE_FIELD}.targets[0].priority",
        "greater than or equal to 0",
    ),
    (
        "misspelt target field",
        "price: $0.01\ntargets:\n  - {upstream: anthropic, wieght: 2}",
        f"{ROUTE_FIELD}.targets[0].wieght",
        "did you mean 'weight'",
    ),
    (
        "empty target list",
        "price: $0.01\ntargets: []",
        f"{ROUTE_FIELD}.targets",
        "at least 1",
    ),
    (
        "empty model rewrite",
        'price: $0.01\ntargets:\n  - {upstream: anthropic, model: ""}',
        f"{ROUTE_FIELD}.targets[0].model",
        "at least 1 character",
    ),
    (
        "model rewrite with a model field outside the body",
        "type: token-based\nmodels: {claude-x: $0.01}\nmodel_field: header.x-model\n"
        "targets:\n  - {upstream: anthropic, model: other}",
        f"{ROUTE_FIELD}.model_field",
        "model_field: body.<field>",
    ),
    (
        "unknown upstream in a model's list",
        "price: $0.01\ntargets_by_model:\n  claude-x: [anthropc]",
        f'{ROUTE_FIELD}.targets_by_model["claude-x"][0].upstream',
        "did you mean 'anthropic'?",
    ),
]

BREAKERS: list[tuple[str, str, str, str]] = [
    (
        "breaker failures zero",
        "    breaker: {failures: 3, open_seconds: 10}",
        "    breaker: {failures: 0, open_seconds: 10}",
        "upstreams.bedrock.breaker.failures",
    ),
    (
        "breaker window zero",
        "    breaker: {failures: 3, open_seconds: 10}",
        "    breaker: {failures: 3, open_seconds: 0}",
        "upstreams.bedrock.breaker.open_seconds",
    ),
    (
        "misspelt breaker field",
        "    breaker: {failures: 3, open_seconds: 10}",
        "    breaker: {failures: 3, open_secs: 10}",
        "upstreams.bedrock.breaker.open_secs",
    ),
]


def check_output(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What ``x402gate proxy --check`` prints about ``text`` (it must fail)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.MonkeyPatch.context() as env:
        for name, value in ENV.items():
            env.setenv(name, value)
        assert main(["proxy", "--check", str(path)]) == 1
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    ("body", "field", "fragment"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_check_names_file_line_field_and_a_suggestion(
    body: str, field: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = with_route(body)
    with pytest.raises(GatewayConfigError) as caught:
        parse_config(text, source="gw.yaml", env=ENV)
    matching = [p for p in caught.value.problems if p.field == field and fragment in p.message]
    assert matching, f"no problem on {field!r} saying {fragment!r} in:\n{caught.value}"
    problem = matching[0]
    assert problem.line is not None
    # The line named is the route's (for the route's problems) or one of its lines below.
    lines = text.splitlines()
    key_line = lines.index('  "POST /v1/messages":') + 1
    assert problem.line == key_line if field == ROUTE_FIELD else problem.line > key_line
    err = check_output(text, tmp_path, capsys)
    assert any(
        e.startswith(f"{tmp_path / 'gateway.yaml'}:{problem.line}: {field}: ") and fragment in e
        for e in err
    ), err


@pytest.mark.parametrize(
    ("old", "new", "field"), [c[1:] for c in BREAKERS], ids=[c[0] for c in BREAKERS]
)
def test_breaker_mistakes_are_named(
    old: str, new: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = with_route("price: $0.01\ntargets: [anthropic, bedrock]")
    assert old in text
    text = text.replace(old, new)
    err = check_output(text, tmp_path, capsys)
    line = text.splitlines().index(new) + 1
    assert any(e.startswith(f"{tmp_path / 'gateway.yaml'}:{line}: {field}: ") for e in err), err
