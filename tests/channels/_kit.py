"""What the gate-with-channels tests share: the official facilitator behind the gate, the
official client, and vouchers signed by the test for a channel a store knows.

The fixtures built on these (``receiver_authorizer``, ``facilitator``) are in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.stores import Store
    from x402gate.testing import TestToken

__all__ = [
    "DEPOSIT_FLOOR",
    "PRICE",
    "SdkFacilitator",
    "channel_client",
    "decode",
    "open_channel",
    "voucher_header",
]

PRICE = 1_000  # $0.001 in 6-decimal units
DEPOSIT_FLOOR = 100_000


class SdkFacilitator:
    """The official batch-settlement facilitator behind the gate's async facilitator calls."""

    def __init__(self, inner: Any, network: str) -> None:
        self.inner = inner
        self.network = network
        self.verified = 0
        self.settled = 0
        self.down = False

    async def verify(self, payload: Any, requirements: Any) -> Any:
        self.verified += 1
        return await asyncio.to_thread(self.inner.verify, payload, requirements)

    async def settle(self, payload: Any, requirements: Any) -> Any:
        if self.down:
            from x402gate.errors import FacilitatorUnavailable

            raise FacilitatorUnavailable("facilitator down")
        self.settled += 1
        return await asyncio.to_thread(self.inner.settle, payload, requirements)

    async def supported(self) -> Any:
        from x402.schemas import SupportedKind, SupportedResponse

        kinds = [
            SupportedKind(x402_version=2, scheme=name, network=self.network)
            for name in ("exact", "batch-settlement")
        ]
        return SupportedResponse(kinds=kinds, extensions=[], signers={})


def channel_client(payer: LocalAccount, test_token: TestToken, rpc_url: str | None = None) -> Any:
    """The official client with the batch-settlement scheme only; with ``rpc_url`` it can read
    the channel on chain (what its corrective-402 recovery needs)."""
    from x402 import x402Client
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC

    from x402gate.testing.clients import spend_controls_for

    client = x402Client()
    signer: Any = EthAccountSigner(payer)
    if rpc_url is not None:
        signer = EthAccountSignerWithRPC(payer, rpc_url=rpc_url)
    client.register(test_token.asset.network, BatchSettlementEvmScheme(signer))
    client.set_spend_controls(spend_controls_for(test_token.asset))
    return client


def decode(header: str) -> dict[str, Any]:
    """A base64 JSON header (``PAYMENT-REQUIRED``, ``PAYMENT-RESPONSE``) as a dict."""
    decoded: dict[str, Any] = json.loads(base64.b64decode(header))
    return decoded


async def open_channel(
    base_url: str, payer: LocalAccount, test_token: TestToken
) -> tuple[dict[str, Any], str]:
    """One request to ``/paid`` paid by the official client's deposit: the server's
    ``batch-settlement`` offer and the channel's id."""
    import httpx
    from x402.http.clients import x402_httpx_transport

    client = channel_client(payer, test_token)
    transport = x402_httpx_transport(client, httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http:
        response = await http.get("/paid")
    assert response.status_code == 200, response.text
    channel_id: str = decode(response.headers["payment-response"])["extra"]["channelState"][
        "channelId"
    ]
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        challenge = await http.get("/paid")
    offer: dict[str, Any] = decode(challenge.headers["payment-required"])["accepts"][1]
    return offer, channel_id


def voucher_header(
    store: Store,
    offer: dict[str, Any],
    channel_id: str,
    signer: LocalAccount,
    amount: int,
    *,
    lower: bool = False,
) -> str:
    """A ``PAYMENT-SIGNATURE`` carrying a voucher up to ``amount`` for a channel ``store``
    knows (its stored config), signed by ``signer`` with the official client's signing code.

    ``lower`` spells the config's addresses in lower case (the same channel, written
    differently)."""
    from x402 import PaymentPayload, PaymentRequirements
    from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
    from x402.mechanisms.evm.signers import EthAccountSigner

    from x402gate.protocol import b64json

    stored = store.channel_get(channel_id)
    assert stored is not None
    config = json.loads(stored.config)
    if lower:
        config = {k: v.lower() if isinstance(v, str) else v for k, v in config.items()}
    requirements = PaymentRequirements.model_validate(offer)
    voucher = sign_voucher(EthAccountSigner(signer), channel_id, amount, requirements.network)
    payload = PaymentPayload(
        x402_version=2,
        accepted=requirements,
        payload={"type": "voucher", "channelConfig": config, "voucher": voucher.to_dict()},
    )
    return b64json(payload.model_dump(mode="json", by_alias=True, exclude_none=True))


async def committed_channel(store: Any, channel_id: str, timeout: float = 5.0) -> Any:
    """The channel's stored state once no step is held: a metered answer's commit runs after
    its last byte went out, so right after the client got it the step may still be held."""
    deadline = time.monotonic() + timeout
    while True:
        state = store.channel_get(channel_id)
        if state is None or state.step is None or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.01)
