"""Many instances behind a real load balancer: HAProxy on loopback in front of four app
processes (two uvicorn servers with ``--workers 2`` each, as two hosts would run them) sharing
one real ``redis-server``, one real PostgreSQL database, or a local Redis Cluster (with the
``redis_cluster_url`` fixture of the versions that have that store).

What a merchant needs from it:

* a replay storm (one payment sent 200 times at once through the balancer) runs the handler
  once, sends one transaction, never a reverted one, and refuses every other copy;
* the credit ledger under concurrent spending through the balancer (one top-up, then every
  request at once on its session): no overdraw, no double charge, the balance equals the
  model's (top-up minus one charge per answer served);
* the PostgreSQL server restarted in the middle of a load run: no paid content without a
  payment, at most one settlement per authorization, and service again once it is back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from x402gate.credit import SESSION_HEADER
from x402gate.metering import PerToken, TokenPrice
from x402gate.request import RequestInfo
from x402gate.testing.burst import requirements_of
from x402gate.testing.load_balancer import LoadBalancer, require_haproxy
from x402gate.testing.payments import decode_payment_required, sign_exact_payment
from x402gate.testing.postgres_server import PostgresServer

from ._support import (
    UvicornProcess,
    app_env,
    handler_runs,
    payment_headers,
    pending_nonce,
    servers,
    transactions,
)
from .served_app import ENV_SECRET, METERED_CHARGE, METERED_TOPUP, PAID_CONTENT

pytestmark = [pytest.mark.chain, pytest.mark.slow]

PRICE = 10_000
STORM = 200
REPLAY = "invalid_exact_evm_nonce_already_used"
HOSTS = 2
WORKERS_PER_HOST = 2
BODY = json.dumps(
    {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
).encode()
JSON = {"content-type": "application/json"}
SPENDERS = 40
SESSION_SECRET = "s" * 32
STORES = [
    pytest.param("redis_url", marks=pytest.mark.redis, id="redis"),
    pytest.param("postgres_url", marks=pytest.mark.postgres, id="postgres"),
]
STORES.append(pytest.param("redis_cluster_url", marks=pytest.mark.redis, id="redis-cluster"))

Topology = Callable[..., contextlib.AbstractContextManager["Deployment"]]


class Deployment:
    """What a test sees of the topology: the balancer's URL and the app processes' ids."""

    def __init__(self, balancer: LoadBalancer, processes: list[UvicornProcess]) -> None:
        self.url = balancer.url
        self.balancer = balancer
        self.processes = processes
        self.worker_pids = {pid for p in processes for pid in p.worker_pids}

    def alive(self) -> bool:
        return all(p.alive() for p in self.processes)


@pytest.fixture
def topology(
    chain: Any, test_token: Any, pay_to: str, facilitator_account: Any, tmp_path: Path
) -> Topology:
    """``with topology(store, keys=..., workers=...) as deployment``: one uvicorn server per
    settlement key in ``keys`` (default: ``HOSTS`` servers sharing the facilitator's key) with
    ``workers`` worker processes each (default ``WORKERS_PER_HOST``), on ``store``, behind
    HAProxy. Servers that settle concurrently need a key each: one account sending from
    several processes races for its transaction nonces."""
    binary = require_haproxy()

    @contextlib.contextmanager
    def start(
        store: str, *, keys: list[str] | None = None, workers: int = WORKERS_PER_HOST
    ) -> Iterator[Deployment]:
        keys = keys or [facilitator_account.key.hex()] * HOSTS
        processes = [
            UvicornProcess(
                {
                    **app_env(
                        rpc_url=chain.rpc_url,
                        facilitator_key=key,
                        token=test_token.address,
                        pay_to=pay_to,
                        store=store,
                        runs=tmp_path / "handler-runs",
                    ),
                    # Every instance signs and reads session tokens with one secret, as a
                    # deployment behind a balancer must: a token works wherever it lands.
                    ENV_SECRET: SESSION_SECRET,
                },
                workers=workers if workers > 1 else None,
            )
            for key in keys
        ]
        with (
            servers(*processes) as started,
            LoadBalancer([p.url for p in started], binary=binary) as balancer,
        ):
            yield Deployment(balancer, started)

    return start


@pytest.mark.parametrize("store_fixture", STORES)
async def test_a_replay_storm_through_the_balancer_is_served_and_paid_once(
    store_fixture: str,
    request: pytest.FixtureRequest,
    topology: Topology,
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    store = request.getfixturevalue(store_fixture)
    with topology(store) as deployment:
        requirements = await requirements_of(deployment.url, "/paid")
        payload = sign_exact_payment(payer, requirements)
        headers = payment_headers(payload)
        first_block = chain.block_number() + 1
        nonce_before = chain.tx_count(facilitator_account.address)
        limits = httpx.Limits(max_connections=STORM, max_keepalive_connections=0)
        started_at = time.monotonic()
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            responses = await asyncio.gather(
                *(client.get(f"{deployment.url}/paid", headers=headers) for _ in range(STORM))
            )
        elapsed = time.monotonic() - started_at
        assert deployment.alive()
        worker_pids = deployment.worker_pids

    statuses = collections.Counter(r.status_code for r in responses)
    served_by = collections.Counter(r.headers["x-served-by"] for r in responses)
    refusals = collections.Counter(r.json()["error"] for r in responses if r.status_code != 200)
    print(
        f"\n{store_fixture} behind haproxy: {STORM} submissions in {elapsed:.2f} s; "
        f"statuses {dict(statuses)}; answered by pids {dict(served_by)}"
    )
    assert statuses == {200: 1, 402: STORM - 1}, [
        r.text for r in responses if r.status_code not in (200, 402)
    ]
    assert refusals == {REPLAY: STORM - 1}
    (paid,) = [r for r in responses if r.status_code == 200]
    assert paid.json() == {"secret": PAID_CONTENT, "payer": payer.address}
    assert all(PAID_CONTENT not in r.text for r in responses if r.status_code != 200)
    # The balancer spread the storm over the instances: every worker of both servers answered.
    assert {int(pid) for pid in served_by} == worker_pids
    assert len(worker_pids) == HOSTS * WORKERS_PER_HOST

    assert len(handler_runs(tmp_path / "handler-runs")) == 1
    assert chain.tx_count(facilitator_account.address) == nonce_before + 1
    assert pending_nonce(chain, facilitator_account.address) == nonce_before + 1
    mined = transactions(chain, first_block)
    assert [tx["status"] for tx in mined] == [1]
    assert test_token.balance_of(pay_to) == PRICE


@pytest.mark.parametrize("store_fixture", STORES)
async def test_credit_spent_at_once_through_the_balancer_is_never_overdrawn_or_doubled(
    store_fixture: str,
    request: pytest.FixtureRequest,
    topology: Topology,
    test_token: Any,
    payer: Any,
    pay_to: str,
    tmp_path: Path,
) -> None:
    store = request.getfixturevalue(store_fixture)
    received_before = test_token.balance_of(pay_to)
    with topology(store) as deployment:
        # One top-up through the balancer: it pays for this answer and leaves credit.
        requirements = await requirements_of(
            deployment.url, "/metered", method="POST", content=BODY, headers=JSON
        )
        assert int(requirements.amount) == METERED_TOPUP
        paid = {**JSON, **payment_headers(sign_exact_payment(payer, requirements))}
        async with httpx.AsyncClient(base_url=deployment.url, timeout=60) as client:
            topup = await client.post("/metered", content=BODY, headers=paid)
            assert topup.status_code == 200, topup.text
        session = {SESSION_HEADER: topup.headers[SESSION_HEADER], **JSON}

        # Every spender at once, each on its own connection, so every server takes part.
        limits = httpx.Limits(max_connections=SPENDERS, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=deployment.url, timeout=60, limits=limits) as client:
            answers = await asyncio.gather(
                *(client.post("/metered", content=BODY, headers=session) for _ in range(SPENDERS))
            )
            at_once = sum(a.status_code == 200 for a in answers)
            balance = (await client.get("/.well-known/x402/credit", headers=session)).json()
            # Then one at a time until the credit no longer covers a request's worst case.
            one_by_one = 0
            while True:
                last = await client.post("/metered", content=BODY, headers=session)
                if last.status_code != 200:
                    break
                one_by_one += 1
                assert one_by_one <= 10, "the credit never ran out"
            final = (await client.get("/.well-known/x402/credit", headers=session)).json()
        assert deployment.alive()
        hosts = [set(p.worker_pids) for p in deployment.processes]

    statuses = collections.Counter(a.status_code for a in answers)
    served_by = {int(a.headers["x-served-by"]) for a in answers}
    print(
        f"\n{store_fixture} behind haproxy: {SPENDERS} spenders at once: {dict(statuses)}, "
        f"then {one_by_one} one by one; credit left {final['available']}"
    )
    assert set(statuses) <= {200, 402}
    assert all(PAID_CONTENT not in a.text for a in answers if a.status_code != 200)
    # The balancer sent spenders to both servers (which worker of a server accepts a
    # connection is the kernel's choice).
    assert all(served_by & host for host in hosts)

    # The model: a request is served when the credit covers its worst case (its hold), each
    # answer costs one charge, and nothing stays held once every request ended.
    hold = PerToken(TokenPrice(input="$1", output="$2", per=1_000)).quote(
        RequestInfo("POST", "/metered", body=BODY)
    )
    assert hold > METERED_CHARGE
    assert at_once >= 1
    assert balance["available"] == str(METERED_TOPUP - (1 + at_once) * METERED_CHARGE)
    assert balance["reserved"] == "0"
    model = METERED_TOPUP - METERED_CHARGE
    while model >= hold:
        model -= METERED_CHARGE
    assert final["available"] == str(model)
    assert final["reserved"] == "0"
    assert at_once + one_by_one == (METERED_TOPUP - METERED_CHARGE - model) // METERED_CHARGE
    assert last.status_code == 402
    assert PAID_CONTENT not in last.text
    assert len(handler_runs(tmp_path / "handler-runs")) == 1 + at_once + one_by_one
    # One top-up, paid once.
    assert test_token.balance_of(pay_to) - received_before == METERED_TOPUP


RESTART_AFTER = 4.0  # seconds of load before the database restarts
RESTART_DOWN = 3.0  # seconds it stays down
LOAD_AFTER = 6.0  # seconds of load once it is back
CLIENTS = 4


@pytest.mark.postgres
async def test_postgres_restarted_under_load_never_serves_unpaid_or_settles_twice(
    postgres_server: PostgresServer,
    topology: Topology,
    chain: Any,
    test_token: Any,
    pay_to: str,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    # A server of its own: restarting the session's would cut every other test's store.
    database = PostgresServer(postgres_server.bin_dir).start()
    payer = chain.new_account(eth_wei=0, token=test_token, token_amount=10**9)
    # Four single-process servers, each settling with its own key, so every paid request
    # settles at once whatever instance it reaches.
    accounts = [facilitator_account, *(chain.new_account(eth_wei=10**20) for _ in range(3))]
    keys = [account.key.hex() for account in accounts]
    senders = {account.address for account in accounts}
    received_before = test_token.balance_of(pay_to)
    first_block = chain.block_number() + 1
    # nonce, when it was sent, when it was answered, the answer
    sent: list[tuple[str, float, float, httpx.Response | None]] = []
    try:
        with topology(database.fresh_url(), keys=keys, workers=1) as deployment:
            requirements = await requirements_of(deployment.url, "/paid")
            limits = httpx.Limits(max_keepalive_connections=0)

            async def client_loop(deadline: float) -> None:
                async with httpx.AsyncClient(
                    base_url=deployment.url, timeout=60, limits=limits
                ) as client:
                    while time.monotonic() < deadline:
                        payload = sign_exact_payment(payer, requirements)
                        nonce = payload.payload["authorization"]["nonce"]
                        at = time.monotonic()
                        try:
                            answer: httpx.Response | None = await client.get(
                                "/paid", headers=payment_headers(payload)
                            )
                        except httpx.TransportError:
                            answer = None  # the connection was cut: no answer at all
                        sent.append((nonce, at, time.monotonic(), answer))

            started = time.monotonic()
            deadline = started + RESTART_AFTER + RESTART_DOWN + LOAD_AFTER
            load = [asyncio.create_task(client_loop(deadline)) for _ in range(CLIENTS)]
            await asyncio.sleep(RESTART_AFTER)
            down_at = time.monotonic()
            await asyncio.to_thread(database.restart, down_seconds=RESTART_DOWN)
            up_at = time.monotonic()
            await asyncio.gather(*load)
            assert deployment.alive()
    finally:
        database.stop()

    answered = [(nonce, when, a) for nonce, _, when, a in sent if a is not None]
    # Requests that met the outage: sent before the database was back, answered after it
    # went down.
    met_outage = [a for _, at, when, a in sent if at < up_at and when > down_at]
    statuses = collections.Counter(a.status_code for _, _, a in answered)
    served = [(nonce, when) for nonce, when, a in answered if a.status_code == 200]
    print(
        f"\npostgres restarted after {down_at - started:.1f} s, back after "
        f"{up_at - down_at:.1f} s: {len(sent)} paid requests, statuses {dict(statuses)}, "
        f"{len(sent) - len(answered)} without an answer; {len(met_outage)} met the outage: "
        f"{dict(collections.Counter(a.status_code if a else None for a in met_outage))}"
    )
    assert met_outage
    # Service before the restart and again once the database is back.
    assert any(when < down_at for _, when in served)
    assert any(when > up_at + 1 for _, when in served)
    # Every refusal is a clear answer without the content.
    assert set(statuses) <= {200, 402, 503}
    assert all(PAID_CONTENT not in a.text for _, _, a in answered if a.status_code != 200)
    assert all(a.json()["secret"] == PAID_CONTENT for _, _, a in answered if a.status_code == 200)

    # No content without payment: every authorization whose content was served is used on
    # chain; at most one settlement per authorization, never a reverted transaction.
    nonces = [nonce for nonce, _, _, _ in sent]
    assert len(set(nonces)) == len(nonces)
    settled = {n for n in nonces if test_token.authorization_state(payer.address, n)}
    assert {nonce for nonce, _ in served} <= settled
    mined = transactions(chain, first_block)  # only settlements are sent from here on
    assert {tx["from"] for tx in mined} <= senders
    assert all(tx["status"] == 1 for tx in mined)
    assert len(mined) == len(settled)
    assert test_token.balance_of(pay_to) - received_before == PRICE * len(settled)
    # The handler ran at most once per settled authorization (and for every answer served).
    assert len(served) <= len(handler_runs(tmp_path / "handler-runs")) <= len(settled)


@pytest.mark.postgres
async def test_postgres_restarted_while_credit_is_spent_charges_each_answer_once(
    postgres_server: PostgresServer,
    topology: Topology,
    chain: Any,
    test_token: Any,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    database = PostgresServer(postgres_server.bin_dir).start()
    accounts = [facilitator_account, *(chain.new_account(eth_wei=10**20) for _ in range(3))]
    payers = [
        chain.new_account(eth_wei=0, token=test_token, token_amount=10**9) for _ in range(CLIENTS)
    ]
    served: dict[str, int] = collections.Counter()  # payer -> answers served
    topups: dict[str, list[str]] = collections.defaultdict(list)  # payer -> top-up nonces
    statuses: collections.Counter[int | None] = collections.Counter()
    try:
        with topology(
            database.fresh_url(), keys=[a.key.hex() for a in accounts], workers=1
        ) as deployment:
            limits = httpx.Limits(max_keepalive_connections=0)

            async def spend(payer: Any, deadline: float) -> str | None:
                """Spend credit until the deadline, topping up whenever it runs out; the
                session token of the last top-up served."""
                token: str | None = None
                async with httpx.AsyncClient(
                    base_url=deployment.url, timeout=60, limits=limits
                ) as client:
                    while time.monotonic() < deadline:
                        headers = dict(JSON)
                        if token is not None:
                            headers[SESSION_HEADER] = token
                        try:
                            answer = await client.post("/metered", content=BODY, headers=headers)
                        except httpx.TransportError:
                            statuses[None] += 1
                            continue
                        statuses[answer.status_code] += 1
                        if answer.status_code == 200:
                            served[payer.address] += 1
                            continue
                        if answer.status_code != 402:
                            assert PAID_CONTENT not in answer.text
                            await asyncio.sleep(0.2)  # the store is down: try again soon
                            continue
                        required = decode_payment_required(answer.headers["payment-required"])
                        payload = sign_exact_payment(payer, required.accepts[0])
                        topups[payer.address].append(payload.payload["authorization"]["nonce"])
                        try:
                            paid = await client.post(
                                "/metered",
                                content=BODY,
                                headers={**JSON, **payment_headers(payload)},
                            )
                        except httpx.TransportError:
                            statuses[None] += 1
                            continue
                        statuses[paid.status_code] += 1
                        if paid.status_code == 200:
                            served[payer.address] += 1
                            token = paid.headers[SESSION_HEADER]
                        else:
                            assert PAID_CONTENT not in paid.text
                return token

            started = time.monotonic()
            deadline = started + RESTART_AFTER + RESTART_DOWN + LOAD_AFTER
            load = [asyncio.create_task(spend(p, deadline)) for p in payers]
            await asyncio.sleep(RESTART_AFTER)
            await asyncio.to_thread(database.restart, down_seconds=RESTART_DOWN)
            tokens = await asyncio.gather(*load)
            balances = []
            async with httpx.AsyncClient(base_url=deployment.url, timeout=60) as client:
                for token in tokens:
                    assert token is not None
                    reply = await client.get(
                        "/.well-known/x402/credit", headers={SESSION_HEADER: token}
                    )
                    assert reply.status_code == 200, reply.text
                    balances.append(reply.json())
    finally:
        database.stop()

    print(f"\npostgres restarted while spending credit: statuses {dict(statuses)}")
    for payer, balance in zip(payers, balances, strict=True):
        settled = [
            n for n in topups[payer.address] if test_token.authorization_state(payer.address, n)
        ]
        model = len(settled) * METERED_TOPUP - served[payer.address] * METERED_CHARGE
        print(
            f"  {payer.address[:10]}: {len(settled)} top-ups, {served[payer.address]} answers, "
            f"credit {balance['available']} (+{balance['reserved']} held), model {model}"
        )
        assert balance["reserved"] == "0"
        # No charge lost (more credit than the model) and none doubled (less).
        assert int(balance["available"]) == model
