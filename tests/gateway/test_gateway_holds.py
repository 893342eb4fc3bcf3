"""The gateway in front of the fake provider: a metered stream that runs longer than the credit
TTL keeps its hold (the payer's next request is not funded by it) and is charged what the
provider reported once it ends.

The gateway's gate runs on a test clock the test moves past ``credit_ttl_seconds`` while the
provider holds its stream open (``x-fake-llm: hold``). Credit is put in the ledger directly and
spent with a session token.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from x402gate._holds import HoldKeeper
from x402gate.credit import SESSION_HEADER
from x402gate.metering import SSEUsageMeter
from x402gate.request import Headers, RequestInfo
from x402gate.stores.base import credit_account
from x402gate.testing.fake_llm import CONTROL_HEADER, FakeLLM

from .conftest import IN_PRICE, OUT_PRICE, GatewayFactory

pytestmark = pytest.mark.chain

TTL = 60
WAIT = 10.0
PAYER = "0x000000000000000000000000000000000000bEEF"
BODY = json.dumps(
    {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "What is the weather like today?"}],
    }
).encode()


class Clock:
    def __init__(self) -> None:
        self.t = time.time()
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self.t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_a_gateway_stream_longer_than_the_ttl_keeps_its_hold_and_is_charged(
    gateway: GatewayFactory, llm: FakeLLM
) -> None:
    with gateway(timeout=WAIT) as (url, gw):
        gate = gw.gate
        clock = Clock()
        gate.clock = clock
        gate.credit_ttl_seconds = TTL
        gate.holds.close()
        gate.holds = HoldKeeper(gate.store, clock, TTL, poll_seconds=0.02)
        asset = gate.assets[0]
        account = credit_account(asset.network, asset.address, PAYER)
        route = gw.table.match("POST", "/v1/messages")
        assert route is not None
        info = RequestInfo(
            "POST",
            "/v1/messages",
            headers=Headers([("content-type", "application/json")]),
            body=BODY,
        )
        quote = route.price.quote(info)
        assert isinstance(quote, int)  # a token price quotes synchronously
        gate.store.credit_topup(account, quote, "ref-1", clock.now())

        def balance() -> tuple[int, int, int]:
            b = gate.store.credit_balance(account, clock.now())
            return b.available, b.reserved, b.charged

        def headers() -> dict[str, str]:
            token = gate.session_tokens.issue(
                PAYER, asset.network, asset.address, clock.now(), origin=gate.public_origins[0]
            )
            return {SESSION_HEADER: token, "content-type": "application/json"}

        with (
            httpx.Client(base_url=url, timeout=WAIT) as client,
            client.stream(
                "POST", "/v1/messages", content=BODY, headers={**headers(), CONTROL_HEADER: "hold"}
            ) as stream,
        ):
            assert stream.status_code == 200
            received = b""
            chunks = stream.iter_raw()
            while received.count(b"\n\n") < 3:  # the provider now holds its stream
                received += next(chunks)
            for _ in range(4):  # 160 s on the gate's clock: well past two TTLs
                clock.advance(TTL * 2 / 3)
                seen = gate.holds.passes
                wait_for(lambda seen=seen: gate.holds.passes >= seen + 2, "a renewal pass")
                assert balance() == (0, quote, 0)  # still held
            # The payer's next request is not funded by the running stream's hold, and never
            # reaches the provider.
            asked = len(llm.requests)
            refused = client.post("/v1/messages", content=BODY, headers=headers())
            assert refused.status_code == 402
            assert len(llm.requests) == asked
            llm.release()
            for chunk in chunks:
                received += chunk
        meter = SSEUsageMeter()
        meter.feed(received)
        meter.close()
        usage = meter.usage
        assert usage is not None and usage.input_tokens and usage.output_tokens
        used = usage.input_tokens * IN_PRICE + usage.output_tokens * OUT_PRICE
        assert 0 < used < quote
        wait_for(lambda: balance()[1] == 0, "the commit")
        assert balance() == (quote - used, 0, used)
