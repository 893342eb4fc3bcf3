"""Benchmark: import time of x402gate versus the official x402 SDK, in fresh interpreters.

Run with ``.venv/bin/python bench/imports.py [--runs 15]``. Each statement runs in a new
``python`` process of this venv (bytecode already compiled by a first, untimed run); the child
times the statement itself with ``perf_counter`` (interpreter start-up excluded: it is the same
for every row, shown separately) and reports which heavy packages it loaded. Statements are
interleaved run by run; the table gives the median and the range. Goal: ``import x402gate``
under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, header, median, print_table

STATEMENTS = [
    "import x402gate",
    "from x402gate import PaymentGate",
    "import x402gate.fastapi",
    "import x402",
    "import x402.http.middleware.fastapi",
    "import pydantic",
    "import fastapi",
]
HEAVY = ["pydantic", "x402", "web3", "eth_account", "fastapi", "starlette", "httpx", "redis"]

CHILD = """
import sys, time
start, cpu = time.perf_counter(), time.process_time()
exec(compile({statement!r}, "<bench>", "exec"))
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
import json
loaded = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps({{"ms": elapsed * 1000, "cpu_ms": cpu * 1000, "loaded": loaded}}))
"""


def run(statement: str) -> dict[str, object]:
    code = CHILD.format(statement=statement, heavy=HEAVY)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def startup_ms() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    for statement in STATEMENTS:
        run(statement)  # compile bytecode, warm the page cache
    times: dict[str, list[float]] = {s: [] for s in STATEMENTS}
    cpu: dict[str, list[float]] = {s: [] for s in STATEMENTS}
    loaded: dict[str, list[str]] = {}
    startups = []
    for _ in range(args.runs):
        startups.append(startup_ms())
        for statement in STATEMENTS:
            result = run(statement)
            times[statement].append(float(result["ms"]))  # type: ignore[arg-type]
            cpu[statement].append(float(result["cpu_ms"]))  # type: ignore[arg-type]
            loaded[statement] = list(result["loaded"])  # type: ignore[call-overload]
    elapsed = time.monotonic() - started

    print(
        header(
            "x402gate import-time benchmark",
            ["x402gate", "x402", "pydantic", "fastapi", "web3"],
            [
                git_state(),
                f"{args.runs} fresh interpreters per statement, interleaved, warm bytecode "
                f"({elapsed:.1f} s); interpreter start-up alone ({sys.executable} -c pass): "
                f"median {median(startups):.0f} ms, not included below",
                f"load average before {load_before}, after "
                + " ".join(f"{x:.2f}" for x in os.getloadavg()),
            ],
        )
    )
    baseline = median(times["import x402"])
    rows = []
    for statement in STATEMENTS:
        values = times[statement]
        rows.append(
            [
                f"`{statement}`",
                f"{median(values):.1f}",
                f"{min(values):.1f}-{max(values):.1f}",
                f"{median(cpu[statement]):.1f}",
                f"{median(values) / baseline:.2f}",
                ", ".join(loaded[statement]) or "-",
            ]
        )
    print_table(
        ["statement", "ms (median)", "range", "CPU ms", "vs import x402", "heavy modules loaded"],
        rows,
    )
    ours = median(times["import x402gate"])
    print(
        f"\nms: wall time of the import; CPU ms: the child's CPU time for it (less sensitive to "
        f"other load)\n`import x402gate`: {ours:.1f} ms, {baseline / ours:.1f}x faster than "
        f"`import x402` (goal < 100 ms: {'met' if ours < 100 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
