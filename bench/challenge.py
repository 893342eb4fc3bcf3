"""Benchmark: 402 answers per second on a paid route, versus the same route unprotected.

Run with ``.venv/bin/python bench/challenge.py [--duration 4] [--rounds 3] [--connections 8]``.
Loopback only; every server is a child process stopped by its PID.

Each server is the same FastAPI app (``GET /resource`` and ``GET /free``, both returning
``{"ok": true}``) served by uvicorn in its own process (1 worker, the same ``uvicorn.Config``):

* ``unprotected``: the app alone: the baseline;
* ``x402gate FastAPI``: ``install(app, gate)`` and ``Depends(require_payment("$0.001"))`` on
  ``/resource``; a request without payment gets the 402 challenge;
* ``x402gate ASGI``: the app wrapped in ``x402gate.asgi.PaymentMiddleware`` with
  ``/resource`` paid;
* ``official``: ``x402.http.middleware.fastapi.PaymentMiddlewareASGI`` with ``/resource`` paid.

``/free`` on the protected apps shows what the payment layer costs routes it does not charge.
The gates use ``LocalFacilitator`` on a local anvil with a deployed test USDC (a 402 never
touches the chain). The load comes from ``wrk`` (one thread, keep-alive connections, no
``Accept`` header, so 402s are JSON) when it is on ``PATH``, else from an ``httpx.AsyncClient``
loop (slower: then the client, not the server, may be the limit). Every configuration is first
checked to answer as expected (402 with a ``PAYMENT-REQUIRED`` header, or 200). Rounds
interleave the servers; the table gives the median requests/s and the server process's CPU time
per request, and each row's rate as a share of the unprotected app's.

A second table calls the same ASGI apps directly in this process (no socket, no uvicorn, no
HTTP parsing) and gives the CPU time per request: what the payment layer itself adds, with the
least noise from the machine's other load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    child_server,
    cpu_seconds,
    git_state,
    header,
    median,
    print_table,
    read_wrk,
    serve_uvicorn,
    versions,
)

PRICE = "$0.001"
SERVERS = ("unprotected", "x402gate FastAPI", "x402gate ASGI", "official")
# (server, path, expected status)
TARGETS = [
    ("unprotected", "/resource", 200),
    ("x402gate FastAPI", "/resource", 402),
    ("x402gate FastAPI", "/free", 200),
    ("x402gate ASGI", "/resource", 402),
    ("x402gate ASGI", "/free", 200),
    ("official", "/resource", 402),
    ("official", "/free", 200),
]


# ======================================================================== server (child process)


def build_app(cfg: dict[str, Any]) -> Any:
    from fastapi import Depends, FastAPI

    kind = cfg["kind"]
    app = FastAPI()

    async def free() -> dict[str, bool]:
        return {"ok": True}

    app.add_api_route("/free", free, methods=["GET"])
    if kind == "unprotected":
        app.add_api_route("/resource", free, methods=["GET"])
        return app
    if kind == "official":
        return _official(app, cfg, free)

    from x402gate import LocalFacilitator, PaymentGate
    from x402gate.assets import Asset

    asset = Asset(**cfg["token"])
    gate = PaymentGate(
        pay_to=cfg["pay_to"],
        assets=asset,
        facilitator=LocalFacilitator(
            cfg["rpc_url"], cfg["facilitator_key"], networks=asset.network
        ),
        store=cfg["store_url"],
    )
    if kind == "x402gate FastAPI":
        from x402gate.fastapi import install, require_payment

        install(app, gate)
        app.add_api_route(
            "/resource",
            free,
            methods=["GET"],
            dependencies=[Depends(require_payment(PRICE))],
        )
        return app
    from x402gate.asgi import PaymentMiddleware

    app.add_api_route("/resource", free, methods=["GET"])
    return PaymentMiddleware(app, gate=gate, routes={"GET /resource": gate.route(PRICE)})


def _official(app: Any, cfg: dict[str, Any], endpoint: Any) -> Any:
    from decimal import Decimal

    from x402 import x402Facilitator, x402ResourceServer
    from x402.http import PaymentOption, RouteConfig
    from x402.http.middleware.fastapi import PaymentMiddlewareASGI
    from x402.mechanisms.evm import FacilitatorWeb3Signer
    from x402.mechanisms.evm.exact import ExactEvmServerScheme, register_exact_evm_facilitator
    from x402.schemas import AssetAmount

    from x402gate.assets import Asset

    asset = Asset(**cfg["token"])
    facilitator = x402Facilitator()
    register_exact_evm_facilitator(
        facilitator,
        FacilitatorWeb3Signer(cfg["facilitator_key"], cfg["rpc_url"]),
        networks=asset.network,
        simulate_in_settle=True,
    )
    scheme = ExactEvmServerScheme()  # type: ignore[no-untyped-call]  # untyped in the SDK

    def dollars_to_token(amount: str | int | float, network: str) -> AssetAmount | None:
        atomic = Decimal(str(amount)) * 10**asset.decimals
        return AssetAmount(amount=str(int(atomic)), asset=asset.address, extra=asset.extra)

    scheme.register_money_parser(dollars_to_token)
    server = x402ResourceServer(facilitator)
    # The SDK types its own scheme's payment_flows as a plain dict, not its protocol's mapping.
    server.register(asset.network, scheme)  # type: ignore[arg-type]
    app.add_api_route("/resource", endpoint, methods=["GET"])
    routes = {
        "GET /resource": RouteConfig(
            accepts=PaymentOption(
                scheme="exact", pay_to=cfg["pay_to"], price=PRICE, network=asset.network
            )
        )
    }
    app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)
    return app


# ======================================================================== load (this process)


def run_wrk(wrk: str, url: str, connections: int, seconds: float) -> tuple[int, float, int]:
    """(requests, seconds, non-2xx) from one wrk run."""
    seconds = max(1, round(seconds))  # wrk takes whole seconds
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    return read_wrk(out, url)


async def run_httpx(url: str, connections: int, seconds: float) -> tuple[int, float, int]:
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    count = non_2xx = 0
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        started = time.perf_counter()
        stop = started + seconds

        async def worker() -> None:
            nonlocal count, non_2xx
            while time.perf_counter() < stop:
                response = await client.get(url)
                count += 1
                non_2xx += not 200 <= response.status_code < 400

        await asyncio.gather(*(worker() for _ in range(connections)))
        return count, time.perf_counter() - started, non_2xx


async def asgi_call(app: Any, path: str) -> int:
    """One request straight into the ASGI app: no socket, no HTTP parsing."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def in_process(cfg: dict[str, Any], calls: int, repeats: int) -> dict[tuple[str, str], float]:
    """µs per request of each target's ASGI app called directly (median of ``repeats``)."""
    apps = {kind: build_app(dict(cfg, kind=kind, store_url=cfg["store_url"] + kind[:3]))
            for kind in SERVERS}  # fmt: skip
    per_call: dict[tuple[str, str], list[float]] = defaultdict(list)

    async def run() -> None:
        for kind, path, status in TARGETS:  # warm up, check
            for _ in range(200):
                got = await asgi_call(apps[kind], path)
            if got != status:
                raise SystemExit(f"in-process {kind} {path} answered {got}, expected {status}")
        for _ in range(repeats):
            for kind, path, _ in TARGETS:
                app = apps[kind]
                # CPU time of this process: other processes' load does not count.
                start = time.process_time()
                for _ in range(calls):
                    await asgi_call(app, path)
                per_call[(kind, path)].append((time.process_time() - start) / calls)

    asyncio.run(run())
    return {key: median(values) for key, values in per_call.items()}


