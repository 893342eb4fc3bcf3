"""Journal row ids stay what earlier versions wrote: a commit retried after an upgrade, or by
another worker of another version, must find its row by id and not count twice."""

from __future__ import annotations

import hashlib

from x402gate.gate.journal import _row_id


def test_a_row_id_is_its_outcome_and_the_sha256_of_its_key() -> None:
    key = (
        "eip155:84532|0x036cbd53842c5426634e7929541ec2318f3dcf7e|0x" + "ab" * 20 + "|0x" + "12" * 32
    )
    for outcome, name in (("settled", key), ("charged", "r-1"), ("channel_charge", "0xc|t")):
        digest = hashlib.sha256(name.encode()).hexdigest()
        assert _row_id(outcome, name) == f"{outcome}:{digest[:40]}"
    assert (
        _row_id("settled", "é" * 300)
        == "settled:" + hashlib.sha256(("é" * 300).encode()).hexdigest()[:40]
    )
