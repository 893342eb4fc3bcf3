"""Helpers of the buyer-client tests: a facilitator that counts settlements per scheme, and an
inner transport that records what the paying client sent."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from x402gate.credit import SESSION_HEADER


class CountingFacilitator:
    """A facilitator counting its settlements by scheme (a deposit is a channel's settlement)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.settled: dict[str, int] = {}

    async def verify(self, payload: Any, requirements: Any) -> Any:
        return await self.inner.verify(payload, requirements)

    async def settle(self, payload: Any, requirements: Any) -> Any:
        scheme = str(requirements.scheme)
        self.settled[scheme] = self.settled.get(scheme, 0) + 1
        return await self.inner.settle(payload, requirements)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Recorder(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """The network under a paying client: every request it sends, its payment headers, the
    session tokens it carried, and the answers' payment responses."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []
        self.payments: list[str] = []
        self.sessions: list[str | None] = []
        self.receipts: list[dict[str, Any]] = []

    def _before(self, request: httpx.Request) -> None:
        self.requests.append(request)
        self.sessions.append(request.headers.get(SESSION_HEADER))
        payment = request.headers.get("payment-signature")
        if payment is not None:
            self.payments.append(payment)

    def _after(self, response: httpx.Response) -> None:
        receipt = response.headers.get("payment-response")
        if receipt is not None:
            self.receipts.append(json.loads(base64.b64decode(receipt)))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._before(request)
        response: httpx.Response = self.inner.handle_request(request)
        self._after(response)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._before(request)
        response: httpx.Response = await self.inner.handle_async_request(request)
        self._after(response)
        return response

    def channel_ids(self) -> list[str]:
        """The channels named in the payment responses, in order."""
        return [
            r["extra"]["channelState"]["channelId"]
            for r in self.receipts
            if "channelState" in (r.get("extra") or {})
        ]

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()