def profile_402(kind: str, calls: int) -> None:
    """cProfile ``calls`` in-process 402 answers of one server (no chain needed for a 402)."""
    import cProfile
    import pstats

    from eth_account import Account

    if kind not in SERVERS[1:]:
        raise SystemExit(f"--profile takes one of {', '.join(SERVERS[1:])}")
    with tempfile.TemporaryDirectory(prefix="x402gate-bench-") as tmp:
        cfg = {
            "kind": kind,
            "rpc_url": "http://127.0.0.1:9",  # never contacted: a 402 needs no chain
            "token": {
                "network": "eip155:31337",
                "address": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
                "name": "USD Coin",
                "version": "2",
            },
            "pay_to": Account.create().address,
            "facilitator_key": Account.create().key.hex(),
            "store_url": f"sqlite:///{tmp}/profile.db",
        }
        app = build_app(cfg)

        async def run(n: int) -> None:
            for _ in range(n):
                if await asgi_call(app, "/resource") != 402:
                    raise SystemExit(f"{kind} did not answer 402")

        asyncio.run(run(300))
        profiler = cProfile.Profile()
        profiler.enable()
        asyncio.run(run(calls))
        profiler.disable()
    stats = pstats.Stats(profiler)
    total = max(ct for _, _, _, ct, _ in stats.stats.values())  # type: ignore[attr-defined]
    print(
        f"cProfile of {calls} in-process 402 answers of {kind}: µs per answer (cumulative, "
        f"self) of the heaviest functions below the ASGI entry; profiled total "
        f"{1e6 * total / calls:.0f} µs (cProfile roughly doubles the cost)"
    )
    rows = []
    entries = stats.stats.items()  # type: ignore[attr-defined]
    for (path, line, name), (_, calls_, own, cumulative, _) in sorted(
        entries, key=lambda kv: -kv[1][3]
    ):
        short = _short_path(path)
        if short.startswith(("asyncio/", "challenge.py", "<")) or "cProfile" in short:
            continue
        rows.append(
            [
                f"{name} ({short}:{line})",
                calls_,
                f"{1e6 * cumulative / calls:.1f}",
                f"{1e6 * own / calls:.1f}",
            ]
        )
        if len(rows) == 40:
            break
    print_table(["function", "calls", "cumulative µs", "self µs"], rows)


