"""Run every x402gate benchmark, one after the other, and print their output verbatim.

Run with ``.venv/bin/python bench/all.py [--quick] [--only throughput,challenge]`` or
``make bench`` (``BENCH_ARGS=--quick``). Each benchmark is its own script in ``bench/``, run in
a fresh interpreter of this venv; the command line precedes its output, so every figure can be
reproduced on its own. ``--quick`` shrinks every run (smoke test, figures not for publication).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

WHAT_IF = "memory_store,no_resimulate"

# name -> (script, full arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "verify": ("verify", [], ["--n", "500", "--repeats", "1"]),
    "observability": ("observability", [], ["--n", "50", "--repeats", "2"]),
    "stores": ("stores", [], ["--n", "300", "--repeats", "1"]),
    "imports": ("imports", [], ["--runs", "3"]),
    "challenge": ("challenge", [], ["--duration", "1", "--rounds", "1"]),
    "balanced": ("balanced", [], ["--duration", "1", "--rounds", "1"]),
    "throughput": (
        "throughput",
        ["--what-if", WHAT_IF, "--profile"],
        ["--n", "30", "--rounds", "1", "--concurrency", "8"],
    ),
    "throughput-rpc-delay": (
        "throughput",
        ["--rpc-delay-ms", "10", "--concurrency", "8", "--n", "60"],
        ["--rpc-delay-ms", "10", "--concurrency", "8", "--n", "16", "--rounds", "1"],
    ),
    "burst": ("burst", [], ["--funded", "1", "--reads", "50"]),
    "metered": ("metered", [], ["--n", "50"]),
    "metered-memory": ("metered", ["--store", "memory"], ["--n", "50", "--store", "memory"]),
    "gateway": ("gateway", [], ["--n", "50"]),
    "channels": ("channels", [], ["--quick"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small runs: a smoke test")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {list(BENCHMARKS)}")
    args = parser.parse_args()
    chosen = [name for name in args.only.split(",") if name] or list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    failed = []
    for name in chosen:
        script, full, quick = BENCHMARKS[name]
        options = quick if args.quick else full
        command = [sys.executable, str(HERE / f"{script}.py"), *options]
        shown = " ".join(["python", f"bench/{script}.py", *map(shlex.quote, options)])
        print(f"\n$ {shown}", flush=True)
        started = time.monotonic()
        process = subprocess.Popen(command)
        try:
            # Each script bounds itself; this is a last resort against a hung child.
            returncode = process.wait(timeout=3600)
        except BaseException:  # timeout or Ctrl-C: let the child stop what it started
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        if returncode:
            failed.append(f"{name} (exit {returncode})")
        print(f"[{name}: {time.monotonic() - started:.0f} s]", flush=True)
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
