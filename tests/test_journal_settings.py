"""The journal's settings, as Flask and Django settings give them: on by default, retention
read from a mapping, and every mistake named with its key."""

from __future__ import annotations

import pytest

from x402gate.settings import SettingsError
from x402gate.settings.building import gate_from_flask_config
from x402gate.stores.journal import JournalRetention

BASE = {
    "X402GATE_PAY_TO": "0x" + "11" * 20,
    "X402GATE_NETWORK": "base-sepolia",
    "X402GATE_FACILITATOR_URL": "https://x402.org/facilitator",
    "X402GATE_STORE_URL": "memory://",
}


def test_the_journal_is_on_with_the_retention_given() -> None:
    gate = gate_from_flask_config({**BASE, "X402GATE_JOURNAL_RETENTION": {"days": 30}})
    try:
        assert gate.journal is True
        assert gate.store.journal_retention == JournalRetention(days=30, rows=None)
    finally:
        gate.close()
    off = gate_from_flask_config({**BASE, "X402GATE_JOURNAL": False})
    try:
        assert off.journal is False
    finally:
        off.close()


def test_mistakes_are_named_with_their_keys() -> None:
    with pytest.raises(SettingsError) as info:
        gate_from_flask_config(
            {**BASE, "X402GATE_JOURNAL": "no", "X402GATE_JOURNAL_RETENTION": {"weeks": 3}}
        )
    text = str(info.value)
    assert "X402GATE_JOURNAL must be True or False" in text
    assert "X402GATE_JOURNAL_RETENTION must be a mapping" in text
    with pytest.raises(SettingsError, match="positive"):
        gate_from_flask_config({**BASE, "X402GATE_JOURNAL_RETENTION": {"days": 0}})
