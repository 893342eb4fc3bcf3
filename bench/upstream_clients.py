"""Upstream clients A/B: ``bench/gateway.py`` once per client and round, medians compared.

    .venv/bin/python bench/upstream_clients.py [--clients aiohttp,httpx,builtin] [--rounds 3]
        [--n 400] [--stores sqlite,memory]

Each round runs ``bench/gateway.py --client NAME --json ...`` for every client (a fresh chain,
upstream and gateway each time), the order of the clients rotating from round to round so the
machine's drift falls on all of them. Prints each run's added latency from credit at p50 (the
gateway goal: under 2 ms with the memory and SQLite stores), then per client and store the
median over the rounds of: added p50 and p99, the 402's added p50, the stream's first byte
added p50, and the gateway's CPU per call from credit.

The rule it reports on: a maintained client (aiohttp or httpx) is the default if it meets the
goal with every store; the project's own client only if both miss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, header, print_table

GOAL_US = 2000
CLIENTS = ("aiohttp", "httpx", "builtin")
MAINTAINED = ("aiohttp", "httpx")
FIGURES = (
    ("credit_p50", "added p50 µs"),
    ("credit_p99", "added p99 µs"),
    ("challenge_p50", "402 added p50 µs"),
    ("ttfb_p50", "SSE first byte added p50 µs"),
    ("gateway_cpu_credit", "gateway CPU/call µs"),
)


def run_once(client: str, n: int, stores: str, out: Path) -> dict[str, dict[str, float]]:
    """One ``bench/gateway.py`` run; its output goes to this one's stdout as it comes."""
    command = [
        sys.executable, str(Path(__file__).with_name("gateway.py")), "--client", client,
        "--n", str(n), "--stores", stores, "--json", str(out),
    ]  # fmt: skip
    print(f"\n$ {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    data: dict[str, dict[str, float]] = json.loads(out.read_text())["stores"]
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=400, help="requests per column and run")
    parser.add_argument("--stores", default="sqlite,memory")
    args = parser.parse_args()
    clients = [c for c in args.clients.split(",") if c]
    if not clients or set(clients) - set(CLIENTS):
        parser.error(f"--clients: choose from {list(CLIENTS)}")
    stores = [s for s in args.stores.split(",") if s]

    print(
        header(
            "x402gate upstream clients A/B (bench/gateway.py per client)",
            ["x402gate", "httpx", "httpcore", "h11", "aiohttp", "uvicorn", "uvloop", "httptools"],
            [git_state(), f"clients {clients}; rounds {args.rounds}; n={args.n}; stores {stores}"],
        ),
        flush=True,
    )
    runs: dict[str, list[dict[str, dict[str, float]]]] = {c: [] for c in clients}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = clients[round_ % len(clients) :] + clients[: round_ % len(clients)]
            for client in order:
                out = Path(tmp) / f"{client}-{round_}.json"
                runs[client].append(run_once(client, args.n, ",".join(stores), out))

    print("\n## Each run: added latency from credit at p50 (µs)\n")
    rows = []
    for client in clients:
        for store in stores:
            values = [f"{run[store]['credit_p50']:+.0f}" for run in runs[client]]
            rows.append([f"{client}, {store}", *values])
    print_table(["client, store", *[f"round {i + 1}" for i in range(args.rounds)]], rows)

    print(f"\n## Medians over {args.rounds} rounds\n")
    medians: dict[tuple[str, str], dict[str, float]] = {}
    rows = []
    for client in clients:
        for store in stores:
            m = {
                key: statistics.median(run[store][key] for run in runs[client])
                for key, _ in FIGURES
            }
            medians[client, store] = m
            rows.append([f"{client}, {store}", *(f"{m[key]:.0f}" for key, _ in FIGURES)])
    print_table(["client, store", *(label for _, label in FIGURES)], rows)

    print()
    within = []
    for client in clients:
        met = all(medians[client, store]["credit_p50"] < GOAL_US for store in stores)
        print(f"{client}: {'meets' if met else 'MISSES'} the goal (< {GOAL_US} µs) on {stores}")
        if met and client in MAINTAINED:
            within.append(client)
    if within:
        best = min(within, key=lambda c: max(medians[c, s]["credit_p50"] for s in stores))
        print(f"rule: a maintained client within the goal is the default; fastest: {best}")
    else:
        print("rule: no maintained client within the goal; the project's own stays the default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
