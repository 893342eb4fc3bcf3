"""One channel's vouchers spent at once through a real load balancer: HAProxy on loopback in
front of four gate processes sharing one real ``redis-server`` or one real PostgreSQL.

Fifty consecutive steps of one channel, all sent at once through the balancer: each step is
served at most once, the steps served are the first ones, the store charges exactly one price
per answer served and never above the last voucher it accepted (no overdraw, no double
charge), and the handler runs once per answer. Then the next steps one at a time: every
instance serves some, each continuing the channel where another instance left it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate.stores import open_store
from x402gate.testing.load_balancer import LoadBalancer, require_haproxy

from ._kit import PRICE, decode, open_channel, voucher_header
from .test_channel_concurrency import REQUESTS, check_refused, fire, handler_runs

if TYPE_CHECKING:
    from collections.abc import Callable

    from eth_account.signers.local import LocalAccount

    from x402gate.testing import TestToken

    from ._server import GateProcess

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

INSTANCES = 4


@pytest.mark.parametrize(
    "store_fixture",
    [
        pytest.param("redis_url", marks=pytest.mark.redis, id="redis"),
        pytest.param("postgres_url", marks=pytest.mark.postgres, id="postgres"),
    ],
)
async def test_consecutive_steps_at_once_through_the_balancer_charge_each_served_step_once(
    store_fixture: str,
    request: pytest.FixtureRequest,
    gate_config: dict[str, Any],
    gate_processes: Callable[[dict[str, Any]], GateProcess],
    payer: LocalAccount,
    test_token: TestToken,
) -> None:
    binary = require_haproxy()
    config = {**gate_config, "store": request.getfixturevalue(store_fixture)}
    processes = [gate_processes(config) for _ in range(INSTANCES)]
    with LoadBalancer([p.url for p in processes], binary=binary) as balancer:
        offer, channel_id = await open_channel(balancer.url, payer, test_token)
        with open_store(config["store"]) as store:
            # Step k is signed on base k x price (the deposit's request charged step 0).
            ceilings = [(k + 1) * PRICE for k in range(1, REQUESTS + 1)]
            headers = [voucher_header(store, offer, channel_id, payer, c) for c in ceilings]
            answers = await fire([(balancer.url, h) for h in headers])
            stored = store.channel_get(channel_id)
        assert stored is not None and stored.step is None
        served = [c for c, a in zip(ceilings, answers, strict=True) if a.status_code == 200]
        assert served == ceilings[: len(served)] and served, [a.status_code for a in answers]
        for ceiling, answer in zip(ceilings, answers, strict=True):
            if answer.status_code == 200:
                receipt = decode(answer.headers["payment-response"])["extra"]
                assert receipt["chargedAmount"] == str(PRICE)
                assert receipt["channelState"]["chargedCumulativeAmount"] == str(ceiling)
            else:
                check_refused(answer, stored.charged)
        assert stored.charged == PRICE + len(served) * PRICE
        assert stored.max_claimable == served[-1] == stored.charged
        assert handler_runs(config) == 1 + len(served)
        print(f"\n{store_fixture} behind haproxy: {len(served)} of {REQUESTS} steps served")
        # Then the next steps one at a time, each on a new connection: round robin sends them
        # to every instance in turn, and each continues the channel where another left it.
        pids = set()
        charged = stored.charged
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            for _ in range(2 * INSTANCES):
                with open_store(config["store"]) as store:
                    header = voucher_header(store, offer, channel_id, payer, charged + PRICE)
                answer = await http.get(
                    f"{balancer.url}/paid", headers={"PAYMENT-SIGNATURE": header}
                )
                assert answer.status_code == 200, answer.text
                assert json.loads(answer.text)["content"] == "PAID"
                pids.add(json.loads(answer.text)["pid"])
                charged += PRICE
        with open_store(config["store"]) as store:
            final = store.channel_get(channel_id)
    assert pids == {p.proc.pid for p in processes}
    assert final is not None and final.charged == charged == final.max_claimable
    assert handler_runs(config) == 1 + len(served) + 2 * INSTANCES
