"""Metered billing overhead: a request served from credit, and a metered stream's first byte.

    .venv/bin/python bench/metered.py [--n 300] [--store sqlite|sqlite-normal|memory|redis]

One local chain; the app runs in a uvicorn server process of its own (the same set-up as the
other benchmark servers: ``bench/_common.serve_uvicorn``), so the client in this process never
competes with the server for one interpreter. The buyer pays once with the official x402 client
(a $10 top-up) and gets a session token; then, sequentially and interleaved to share the noise:

* ``GET /free`` (unprotected) vs ``GET /metered`` (per-second price, served from credit with the
  session token): the added latency of serving from credit (goal: at most 1 ms);
* ``GET /stream`` (unprotected SSE) vs ``GET /metered-stream`` (per-token SSE from credit): time
  to the first body byte (goal: not delayed by metering).

A request served from credit must reserve its quote in the ledger before the app runs (that is
what keeps concurrent requests of one payer from overdrawing), so its first byte necessarily
comes after one store write. To separate that from the cost of *metering* the stream, a third
stream, ``GET /seconds-stream``, is the same SSE answer served from credit on a per-second route
(the same reservation, no usage read from the body): "first byte, token metering vs credit
alone" is what reading usage out of the stream adds, and should be about zero.

The charge is committed after the last body message went out; the payer's next request waits
for that commit (in this process), so every figure includes whatever of the commit the next
request still had to wait for. In the interleaved loop the payer's metered requests are one
unprotected request apart; the row "right after the payer's previous one" sends them back to
back, the worst case for that wait (not part of the goal, shown so the trade-off is visible).

Stores: ``sqlite`` (the default store, ``synchronous=full``; the credit ledger's spending writes
are committed without fsync, see :mod:`x402gate.stores.sqlite`), ``sqlite-normal``
(``synchronous=normal``),
``memory`` and ``redis`` (a throw-away ``redis-server`` on loopback, no persistence, started
and stopped by its PID through :class:`x402gate.testing.redis_server.RedisServer`).

Prints medians, p90 and ratios from this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

STORES = {
    "sqlite-normal": "sqlite:///{tmp}/bench.db?synchronous=normal",
    "sqlite": "sqlite:///{tmp}/bench.db",
    "memory": "memory://",
    "redis": "{redis}",
}


def build_app(gate: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware
    from x402gate.metering import PerSecond, PerToken, TokenPrice

    async def small(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def stream(request: Any) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
            await asyncio.sleep(0.005)  # the "model" thinking between tokens
            usage = {"prompt_tokens": 10, "completion_tokens": 20}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/free", small),
            Route("/metered", small),
            Route("/stream", stream),
            Route("/metered-stream", stream),
            Route("/seconds-stream", stream),
        ]
    )
    return PaymentMiddleware(
        app,
        gate=gate,
        routes={
            "GET /metered": gate.route(PerSecond("$0.001", max_seconds=1), credit_topup="$10"),
            "GET /metered-stream": gate.route(
                PerToken(TokenPrice(input="$3", output="$15"), max_output_tokens=100),
                credit_topup="$10",
            ),
            "GET /seconds-stream": gate.route(
                PerSecond("$0.001", max_seconds=1), credit_topup="$10"
            ),
        },
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serve(cfg: dict[str, Any]) -> None:
    """Child process: the gate and the app, served by uvicorn (prints ``PORT <n>``)."""
    from _common import serve_uvicorn

    from x402gate import LocalFacilitator, PaymentGate
    from x402gate.assets import Asset

    asset = Asset(**cfg["asset"])
    gate = PaymentGate(
        pay_to=cfg["pay_to"],
        assets=asset,
        facilitator=LocalFacilitator(
            cfg["rpc_url"], cfg["facilitator_key"], networks=asset.network
        ),
        store=cfg["store_url"],
        # Metered routes bind sign-ins and session tokens to the service's public name; the
        # server's loopback port is only known once it listens, and clients need not call it
        # by that name.
        public_origin="http://metered.bench",
    )
    serve_uvicorn(build_app(gate))


async def run(n: int, store: str) -> dict[str, Any]:
    import tempfile

    import httpx
    from _common import child_server
    from eth_account import Account

    from x402gate.testing import LocalChain
    from x402gate.testing.clients import paying_httpx_client
    from x402gate.testing.redis_server import RedisServer

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        redis_url = stack.enter_context(RedisServer()).url if store == "redis" else ""
        chain = stack.enter_context(LocalChain())
        token = chain.deploy_token()
        buyer = chain.new_account(eth_wei=0, token=token, token_amount=50_000_000)
        facilitator = chain.new_account()
        asset = token.asset
        cfg = {
            "rpc_url": chain.rpc_url,
            "facilitator_key": facilitator.key.hex(),
            "pay_to": Account.create().address,
            "store_url": STORES[store].format(tmp=tmp, redis=redis_url),
            "asset": {
                "network": asset.network,
                "address": asset.address,
                "name": asset.name,
                "version": asset.version,
                "decimals": asset.decimals,
            },
        }
        command = [sys.executable, __file__, "--serve", json.dumps(cfg)]
        _, port = stack.enter_context(child_server(command, Path(tmp) / "server.log"))
        base = f"http://127.0.0.1:{port}"
        async with paying_httpx_client(buyer, asset=asset, base_url=base) as c:
            first = await c.get("/metered")
            first_stream = await c.get("/metered-stream")
        assert first.status_code == 200 and first_stream.status_code == 200
        token_value = first.headers["x402gate-session"]
        headers = {"X402GATE-SESSION": token_value}
        free: list[float] = []
        metered: list[float] = []
        ttfb_plain: list[float] = []
        ttfb_metered: list[float] = []
        ttfb_seconds: list[float] = []
        back_to_back: list[float] = []
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for _ in range(20):  # warm-up
                await client.get("/free")
                await client.get("/metered", headers=headers)
            for _ in range(n):
                t0 = time.perf_counter()
                r = await client.get("/free")
                free.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                r = await client.get("/metered", headers=headers)
                metered.append(time.perf_counter() - t0)
                assert r.status_code == 200 and "payment-response" not in r.headers
            streams = [
                ("/stream", ttfb_plain),
                ("/metered-stream", ttfb_metered),
                ("/seconds-stream", ttfb_seconds),
            ]
            for i in range(max(51, 3 * (n // 12))):
                # Rotated, so each stream follows each of the others equally often (a
                # request right after a metered one may wait for that one's commit).
                for path, sink in streams[i % 3 :] + streams[: i % 3]:
                    t0 = time.perf_counter()
                    async with client.stream("GET", path, headers=headers) as response:
                        first_byte = True
                        async for _chunk in response.aiter_raw():
                            if first_byte:
                                sink.append(time.perf_counter() - t0)
                                first_byte = False
                    assert response.status_code == 200
            for _ in range(max(50, n // 4)):
                # The payer's next request right on the heels of the last one: it waits
                # for the commit of the previous charge (in this process) before reserving.
                await client.get("/metered", headers=headers)
                t0 = time.perf_counter()
                r = await client.get("/metered", headers=headers)
                back_to_back.append(time.perf_counter() - t0)
                assert r.status_code == 200
        txs = chain.tx_count(facilitator.address)
    return {
        "free": free,
        "metered": metered,
        "ttfb_plain": ttfb_plain,
        "ttfb_metered": ttfb_metered,
        "ttfb_seconds": ttfb_seconds,
        "back_to_back": back_to_back,
        "transactions": txs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--store", choices=sorted(STORES), default="sqlite")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return 0
    result = asyncio.run(run(args.n, args.store))
    us = 1e6

    def med(name: str) -> float:
        return float(statistics.median(result[name])) * us

    added = med("metered") - med("free")
    print(f"x402gate metered benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.machine()}, nproc {os.cpu_count()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"python {platform.python_version()}; store {args.store}; n={args.n}"
    )
    print("| path | median µs | p90 µs |")
    print("|---|---|---|")
    for name, label in (
        ("free", "GET unprotected"),
        ("metered", "GET metered, served from credit"),
        ("back_to_back", "GET metered, right after the payer's previous one"),
        ("ttfb_plain", "SSE first byte, unmetered"),
        ("ttfb_metered", "SSE first byte, metered (credit)"),
        ("ttfb_seconds", "SSE first byte, credit alone (per-second, body not metered)"),
    ):
        print(f"| {label} | {med(name):.0f} | {pct(result[name], 0.9) * us:.0f} |")
    ratio = med("metered") / med("free")
    ttfb_ratio = med("ttfb_metered") / med("ttfb_plain")
    print(
        f"\nserving from credit adds {added:.0f} µs per request (ratio {ratio:.2f}); "
        f"goal <= 1000 µs: {'met' if added <= 1000 else 'MISSED'}"
    )
    print(
        f"metered stream first byte: ratio {ttfb_ratio:.2f} "
        f"(+{med('ttfb_metered') - med('ttfb_plain'):.0f} µs)"
    )
    print(
        "first byte, token metering vs credit alone: "
        f"{med('ttfb_metered') - med('ttfb_seconds'):+.0f} µs "
        "(what reading usage out of the stream adds; the rest is the reservation)"
    )
    print(f"on-chain transactions during the run: {result['transactions']} (the two top-ups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
