"""A settled answer that never went out whole, behind the WSGI adapter on a real server.

The payment is settled and its claim marked used as the answer starts; then the answer breaks
off (the app's body fails after its first chunk, the way a server that cannot write ends it:
the iterable is closed before its end). No complete paid answer was handed to the server, so
the claim is handed over at once and the buyer's retry of the same payment is served, without
a second transfer; the retry after that is a replay. With a payment identifier the same holds:
the broken answer is not kept as "processed", and the retry with the same identifier is served.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from x402.http import decode_payment_response_header

from x402gate import PaymentGate
from x402gate._runner import run_sync
from x402gate.integrations.wsgi import PaymentMiddleware
from x402gate.stores import replay_key
from x402gate.testing.payments import decode_payment_required, sign_exact_payment
from x402gate.testing.servers import serve_wsgi

from ._support import payment_headers

pytestmark = pytest.mark.chain

REPLAY = "invalid_exact_evm_nonce_already_used"
CHUNKS = [b"part-0\n", b"part-1\n", b"part-2\n"]


def _app(runs: collections.Counter[str]) -> Any:
    def body(broken: bool) -> Iterator[bytes]:
        yield CHUNKS[0]
        if broken:
            raise OSError("the answer broke off")
        yield from CHUNKS[1:]

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        runs["report"] += 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body(broken=runs["report"] == 1)

    return app


def _with_payment_id(payload: Any, declared: Any, payment_id: str) -> Any:
    from x402.extensions import payment_identifier

    extensions = json.loads(json.dumps(declared or {}))
    payment_identifier.append_payment_identifier_to_extensions(extensions, payment_id)
    return payload.model_copy(update={"extensions": extensions})


@pytest.mark.parametrize("payment_id", [None, "pay_broken_answer_0123456789"])
def test_an_answer_broken_off_after_settling_serves_the_retry_once(
    payment_id: str | None,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    local_facilitator: Any,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    gate = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=local_facilitator,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
        reconcile=chain.rpc_url,
    )
    runs: collections.Counter[str] = collections.Counter()
    app = PaymentMiddleware(_app(runs), gate=gate, routes={"GET /report": "$0.01"})
    sent_before = chain.tx_count(facilitator_account.address)
    received_before = test_token.balance_of(pay_to)
    try:
        with serve_wsgi(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
            challenge = client.get("/report")
            assert challenge.status_code == 402
            accepts = decode_payment_required(challenge.headers["payment-required"])
            payload = sign_exact_payment(payer, accepts.accepts[0])
            if payment_id is not None:
                payload = _with_payment_id(payload, accepts.extensions, payment_id)
            with pytest.raises(httpx.TransportError):
                client.get("/report", headers=payment_headers(payload))
            assert runs["report"] == 1
            assert test_token.balance_of(pay_to) - received_before == 10_000  # paid
            nonce = payload.payload["authorization"]["nonce"]
            key = replay_key(test_token.asset.network, test_token.address, payer.address, nonce)
            deadline = time.monotonic() + 10
            while gate.store.state(key, time.time()) != "held":  # handed over, not "sending"
                assert time.monotonic() < deadline, gate.store.state(key, time.time())
                time.sleep(0.02)

            retry = client.get("/report", headers=payment_headers(payload))
            assert retry.status_code == 200, retry.text
            assert retry.content == b"".join(CHUNKS)
            receipt = decode_payment_response_header(retry.headers["payment-response"])
            assert receipt.success and receipt.payer == payer.address
            assert runs["report"] == 2

            again = client.get("/report", headers=payment_headers(payload))
            if payment_id is None:
                assert again.status_code == 402
                assert again.json()["error"] == REPLAY
                assert b"part-" not in again.content
            else:
                # The answer kept for the identifier is the one delivered, replayed as it was.
                assert again.status_code == 200
                assert again.content == b"".join(CHUNKS)
            assert gate.store.state(key, time.time()) == "used"
    finally:
        run_sync(gate.aclose())

    assert runs["report"] == 2
    assert chain.tx_count(facilitator_account.address) == sent_before + 1  # one transfer
    assert test_token.balance_of(pay_to) - received_before == 10_000
