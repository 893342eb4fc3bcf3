"""Paid traffic through a Redis failover: a Cluster primary and a Sentinel primary, mid-run.

Two uvicorn servers share a replay store on a local Redis Cluster (3 primaries, 3 replicas) or on
a Sentinel-managed primary with its replica. Payments, each sent 3 times at once, keep arriving
before, during and after the failover (``CLUSTER FAILOVER`` of every primary in turn, or
``SENTINEL FAILOVER``). What a merchant needs: no answer carries the paid content unless its
authorization is settled on chain, no authorization is served twice, every transaction sent is
mined successfully (none reverted, one per settled authorization), and once the failover is over
every payment is served again, exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from x402gate.testing.payments import decode_payment_required, sign_exact_payment
from x402gate.testing.redis_cluster import LocalRedisCluster, LocalRedisSentinel
from x402gate.testing.redis_server import find_redis_server

from ._support import UvicornProcess, app_env, payment_headers, servers, transactions
from .served_app import PAID_CONTENT

pytestmark = [pytest.mark.chain, pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]

PER_WAVE = 4
COPIES = 3


@pytest.fixture
def own_cluster() -> Iterator[LocalRedisCluster]:
    """A cluster of this test's own, since its primaries fail over."""
    if find_redis_server() is None:
        pytest.skip("redis-server not found")
    with LocalRedisCluster() as cluster:
        yield cluster


async def _wave(urls: list[str], payloads: list[Any]) -> list[tuple[int, httpx.Response]]:
    """Every payload sent ``COPIES`` times at once, spread over the servers."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        sends = [
            (i, client.get(f"{urls[(i + c) % len(urls)]}/paid", headers=payment_headers(p)))
            for i, p in enumerate(payloads)
            for c in range(COPIES)
        ]
        answers = await asyncio.gather(*(send for _, send in sends))
    return [(i, answer) for (i, _), answer in zip(sends, answers, strict=True)]


@pytest.mark.parametrize("deployment", ["cluster", "sentinel"])
async def test_paid_traffic_through_a_primary_failover(
    deployment: str,
    request: pytest.FixtureRequest,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    if deployment == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("own_cluster")
        store_url = cluster.url

        def fail_over() -> None:
            for tag in ("a", "b", "c"):  # slots on each of the three primaries
                cluster.failover_slot_of(tag)

    else:
        sentinel: LocalRedisSentinel = request.getfixturevalue("redis_sentinel")
        sentinel.flushall()
        store_url = sentinel.url
        fail_over = sentinel.failover  # type: ignore[assignment]

    env = app_env(
        rpc_url=chain.rpc_url,
        facilitator_key=facilitator_account.key.hex(),
        token=test_token.address,
        pay_to=pay_to,
        store=store_url,
        runs=tmp_path / "handler-runs",
    )
    first_block = chain.block_number() + 1
    nonce_before = chain.tx_count(facilitator_account.address)
    payloads: list[Any] = []
    answers: dict[str, list[tuple[int, httpx.Response]]] = collections.defaultdict(list)
    with servers(UvicornProcess(env), UvicornProcess(env)) as started:
        urls = [p.url for p in started]
        async with httpx.AsyncClient(timeout=60) as probe:
            challenge = await probe.get(f"{urls[0]}/paid")
        requirements = decode_payment_required(challenge.headers["payment-required"]).accepts[0]

        async def run(phase: str) -> None:
            wave = [sign_exact_payment(payer, requirements) for _ in range(PER_WAVE)]
            offset = len(payloads)
            payloads.extend(wave)
            answers[phase] += [(offset + i, r) for i, r in await _wave(urls, wave)]

        await run("before")
        failing = threading.Thread(target=fail_over)
        failing.start()
        while failing.is_alive():
            await run("during")
        failing.join()
        await run("after")
        assert all(p.alive() for p in started)

    statuses = {
        phase: collections.Counter(r.status_code for _, r in got) for phase, got in answers.items()
    }
    print(f"\n{deployment}: {len(payloads)} payments x {COPIES}; statuses {statuses}")
    served = collections.Counter(
        i for got in answers.values() for i, r in got if r.status_code == 200
    )
    settled = {
        i
        for i, p in enumerate(payloads)
        if test_token.authorization_state(payer.address, p.payload["authorization"]["nonce"])
    }
    # No authorization served twice, and none served without being settled on chain.
    assert max(served.values()) == 1
    assert set(served) <= settled
    for got in answers.values():
        for _, r in got:
            if r.status_code != 200:
                assert PAID_CONTENT not in r.text
            else:
                assert r.json()["secret"] == PAID_CONTENT
    # One successful transaction per settled authorization, none reverted, none more.
    mined = transactions(chain, first_block)
    assert [tx["status"] for tx in mined] == [1] * len(settled)
    assert chain.tx_count(facilitator_account.address) == nonce_before + len(settled)
    # Before and after the failover, every payment is served exactly once.
    for phase in ("before", "after"):
        unserved = {i for i, _ in answers[phase] if served[i] != 1}
        for i, r in answers[phase]:
            if i in unserved:  # what each copy of a payment left unserved was told
                print(f"  {phase} payment {i} (settled: {i in settled}): {r.status_code} {r.text}")
        assert not unserved
    assert len(answers["during"]) > 0
