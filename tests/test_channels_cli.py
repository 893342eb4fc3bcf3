"""``x402gate channels``: arguments and refusals that need no chain (the refunds themselves are
tested on the local chain in ``tests/channels/test_refunds.py``)."""

from __future__ import annotations

import pytest

from x402gate.channels.cli.common import parse_duration
from x402gate.cli import main


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("12h") == 43200
    assert parse_duration(" 7D ") == 7 * 86400
    assert parse_duration("1.5d") == 1.5 * 86400
    assert parse_duration("2w") == 14 * 86400
    for bad in ("", "d", "7 days", "-1d", "1e3"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_an_empty_store_lists_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["channels", "list", "--store", "memory://"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("channel_id\tpayer\tbalance")
    assert len(out.splitlines()) == 1 and "0 channels" in err


def test_refusals(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    refund = ["channels", "refund", "--store", "memory://", "--facilitator", "http://127.0.0.1:9"]
    assert main([*refund, "--idle", "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err
    monkeypatch.delenv("X402GATE_TEST_KEY", raising=False)
    assert main([*refund, "--authorizer-key-env", "X402GATE_TEST_KEY", "--idle", "7d"]) == 2
    assert "X402GATE_TEST_KEY is not set" in capsys.readouterr().err
    assert main(["channels", "list", "--store", "nosuch://x"]) == 1
    assert "cannot open the store" in capsys.readouterr().err
    assert main(["channels"]) == 2
    with pytest.raises(SystemExit):
        main([*refund])  # a channel id or --idle is required
    with pytest.raises(SystemExit):
        main([*refund, "--idle", "7d", "0x" + "ab" * 32])
