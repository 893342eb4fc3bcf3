"""``settings.X402GATE["CHANNELS"]["CLAIM"]``: a Django site's background claimer collects what
its vouchers earned: after N paid requests the seller holds exactly the sum of the charges, read
from the chain."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.http import HttpRequest, JsonResponse
from django.urls import path

from x402gate import LocalFacilitator

from .conftest import django_server

pytestmark = pytest.mark.chain

PRICE = 1_000  # $0.001 in 6-decimal units
N = 3


def test_django_sites_claimer_collects_every_charge(
    chain: Any,
    test_token: Any,
    payer: Any,
    facilitator_account: Any,
    channel_contracts: Any,
    tmp_path: Any,
) -> None:
    from x402 import x402ClientSync
    from x402.http.clients import x402_requests
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.signers import EthAccountSigner

    from x402gate.django.conf import get_runtime
    from x402gate.testing.clients import spend_controls_for

    def paid(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"content": "PAID"})

    authorizer = chain.new_account()
    receiver = chain.new_account().address
    facilitator = LocalFacilitator(
        chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
    )
    settings = {
        "PAY_TO": receiver,
        "ASSETS": [test_token.asset],
        "FACILITATOR": facilitator,
        "STORE_URL": f"sqlite:///{tmp_path / 'django.db'}",
        "LIMIT_IN_FLIGHT": False,
        "ROUTES": {"GET /paid": "$0.001"},
        "CHANNELS": {
            "RECEIVER_AUTHORIZER_KEY": authorizer.key.hex(),
            "MIN_DEPOSIT": 30_000,
            "CLAIM": {"EVERY": 0.5, "TICK_SECONDS": 0.2, "LEASE_SECONDS": 5},
        },
    }
    client = x402ClientSync()
    client.register(test_token.asset.network, BatchSettlementEvmScheme(EthAccountSigner(payer)))
    client.set_spend_controls(spend_controls_for(test_token.asset))
    gate = None
    try:
        with django_server([path("paid", paid)], settings) as site:
            gate = get_runtime().gate
            with x402_requests(client) as session:
                for _ in range(N):
                    response = session.get(f"{site}/paid", timeout=60)
                    assert response.status_code == 200, response.text
            deadline = time.monotonic() + 60
            while test_token.balance_of(receiver) != N * PRICE:
                assert time.monotonic() < deadline, "the claimer did not collect in time"
                time.sleep(0.1)
            assert gate.claimer is not None and gate.claimer.rounds >= 1
            claimed = channel_contracts.receiver_account(receiver, test_token.address)
            assert claimed == (N * PRICE, N * PRICE)
    finally:
        if gate is not None and gate.claimer is not None:
            gate.claimer.stop()
        facilitator.close()
