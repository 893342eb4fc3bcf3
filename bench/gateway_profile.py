"""Where the gateway's time goes: its request path in this one process, profiled.

    .venv/bin/python bench/gateway_profile.py [--n 300] [--store sqlite] [--kind credit,channel]
        [--profile cprofile|none] [--top 30]

The upstream (the fake LLM provider) runs in a child process, as in ``bench/gateway.py``; the
gateway (:class:`~x402gate.gateway.Gateway`, built from the same kind of file) runs in this
process and is called as an ASGI app, with no HTTP server in front of it, so the figures are
the gateway's own: its payment middleware, pricing, store and forwarder (aiohttp to the
upstream). Kinds of request, ``n`` each, after a warm-up:

* ``credit``: ``POST /v1/messages`` served from the buyer's credit (session token, paid once
  with ``exact`` by the official x402 client);
* ``channel``: ``POST /channel/v1/messages`` paid by a ``batch-settlement`` voucher each (one
  deposit first); the buyer's voucher signing happens before the request reaches the gateway
  and is not counted.

Prints the gateway's CPU time per request of each kind (``time.process_time`` around the ASGI
call, so the buyer's signing is outside it) and, with ``--profile cprofile``, the functions
under the gateway's ASGI call with the most cumulative and own time. The CPU figure is what
the commits that made the path cheaper quote: unlike latency it hardly moves with the
machine's other load.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_server

CONFIG = """\
gateway:
  secret: "{secret}"
  public_origin: http://gateway.bench
pay_to: "{pay_to}"
accepts:
  - network: "{network}"
    asset: "{token}"
    name: USD Coin
    version: "2"
facilitator:
  rpc_url: {rpc_url}
  private_key: ${{FACILITATOR_KEY}}
store: {store}
channels:
  receiver_authorizer_key: ${{AUTHORIZER_KEY}}
  min_deposit: 1000000
upstreams:
  llm:
    url: {upstream}
    headers:
      x-api-key: ${{UPSTREAM_KEY}}
routes:
  "POST /v1/messages":
    upstream: llm
    type: per-token
    models:
      "claude-*": {{input: $3, output: $15}}
    credit_topup: $10
  "POST /channel/v1/messages":
    upstream: llm
    path: /v1/messages
    type: per-token
    models:
      "claude-*": {{input: $3, output: $15}}
