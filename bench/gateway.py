"""Gateway overhead: what ``x402gate proxy`` adds over calling the upstream directly.

    .venv/bin/python bench/gateway.py [--n 400] [--stores sqlite,memory] [--client aiohttp]

Three processes on loopback, one local chain:

* the upstream: the fake LLM provider (``x402gate.testing.fake_llm``, Anthropic Messages JSON
  and SSE) served by uvicorn with the gateway's HTTP parser and event loop
  (``x402gate.gateway.app.server_stack``: httptools, which the ``gateway`` extra installs, and
  uvloop when installed, else h11 and asyncio), so the direct calls and the gateway's pay for
  the same server;
* the gateway: the real command, ``x402gate proxy gateway.yaml --port 0 --no-access-log``, with
  a per-token route in front of it (settling on anvil through ``LocalFacilitator``);
* this process: an ``httpx.AsyncClient``. The buyer pays once with the official x402 client (a
  $10 top-up) and gets a session token.

Then, sequentially and interleaved so the machine's noise falls on every column alike:

* ``direct``: ``POST /v1/messages`` (JSON) to the upstream;
* ``from credit``: the same request through the gateway, served from the buyer's credit with the
  session token (no payment, no transaction: price, reserve, forward, meter, commit);
* ``channel``: the same request paid by a ``batch-settlement`` voucher (the buyer is
  ``x402gate.client.async_http_client``, which deposits once into a channel on the local chain
  and then signs a voucher per call): the latency of the request that carries the voucher,
  comparable with the direct call, and of the whole call (the client first gets the route's
  402, then sends the voucher);
* ``402``: the same request through the gateway without payment (the challenge: it never
  reaches the upstream);
* ``fallback``: the same request from credit through a route with two targets whose first is
  down (``--down refused``: a port that refuses connections; ``timeout``: one where connecting
  times out after 1 s), so every request falls back to the upstream until the first target's
  circuit breaker opens (5 failures, during the warm-up), then skips it for 30 s and probes
  it once per window;
* streams: ``"stream": true`` directly and through the gateway (from credit), time to the
  first body byte.

Prints p50 and p99 of each, the gateway's added latency (p50 and p99 of the paired differences)
and the ratios to the direct call, from this one run; then the CPU time each process spends per
call, measured over blocks of one kind (unlike latency, it hardly depends on the machine's other
load). One gateway per store in ``--stores``: the default SQLite store syncs the credit ledger
to disk twice per call, ``memory://`` shows the gateway's own cost. Goal: under 1 ms added at
p50 and under 3 ms at p99, from credit and from a channel, with one target and with the
fallback chain.

``--client`` sets the gateway's ``gateway.upstream_client`` (default: the gateway's default);
``--json FILE`` also writes the figures per store (``bench/upstream_clients.py`` compares the
clients with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    child_server,
    cpu_seconds,
    git_state,
    header,
    percentile,
    print_table,
    serve_uvicorn,
)

STORES = {
    "sqlite": "sqlite:///{tmp}/gateway.db",
    "sqlite-normal": "sqlite:///{tmp}/gateway.db?synchronous=normal",
    "memory": "memory://",
}
GOAL_US = 1000
GOAL_P99_US = 3000
SYNC_SECONDS = 60.0  # channels.sync_seconds: CONFIG leaves it at its default

CONFIG = """\
gateway:
  secret: "{secret}"
  public_origin: http://gateway.bench
{client}pay_to: "{pay_to}"
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
  down:
    url: {down}
    timeout: 1
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
  "POST /fallback/v1/messages":
    path: /v1/messages
    targets: [down, llm]
    type: per-token
    models:
      "claude-*": {{input: $3, output: $15}}
    credit_topup: $10
"""

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "How far is the moon?"}],
}


def serve_upstream() -> None:
    """Child process: the fake provider on a free port (prints ``PORT <n>``), served as every
    benchmark server is, with the gateway's HTTP parser and event loop: the direct calls pay
    for the same server the gateway's calls go through twice."""
    from x402gate.gateway.app import server_stack
    from x402gate.testing.fake_llm import create_app

    serve_uvicorn(create_app(), **server_stack())


