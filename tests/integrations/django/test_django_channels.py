"""``settings.X402GATE["CHANNELS"]``: a Django site takes ``batch-settlement`` vouchers.

The official ``requests`` client opens one channel with one deposit and pays N requests with
vouchers; the store's charged total and the escrow's balance on the local chain agree.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import requests
from django.http import HttpRequest, JsonResponse
from django.urls import path

from x402gate import LocalFacilitator

from .conftest import django_server

PRICE = 1_000  # $0.001 in 6-decimal units
DEPOSIT_FLOOR = 30_000
N = 3


def _decode(header: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(header))
    return decoded


def test_django_site_from_its_settings_is_paid_by_one_deposit_and_vouchers(
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

    runs: list[str] = []

    def paid(request: HttpRequest) -> JsonResponse:
        runs.append("paid")
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
        # Django's spelling: upper-case keys, as in the rest of X402GATE.
        "CHANNELS": {
            "RECEIVER_AUTHORIZER": authorizer.address,
            "MIN_DEPOSIT": DEPOSIT_FLOOR,
            "WITHDRAW_DELAY": 1800,
        },
    }
    client = x402ClientSync()
    client.register(test_token.asset.network, BatchSettlementEvmScheme(EthAccountSigner(payer)))
    client.set_spend_controls(spend_controls_for(test_token.asset))
    with django_server([path("paid", paid)], settings) as site:
        challenge = requests.get(f"{site}/paid", timeout=30)
        assert challenge.status_code == 402
        accepts = _decode(challenge.headers["payment-required"])["accepts"]
        assert [a["scheme"] for a in accepts] == ["exact", "batch-settlement"]
        assert accepts[1]["extra"]["receiverAuthorizer"] == authorizer.address
        assert accepts[1]["extra"]["withdrawDelay"] == 1800
        with x402_requests(client) as session:
            for step in range(1, N + 1):
                response = session.get(f"{site}/paid", timeout=60)
                assert response.status_code == 200, response.text
                state = _decode(response.headers["payment-response"])["extra"]["channelState"]
                assert state["chargedCumulativeAmount"] == str(step * PRICE)
        stored = get_runtime().gate.store.channel_get(state["channelId"])
    assert runs == ["paid"] * N
    on_chain = channel_contracts.channel(state["channelId"])
    assert on_chain.balance >= DEPOSIT_FLOOR
    assert on_chain.total_claimed == 0
    assert stored is not None and stored.charged == N * PRICE
    assert stored.balance == on_chain.balance


def test_a_wrong_channels_setting_is_named_by_its_django_key(tmp_path: Any) -> None:
    from x402gate.settings import SettingsError, read_django_setting

    with pytest.raises(SettingsError) as caught:
        read_django_setting(
            {
                "PAY_TO": "0x" + "22" * 20,
                "NETWORK": "base-sepolia",
                "FACILITATOR_URL": "https://x402.org/facilitator",
                "CHANNELS": {"RECEIVER_AUTHORIZER": "facilitator", "MIN_DEPOSITS": 5},
            }
        )
    assert str(caught.value) == (
        "settings.X402GATE: CHANNELS: MIN_DEPOSITS is not a channel setting "
        "(did you mean 'MIN_DEPOSIT'?)"
    )
