"""``x402gate channels``: arguments and refusals that need no chain (the refunds themselves are
tested on the local chain in ``tests/channels/test_refunds.py``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from x402gate.channels.cli.common import parse_duration
from x402gate.cli import main
from x402gate.stores import open_store


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


def test_claim_refuses_while_a_servers_claimer_holds_the_stores_lease(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cron job claiming from flags (no gateway file, so no receivers to go by) and a
    server's background claimer on the same store take one lease: never both claim."""
    from x402gate import PaymentGate
    from x402gate.channels import ClaimSettings
    from x402gate.facilitators import HTTPFacilitator
    from x402gate.gate import ChannelSettings
    from x402gate.gate.startup import start_claimer

    store_url = f"sqlite:///{tmp_path / 'gate.db'}"
    nowhere = "http://127.0.0.1:9"  # nothing is claimable: the facilitator is never asked
    gate = PaymentGate(
        pay_to="0x" + "12" * 20,
        network="base-sepolia",
        facilitator=HTTPFacilitator(nowhere),
        store=store_url,
        startup_checks="off",
        channels=ChannelSettings(
            receiver_authorizer="0x" + "34" * 20,
            claim=ClaimSettings(every=3600, tick_seconds=0.05, lease_seconds=30),
        ),
    )
    claim = ["channels", "claim", "--store", store_url, "--facilitator", nowhere]
    claim += ["--network", "eip155:84532", "--json"]
    try:
        start_claimer(gate)  # what the gate's start-up does in every server process
        claimer = gate.claimer
        assert claimer is not None
        deadline = time.monotonic() + 20
        while gate.store.lease_holder(claimer.name, time.time()) != claimer.holder:
            assert time.monotonic() < deadline, "the server's claimer never took the lease"
            time.sleep(0.05)

        assert main(claim) == 3
        out, err = capsys.readouterr()
        assert out == ""
        assert f"claim lease is held by {claimer.holder}" in err and "nothing done" in err
        # The server keeps its lease: the refused command took nothing from it.
        assert gate.store.lease_holder(claimer.name, time.time()) == claimer.holder
    finally:
        gate.close()  # stops the claimer, which frees the lease

    with open_store(store_url) as store:
        assert store.lease_holder(claimer.name, time.time()) is None
        assert main(claim) == 0
        outcome = json.loads(capsys.readouterr().out)
        assert outcome["channels"] == 0 and outcome["failures"] == []
        # The command frees the lease when it is done: the servers' claimers take it again.
        assert store.lease_holder(claimer.name, time.time()) is None