"""

STORES = {"sqlite": "sqlite:///{tmp}/gateway.db", "memory": "memory://"}

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "How far is the moon?"}],
}


class CountingTransport(httpx.AsyncBaseTransport):
    """An httpx transport around the ASGI one that adds up the CPU time and the profile of
    the gateway's ASGI calls only (the paying client's signing stays outside)."""

    def __init__(
        self, app: Any, profiler: cProfile.Profile | None, *, paid_only: bool = False
    ) -> None:
        self.inner = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        self.profiler = profiler
        self.paid_only = paid_only  # profile only the requests that carry a payment
        self.cpu = 0.0
        self.calls = 0
        self.paid_cpu = 0.0  # of the requests that carry a payment (a voucher), apart
        self.paid_calls = 0
        self.on = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.on:
            return await self.inner.handle_async_request(request)
        paid = "payment-signature" in request.headers
        profiler = self.profiler if paid or not self.paid_only else None
        if profiler is not None:
            profiler.enable()
        start = time.process_time()
        try:
            return await self.inner.handle_async_request(request)
        finally:
            spent = time.process_time() - start
            self.cpu += spent
            self.calls += 1
            if paid:
                self.paid_cpu += spent
                self.paid_calls += 1
            if profiler is not None:
                profiler.disable()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def run(args: argparse.Namespace, tmp: str) -> None:
    from x402gate.client import async_http_client
    from x402gate.gateway import Gateway, parse_config
    from x402gate.testing.chain import LocalChain
    from x402gate.testing.clients import paying_httpx_client

    upstream_cmd = [sys.executable, str(Path(__file__).parent / "gateway.py"), "--serve-upstream"]
    with LocalChain() as chain, child_server(upstream_cmd, Path(tmp) / "upstream.log") as up:
        token = chain.deploy_token()
        chain.place_channel_contracts()
        buyer = chain.new_account(eth_wei=0, token=token, token_amount=50_000_000)
        text = CONFIG.format(
            secret="b" * 48,
            pay_to=chain.new_account(eth_wei=0).address,
            network=chain.network,
            token=token.asset.address,
            rpc_url=chain.rpc_url,
            store=STORES[args.store].format(tmp=tmp),
            upstream=f"http://127.0.0.1:{up[1]}",
        )
        env = {
            "FACILITATOR_KEY": chain.new_account().key.hex(),
            "AUTHORIZER_KEY": chain.new_account().key.hex(),
            "UPSTREAM_KEY": "sk-bench",
        }
        gateway = Gateway(parse_config(text, source="gateway.yaml", env=env))
        await gateway.startup()
        variants = ["thread", "inline"] if args.ab_store else ["-"]
        profiler = cProfile.Profile() if args.profile == "cprofile" else None
        results: dict[str, float] = {}
        try:
            for kind in args.kind.split(","):
                transport = CountingTransport(gateway, profiler, paid_only=args.paid_only)
                if kind == "credit":
                    async with paying_httpx_client(
                        buyer, asset=token, base_url="http://gateway.bench", transport=transport
                    ) as payer:
                        first = await payer.post("/v1/messages", json=BODY)
                        assert first.status_code == 200, first.text
                    session = first.headers["x402gate-session"]
                    client = httpx.AsyncClient(
                        transport=transport,
                        base_url="http://gateway.bench",
                        headers={"X402GATE-SESSION": session},
                    )
                    path = "/v1/messages"
                elif kind == "channel":
                    client = async_http_client(
                        buyer.key.hex(),
                        max_per_request="$0.50",
                        max_deposit="$2",
                        max_total="$20",
                        assets=token.asset,
                        transport=transport,
                        base_url="http://gateway.bench",
                    )
                    path = "/channel/v1/messages"
                else:
                    raise SystemExit(f"unknown kind {kind!r}")
                async with client:
                    for _ in range(30):
                        response = await client.post(path, json=BODY)
                        assert response.status_code == 200, response.text
                    blocks: dict[str, list[float]] = {v: [] for v in variants}
                    paid_blocks: dict[str, list[float]] = {v: [] for v in variants}
                    for index in range(max(1, args.n // args.block)):
                        variant = variants[index % len(variants)]
                        if variant != "-":
                            gateway.gate.store.inline_first = variant == "inline"  # type: ignore[misc]
                        transport.cpu, transport.calls, transport.on = 0.0, 0, True
                        transport.paid_cpu, transport.paid_calls = 0.0, 0
                        for _ in range(args.block):
                            response = await client.post(path, json=BODY)
                            assert response.status_code == 200, response.text
                        transport.on = False
                        blocks[variant].append(transport.cpu / transport.calls * 1e6)
                        if transport.paid_calls and transport.paid_calls < transport.calls:
                            paid_blocks[variant].append(
                                transport.paid_cpu / transport.paid_calls * 1e6
                            )
                for variant, figures in blocks.items():
                    name = kind if variant == "-" else f"{kind}, store calls {variant}"
                    results[name] = statistics.median(figures)
                    if paid_blocks[variant]:
                        # A voucher call is its 402 and then the request paid by the voucher.
                        results[f"{name}: the paid request alone"] = statistics.median(
                            paid_blocks[variant]
                        )
        finally:
            await gateway.aclose()
        for kind, us in results.items():
            print(f"gateway CPU per request, {kind} ({args.store}): {us:.0f} µs (median of blocks)")
        if profiler is not None and args.dump:
            profiler.dump_stats(args.dump)
        if profiler is not None:
            for order in ("cumulative", "tottime"):
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats(order).print_stats(args.top)
                print(out.getvalue())
            for pattern in args.callers:
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).print_callers(pattern)
                print(out.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--store", choices=sorted(STORES), default="sqlite")
    parser.add_argument("--kind", default="credit,channel")
    parser.add_argument("--profile", choices=["cprofile", "none"], default="none")
    parser.add_argument("--block", type=int, default=25, help="requests per measured block")
    parser.add_argument(
        "--ab-store",
        action="store_true",
        help="alternate blocks with every store call in a worker thread and inline first",
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--paid-only",
        action="store_true",
        help="profile only the requests that carry a payment (not a voucher call's 402)",
    )
    parser.add_argument(
        "--callers",
        action="append",
        default=[],
        metavar="PATTERN",
        help="with --profile cprofile, also print who calls the functions matching PATTERN",
    )
    parser.add_argument(
        "--dump",
        metavar="PATH",
        help="with --profile cprofile, also write the profile there (for pstats or snakeviz)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
