"""One settings model under three spellings: every problem at once, each key as written."""

from __future__ import annotations

from typing import Any

import pytest

from x402gate.errors import ConfigurationError
from x402gate.settings import (
    DJANGO,
    FLASK,
    YAML,
    GateSettings,
    SettingsError,
    build_gate,
    build_route_table,
    read_django_setting,
    read_flask_config,
    read_settings,
)

PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
VALID: dict[str, Any] = {
    "pay_to": PAY_TO,
    "network": "base-sepolia",
    "facilitator_url": "https://x402.org/facilitator",
    "store_url": "memory://",
    "startup_checks": "off",
}


def flask(**values: Any) -> dict[str, Any]:
    return {f"X402GATE_{k.upper()}": v for k, v in {**VALID, **values}.items()}


def django(**values: Any) -> dict[str, Any]:
    return {k.upper(): v for k, v in {**VALID, **values}.items()}


def problems(error: SettingsError) -> dict[str, str]:
    return {problem.key: problem.message for problem in error.problems}


def test_the_three_spellings_read_the_same_settings() -> None:
    from_flask = read_flask_config({**flask(), "SECRET_KEY": "flask's own"})
    from_django = read_django_setting(django())
    from_yaml = read_settings(VALID, YAML)
    assert from_flask == from_django == from_yaml
    assert from_flask.pay_to == PAY_TO
    assert [asset.network for asset in from_flask.assets] == ["eip155:84532"]
    assert from_flask.facilitator_url == ("https://x402.org/facilitator",)
    assert from_flask.max_timeout_seconds == 300


def test_defaults_and_string_numbers() -> None:
    settings = read_flask_config(flask(max_timeout_seconds="120"))
    assert settings.max_timeout_seconds == 120
    assert settings.verify_with_facilitator is True
    assert settings.allow_smart_wallets is False
    assert settings.limit_in_flight is True
    assert settings.routes == {}


def test_every_problem_is_reported_at_once_in_the_users_spelling() -> None:
    with pytest.raises(SettingsError) as caught:
        read_flask_config(
            {
                "X402GATE_PAYTO": PAY_TO,
                "X402GATE_NETWORK": "dogecoin",
                "X402GATE_MAX_TIMEOUT_SECONDS": "5m",
                "X402GATE_LIMIT_IN_FLIGHT": "no",
                "X402GATE_STORE_URL": "mongodb://user:secret@db/x",
                "X402GATE_ROUTES": {"GET /a": {"price": "$0.01", "setlement": "before"}},
            }
        )
    found = problems(caught.value)
    assert set(found) == {
        "X402GATE_PAYTO",
        "X402GATE_NETWORK",
        "X402GATE_PAY_TO",
        "X402GATE_FACILITATOR_URL",
        "X402GATE_STORE_URL",
        "X402GATE_MAX_TIMEOUT_SECONDS",
        "X402GATE_LIMIT_IN_FLIGHT",
        "X402GATE_ROUTES",
    }
    assert found["X402GATE_PAYTO"] == "is not a setting (did you mean 'X402GATE_PAY_TO'?)"
    assert found["X402GATE_PAY_TO"].startswith("is required")
    assert "(or X402GATE_FACILITATOR)" in found["X402GATE_FACILITATOR_URL"]
    assert "did you mean 'settlement'?" in found["X402GATE_ROUTES"]
    text = str(caught.value)
    assert text.startswith("Flask config: 8 problems:")
    assert "secret" not in text
    assert isinstance(caught.value, ConfigurationError)


@pytest.mark.parametrize(
    ("spelling", "values", "key", "suggestion"),
    [
        (
            FLASK,
            flask(verify_with_facilitatr=False),
            "X402GATE_VERIFY_WITH_FACILITATR",
            "X402GATE_VERIFY_WITH_FACILITATOR",
        ),
        (DJANGO, django(PAYTO=PAY_TO), "PAYTO", "PAY_TO"),
        (YAML, {**VALID, "discovry": True}, "discovry", "discovery"),
    ],
)
def test_an_unknown_key_is_named_with_a_suggestion_in_each_spelling(
    spelling: Any, values: dict[str, Any], key: str, suggestion: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        read_settings(values, spelling)
    assert problems(caught.value) == {key: f"is not a setting (did you mean {suggestion!r}?)"}


def test_a_key_in_another_case_is_not_a_setting() -> None:
    with pytest.raises(SettingsError, match=r"'pay_to' is not a setting|pay_to"):
        read_django_setting({**django(), "pay_to": PAY_TO})


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"pay_to": "0x1234"}, "PAY_TO"),
        ({"pay_to": "0x" + "0" * 40}, "PAY_TO"),
        ({"pay_to": {"base": PAY_TO}}, "PAY_TO"),
        ({"network": "solana"}, "NETWORK"),
        ({"network": None}, "NETWORK"),
        ({"assets": ["USDC"]}, "ASSETS"),
        ({"facilitator_url": "ftp://f.example"}, "FACILITATOR_URL"),
        ({"facilitator_timeout": 0}, "FACILITATOR_TIMEOUT"),
        ({"facilitator": "no.such.module.facilitator"}, "FACILITATOR"),
        ({"max_timeout_seconds": 5}, "MAX_TIMEOUT_SECONDS"),
        ({"max_timeout_seconds": True}, "MAX_TIMEOUT_SECONDS"),
        ({"discovery": "yes"}, "DISCOVERY"),
        ({"startup_checks": "sometimes"}, "STARTUP_CHECKS"),
        ({"public_origin": "https://api.example.com/v1"}, "PUBLIC_ORIGIN"),
        ({"trusted_proxies": ["proxy.internal"]}, "TRUSTED_PROXIES"),
        ({"rpc_url": "ws://node"}, "RPC_URL"),
        ({"routes": ["GET /a"]}, "ROUTES"),
        ({"routes": {"GET /a": {"settlement": "before"}}}, "ROUTES"),
    ],
)
def test_each_invalid_value_is_named(change: dict[str, Any], key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        read_django_setting(django(**change))
    assert list(problems(caught.value)) == [key]


def test_a_gate_excludes_the_settings_that_describe_one() -> None:
    with pytest.raises(SettingsError) as caught:
        read_django_setting({"GATE": "no.such.gate", "PAY_TO": PAY_TO, "STORE_URL": "memory://"})
    assert problems(caught.value) == {
        "GATE": "cannot be combined with settings that describe a gate: PAY_TO, STORE_URL"
    }


def test_the_setting_itself_must_be_a_mapping() -> None:
    with pytest.raises(SettingsError, match="X402GATE must be a dict; it is missing"):
        read_django_setting(None)


def test_build_gate_builds_what_the_settings_describe() -> None:
    settings = read_settings({**VALID, "max_timeout_seconds": 120, "routes": {"GET /a": 1}}, YAML)
    gate, owned = build_gate(settings)
    try:
        assert owned
        assert gate.max_timeout_seconds == 120
        assert gate.pay_to == {"eip155:84532": PAY_TO}
        again, owned_again = build_gate(GateSettings(gate=gate))
        assert again is gate and not owned_again
        table = build_route_table(settings, gate)
        assert table is not None and table.match("GET", "/a") is not None
        assert build_route_table(read_settings(VALID, YAML), gate) is None
    finally:
        gate.close()
