"""The demo is the main job on a fresh machine: it must run end to end and say so."""

from __future__ import annotations

import io

import pytest

pytestmark = pytest.mark.chain


def test_demo_buys_twice_and_refuses_the_replay(local_chain: object) -> None:
    from x402gate.demo import run_demo

    out = io.StringIO()
    assert run_demo(out) == 0
    text = out.getvalue()
    lines = [line for line in text.splitlines() if line.startswith(("GET", "POST"))]
    assert [line.split()[0:2] for line in lines] == [
        ["GET", "/weather"],
        ["POST", "/summarize"],
        ["GET", "/weather"],
    ]
    assert "200 paid" in lines[0] and "200 paid" in lines[1]
    assert "402 invalid_exact_evm_nonce_already_used" in lines[2]
    assert "seller received $0.013 in 2 transactions" in text
