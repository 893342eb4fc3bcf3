"""The ``secret`` setting: the session-token key every worker of a Django or Flask app behind a
load balancer must share, checked without ever being echoed."""

from __future__ import annotations

from typing import Any

import pytest

from x402gate.settings import SettingsError, build_gate, read_django_setting, read_flask_config

PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
PAYER = "0x1111111111111111111111111111111111111111"
VALID: dict[str, Any] = {
    "PAY_TO": PAY_TO,
    "NETWORK": "base-sepolia",
    "FACILITATOR_URL": "https://x402.org/facilitator",
    "STORE_URL": "memory://",
    "STARTUP_CHECKS": "off",
}
SECRET = "a-session-secret-shared-by-every-worker"


async def _token_valid_elsewhere(values: dict[str, Any]) -> bool:
    """Two workers built from the same settings: does one accept the other's token?"""
    (issuer, _), (reader, _) = (build_gate(read_django_setting(values)) for _ in range(2))
    try:
        asset = issuer.assets[0]
        token = issuer.session_tokens.issue(PAYER, asset.network, asset.address, 1_000.0)
        return reader.session_tokens.check(token, 1_001.0) is not None
    finally:
        await issuer.aclose()
        await reader.aclose()


async def test_workers_with_the_same_secret_read_each_others_tokens() -> None:
    assert await _token_valid_elsewhere({**VALID, "SECRET": SECRET})
    # Without it each worker draws its own key: what the setting is for.
    assert not await _token_valid_elsewhere(VALID)


def test_flask_reads_the_secret_too() -> None:
    config = {f"X402GATE_{k}": v for k, v in VALID.items()}
    settings = read_flask_config({**config, "X402GATE_SECRET": SECRET})
    assert settings.secret == SECRET.encode()
    assert SECRET not in repr(settings)


@pytest.mark.parametrize("value", ["too-short-secret", b"\x00" * 31, 12345])
def test_a_short_or_odd_secret_is_refused_without_being_echoed(value: Any) -> None:
    with pytest.raises(SettingsError) as caught:
        read_django_setting({**VALID, "SECRET": value})
    assert [problem.key for problem in caught.value.problems] == ["SECRET"]
    assert "at least 32 bytes" in str(caught.value)
    assert str(value) not in str(caught.value)
