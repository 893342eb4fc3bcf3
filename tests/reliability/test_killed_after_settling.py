"""A server process killed (SIGKILL) the moment its settlement succeeded, before it recorded or
answered anything: the buyer paid and got a dropped connection.

:mod:`served_app` runs in a uvicorn process of its own with an SQLite store; with
``X402GATE_TEST_DIE_SETTLED`` it kills itself right after the facilitator's successful answer.
The server is started again on the same store, and the buyer retries the same payment: it is
served once (the paid route's content, or a metered route's answer with the top-up credited
once), without a second transfer, and the retry after that is a replay.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from x402.http import decode_payment_response_header

from x402gate.credit import SESSION_HEADER
from x402gate.testing.payments import decode_payment_required, sign_exact_payment

from ._support import UvicornProcess, app_env, handler_runs, payment_headers
from .served_app import (
    ENV_DIE_ANSWERING,
    ENV_DIE_SETTLED,
    ENV_OWNER_GRACE,
    METERED_CHARGE,
    METERED_TOPUP,
    PAID_CONTENT,
)

pytestmark = [pytest.mark.chain, pytest.mark.slow]

PRICE = 10_000
GRACE = 2  # seconds the killed request's claim is left to it (the default is 60)
REPLAY = "invalid_exact_evm_nonce_already_used"
BODY = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}


def _wait_dead(server: UvicornProcess, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while server.alive():
        assert time.monotonic() < deadline, "the server did not die"
        time.sleep(0.02)


@pytest.mark.parametrize(("method", "path"), [("GET", "/paid"), ("POST", "/metered")])
def test_a_process_killed_after_settling_serves_the_retry_once_after_restart(
    method: str,
    path: str,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    runs = tmp_path / "handler-runs"
    env = app_env(
        rpc_url=chain.rpc_url,
        facilitator_key=facilitator_account.key.hex(),
        token=test_token.address,
        pay_to=pay_to,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
        runs=runs,
    )
    env[ENV_OWNER_GRACE] = str(GRACE)
    body = BODY if method == "POST" else None
    sent_before = chain.tx_count(facilitator_account.address)
    received_before = test_token.balance_of(pay_to)

    with UvicornProcess({**env, ENV_DIE_SETTLED: "1"}) as dying:
        with httpx.Client(base_url=dying.url, timeout=60) as client:
            challenge = client.request(method, path, json=body)
            assert challenge.status_code == 402
            accepts = decode_payment_required(challenge.headers["payment-required"])
            payload = sign_exact_payment(payer, accepts.accepts[0])
            with pytest.raises(httpx.TransportError):
                client.request(method, path, json=body, headers=payment_headers(payload))
        _wait_dead(dying)
    nonce = payload.payload["authorization"]["nonce"]
    assert test_token.authorization_state(payer.address, nonce)  # paid...
    paid = test_token.balance_of(pay_to) - received_before
    assert paid == (METERED_TOPUP if path == "/metered" else PRICE)
    # ...and unanswered: the handler ran (settlement happens as its answer starts), its answer
    # died with the process.
    assert len(handler_runs(runs)) == 1

    with (
        UvicornProcess(env) as restarted,
        httpx.Client(base_url=restarted.url, timeout=60) as client,
    ):
        # The killed request's claim is left to it for the grace time after its block, in the
        # chain's clock: let the chain move on that long.
        early = client.request(method, path, json=body, headers=payment_headers(payload))
        assert early.status_code == 402 and early.json()["error"] == REPLAY
        chain.rpc("evm_increaseTime", [GRACE + 1])
        chain.rpc("evm_mine")
        time.sleep(2.1)  # one chain read per claim per 2 s: the early retry had this one
        retry = client.request(method, path, json=body, headers=payment_headers(payload))
        assert retry.status_code == 200, retry.text
        assert retry.json()["secret"] == PAID_CONTENT
        receipt = decode_payment_response_header(retry.headers["payment-response"])
        assert receipt.success and receipt.payer == payer.address
        if path == "/metered":
            credit = client.get(
                "/.well-known/x402/credit", headers={SESSION_HEADER: retry.headers[SESSION_HEADER]}
            )
            # The top-up was credited once, and this answer charged once.
            assert credit.status_code == 200, credit.text
            assert credit.json()["available"] == str(METERED_TOPUP - METERED_CHARGE)
        again = client.request(method, path, json=body, headers=payment_headers(payload))
        assert again.status_code == 402
        assert again.json()["error"] == REPLAY
        assert PAID_CONTENT not in again.text
        if path == "/metered":
            credit = client.get(
                "/.well-known/x402/credit", headers={SESSION_HEADER: retry.headers[SESSION_HEADER]}
            )
            assert credit.json()["available"] == str(METERED_TOPUP - METERED_CHARGE)

    assert len(handler_runs(runs)) == 2  # the lost answer, and the retry served
    assert chain.tx_count(facilitator_account.address) == sent_before + 1  # one transfer
    assert test_token.balance_of(pay_to) - received_before == paid


@pytest.mark.parametrize(
    ("method", "path", "payment_id"),
    [
        ("GET", "/paid", None),
        ("POST", "/metered", None),
        ("GET", "/paid", "pay_killed_answering_0123456789"),
    ],
)
def test_a_process_killed_after_marking_used_before_the_body_serves_the_retry_once(
    method: str,
    path: str,
    payment_id: str | None,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    """Killed later still: the claim was marked used and the answer's headers went out, but not
    its body. No completed answer was recorded, so the retry is served once all the same."""
    from x402gate.stores import open_store, replay_key

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
    body = BODY if method == "POST" else None
    sent_before = chain.tx_count(facilitator_account.address)
    received_before = test_token.balance_of(pay_to)

    with UvicornProcess({**env, ENV_DIE_ANSWERING: "1"}) as dying:
        with httpx.Client(base_url=dying.url, timeout=60) as client:
            challenge = client.request(method, path, json=body)
            assert challenge.status_code == 402
            accepts = decode_payment_required(challenge.headers["payment-required"])
            payload = sign_exact_payment(payer, accepts.accepts[0])
            if payment_id is not None:
                # The killed request reserved the identifier: its record stays pending.
                payload = _with_payment_id(payload, accepts.extensions, payment_id)
            with pytest.raises(httpx.TransportError):
                client.request(method, path, json=body, headers=payment_headers(payload))
        _wait_dead(dying)
    nonce = payload.payload["authorization"]["nonce"]
    assert test_token.authorization_state(payer.address, nonce)
    paid = test_token.balance_of(pay_to) - received_before
    assert paid == (METERED_TOPUP if path == "/metered" else PRICE)
    assert len(handler_runs(runs)) == 1
    # Marked used by the killed request, with its answer still on the way.
    key = replay_key("eip155:31337", test_token.address, payer.address, nonce)
    store = open_store(store_url)
    try:
        assert store.state(key, time.time()) == "sending"
    finally:
        store.close()

    with (
        UvicornProcess(env) as restarted,
        httpx.Client(base_url=restarted.url, timeout=60) as client,
    ):
        early = client.request(method, path, json=body, headers=payment_headers(payload))
        if payment_id is None:
            assert early.status_code == 402 and early.json()["error"] == REPLAY
        else:
            assert early.status_code == 409
            assert early.json()["error"] == "payment_identifier_in_progress"
        assert PAID_CONTENT not in early.text
        chain.rpc("evm_increaseTime", [GRACE + 1])
        chain.rpc("evm_mine")
        time.sleep(2.1)  # one chain read per claim per 2 s, and the killed request's grace
        retry = client.request(method, path, json=body, headers=payment_headers(payload))
        assert retry.status_code == 200, retry.text
        assert retry.json()["secret"] == PAID_CONTENT
        receipt = decode_payment_response_header(retry.headers["payment-response"])
        assert receipt.success and receipt.payer == payer.address
        if path == "/metered":
            credit = client.get(
                "/.well-known/x402/credit", headers={SESSION_HEADER: retry.headers[SESSION_HEADER]}
            )
            assert credit.status_code == 200, credit.text
            # The top-up was credited once and this answer charged once; the killed request's
            # hold of its quote returns to the payer when it expires (credit_ttl_seconds).
            balance = credit.json()
            dead_hold = int(balance["reserved"])
            assert 0 < dead_hold < METERED_TOPUP - METERED_CHARGE
            assert int(balance["available"]) + dead_hold == METERED_TOPUP - METERED_CHARGE
        time.sleep(2.1)  # past the look-up interval: only the recorded answer refuses it now
        again = client.request(method, path, json=body, headers=payment_headers(payload))
        if payment_id is None:
            assert again.status_code == 402
            assert again.json()["error"] == REPLAY
            assert PAID_CONTENT not in again.text
        else:  # the answer kept for the identifier, replayed without running the handler
            assert again.status_code == 200
            assert again.json() == retry.json()
        if path == "/metered":
            credit = client.get(
                "/.well-known/x402/credit", headers={SESSION_HEADER: retry.headers[SESSION_HEADER]}
            )
            assert credit.json() == balance
    store = open_store(store_url)
    try:
        assert store.state(key, time.time()) == "used"  # the retry's answer was delivered
    finally:
        store.close()

    assert len(handler_runs(runs)) == 2  # the lost answer, and the retry served
    assert chain.tx_count(facilitator_account.address) == sent_before + 1  # one transfer
    assert test_token.balance_of(pay_to) - received_before == paid


def _with_payment_id(payload: Any, declared: Any, payment_id: str) -> Any:
    from x402.extensions import payment_identifier

    extensions = json.loads(json.dumps(declared or {}))
    payment_identifier.append_payment_identifier_to_extensions(extensions, payment_id)
    return payload.model_copy(update={"extensions": extensions})
