"""A voucher's payment response is the SDK's ``SettleResponse``, written without the model."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any, cast

from x402.schemas import SettleResponse

from x402gate.gate.channels import _receipt
from x402gate.schemes.batch_settlement import ChannelView


def test_the_receipt_is_what_the_sdk_model_dumps_and_parses_back() -> None:
    session = SimpleNamespace(
        payment=SimpleNamespace(payer="0x" + "Ab" * 20),
        requirements=SimpleNamespace(network="eip155:84532"),
    )
    view = ChannelView("0x" + "12" * 32, 100_000, 2_000, 7_000)
    header = _receipt(cast(Any, session), view, 1_000)["PAYMENT-RESPONSE"]
    document = json.loads(base64.b64decode(header))
    model = SettleResponse.model_validate(document)
    assert model.model_dump(mode="json", by_alias=True, exclude_none=True) == document
    assert list(document) == list(
        SettleResponse(
            success=True, transaction="", network="eip155:84532", payer="0x", extra={}
        ).model_dump(mode="json", by_alias=True, exclude_none=True)
    )
    assert model.success and model.payer == "0x" + "Ab" * 20
    assert document["extra"]["chargedAmount"] == "1000"
    state = document["extra"]["channelState"]
    assert state["chargedCumulativeAmount"] == "8000"
    assert (state["balance"], state["totalClaimed"]) == ("100000", "2000")