@contextmanager
def gateway_process(config: Path, env: dict[str, str], log: Path) -> Iterator[tuple[int, str]]:
    """``x402gate proxy`` in a child process; yields its PID and URL; stopped by its PID."""
    command = [
        sys.executable, "-m", "x402gate.cli", "proxy", str(config), "--port", "0",
        "--no-access-log",
    ]  # fmt: skip
    with log.open("w") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **env},
        )
        lines: queue.Queue[str] = queue.Queue()

        def drain() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                sink.write(line)
                lines.put(line)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            first = lines.get(timeout=120)
            if not first.startswith("x402gate gateway on "):
                raise SystemExit(f"the gateway did not start: {first}")
            yield process.pid, first.split(" on ", 1)[1].split(": ", 1)[0]
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            reader.join(timeout=5)
            if process.stderr is not None:
                process.stderr.close()


class VoucherTimer(httpx.AsyncBaseTransport):
    """The buyer's network transport, timing the requests that carry a payment (the voucher
    of a channel), so that their latency compares with a direct call's."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paid: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        start = time.perf_counter()
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if "payment-signature" in request.headers:
            self.paid.append(time.perf_counter() - start)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def measure(
    upstream: tuple[int, str],
    gateway: tuple[int, str],
    session: str,
    n: int,
    buyer_key: str,
    token: Any,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Latencies (seconds) of each kind of request, interleaved; then CPU per request (µs) of
    the process that served it, from blocks of one kind each (CPU time does not depend on the
    machine's other load the way latency does)."""
    from x402gate.client import async_http_client

    stream_body = {**BODY, "stream": True}
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "direct",
            "credit",
            "channel",
            "channel_call",
            "fallback",
            "challenge",
            "ttfb_direct",
            "ttfb_gateway",
        )
    }
    paid = {"X402GATE-SESSION": session}

    async def timed(client: httpx.AsyncClient, url: str, status: int, **kw: Any) -> float:
        start = time.perf_counter()
        response = await client.post(url, json=BODY, **kw)
        elapsed = time.perf_counter() - start
        assert response.status_code == status, (response.status_code, response.text[:200])
        return elapsed

    async def first_byte(client: httpx.AsyncClient, url: str, **kw: Any) -> float:
        start = time.perf_counter()
        async with client.stream("POST", url, json=stream_body, **kw) as response:
            chunks = response.aiter_raw()
            await anext(chunks)
            elapsed = time.perf_counter() - start
            async for _ in chunks:  # the whole stream, so the connection is reused
                pass
        assert response.status_code == 200
        return elapsed

    timer = VoucherTimer()
    buyer = async_http_client(
        buyer_key,
        max_per_request="$0.50",
        max_deposit="$2",
        max_total="$40",
        assets=token.asset,
        transport=timer,
        timeout=30,
    )
    async with httpx.AsyncClient(timeout=30) as client, buyer:
        direct, via = f"{upstream[1]}/v1/messages", f"{gateway[1]}/v1/messages"
        fallback = f"{gateway[1]}/fallback/v1/messages"
        channel = f"{gateway[1]}/channel/v1/messages"
        deposited: float | None = None
        for _ in range(30):  # warm-up: connections, caches, lazy imports, the breaker opening
            await timed(client, direct, 200)
            await timed(client, via, 200, headers=paid)
            await timed(buyer, channel, 200)  # the first deposits
            deposited = deposited or time.monotonic()
            await timed(client, fallback, 200, headers=paid)
            await timed(client, via, 402)
            await first_byte(client, direct)
            await first_byte(client, via, headers=paid)
        for _ in range(n):
            results["direct"].append(await timed(client, direct, 200))
            results["credit"].append(await timed(client, via, 200, headers=paid))
            results["channel_call"].append(await timed(buyer, channel, 200))
            results["channel"].append(timer.paid[-1])
            results["fallback"].append(await timed(client, fallback, 200, headers=paid))
            results["challenge"].append(await timed(client, via, 402))
        # The gateway mirrors a channel's chain figures at the deposit and asks the facilitator
        # (the chain) again only once they are older than sync_seconds: say whether any timed
        # voucher could have waited for that.
        assert deposited is not None
        since = time.monotonic() - deposited
        fresh = "none" if since < SYNC_SECONDS else f"at most {int(since // SYNC_SECONDS)}"
        print(
            f"timed vouchers ended {since:.1f} s after the deposit (sync_seconds "
            f"{SYNC_SECONDS:.0f}): chain reads among them: {fresh}"
        )
        for _ in range(max(50, n // 2)):
            results["ttfb_direct"].append(await first_byte(client, direct))
            results["ttfb_gateway"].append(await first_byte(client, via, headers=paid))
        cpu: dict[str, float] = {}
        before = cpu_seconds(gateway[0])
        for _ in range(n):
            await timed(buyer, channel, 200)
        cpu["channel_call"] = (cpu_seconds(gateway[0]) - before) / n * 1e6
        for name, (pid, url, status, headers) in {
            "direct": (upstream[0], direct, 200, {}),
            "credit": (gateway[0], via, 200, paid),
            "fallback": (gateway[0], fallback, 200, paid),
            "challenge": (gateway[0], via, 402, {}),
        }.items():
            before = cpu_seconds(pid)
            for _ in range(n):
                await timed(client, url, status, headers=headers)
            cpu[name] = (cpu_seconds(pid) - before) / n * 1e6
    return results, cpu


async def pay_once(gateway: str, buyer: Any, token: Any) -> str:
    from x402gate.testing.clients import paying_httpx_client

    async with paying_httpx_client(buyer, asset=token, base_url=gateway, timeout=60) as client:
        response = await client.post("/v1/messages", json=BODY)
    if response.status_code != 200:
        raise SystemExit(f"the first, paid request failed: {response.status_code} {response.text}")
    return response.headers["x402gate-session"]


def report(result: dict[str, list[float]], cpu: dict[str, float], store: str) -> dict[str, float]:
    """Print one store's tables; returns the added latencies (µs) and the gateway's CPU per call
    from credit (``credit_p50`` is the goal's figure)."""
    us = 1e6
    p50 = {k: statistics.median(v) * us for k, v in result.items()}
    p99 = {k: percentile(v, 0.99) * us for k, v in result.items()}

    def added(name: str, base: str, q: float) -> float:
        pairs = [(a - b) * us for a, b in zip(result[name], result[base], strict=True)]
        return statistics.median(pairs) if q == 0.5 else percentile(pairs, q)

    rows = []
    for name, base, label in (
        ("direct", "direct", "JSON call, upstream directly"),
        ("credit", "direct", "JSON call via gateway, served from credit"),
        ("channel", "direct", "the same, paid by a channel voucher"),
        ("channel_call", "direct", "the voucher's whole call (402, then the voucher)"),
        ("fallback", "direct", "the same, first of two targets down"),
        ("challenge", "direct", "via gateway, unpaid: the 402 answer"),
        ("ttfb_direct", "ttfb_direct", "SSE first byte, upstream directly"),
        ("ttfb_gateway", "ttfb_direct", "SSE first byte via gateway, from credit"),
    ):
        same = name == base
        rows.append(
            [
                label,
                f"{p50[name]:.0f}",
                f"{p99[name]:.0f}",
                "-" if same else f"{added(name, base, 0.5):+.0f}",
                "-" if same else f"{added(name, base, 0.99):+.0f}",
                "1.00" if same else f"{p50[name] / p50[base]:.2f}",
            ]
        )
    print(f"\n### gateway store: {store}\n")
    print_table(["request", "p50 µs", "p99 µs", "added p50 µs", "added p99 µs", "p50 ratio"], rows)
    print()
    print_table(
        ["process CPU per request (blocks of one kind)", "µs"],
        [
            ["upstream, serving a direct JSON call", f"{cpu['direct']:.0f}"],
            ["gateway, serving from credit (without the upstream's)", f"{cpu['credit']:.0f}"],
            [
                "gateway, a call paid by a voucher (its 402 and the paid request)",
                f"{cpu['channel_call']:.0f}",
            ],
            ["gateway, the same, first of two targets down", f"{cpu['fallback']:.0f}"],
            ["gateway, answering 402", f"{cpu['challenge']:.0f}"],
        ],
    )
    extra = added("credit", "direct", 0.5)
    figures = {
        "credit_p50": extra,
        "credit_p99": added("credit", "direct", 0.99),
        "channel_p50": added("channel", "direct", 0.5),
        "channel_p99": added("channel", "direct", 0.99),
        "channel_call_p50": added("channel_call", "direct", 0.5),
        "fallback_p50": added("fallback", "direct", 0.5),
        "fallback_p99": added("fallback", "direct", 0.99),
        "challenge_p50": added("challenge", "direct", 0.5),
        "ttfb_p50": added("ttfb_gateway", "ttfb_direct", 0.5),
        "direct_p50": p50["direct"],
        "gateway_cpu_credit": cpu["credit"],
        "gateway_cpu_channel_call": cpu["channel_call"],
    }
    print(
        f"\nfrom credit: +{extra:.0f} µs at p50 (ratio {p50['credit'] / p50['direct']:.2f}); "
        f"402: {added('challenge', 'direct', 0.5):+.0f} µs (ratio "
        f"{p50['challenge'] / p50['direct']:.2f}); stream first byte: "
        f"{added('ttfb_gateway', 'ttfb_direct', 0.5):+.0f} µs (ratio "
        f"{p50['ttfb_gateway'] / p50['ttfb_direct']:.2f})"
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="requests per column")
    parser.add_argument(
        "--stores",
        default="sqlite,memory",
        help=f"comma-separated gateway stores, one gateway each, from {sorted(STORES)}",
    )
    parser.add_argument(
        "--client",
        choices=["aiohttp", "httpx", "builtin"],
        default=None,
        help="the gateway's upstream client (gateway.upstream_client; default: its default)",
    )
    parser.add_argument(
        "--down",
        choices=["refused", "timeout"],
        default="refused",
        help="how the fallback route's first target is down (default: refused)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream()
        return 0
    stores = [s for s in args.stores.split(",") if s]
    unknown = set(stores) - set(STORES)
    if unknown or not stores:
        parser.error(f"unknown store(s) {sorted(unknown)}: choose from {sorted(STORES)}")

    from x402gate.gateway.app import server_stack
    from x402gate.testing.chain import LocalChain
    from x402gate.testing.fake_llm import refusing_url, unresponsive_url

    print(
        header(
            "x402gate gateway benchmark",
            [
                "x402gate",
                "x402",
                "httpx",
                "h11",
                "aiohttp",
                "uvicorn",
                "uvloop",
                "httptools",
                "pydantic",
            ],
            [
                git_state(),
                f"stores {', '.join(stores)}; n={args.n}; first fallback target {args.down}; "
                "upstream client "
                f"{args.client or 'default'}; gateway and upstream served with "
                + ", ".join(f"{k} {v}" for k, v in server_stack().items()),
            ],
        )
    )
    added: dict[str, dict[str, float]] = {}
    client = f"  upstream_client: {args.client}\n" if args.client else ""
    dead = refusing_url() if args.down == "refused" else unresponsive_url()
    with tempfile.TemporaryDirectory() as tmp, LocalChain() as chain, dead as down:
        token = chain.deploy_token()
        chain.place_channel_contracts()
        upstream_cmd = [sys.executable, __file__, "--serve-upstream"]
        with child_server(upstream_cmd, Path(tmp) / "upstream.log") as (upstream_pid, port):
            upstream = f"http://127.0.0.1:{port}"
            for store in stores:
                buyer = chain.new_account(eth_wei=0, token=token, token_amount=50_000_000)
                facilitator = chain.new_account()
                config = Path(tmp) / f"gateway-{store}.yaml"
                config.write_text(
                    CONFIG.format(
                        secret="b" * 48,
                        client=client,
                        pay_to=chain.new_account(eth_wei=0).address,
                        network=chain.network,
                        token=token.asset.address,
                        rpc_url=chain.rpc_url,
                        store=STORES[store].format(tmp=f"{tmp}/{store}"),
                        upstream=upstream,
                        down=down,
                    )
                )
                Path(tmp, store).mkdir()
                env = {
                    "FACILITATOR_KEY": facilitator.key.hex(),
                    "AUTHORIZER_KEY": chain.new_account().key.hex(),
                    "UPSTREAM_KEY": "sk-bench",
                }
                log = Path(tmp) / f"gateway-{store}.log"
                with gateway_process(config, env, log) as (gateway_pid, gateway):
                    session = asyncio.run(pay_once(gateway, buyer, token))
                    result, cpu = asyncio.run(
                        measure(
                            (upstream_pid, upstream),
                            (gateway_pid, gateway),
                            session,
                            args.n,
                            buyer.key.hex(),
                            token,
                        )
                    )
                added[store] = report(result, cpu, store)
                transactions = chain.tx_count(facilitator.address)
                print(f"on-chain transactions: {transactions} (the top-up and the deposit)")
    print()
    if args.json is not None:
        args.json.write_text(json.dumps({"client": args.client, "stores": added}, indent=2))
    for store, figures in added.items():
        for kind in ("credit", "channel", "fallback"):
            p50, p99 = figures[f"{kind}_p50"], figures[f"{kind}_p99"]
            verdict = "met" if p50 < GOAL_US and p99 < GOAL_P99_US else "MISSED"
            print(
                f"goal: under {GOAL_US} µs added at p50 and {GOAL_P99_US} µs at p99; "
                f"store {store}, {kind}: +{p50:.0f} / +{p99:.0f} µs, {verdict}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
