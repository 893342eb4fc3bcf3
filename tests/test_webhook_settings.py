"""Webhook settings as Flask and Django give them, and the pieces a receiver relies on: the
signature scheme, the endpoint checks (configuration only, http(s) only) and the backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from x402gate.cli import main
from x402gate.errors import ConfigurationError
from x402gate.settings import SettingsError
from x402gate.settings.building import build_gate, gate_from_flask_config
from x402gate.settings.reading import read_django_setting
from x402gate.stores import open_store
from x402gate.stores.journal import JournalRow
from x402gate.stores.memory import MemoryStore
from x402gate.webhooks import WebhookDeliverer, WebhookEndpoint, event_body, verify_signature

BASE = {
    "X402GATE_PAY_TO": "0x" + "11" * 20,
    "X402GATE_NETWORK": "base-sepolia",
    "X402GATE_FACILITATOR_URL": "https://x402.org/facilitator",
    "X402GATE_STORE_URL": "memory://",
}

SECRET = "whsec-0123456789abcdef"
HOOK = {"url": "https://books.example.com/hooks", "secret": SECRET, "events": ["settled"]}


def test_flask_and_django_settings_configure_the_outbox_and_the_deliverer() -> None:
    gate = gate_from_flask_config(
        {**BASE, "X402GATE_WEBHOOKS": [HOOK], "X402GATE_WEBHOOK_DELIVERY": {"max_attempts": 4}}
    )
    try:
        assert gate.webhooks is not None and gate.webhooks.max_attempts == 4
        (target,) = gate.store.outbox_targets
        assert (target.endpoint, target.outcomes) == (HOOK["url"], frozenset({"settled"}))
    finally:
        gate.close()
    django = {key.removeprefix("X402GATE_"): value for key, value in BASE.items()}
    gate, _ = build_gate(read_django_setting({**django, "WEBHOOKS": [HOOK]}))
    try:
        assert gate.webhooks is not None and gate.webhooks.max_attempts == 12
    finally:
        gate.close()


def test_mistakes_are_named_with_their_keys() -> None:
    with pytest.raises(SettingsError) as info:
        gate_from_flask_config(
            {
                **BASE,
                "X402GATE_WEBHOOKS": [{**HOOK, "url": "file:///etc/passwd"}],
                "X402GATE_WEBHOOK_DELIVERY": {"max_attempts": "many"},
            }
        )
    text = str(info.value)
    assert "X402GATE_WEBHOOKS: a webhook url must be http(s)://host/" in text
    assert "X402GATE_WEBHOOK_DELIVERY: webhook delivery max_attempts must be a whole" in text
    with pytest.raises(SettingsError, match="16 characters"):
        gate_from_flask_config({**BASE, "X402GATE_WEBHOOKS": [{**HOOK, "secret": "short"}]})
    assert SECRET not in repr(WebhookEndpoint(**HOOK))  # type: ignore[arg-type]


def test_the_signature_is_the_documented_hmac() -> None:
    row = JournalRow("settled:1", 1_700_000_000.5, "GET /a", "0xab", 10_000, "0xcd", "n", "settled")
    body = event_body(row)
    assert json.loads(body)["data"]["amount"] == "10000"
    stamp = str(int(time.time()))
    # What a receiver in any language computes: hex HMAC-SHA256 of "<timestamp>.<body>".
    mac = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert verify_signature(SECRET, body, stamp, f"v1={mac}")
    other = mac[:-1] + ("1" if mac[-1] == "0" else "0")
    assert not verify_signature(SECRET, body, stamp, f"v1={other}")
    assert not verify_signature(SECRET, body, None, f"v1={mac}")
    assert not verify_signature(SECRET, body, stamp, None)
    assert not verify_signature(SECRET, body, str(int(stamp) - 301), f"v1={mac}")


def test_backoff_doubles_with_jitter_up_to_its_ceiling() -> None:
    deliverer = WebhookDeliverer(MemoryStore(), [], backoff_seconds=1.0, max_backoff_seconds=60.0)
    for attempts, ceiling in ((1, 2.0), (3, 8.0), (5, 32.0), (9, 60.0), (500, 60.0)):
        waits = [deliverer.backoff(attempts) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert max(waits) - min(waits) > ceiling / 10  # jittered, not one fixed wait


class _Clock:
    def __init__(self, now: float) -> None:
        self.value = now

    def now(self) -> float:
        return self.value


def test_an_event_older_than_the_age_limit_is_dead_after_one_more_failure() -> None:
    store = MemoryStore()
    endpoint = WebhookEndpoint("http://127.0.0.1:9/hooks", SECRET)  # discard port: refused
    store.outbox_targets = (endpoint.target(),)
    clock = _Clock(1_000.0)
    store.journal_append(JournalRow("settled:1", 1_000.0, "r", "p", 1, "a", "n", "settled"))
    deliverer = WebhookDeliverer(
        store, [endpoint], max_age_seconds=3600, timeout_seconds=2, clock=clock
    )
    try:
        deliverer.deliver_once()
        assert store.outbox_pending() == 1 and store.outbox_dead_rows() == []
        clock.value = 1_000.0 + 3600
        deliverer.deliver_once()
        (dead,) = store.outbox_dead_rows()
        assert dead.event == "settled:1" and dead.attempts == 2 and store.outbox_pending() == 0
    finally:
        deliverer.stop()


@pytest.mark.parametrize(
    "url",
    ["ftp://h/x", "http:///x", "http://user:pw@h/x", "javascript:alert(1)", "/relative"],
)
def test_only_http_urls_with_a_host_are_endpoints(url: str) -> None:
    with pytest.raises(ConfigurationError):
        WebhookEndpoint(url, SECRET)


def test_the_command_shows_pending_and_dead_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with open_store(url) as store:
        store.outbox_targets = (WebhookEndpoint("https://h.example/x", SECRET).target(),)
        for i in range(3):
            store.journal_append(
                JournalRow(f"settled:{i}", 1_000.0 + i, "r", "p", 7, "a", "n", "settled")
            )
        store.outbox_retry("https://h.example/x", "settled:0", 2_000.0, "HTTP 503")
        store.outbox_dead("https://h.example/x", "settled:0", 2_000.0, "HTTP 503")
    assert main(["webhooks", "--store", url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pending"] == 2
    (dead,) = shown["dead"]
    assert (dead["event"], dead["attempts"], dead["error"], dead["amount"]) == (
        "settled:0",
        1,
        "HTTP 503",
        "7",
    )
    assert main(["webhooks", "--store", url]) == 0
    text = capsys.readouterr().out
    assert "pending: 2" in text and "settled:0" in text and "attempts=1" in text
    assert main(["webhooks", "--store", "nowhere://x"]) == 1


def test_the_memory_store_says_its_outbox_is_lost_on_restart(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level("WARNING", logger="x402gate"):
        gate = gate_from_flask_config({**BASE, "X402GATE_WEBHOOKS": [HOOK]})
        gate.close()
    assert "lost on restart" in caplog.text
    caplog.clear()
    sqlite = {**BASE, "X402GATE_STORE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    with caplog.at_level("WARNING", logger="x402gate"):
        gate = gate_from_flask_config({**sqlite, "X402GATE_WEBHOOKS": [HOOK]})
        gate.close()
    assert "lost on restart" not in caplog.text
