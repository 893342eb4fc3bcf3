"""Background claimers in several server processes on one store: several workers on one SQLite
file, two instances on one Redis server or one PostgreSQL database. Only the holder of the
store's lease claims, so every claim transaction on chain moves the claimed total (none
duplicated, none reverted); when the holder is killed (SIGKILL: nothing is released) the lease
expires and another process takes over and claims what was served since.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from x402gate.channels.claimer import CLAIM_LEASE
from x402gate.stores import open_store

from ._kit import PRICE, channel_client
from .test_claims import pay, wait_for

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelContracts

    from ._server import GateProcess

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

pytestmark = [pytest.mark.chain, pytest.mark.slow]

CLAIM = {"every": 0.3, "tick_seconds": 0.1, "lease_seconds": 4.0, "refresh_seconds": 3600}


def claim_transactions(
    chain: LocalChain, contracts: ChannelContracts, since: int
) -> list[tuple[str, int]]:
    """``(hash, status)`` of every ``claimWithSignature`` mined since block ``since``."""
    w3 = chain.w3
    escrow = contracts.settlement
    found: list[tuple[str, int]] = []
    for number in range(since, w3.eth.block_number + 1):
        for item in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            tx: Any = item
            if (tx.get("to") or "").lower() != escrow.address.lower():
                continue
            function, _ = escrow.decode_function_input(tx["input"])
            if function.fn_name == "claimWithSignature":
                status = int(w3.eth.get_transaction_receipt(tx["hash"])["status"])
                found.append((tx["hash"].to_0x_hex(), status))
    return found


def holder_pid(store_url: str, name: str) -> int | None:
    with open_store(store_url) as store:
        holder = store.lease_holder(name, time.time())
    return None if holder is None else int(holder.split(":")[1])


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def test_one_claimer_at_a_time_and_the_lease_moves_when_its_holder_is_killed(
    backend: str,
    request: pytest.FixtureRequest,
    chain: LocalChain,
    test_token: TestToken,
    payer: LocalAccount,
    channel_contracts: ChannelContracts,
    gate_config: dict[str, Any],
    gate_processes: Callable[[dict[str, Any]], GateProcess],
) -> None:
    if backend == "redis":
        redis_url = request.getfixturevalue("redis_url")
        gate_config["store"] = f"{redis_url}?key_prefix=claims{uuid.uuid4().hex[:8]}:"
    if backend == "postgres":
        gate_config["store"] = request.getfixturevalue("postgres_url")
    gate_config["claim"] = CLAIM
    store_url = gate_config["store"]
    receiver = gate_config["pay_to"]
    name = CLAIM_LEASE
    since = chain.w3.eth.block_number + 1
    processes = [gate_processes(gate_config) for _ in range(3 if backend == "sqlite" else 2)]
    by_pid = {p.proc.pid: p for p in processes}
    wait_for(lambda: holder_pid(store_url, name) in by_pid, timeout=30)

    def earned(channel_id: str) -> int:
        with open_store(store_url) as store:
            state = store.channel_get(channel_id)
        assert state is not None
        return state.earned

    def collected(channel_id: str, amount: int) -> Callable[[], bool]:
        return lambda: (
            channel_contracts.channel(channel_id).total_claimed == amount
            and test_token.balance_of(receiver) == amount
        )

    # Paid through every process in turn: each round is claimed and settled by the holder.
    served = 0
    channel_id = ""
    client = channel_client(payer, test_token)  # one channel, paid through every process
    for process in processes:
        channel_id = asyncio.run(pay(process.url, payer, test_token, ["/paid"] * 3, client))
        served += 3
        assert earned(channel_id) == served * PRICE
        wait_for(collected(channel_id, served * PRICE), timeout=30)

    # The holder dies without releasing anything: another takes the lease after it expires.
    killed = holder_pid(store_url, name)
    assert killed in by_pid
    by_pid[killed].kill()
    survivor = next(p for pid, p in by_pid.items() if pid != killed)
    channel_id = asyncio.run(pay(survivor.url, payer, test_token, ["/paid"] * 3, client))
    served += 3
    wait_for(collected(channel_id, served * PRICE), timeout=30)
    new_holder = holder_pid(store_url, name)
    assert new_holder in by_pid and new_holder != killed

    # Every claim transaction went through and moved the claimed total: none was sent twice.
    claims = claim_transactions(chain, channel_contracts, since)
    assert claims and all(status == 1 for _, status in claims)
    logs = channel_contracts.settlement.events.Claimed().get_logs(from_block=since)
    moved = {log["transactionHash"].to_0x_hex() for log in logs}
    assert {tx for tx, _ in claims} == moved
    assert sum(int(log["args"]["amount"]) for log in logs) == served * PRICE
    assert test_token.balance_of(receiver) == served * PRICE
