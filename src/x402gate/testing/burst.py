"""A burst of concurrent paid requests from one wallet, each with its own authorization.

What an attacker with a wallet that can pay ``K`` times does to a route settled after its
handler: sign many authorizations (different nonces, each one covered by the balance on its
own) and send them all at once. :func:`send_burst` does exactly that against a real server and
:class:`BurstResult` tells what came of it, read from the answers and from the chain::

    result = await send_burst(url, "/paid", payer, requirements, 50)
    assert result.settled(test_token) <= K
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .payments import decode_payment_required, encode_payment, sign_exact_payment

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from x402.schemas import PaymentPayload, PaymentRequirements

__all__ = ["BurstResult", "requirements_of", "send_burst"]


@dataclass
class BurstResult:
    """The answers to a burst, in the order the payments were signed."""

    payer: str
    payloads: list[PaymentPayload]
    statuses: list[int]
    codes: list[str | None]
    bodies: list[str] = field(repr=False)

    @property
    def served(self) -> int:
        """Answers with a 2xx status."""
        return sum(200 <= status < 300 for status in self.statuses)

    def refusals(self) -> Counter[tuple[int, str | None]]:
        """(status, error code) of every answer that was not served."""
        return Counter(
            (status, code)
            for status, code in zip(self.statuses, self.codes, strict=True)
            if not 200 <= status < 300
        )

    def settled(self, token: Any) -> int:
        """How many of the burst's authorizations were used on chain (``token`` is a
        :class:`~x402gate.testing.chain.TestToken`)."""
        return sum(
            token.authorization_state(self.payer, p.payload["authorization"]["nonce"])
            for p in self.payloads
        )


async def requirements_of(
    base_url: str, path: str, *, method: str = "GET", **request: Any
) -> PaymentRequirements:
    """The first payment requirements of the 402 the server answers an unpaid request with."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.request(method, path, **request)
    if response.status_code != 402:
        raise AssertionError(f"expected a 402, got {response.status_code}: {response.text}")
    return decode_payment_required(response.headers["payment-required"]).accepts[0]


async def send_burst(
    base_url: str,
    path: str,
    account: LocalAccount,
    requirements: PaymentRequirements,
    count: int,
    *,
    method: str = "GET",
    timeout: float = 90.0,
    **request: Any,
) -> BurstResult:
    """Send ``count`` requests at once, each paid with a fresh authorization of ``account``."""
    import httpx

    payloads = [sign_exact_payment(account, requirements) for _ in range(count)]
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        responses = await asyncio.gather(
            *(
                client.request(
                    method, path, headers={"PAYMENT-SIGNATURE": encode_payment(p)}, **request
                )
                for p in payloads
            )
        )
    codes: list[str | None] = []
    for response in responses:
        code = None
        if response.status_code >= 400:
            try:
                document = response.json()
            except ValueError:
                document = None
            if isinstance(document, dict) and isinstance(document.get("error"), str):
                code = document["error"]
        codes.append(code)
    return BurstResult(
        account.address,
        payloads,
        [r.status_code for r in responses],
        codes,
        [r.text for r in responses],
    )
