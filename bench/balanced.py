"""Benchmark: 402 answers per second behind a real load balancer, 1 instance against 2.

Run with ``.venv/bin/python bench/balanced.py [--duration 4] [--rounds 3] [--connections 16]``.
Loopback only; every process it starts (the app instances, HAProxy, anvil) is stopped by its
PID. Needs ``haproxy`` (Debian: ``apt-get install haproxy``) and ``wrk`` for the load.

Each instance is the ``x402gate ASGI`` server of ``bench/challenge.py`` (a FastAPI app wrapped
in ``x402gate.asgi.PaymentMiddleware``, ``GET /resource`` paid $0.001) in a uvicorn process of
its own (1 worker), all on one shared store (a SQLite file: one host). The configurations:

* ``direct, 1 instance``: wrk straight at one instance (no balancer): the reference;
* ``haproxy, 1 instance`` and ``haproxy, 2 instances``: wrk at HAProxy
  (:class:`x402gate.testing.load_balancer.LoadBalancer`, round robin, keep-alive on both
  sides) in front of the instances.

Every request is unpaid, so each answer is a 402 challenge (checked first: status and
``PAYMENT-REQUIRED`` header). Rounds interleave the configurations; the table gives the median
answers/s, the instances' CPU time per answer (summed over the instances, from ``/proc``) and
HAProxy's. The goal: CPU per answer does not grow with instances, so the answers scale with the
cores; on a machine whose cores the client and the balancer share with the instances, the rate
gained by a second instance is bounded by what is left of the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_server, cpu_seconds, git_state, header, median, print_table
from challenge import build_app, check_answer, run_wrk

CONFIGS = ("direct, 1 instance", "haproxy, 1 instance", "haproxy, 2 instances")
PATH = "/resource"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=int, default=4, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--warm-up", type=int, default=1, help="seconds per configuration")
    args = parser.parse_args()
    if args.serve:
        from _common import serve_uvicorn

        serve_uvicorn(build_app(json.loads(args.serve)))
        return

    from eth_account import Account

    from x402gate.testing import LocalChain
    from x402gate.testing.load_balancer import LoadBalancer, find_haproxy

    wrk = shutil.which("wrk")
    haproxy = find_haproxy()
    if wrk is None or haproxy is None:
        raise SystemExit("bench/balanced.py needs wrk and haproxy on PATH (apt-get install both)")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    samples: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="x402gate-bench-") as tmp_name, LocalChain() as chain:
        tmp = Path(tmp_name)
        asset = chain.deploy_token().asset
        cfg = {
            "kind": "x402gate ASGI",
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
            "store_url": f"sqlite:///{tmp / 'shared.db'}",
        }
        command = [sys.executable, __file__, "--serve", json.dumps(cfg)]
        with ExitStack() as stack:
            instances = [
                stack.enter_context(child_server(command, tmp / f"instance-{n}.log"))
                for n in range(2)
            ]
            urls = [f"http://127.0.0.1:{port}" for _, port in instances]
            one = stack.enter_context(LoadBalancer(urls[:1], binary=haproxy))
            two = stack.enter_context(LoadBalancer(urls, binary=haproxy))
            # configuration -> (front URL, instance pids, balancer pid)
            fronts: dict[str, tuple[str, list[int], int | None]] = {
                CONFIGS[0]: (urls[0], [instances[0][0]], None),
                CONFIGS[1]: (one.url, [instances[0][0]], one.pid),
                CONFIGS[2]: (two.url, [pid for pid, _ in instances], two.pid),
            }
            for front, _, _ in fronts.values():
                check_answer(f"{front}{PATH}", 402)
            for round_number in range(args.rounds):
                shift = round_number % len(CONFIGS)
                for name in CONFIGS[shift:] + CONFIGS[:shift]:
                    front, pids, balancer = fronts[name]
                    url = f"{front}{PATH}"
                    run_wrk(wrk, url, args.connections, args.warm_up)
                    cpu_before = sum(cpu_seconds(pid) for pid in pids)
                    lb_before = cpu_seconds(balancer) if balancer else 0.0
                    count, seconds, non_2xx = run_wrk(wrk, url, args.connections, args.duration)
                    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
                    lb_cpu = (cpu_seconds(balancer) - lb_before) if balancer else 0.0
                    if non_2xx != count:
                        raise SystemExit(f"{name}: {count - non_2xx} answers were not 402s")
                    samples[name].append((count / seconds, cpu / count, lb_cpu / count))
    print(
        header(
            "402 answers behind a load balancer (HAProxy), 1 instance against 2",
            ["x402gate", "uvicorn", "fastapi"],
            [
                f"haproxy: {_haproxy_version(haproxy)}; wrk -t1 -c{args.connections}, "
                f"{args.duration} s x {args.rounds} rounds (medians); shared SQLite store",
                f"load average before: {load_before}; {git_state()}",
            ],
        )
    )
    base = median([rate for rate, _, _ in samples[CONFIGS[1]]])
    rows = []
    for name in CONFIGS:
        rate = median([r for r, _, _ in samples[name]])
        app_us = 1e6 * median([c for _, c, _ in samples[name]])
        lb_us = 1e6 * median([c for _, _, c in samples[name]])
        rows.append(
            [
                name,
                f"{rate:,.0f}",
                f"{app_us:.0f}",
                f"{lb_us:.0f}" if name != CONFIGS[0] else "-",
                f"{rate / base:.2f}x",
            ]
        )
    print_table(
        [
            "configuration",
            "402 answers/s",
            "instances' CPU µs/answer",
            "haproxy CPU µs/answer",
            "vs haproxy, 1 instance",
        ],
        rows,
    )
    print(f"\n(total {time.monotonic() - started:.0f} s)")


def _haproxy_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout
    return out.split("\n", 1)[0].replace("HAProxy version ", "")


if __name__ == "__main__":
    main()
