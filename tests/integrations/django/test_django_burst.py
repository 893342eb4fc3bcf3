"""x402gate.django under a real server: a wallet that can pay K times sends 50 paid requests at
once, each with its own authorization; the view runs at most K times, all of them paid."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from x402gate import PaymentGate
from x402gate.testing.burst import requirements_of, send_burst

from .conftest import django_server

pytestmark = pytest.mark.chain

PRICE = 10_000
K = 3
BURST = 50


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
async def test_a_burst_runs_the_view_at_most_as_often_as_the_wallet_can_pay(
    asgi: bool, gate: PaymentGate, chain: Any, test_token: Any, pay_to: str
) -> None:
    payer = chain.new_account(eth_wei=0, token=test_token, token_amount=K * PRICE)
    runs: list[str] = []
    lock = threading.Lock()

    def paid(request: HttpRequest) -> HttpResponse:
        with lock:
            runs.append(request.payment.payer)
        time.sleep(0.2)  # the burst arrives while the first views run
        return JsonResponse({"content": "PAID"})

    settings = {"GATE": gate, "ROUTES": {"GET /paid": "$0.01"}}
    with django_server([path("paid", paid)], settings, asgi=asgi) as site:
        requirements = await requirements_of(site, "/paid")
        result = await send_burst(site, "/paid", payer, requirements, BURST)
    settled = result.settled(test_token)
    assert len(runs) == settled == result.served == K
    assert test_token.balance_of(pay_to) == K * PRICE
    assert test_token.balance_of(payer.address) == 0
    refusals = result.refusals()
    assert sum(refusals.values()) == BURST - K
    assert {status for status, _ in refusals} == {402}, refusals
    assert {code for _, code in refusals} <= {"payments_in_flight", "insufficient_funds"}
