"""Unpaid handler runs per burst: one wallet, 50 authorizations at once, settlement "after".

    .venv/bin/python bench/burst.py [--burst 50] [--funded 1,3] [--reads 200]

One local chain (anvil) and the project's test USDC. For each funding K (the wallet holds
exactly K payments) and each setting of ``limit_in_flight`` (off: the behaviour before the bound;
on: the default), a fresh wallet signs ``--burst`` authorizations of $0.01 with different nonces
and sends them all at once to an ASGI app (``PaymentMiddleware`` over Starlette, served by
uvicorn in a thread, ``LocalFacilitator``, SQLite store). The paid handler sleeps 0.2 s, so the
burst arrives while the first requests run, as it does when the handler is an upstream LLM call.

Printed per row: handler runs, settled transfers (read on chain: the authorization nonces the
token marks used), and **unpaid runs** = runs - settled.

Then the cost of the balance reading the bound adds per request: ``eth_blockNumber`` and
``eth_call(balanceOf)`` at that block on the same anvil, uncached, sequentially, median and p90
over ``--reads`` readings, and the cached reading that a burst or a returning payer gets within
``balance_cache_seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

PRICE = 10_000  # $0.01 in atomic units


def build_app(gate: Any, runs: list[int], lock: threading.Lock) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def paid(request: Request) -> JSONResponse:
        with lock:
            runs.append(1)
        await asyncio.sleep(0.2)
        return JSONResponse({"content": "paid"})

    return PaymentMiddleware(
        Starlette(routes=[Route("/paid", paid)]), gate=gate, routes={"GET /paid": "$0.01"}
    )


async def one_burst(
    chain: Any, token: Any, facilitator_key: str, funded: int, limit: bool, burst: int, tmp: str
) -> tuple[int, int, int]:
    from eth_account import Account

    from x402gate import LocalFacilitator, PaymentGate
    from x402gate.demo import serve_in_thread
    from x402gate.testing.burst import requirements_of, send_burst

    payer = chain.new_account(eth_wei=0, token=token, token_amount=funded * PRICE)
    facilitator = LocalFacilitator(chain.rpc_url, facilitator_key, networks=chain.network)
    gate = PaymentGate(
        pay_to=Account.create().address,
        assets=token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp}/burst-{funded}-{limit}.db",
        limit_in_flight=limit,
    )
    runs: list[int] = []
    try:
        with serve_in_thread(build_app(gate, runs, threading.Lock())) as url:
            requirements = await requirements_of(url, "/paid")
            result = await send_burst(url, "/paid", payer, requirements, burst)
    finally:
        facilitator.close()
        gate.close()
    return len(runs), result.settled(token), result.served


async def reading_cost(chain: Any, token: Any, n: int) -> tuple[list[float], list[float]]:
    from eth_account import Account

    from x402gate.balances import ChainBalances

    owner = Account.create().address
    uncached = ChainBalances({chain.network: chain.rpc_url}, cache_seconds=0)
    cached = ChainBalances({chain.network: chain.rpc_url}, cache_seconds=60)
    await cached.read(token.asset, owner)
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await uncached.read(token.asset, owner)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await cached.read(token.asset, owner)
        warm.append(time.perf_counter() - t0)
    return cold, warm


async def main(args: argparse.Namespace) -> None:
    from _common import git_state, header, median, percentile, print_table

    from x402gate.testing import LocalChain

    # The unbounded rows refuse dozens of payments at settlement; the SDK logs each one.
    logging.getLogger("x402").setLevel(logging.ERROR)
    print(header("burst.py", ["x402gate", "x402", "uvicorn"], [f"git: {git_state()}"]))
    funding = [int(k) for k in args.funded.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalChain() as chain:
        token = chain.deploy_token()
        facilitator = chain.new_account(eth_wei=10**20)
        for funded in funding:
            for limit in (False, True):
                runs, settled, served = await one_burst(
                    chain, token, facilitator.key.hex(), funded, limit, args.burst, tmp
                )
                rows.append(
                    [
                        f"K={funded}, limit_in_flight={'on (default)' if limit else 'off'}",
                        args.burst,
                        runs,
                        settled,
                        served,
                        runs - settled,
                    ]
                )
        cold, warm = await reading_cost(chain, token, args.reads)
    print(f"One wallet funded for K payments of $0.01 sends {args.burst} paid requests at once:\n")
    print_table(
        ["setting", "requests", "handler runs", "settled on chain", "200 answers", "unpaid runs"],
        rows,
    )
    print(f"\nBalance reading on anvil (loopback), {args.reads} sequential readings:\n")
    print_table(
        ["reading", "median µs", "p90 µs"],
        [
            [
                "uncached (eth_blockNumber + eth_call)",
                f"{median(cold) * 1e6:.0f}",
                f"{percentile(cold, 0.9) * 1e6:.0f}",
            ],
            [
                "cached (within balance_cache_seconds)",
                f"{median(warm) * 1e6:.1f}",
                f"{percentile(warm, 0.9) * 1e6:.1f}",
            ],
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--funded", default="1,3")
    parser.add_argument("--reads", type=int, default=200)
    asyncio.run(main(parser.parse_args()))
