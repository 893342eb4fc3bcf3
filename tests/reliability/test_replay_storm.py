"""Replay storm: one fresh payment submitted 200 times at once to several server processes.

Two real deployments on loopback, each serving :mod:`served_app` with uvicorn in subprocesses:

* ``sqlite-4-workers``: one uvicorn with ``--workers 4`` (four processes on one socket) sharing
  one SQLite replay store file;
* ``redis-2-instances``: two separate uvicorn servers on two ports sharing one real
  ``redis-server``, the requests split evenly between them;
* ``redis-cluster-2-instances`` and ``redis-sentinel-2-instances``: the same on a local Redis
  Cluster (3 primaries, 3 replicas) and on a Sentinel-managed primary with its replica;
* ``postgres-2-instances``: the same with one real PostgreSQL database.

What a merchant needs from it: the handler runs exactly once, exactly one settlement transaction
is sent (the facilitator account's nonce moves by one, nothing waits in the pool), no reverted
transaction is ever broadcast (every receipt mined during the storm has status 1), the price
moves once, and every other submission is refused with ``invalid_exact_evm_nonce_already_used``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from x402gate.testing.payments import decode_payment_required, sign_exact_payment

from ._support import (
    UvicornProcess,
    app_env,
    handler_runs,
    payment_headers,
    pending_nonce,
    servers,
    transactions,
)
from .served_app import PAID_CONTENT

pytestmark = [pytest.mark.chain, pytest.mark.slow]

PRICE = 10_000
STORM = 200
REPLAY = "invalid_exact_evm_nonce_already_used"


@pytest.mark.parametrize(
    "deployment",
    [
        "sqlite-4-workers",
        pytest.param("redis-2-instances", marks=pytest.mark.redis),
        pytest.param("redis-cluster-2-instances", marks=pytest.mark.redis),
        pytest.param("redis-sentinel-2-instances", marks=pytest.mark.redis),
        pytest.param("postgres-2-instances", marks=pytest.mark.postgres),
    ],
)
async def test_two_hundred_concurrent_submissions_of_one_payment_are_served_and_paid_once(
    deployment: str,
    request: pytest.FixtureRequest,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    runs = tmp_path / "handler-runs"
    if deployment == "sqlite-4-workers":
        store = f"sqlite:///{tmp_path / 'replay.db'}"
    elif deployment == "postgres-2-instances":
        store = request.getfixturevalue("postgres_url")
    elif deployment == "redis-cluster-2-instances":
        store = request.getfixturevalue("redis_cluster_url")
    elif deployment == "redis-sentinel-2-instances":
        store = request.getfixturevalue("redis_sentinel_url")
    else:
        store = request.getfixturevalue("redis_url")
    env = app_env(
        rpc_url=chain.rpc_url,
        facilitator_key=facilitator_account.key.hex(),
        token=test_token.address,
        pay_to=pay_to,
        store=store,
        runs=runs,
    )
    processes = (
        [UvicornProcess(env, workers=4)]
        if deployment == "sqlite-4-workers"
        else [UvicornProcess(env), UvicornProcess(env)]
    )
    with servers(*processes) as started:
        urls = [p.url for p in started]
        worker_pids = {pid for p in started for pid in p.worker_pids}
        async with httpx.AsyncClient(timeout=60) as probe:
            challenge = await probe.get(f"{urls[0]}/paid")
        assert challenge.status_code == 402
        requirements = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
        payload = sign_exact_payment(payer, requirements)
        headers = payment_headers(payload)
        first_block = chain.block_number() + 1
        nonce_before = chain.tx_count(facilitator_account.address)

        # A new connection per request: the kernel spreads them over the workers sharing the
        # listening socket, and the requests are in flight together.
        limits = httpx.Limits(max_connections=STORM, max_keepalive_connections=0)
        started_at = time.monotonic()
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            responses = await asyncio.gather(
                *(client.get(f"{urls[i % len(urls)]}/paid", headers=headers) for i in range(STORM))
            )
        elapsed = time.monotonic() - started_at
        assert all(p.alive() for p in started)

    statuses = collections.Counter(r.status_code for r in responses)
    served_by = collections.Counter(r.headers["x-served-by"] for r in responses)
    refusals = collections.Counter(r.json()["error"] for r in responses if r.status_code != 200)
    print(
        f"\n{deployment}: {STORM} submissions in {elapsed:.2f} s; statuses {dict(statuses)}; "
        f"refusals {dict(refusals)}; answered by pids {dict(served_by)}"
    )
    assert statuses == {200: 1, 402: STORM - 1}
    assert refusals == {REPLAY: STORM - 1}
    (paid,) = [r for r in responses if r.status_code == 200]
    assert paid.json() == {"secret": PAID_CONTENT, "payer": payer.address}
    assert all(PAID_CONTENT not in r.text for r in responses if r.status_code != 200)
    # The storm really was spread over several processes.
    assert {int(pid) for pid in served_by} <= worker_pids
    assert len(served_by) >= 2

    assert len(handler_runs(runs)) == 1

    # Exactly one transaction, mined and successful; no reverted replay, nothing left pending.
    assert chain.tx_count(facilitator_account.address) == nonce_before + 1
    assert pending_nonce(chain, facilitator_account.address) == nonce_before + 1
    mined = transactions(chain, first_block)
    assert [tx["status"] for tx in mined] == [1]
    assert mined[0]["from"] == facilitator_account.address
    assert test_token.balance_of(pay_to) == PRICE
    nonce = payload.payload["authorization"]["nonce"]
    assert test_token.authorization_state(payer.address, nonce) is True