def _short_path(path: str) -> str:
    parts = path.split("/")
    for anchor in ("site-packages", "src"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    if "python3" in "/".join(parts[:-1]):
        return "/".join(parts[-2:]) if parts[-2] == "asyncio" else parts[-1]
    return parts[-1]


def check_answer(url: str, status: int) -> tuple[int, int]:
    """Check the answer; return the sizes of its header block and body in bytes."""
    import httpx

    response = httpx.get(url, timeout=30)
    if response.status_code != status:
        raise SystemExit(f"{url} answered {response.status_code}, expected {status}")
    if status == 402 and "payment-required" not in response.headers:
        raise SystemExit(f"{url} answered 402 without a PAYMENT-REQUIRED header")
    head = sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
    return head, len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument(
        "--duration", type=int, default=3, help="seconds per measurement (whole seconds)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warm-up", type=int, default=1, help="seconds per target and round")
    parser.add_argument("--no-wrk", action="store_true", help="use the httpx client even if wrk")
    parser.add_argument(
        "--asgi-calls", type=int, default=2000, help="direct ASGI calls per target and repeat"
    )
    parser.add_argument(
        "--profile",
        default="",
        help="cProfile the in-process 402 of this server (e.g. 'x402gate FastAPI') instead of "
        "measuring; prints the heaviest functions",
    )
    args = parser.parse_args()
    if args.serve:
        serve_uvicorn(build_app(json.loads(args.serve)))
        return

    from eth_account import Account

    from x402gate.testing import LocalChain

    if args.profile:
        profile_402(args.profile, args.asgi_calls)
        return
    wrk = None if args.no_wrk else shutil.which("wrk")
    load_before = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
    started = time.monotonic()
    samples: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="x402gate-bench-") as tmp_name, LocalChain() as chain:
        tmp = Path(tmp_name)
        token = chain.deploy_token()
        asset = token.asset
        base_cfg = {
            "rpc_url": chain.rpc_url,
            "token": {
                "network": asset.network,
                "address": asset.address,
                "name": asset.name,
                "version": asset.version,
                "decimals": asset.decimals,
                "symbol": asset.symbol,
            },
            "pay_to": Account.create().address,
            "facilitator_key": chain.new_account().key.hex(),
        }
        servers: dict[str, tuple[int, int]] = {}
        from contextlib import ExitStack

        with ExitStack() as stack:
            for index, kind in enumerate(SERVERS):
                cfg = dict(base_cfg, kind=kind, store_url=f"sqlite:///{tmp / f'{index}.db'}")
                command = [sys.executable, __file__, "--serve", json.dumps(cfg)]
                servers[kind] = stack.enter_context(
                    child_server(command, tmp / f"server-{index}.log")
                )
            sizes = {
                (kind, path): check_answer(f"http://127.0.0.1:{servers[kind][1]}{path}", status)
                for kind, path, status in TARGETS
            }
            for round_number in range(args.rounds):
                shift = round_number % len(TARGETS)
                for kind, path, status in TARGETS[shift:] + TARGETS[:shift]:
                    pid, port = servers[kind]
                    url = f"http://127.0.0.1:{port}{path}"

                    def load(seconds: float, url: str = url) -> tuple[int, float, int]:
                        if wrk:
                            return run_wrk(wrk, url, args.connections, seconds)
                        return asyncio.run(run_httpx(url, args.connections, seconds))

                    load(args.warm_up)
                    cpu_before = cpu_seconds(pid)
                    count, seconds, non_2xx = load(args.duration)
                    cpu = cpu_seconds(pid) - cpu_before
                    if (status == 200) != (non_2xx == 0) or (status == 402 and non_2xx != count):
                        raise SystemExit(f"{url}: {non_2xx} of {count} answers not {status}")
                    samples[(kind, path)].append((count / seconds, cpu / count))
        direct = in_process(
            dict(base_cfg, store_url=f"sqlite:///{tmp / 'direct.db'}"), args.asgi_calls, 3
        )
    load_after = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
    elapsed = time.monotonic() - started

    tool = (
        f"wrk -t1 -c{args.connections} ({subprocess.run([wrk, '-v'], capture_output=True, text=True, check=False).stdout.split(' [')[0].strip()})"  # noqa: E501
        if wrk
        else f"httpx.AsyncClient, {args.connections} workers ({versions('httpx')})"
    )
    print(
        header(
            "x402gate 402-challenge benchmark (FastAPI, uvicorn)",
            ["x402", "fastapi", "starlette", "uvicorn", "pydantic"],
            [
                git_state(),
                f"load: {tool}; {args.rounds} rounds x {args.duration:g} s per target after "
                f"{args.warm_up:g} s warm-up, targets interleaved; 1 uvicorn worker per server",
                f"{elapsed:.0f} s; load average before {load_before}, after {load_after}",
            ],
        )
    )
    baseline = median([rate for rate, _ in samples[("unprotected", "/resource")]])
    rows = []
    for kind, path, status in TARGETS:
        rates = [rate for rate, _ in samples[(kind, path)]]
        cpu_per_request = [per for _, per in samples[(kind, path)]]
        rows.append(
            [
                kind,
                f"GET {path}",
                status,
                f"{median(rates):.0f}",
                f"{min(rates):.0f}-{max(rates):.0f}",
                f"{1e6 * median(cpu_per_request):.0f}",
                f"{100 * median(rates) / baseline:.0f} %",
            ]
        )
    print_table(
        [
            "server",
            "route",
            "status",
            "req/s (median)",
            "range",
            "server CPU µs/req",
            "vs unprotected",
            "answer bytes (headers+body)",
        ],
        [
            [*row, "{}+{}".format(*sizes[(kind, path)])]
            for row, (kind, path, _) in zip(rows, TARGETS, strict=True)
        ],
    )
    print(
        f"\nthe same apps called in-process (no socket, no uvicorn, no HTTP parsing): "
        f"CPU µs per request, median of 3 x {args.asgi_calls} calls"
    )
    base_direct = direct[("unprotected", "/resource")]
    print_table(
        ["server", "route", "status", "CPU µs/request", "added vs unprotected"],
        [
            [
                kind,
                f"GET {path}",
                status,
                f"{1e6 * direct[(kind, path)]:.0f}",
                f"{1e6 * (direct[(kind, path)] - base_direct):+.0f}",
            ]
            for kind, path, status in TARGETS
        ],
    )
    print()
    base_cpu = median([per for _, per in samples[("unprotected", "/resource")]])
    for kind in ("x402gate FastAPI", "x402gate ASGI", "official"):
        rate = median([r for r, _ in samples[(kind, "/resource")]])
        cpu = median([per for _, per in samples[(kind, "/resource")]])
        print(
            f"{kind}: 402 answers at {100 * rate / baseline:.0f} % of the unprotected route's "
            f"rate (goal >= 90 %: {'met' if rate >= 0.9 * baseline else 'NOT met'}); "
            f"by server CPU per request {100 * base_cpu / cpu:.0f} %"
        )


if __name__ == "__main__":
    main()
