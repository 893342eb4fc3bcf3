"""Webhooks in the gateway file: endpoints reach the gate and its store's outbox, and each
mistake is named with the file, the line and the field, without the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from x402gate.gateway import Gateway, GatewayConfigError, load_config

from .test_config import BASE, ENV

SECRET = "whsec-0123456789abcdef-hidden"
WEBHOOKS = f"""\
webhooks:
  - url: https://books.example.com/hooks
    secret: {SECRET}
  - url: http://127.0.0.1:9000/alerts
    secret: ${{ALERT_SECRET}}
    events: [refused, error]
    name: alerts
webhook_delivery:
  max_attempts: 5
  backoff_seconds: 2
"""


def test_endpoints_reach_the_gate_and_the_store(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE.replace("sqlite:///x402gate.db", "memory://") + WEBHOOKS)
    config = load_config(path, env={**ENV, "ALERT_SECRET": "alert-secret-0123456789"})
    assert [(w.name, w.events) for w in config.webhooks] == [
        (
            "https://books.example.com/hooks",
            ("settled", "charged", "refunded", "channel_charge", "claim", "settle"),
        ),
        ("alerts", ("refused", "error")),
    ]
    assert SECRET not in repr(config)
    app = Gateway(config)
    try:
        deliverer = app.gate.webhooks
        assert deliverer is not None
        assert deliverer.max_attempts == 5 and deliverer.backoff_seconds == 2.0
        targets = {t.endpoint: t.outcomes for t in app.gate.store.outbox_targets}
        assert targets["alerts"] == frozenset({"refused", "error"})
    finally:
        app.gate.close()


@pytest.mark.parametrize(
    ("old", "new", "field", "fragment"),
    [
        ("https://books.example.com/hooks", "ftp://books.example.com/x", "webhooks[0].url", "http"),
        (f"secret: {SECRET}", "secret: short", "webhooks[0].secret", "16 characters"),
        ("events: [refused, error]", "events: [paid]", "webhooks[1].events", "among"),
        ("name: alerts", "name: https://books.example.com/hooks", "webhooks[1]", "second"),
        ("max_attempts: 5", "max_attempts: 0", "webhook_delivery.max_attempts", ""),
    ],
)
def test_mistakes_are_named_at_their_line(
    old: str, new: str, field: str, fragment: str, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    text = BASE + WEBHOOKS
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(GatewayConfigError) as caught:
        load_config(path, env={**ENV, "ALERT_SECRET": "alert-secret-0123456789"})
    error = caught.value
    (problem,) = [p for p in error.problems if p.field == field]
    assert fragment in problem.message
    assert problem.line is not None and problem.line > BASE.count("\n")
    assert str(error).startswith(f"{path}:{problem.line}: ")
    assert SECRET not in str(error)
