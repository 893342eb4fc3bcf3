"""A paid answer that is still streaming is never answered a second time from the chain.

Once settled, a claim is "sending" until its whole answer was handed to the server; a retry of
the payment is served in its place only when the request stopped showing signs of life for the
reconciler's grace time. A long answer renews that sign of life while it runs: here an answer
streams for six seconds with a grace of three, the transfer is far older than the grace in the
chain's clock, and the buyer retries the same payment in the middle of the stream. The retry is
a replay; the stream ends whole; the handler ran once for one transfer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from x402gate.stores import open_store, replay_key
from x402gate.testing.payments import decode_payment_required, sign_exact_payment

from ._support import UvicornProcess, app_env, handler_runs, payment_headers
from .served_app import ENV_OWNER_GRACE, PAID_CONTENT, SLOW_CHUNKS, SLOW_INTERVAL

pytestmark = [pytest.mark.chain, pytest.mark.slow]

GRACE = 3.0
REPLAY = "invalid_exact_evm_nonce_already_used"


def test_a_retry_during_a_long_answer_is_a_replay_not_a_second_answer(
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    assert (SLOW_CHUNKS - 1) * SLOW_INTERVAL > GRACE + 1.5  # the answer outlives the grace
    runs = tmp_path / "handler-runs"
    store_url = f"sqlite:///{tmp_path / 'replay.db'}"
    env = app_env(
        rpc_url=chain.rpc_url,
        facilitator_key=facilitator_account.key.hex(),
        token=test_token.address,
        pay_to=pay_to,
        store=store_url,
        runs=runs,
    )
    env[ENV_OWNER_GRACE] = str(GRACE)
    sent_before = chain.tx_count(facilitator_account.address)
    received_before = test_token.balance_of(pay_to)

    with (
        UvicornProcess(env) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
        httpx.Client(base_url=server.url, timeout=60) as retrier,
    ):
        challenge = client.get("/slow")
        assert challenge.status_code == 402
        accepts = decode_payment_required(challenge.headers["payment-required"])
        payload = sign_exact_payment(payer, accepts.accepts[0])
        nonce = payload.payload["authorization"]["nonce"]
        key = replay_key("eip155:31337", test_token.address, payer.address, nonce)
        with client.stream("GET", "/slow", headers=payment_headers(payload)) as answer:
            assert answer.status_code == 200
            lines = answer.iter_lines()
            received = [next(lines)]
            started = time.monotonic()
            store = open_store(store_url)
            try:
                assert store.state(key, time.time()) == "sending"
            finally:
                store.close()
            # The transfer is old enough in the chain's clock; without renewals the claim's
            # last sign of life would be older than the grace by now.
            chain.rpc("evm_increaseTime", [int(GRACE) * 10])
            chain.rpc("evm_mine")
            time.sleep(max(0.0, GRACE + 1.0 - (time.monotonic() - started)))
            retry = retrier.get("/slow", headers=payment_headers(payload))
            assert retry.status_code == 402, retry.text
            assert retry.json()["error"] == REPLAY
            assert PAID_CONTENT not in retry.text
            received.extend(lines)
        assert received == [f"{PAID_CONTENT} {n}" for n in range(SLOW_CHUNKS)]
        deadline = time.monotonic() + 10
        store = open_store(store_url)
        try:
            while store.state(key, time.time()) != "used":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            store.close()
        time.sleep(GRACE)  # past any grace and look-up interval: the record alone refuses it
        again = retrier.get("/slow", headers=payment_headers(payload))
        assert again.status_code == 402
        assert again.json()["error"] == REPLAY

    assert len(handler_runs(runs)) == 1
    assert chain.tx_count(facilitator_account.address) == sent_before + 1
    assert test_token.balance_of(pay_to) - received_before == 10_000
