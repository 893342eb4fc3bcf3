"""The demo is the main job on a fresh machine: it must run end to end and say so."""

from __future__ import annotations

import io

import pytest

pytestmark = pytest.mark.chain


def test_demo_buys_spends_credit_and_refuses_the_replay(local_chain: object) -> None:
    from x402gate.demo import run_demo

    out = io.StringIO()
    assert run_demo(out) == 0
    text = out.getvalue()
    lines = [line for line in text.splitlines() if line.startswith(("GET", "POST"))]
    assert [line.split()[0:2] for line in lines] == [
        ["GET", "/weather"],
        ["POST", "/summarize"],
        ["POST", "/v1/chat/completions"],
        ["POST", "/v1/chat/completions"],
        ["GET", "/weather"],
    ]
    assert "200 paid" in lines[0] and "200 paid" in lines[1]
    # 25 input + 60 output tokens at $3 / $15 per million: $0.000975 of the $0.05 top-up.
    assert "200 paid, used $0.000975, credit $0.049025" in lines[2]
    assert "200 from credit, used $0.000975, credit $0.04805" in lines[3]
    assert "402 invalid_exact_evm_nonce_already_used" in lines[4]
    assert "seller received $0.063 in 3 transactions" in text
