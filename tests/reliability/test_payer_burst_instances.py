"""One wallet's burst split over two server processes that share one store.

Two uvicorn servers of :mod:`served_app` (each its own process and its own settlement key) share
one SQLite file, one real ``redis-server``, or one real PostgreSQL database. A wallet funded for
K payments sends 50 paid requests at once, each with its own authorization, alternating between
the two. The bound on
payments in flight lives in the store, so together the two processes run the handler at most K
times, every run is settled on chain, and every other request gets a 402 with a code.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import httpx
import pytest

from x402gate.testing.burst import requirements_of
from x402gate.testing.payments import sign_exact_payment

from ._support import UvicornProcess, app_env, handler_runs, payment_headers, servers
from .served_app import PAID_CONTENT

pytestmark = [pytest.mark.chain, pytest.mark.slow]

PRICE = 10_000
K = 3
BURST = 50


@pytest.mark.parametrize(
    "deployment",
    [
        "sqlite-2-instances",
        pytest.param("redis-2-instances", marks=pytest.mark.redis),
        pytest.param("postgres-2-instances", marks=pytest.mark.postgres),
    ],
)
async def test_a_burst_over_two_instances_runs_the_handler_at_most_k_times(
    deployment: str,
    request: pytest.FixtureRequest,
    chain: Any,
    test_token: Any,
    pay_to: str,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    runs = tmp_path / "handler-runs"
    if deployment == "sqlite-2-instances":
        store = f"sqlite:///{tmp_path / 'x402gate.db'}"
    elif deployment == "postgres-2-instances":
        store = request.getfixturevalue("postgres_url")
    else:
        store = request.getfixturevalue("redis_url")
    # A settlement key per instance: two processes sending from one account would race for its
    # transaction nonces, which is not what this test is about.
    keys = [facilitator_account.key.hex(), chain.new_account(eth_wei=10**20).key.hex()]
    processes = [
        UvicornProcess(
            app_env(
                rpc_url=chain.rpc_url,
                facilitator_key=key,
                token=test_token.address,
                pay_to=pay_to,
                store=store,
                runs=runs,
            )
        )
        for key in keys
    ]
    payer = chain.new_account(eth_wei=0, token=test_token, token_amount=K * PRICE)
    with servers(*processes) as started:
        urls = [p.url for p in started]
        requirements = await requirements_of(urls[0], "/paid")
        payloads = [sign_exact_payment(payer, requirements) for _ in range(BURST)]
        limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            responses = await asyncio.gather(
                *(
                    client.get(f"{urls[i % 2]}/paid", headers=payment_headers(p))
                    for i, p in enumerate(payloads)
                )
            )
        assert all(p.alive() for p in started)

    served = [r for r in responses if r.status_code == 200]
    refusals = collections.Counter(
        (r.status_code, r.json()["error"]) for r in responses if r.status_code != 200
    )
    settled = sum(
        test_token.authorization_state(payer.address, p.payload["authorization"]["nonce"])
        for p in payloads
    )
    ran = handler_runs(runs)
    assert len(ran) == settled == len(served) == K, (len(ran), settled, refusals)
    assert all(r.json()["secret"] == PAID_CONTENT for r in served)
    assert test_token.balance_of(pay_to) == K * PRICE
    assert set(refusals) <= {(402, "payments_in_flight"), (402, "insufficient_funds")}, refusals
    assert sum(refusals.values()) == BURST - K
    assert all(PAID_CONTENT not in r.text for r in responses if r.status_code != 200)
