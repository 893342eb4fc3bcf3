"""Fifty concurrent requests carrying vouchers of one channel, spread over gate servers that
run in processes of their own and share one store: three on one SQLite file, two on one Redis.

Whatever the order the requests meet the store in, each step of the channel is served at most
once, the handler runs once per answer served, the store charges exactly the price of each
served answer and never above the last voucher it accepted; the other requests are refused
with the busy code (409) or the corrective 402 carrying the channel's state.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate.stores import open_store

from ._kit import PRICE, decode, open_channel, voucher_header

if TYPE_CHECKING:
    from collections.abc import Callable

    from eth_account.signers.local import LocalAccount

    from x402gate.testing import TestToken

    from ._server import GateProcess

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

REQUESTS = 50
BUSY = "invalid_batch_settlement_evm_channel_busy"
MISMATCH = "invalid_batch_settlement_evm_cumulative_amount_mismatch"


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def servers(
    request: pytest.FixtureRequest,
    gate_config: dict[str, Any],
    gate_processes: Callable[[dict[str, Any]], GateProcess],
) -> tuple[list[GateProcess], dict[str, Any]]:
    """Three gate processes on one SQLite file, or two on one Redis server."""
    config = dict(gate_config)
    count = 3
    if request.param == "redis":
        config["store"] = request.getfixturevalue("redis_url")
        count = 2
    return [gate_processes(config) for _ in range(count)], config


def handler_runs(config: dict[str, Any]) -> int:
    """How many times a ``/paid`` handler ran, in every process."""
    return len(list(Path(config["runs"]).glob("paid-*")))


async def fire(requests: list[tuple[str, str]]) -> list[httpx.Response]:
    """All ``(base URL, PAYMENT-SIGNATURE)`` requests to ``/paid`` at once."""
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        return await asyncio.gather(
            *(http.get(f"{url}/paid", headers={"PAYMENT-SIGNATURE": h}) for url, h in requests)
        )


def check_refused(answer: httpx.Response, charged: int) -> None:
    """A request that was not served: busy, or the corrective 402 with the channel's state
    (charged at most ``charged``), and no content."""
    assert answer.status_code in (402, 409), answer.text
    assert "PAID" not in answer.text
    if answer.status_code == 409:
        assert answer.json()["error"] == BUSY
        return
    required = decode(answer.headers["payment-required"])
    assert required["error"] == MISMATCH
    state = required["accepts"][1]["extra"]["channelState"]
    assert int(state["chargedCumulativeAmount"]) <= charged


async def test_fifty_requests_of_one_step_over_processes_serve_exactly_one(
    servers: tuple[list[GateProcess], dict[str, Any]],
    payer: LocalAccount,
    test_token: TestToken,
) -> None:
    processes, config = servers
    offer, channel_id = await open_channel(processes[0].url, payer, test_token)
    with open_store(config["store"]) as store:
        header = voucher_header(store, offer, channel_id, payer, 2 * PRICE)
        answers = await fire([(processes[i % len(processes)].url, header) for i in range(REQUESTS)])
        served = [a for a in answers if a.status_code == 200]
        assert len(served) == 1, sorted(a.status_code for a in answers)
        receipt = decode(served[0].headers["payment-response"])["extra"]
        assert receipt["chargedAmount"] == str(PRICE)
        assert receipt["channelState"]["chargedCumulativeAmount"] == str(2 * PRICE)
        for answer in answers:
            if answer.status_code != 200:
                check_refused(answer, 2 * PRICE)
        stored = store.channel_get(channel_id)
    assert stored is not None and stored.step is None
    assert stored.charged == 2 * PRICE == stored.max_claimable
    assert handler_runs(config) == 2  # the deposit's request and the one served


async def test_fifty_consecutive_steps_at_once_charge_each_served_step_once(
    servers: tuple[list[GateProcess], dict[str, Any]],
    payer: LocalAccount,
    test_token: TestToken,
) -> None:
    processes, config = servers
    offer, channel_id = await open_channel(processes[0].url, payer, test_token)
    with open_store(config["store"]) as store:
        # Step k is signed on base k x price (the deposit's request charged step 0).
        ceilings = [(k + 1) * PRICE for k in range(1, REQUESTS + 1)]
        headers = [voucher_header(store, offer, channel_id, payer, c) for c in ceilings]
        answers = await fire(
            [(processes[i % len(processes)].url, h) for i, h in enumerate(headers)]
        )
        stored = store.channel_get(channel_id)
    assert stored is not None and stored.step is None
    served = [c for c, a in zip(ceilings, answers, strict=True) if a.status_code == 200]
    # The steps served are the first ones, each once: the first is always served (no other
    # request can hold its base), a later one only if it came after the one before committed.
    assert served == ceilings[: len(served)] and served, [a.status_code for a in answers]
    for ceiling, answer in zip(ceilings, answers, strict=True):
        if answer.status_code == 200:
            receipt = decode(answer.headers["payment-response"])["extra"]
            assert receipt["chargedAmount"] == str(PRICE)
            assert receipt["channelState"]["chargedCumulativeAmount"] == str(ceiling)
        else:
            check_refused(answer, stored.charged)
    assert stored.charged == PRICE + len(served) * PRICE
    assert stored.max_claimable == served[-1] == stored.charged  # the last voucher accepted
    assert handler_runs(config) == 1 + len(served)
    # What the store keeps is what the next step needs: the client's next voucher is served.
    with open_store(config["store"]) as store:
        header = voucher_header(store, offer, channel_id, payer, stored.charged + PRICE)
    async with httpx.AsyncClient(timeout=60) as http:
        following = await http.get(
            f"{processes[-1].url}/paid", headers={"PAYMENT-SIGNATURE": header}
        )
    assert following.status_code == 200, following.text
    assert json.loads(following.text)["content"] == "PAID"
