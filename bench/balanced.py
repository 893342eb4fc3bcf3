"""Benchmark: 402 answers per second and CPU per answer behind a load balancer, 1 instance vs 2.

Run with ``.venv/bin/python bench/balanced.py [--duration 3] [--rounds 3] [--rates 4000,8000]``
(under 3 minutes). Loopback only; every process it starts (the app instances, HAProxy, anvil,
wrk, strace) is stopped by its PID. Needs ``haproxy`` and ``wrk`` (Debian packages; wrk is built
with LuaJIT there) and, for the shared-nothing check, ``strace``.

Each instance is the ``x402gate ASGI`` server of ``bench/challenge.py`` (a FastAPI app wrapped
in ``x402gate.asgi.PaymentMiddleware``, ``GET /resource`` paid $0.001) in a uvicorn process of
its own (1 worker), all on one shared store (a SQLite file: one host). The fronts: wrk straight
at one instance (``direct``), or at HAProxy (:class:`x402gate.testing.load_balancer.LoadBalancer`,
round robin, keep-alive on both sides) in front of 1 or 2 instances. The routes: ``/resource``
without payment, so every answer is the 402 challenge, and ``/control``, answered by a few lines
of raw ASGI ahead of the app in the same uvicorn process: the **control**, a trivial answer
whose CPU per request is the server stack's and the machine's, none of it x402gate's.

Two load modes, interleaved in every round (the order rotating between rounds):

* **saturated**: ``wrk -t1 -c16``, as fast as it goes. On a 2-core machine the 2-instance case
  runs 2 instances + HAProxy + wrk on 2 cores: every process's CPU per answer grows from the
  contention (context switches, caches, run-queue waits), whoever's code it is;
* **paced**: the same offered load (``--rates``, answers/s) for 1 and 2 instances, below
  saturation: wrk (``-c32``) runs a LuaJIT script whose ``delay()`` hands each connection the
  next slot of a fixed schedule (one request every ``1/rate`` s), so both configurations get the
  same work per second. Each row says whether the offered rate was reached.

CPU per answer is process CPU time from ``/proc`` (user + system) over the answers: the
instances' (summed), HAProxy's and wrk's; next to it the instances' event-loop wake-ups per
answer (voluntary context switches of their main threads): an event loop that wakes up for
fewer answers at a time spends its fixed cost per wake-up over fewer of them.

The goal: the instances' CPU per 402 answer does not grow with instances (within
``--tolerance``, +5 %), so the answers scale with the cores. The verdict compares 2 with 1
instance at equal total load and at equal load per instance (1 instance at 4,000/s against 2
at 8,000/s), and sets the growth of the 402 against the control's: what the control grows too
is the machine's, not x402gate's. Answers scale with cores when, on top, a second saturated
instance turns the cores one instance left idle into answers (UNDECIDED when other work left
none idle).

Before the rounds, ``strace -c -f`` follows one instance for 2 s of paced 402 answers and
counts the system calls that would mean shared state per answer (file I/O and locks on the
SQLite store, opens, fsyncs): a 402 must need none, so 2 instances cannot contend on anything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    child_server,
    cpu_seconds,
    git_state,
    header,
    median,
    print_table,
    read_wrk,
)
from challenge import build_app, check_answer

DIRECT, ONE, TWO = "direct, 1 instance", "haproxy, 1 instance", "haproxy, 2 instances"
PAID, CONTROL = "/resource", "/control"
ROUTE_NAME = {PAID: "402 (x402gate)", CONTROL: "control (raw ASGI)"}
SATURATED_CONNECTIONS = 16
PACED_CONNECTIONS = 32
SHARED_STATE_CALLS = (
    "open", "openat", "openat2", "creat", "unlink", "unlinkat", "rename", "renameat",
    "renameat2", "fcntl", "flock", "pread64", "pwrite64", "preadv", "pwritev", "lseek",
    "fsync", "fdatasync", "ftruncate", "mmap", "msync", "stat", "newfstatat", "fstat", "statx",
    "access", "faccessat", "faccessat2", "futex",
)  # fmt: skip
"""System calls strace counts as possibly shared state: files (the SQLite store, its locks) and
cross-thread waits. Per 402 answer there must be none of the file ones; ``futex`` is listed to
show that no thread is woken per answer either."""

PACER = """
-- Paced load: each connection's next request goes out at the next slot of a fixed schedule.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } x402gate_timespec;
int clock_gettime(int clk_id, x402gate_timespec *tp);
]]
local now_ts = ffi.new("x402gate_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, now_ts)  -- CLOCK_MONOTONIC
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end
local interval = 1
local slot = nil
function init(args)
  interval = 1000 / tonumber(args[1])
end
function delay()
  local now = now_ms()
  -- a schedule more than 50 ms behind restarts from now: no catch-up burst after a stall
  if slot == nil or slot < now - 50 then slot = now end
  slot = slot + interval
  local wait = slot - now
  if wait <= 0 then return 0 end
  return math.floor(wait + 0.5)  -- wrk takes whole milliseconds
end
"""


class Sample(NamedTuple):
    rate: float  # answers/s
    app: float  # instances' CPU seconds per answer (summed over the instances)
    balancer: float  # HAProxy's CPU seconds per answer (0 when direct)
    client: float  # wrk's CPU seconds per answer
    idle: float  # share of the machine's CPU time left idle during the measurement
    wakeups: float  # the instances' event-loop threads' sleeps (voluntary switches) per answer


class Run(NamedTuple):
    mode: str  # "saturated" or "paced"
    offered: int  # answers/s offered (paced), 0 when saturated
    front: str  # DIRECT, ONE or TWO
    path: str  # PAID or CONTROL


def with_control(app: Any) -> Any:
    """``app`` with ``GET /control`` answered by a few lines of raw ASGI ahead of it: the
    trivial answer whose CPU per request is uvicorn's, the event loop's and the machine's."""
    body = b'{"ok":true}'
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
    }
    end = {"type": "http.response.body", "body": body}

    async def serve(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == CONTROL:
            await send(start)
            await send(end)
            return
        await app(scope, receive, send)

    return serve


def plan(rates: Sequence[int]) -> list[Run]:
    """Every measurement of one round."""
    runs = [Run("saturated", 0, front, PAID) for front in (DIRECT, ONE, TWO)]
    runs += [Run("saturated", 0, front, CONTROL) for front in (ONE, TWO)]
    runs += [
        Run("paced", rate, front, path)
        for rate in rates
        for path in (PAID, CONTROL)
        for front in (ONE, TWO)
    ]
    return runs


def sleeps(pid: int) -> int:
    """Voluntary context switches of ``pid``'s main thread (the event loop): each one is a
    sleep in ``epoll_wait`` (or another blocking call) and the wake-up after it."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def machine_cpu() -> tuple[int, int]:
    """(idle, total) CPU ticks of the whole machine so far (``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    return ticks[3] + ticks[4], sum(ticks[:8])  # idle + iowait; user .. steal


def run_wrk(
    wrk: str, url: str, connections: int, seconds: int, script: Path | None, rate: int
) -> tuple[int, float, int, float]:
    """One wrk run: (requests, seconds, non-2xx answers, wrk's CPU seconds)."""
    command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, seconds)}s", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
        command += ["--", str(rate)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    count, seconds_taken, non_2xx = read_wrk(out, url)
    return count, seconds_taken, non_2xx, client


def strace_check(
    strace: str, wrk: str, pid: int, url: str, script: Path, rate: int, tmp: Path
) -> tuple[int, dict[str, int]]:
    """Follow instance ``pid`` (all threads) with ``strace -c`` during 2 s of paced 402s.

    Returns (answers, calls counted per name among :data:`SHARED_STATE_CALLS`).
    """
    output = tmp / "strace.txt"
    tracer = subprocess.Popen(
        [strace, "-c", "-f", "-o", str(output), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)  # attached
        count, _, _, _ = run_wrk(wrk, url, 8, 2, script, rate)
    finally:
        tracer.send_signal(signal.SIGINT)  # detach, write the summary
        try:
            tracer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
    calls: dict[str, int] = {}
    for line in output.read_text().splitlines():
        parts = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(parts) >= 5 and parts[-1] in SHARED_STATE_CALLS and parts[3].isdigit():
            calls[parts[-1]] = int(parts[3])
    return count, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=int, default=3, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rates", default="4000,8000", help="paced offered loads, answers/s")
    parser.add_argument("--warm-up", type=int, default=1, help="seconds before each measurement")
    parser.add_argument(
        "--tolerance", type=float, default=0.05, help="noise band of the verdict (0.05 = ±5 %%)"
    )
    args = parser.parse_args()
    if args.serve:
        from _common import serve_uvicorn

        serve_uvicorn(with_control(build_app(json.loads(args.serve))))
        return

    from eth_account import Account

    from x402gate.testing import LocalChain
    from x402gate.testing.load_balancer import LoadBalancer, find_haproxy

    wrk = shutil.which("wrk")
    haproxy = find_haproxy()
    if wrk is None or haproxy is None:
        raise SystemExit("bench/balanced.py needs wrk and haproxy on PATH (apt-get install both)")
    strace = shutil.which("strace")
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    samples: dict[Run, list[Sample]] = defaultdict(list)
    traced: tuple[int, dict[str, int]] | None = None
    with tempfile.TemporaryDirectory(prefix="x402gate-bench-") as tmp_name, LocalChain() as chain:
        tmp = Path(tmp_name)
        pacer = tmp / "pace.lua"
        pacer.write_text(PACER)
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
            # front -> (URL, instance pids, balancer pid)
            fronts: dict[str, tuple[str, list[int], int | None]] = {
                DIRECT: (urls[0], [instances[0][0]], None),
                ONE: (one.url, [instances[0][0]], one.pid),
                TWO: (two.url, [pid for pid, _ in instances], two.pid),
            }
            for front, _, _ in fronts.values():
                check_answer(f"{front}{PAID}", 402)
                check_answer(f"{front}{CONTROL}", 200)
            if strace is not None:
                traced = strace_check(
                    strace, wrk, instances[0][0], f"{urls[0]}{PAID}", pacer, 2000, tmp
                )
            runs = plan(rates)
            for round_number in range(args.rounds):
                shift = (round_number * len(runs)) // max(1, args.rounds)
                for run in runs[shift:] + runs[:shift]:
                    url, pids, balancer = fronts[run.front]
                    url += run.path
                    paced = run.mode == "paced"
                    connections = PACED_CONNECTIONS if paced else SATURATED_CONNECTIONS
                    script = pacer if paced else None
                    run_wrk(wrk, url, connections, args.warm_up, script, run.offered)
                    cpu_before = sum(cpu_seconds(pid) for pid in pids)
                    lb_before = cpu_seconds(balancer) if balancer else 0.0
                    idle_before, total_before = machine_cpu()
                    sleeps_before = sum(sleeps(pid) for pid in pids)
                    count, seconds, non_2xx, client = run_wrk(
                        wrk, url, connections, args.duration, script, run.offered
                    )
                    idle_after, total_after = machine_cpu()
                    woken = sum(sleeps(pid) for pid in pids) - sleeps_before
                    idle = (idle_after - idle_before) / max(1, total_after - total_before)
                    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
                    lb_cpu = (cpu_seconds(balancer) - lb_before) if balancer else 0.0
                    expected = count if run.path == PAID else 0  # 402s count as non-2xx
                    if non_2xx != expected or not count:
                        raise SystemExit(f"{run}: {non_2xx} of {count} answers were not 2xx")
                    samples[run].append(
                        Sample(
                            count / seconds,
                            cpu / count,
                            lb_cpu / count,
                            client / count,
                            idle,
                            woken / count,
                        )
                    )
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        header(
            "402 answers behind a load balancer (HAProxy), 1 instance against 2",
            ["x402gate", "uvicorn", "fastapi"],
            [
                f"haproxy: {_haproxy_version(haproxy)}; wrk -t1, saturated -c"
                f"{SATURATED_CONNECTIONS}, paced -c{PACED_CONNECTIONS} (LuaJIT schedule); "
                f"{args.duration} s x {args.rounds} rounds (medians); shared SQLite store",
                f"load average before: {load_before}, after: {load_after}; {git_state()}",
            ],
        )
    )
    report(samples, rates, args.tolerance)
    if traced is not None:
        answers, calls = traced
        files = {k: v for k, v in calls.items() if k != "futex"}
        shown = ", ".join(f"{k} {v}" for k, v in sorted(calls.items())) or "none"
        print(
            f"\nshared nothing per 402 (strace -c -f on one instance, {answers:,} paced 402s): "
            f"{shown}; file/lock calls per answer {sum(files.values()) / max(1, answers):.4f}, "
            f"futex per answer {calls.get('futex', 0) / max(1, answers):.4f} -> "
            + ("met" if sum(files.values()) / max(1, answers) < 0.01 else "NOT met")
        )
    else:
        print("\nshared nothing per 402: not checked (no strace on PATH)")
    print(f"\n(total {time.monotonic() - started:.0f} s)")


def _medians(runs: list[Sample]) -> Sample:
    return Sample(*(median([getattr(s, f) for s in runs]) for f in Sample._fields))


def report(samples: dict[Run, list[Sample]], rates: Sequence[int], tolerance: float) -> None:
    """The table and the verdict lines."""
    med = {run: _medians(values) for run, values in samples.items()}
    headers = ["load", "front", "route", "answers/s", "instances' CPU µs/answer",
               "haproxy µs/answer", "wrk µs/answer", "instances' wake-ups/answer",
               "machine idle"]  # fmt: skip
    rows = []
    for run, m in med.items():
        load = "saturated" if run.mode == "saturated" else f"paced {run.offered:,}/s"
        mark = "" if run.mode == "saturated" or m.rate >= 0.95 * run.offered else " (!)"
        rows.append(
            [
                load,
                run.front,
                ROUTE_NAME[run.path],
                f"{m.rate:,.0f}{mark}",
                f"{1e6 * m.app:.0f}",
                f"{1e6 * m.balancer:.0f}" if run.front != DIRECT else "-",
                f"{1e6 * m.client:.0f}",
                f"{m.wakeups:.2f}",
                f"{m.idle:.0%}",
            ]
        )
    order = {DIRECT: 0, ONE: 1, TWO: 2}
    rows.sort(key=lambda r: (r[0] != "saturated", len(r[0]), r[0], r[2], order[str(r[1])]))
    print_table(headers, rows)
    print("(!) = the offered rate was not reached: the machine was saturated")

    print(
        f"\nverdict, 1 -> 2 instances (noise band +{tolerance:.0%}; µs: medians; growths: "
        "medians over rounds of each round's own comparison):"
    )
    checks: list[bool] = []
    reached = True
    for rate in rates:
        x1, x2 = med[Run("paced", rate, ONE, PAID)], med[Run("paced", rate, TWO, PAID)]
        c1, c2 = med[Run("paced", rate, ONE, CONTROL)], med[Run("paced", rate, TWO, CONTROL)]
        reached &= min(x1.rate, x2.rate, c1.rate, c2.rate) >= 0.95 * rate
        _, own_us, own_share = paired(
            samples, *(Run("paced", rate, f, r) for r in (PAID, CONTROL) for f in (ONE, TWO))
        )
        checks.append(min(own_us, own_share) <= tolerance)
        print(
            f"  equal total load, paced {rate:,}/s (each of 2 instances gets half): instances' "
            f"CPU per 402 {c_growth(x1, x2)}, control {c_growth(c1, c2)}; 402 beyond the "
            f"control {own_us:+.1%} (in µs) / {own_share:+.1%} (in proportion); event-loop "
            f"wake-ups per 402 {x1.wakeups:.2f} -> {x2.wakeups:.2f}"
        )
    for rate in rates:
        if 2 * rate not in rates:
            continue
        per_instance = ((rate, ONE), (2 * rate, TWO))
        x1, x2 = med[Run("paced", rate, ONE, PAID)], med[Run("paced", 2 * rate, TWO, PAID)]
        c1, c2 = med[Run("paced", rate, ONE, CONTROL)], med[Run("paced", 2 * rate, TWO, CONTROL)]
        growth, own_us, own_share = paired(
            samples,
            *(Run("paced", r, f, path) for path in (PAID, CONTROL) for r, f in per_instance),
        )
        checks.append(min(growth, own_us, own_share) <= tolerance)
        print(
            f"  equal load per instance, {rate:,}/s each (1 instance at {rate:,}/s, 2 at "
            f"{2 * rate:,}/s): CPU per 402 {c_growth(x1, x2)} (paired {growth:+.1%}), control "
            f"{c_growth(c1, c2)}; 402 beyond the control {own_us:+.1%} / {own_share:+.1%}"
        )
    xs1, xs2 = med[Run("saturated", 0, ONE, PAID)], med[Run("saturated", 0, TWO, PAID)]
    cs1, cs2 = med[Run("saturated", 0, ONE, CONTROL)], med[Run("saturated", 0, TWO, CONTROL)]
    _, own_us, own_share = paired(
        samples, *(Run("saturated", 0, f, r) for r in (PAID, CONTROL) for f in (ONE, TWO))
    )
    print(
        f"  saturated (2 instances + haproxy + wrk on {len(os.sched_getaffinity(0))} cores): "
        f"CPU per 402 {c_growth(xs1, xs2)}, control {c_growth(cs1, cs2)}; 402 beyond the "
        f"control {own_us:+.1%} / {own_share:+.1%}; haproxy "
        f"{1e6 * xs1.balancer:.0f} -> {1e6 * xs2.balancer:.0f} µs"
    )
    all1, all2 = (m.app + m.balancer + m.client for m in (xs1, xs2))
    call1, call2 = (m.app + m.balancer + m.client for m in (cs1, cs2))
    print(
        f"  answers/s saturated {xs1.rate:,.0f} -> {xs2.rate:,.0f} ({xs2.rate / xs1.rate:.2f}x), "
        f"control {cs1.rate:,.0f} -> {cs2.rate:,.0f} ({cs2.rate / cs1.rate:.2f}x); CPU per 402 "
        f"of instances + haproxy + wrk {1e6 * all1:.0f} -> {1e6 * all2:.0f} µs "
        f"({all2 / all1 - 1:+.1%}, control {call2 / call1 - 1:+.1%}); cores they use "
        f"{all1 * xs1.rate:.2f} -> {all2 * xs2.rate:.2f}; machine idle "
        f"{xs1.idle:.0%} -> {xs2.idle:.0%}"
    )
    goal = all(checks)
    if not reached:
        verdict = "UNDECIDED (a paced rate was not reached: machine too busy; rerun quieter)"
    else:
        verdict = "met" if goal else "NOT met"
    print(
        f"GOAL CPU per 402 answer does not grow with instances (at equal total load and at "
        f"equal load per instance, 2 vs 1 instance or the growth beyond the control's <= "
        f"+{tolerance:.0%}): {verdict}"
    )
    # Scaling needs room: cores left idle by 1 saturated instance (on a quiet 2-core machine
    # about a quarter), at least half of which a second instance turns into answers.
    if not reached:
        scaling = "UNDECIDED (a paced rate was not reached)"
    elif xs1.idle < 0.10:
        scaling = (
            f"UNDECIDED (1 instance already left only {xs1.idle:.0%} of the cores idle: other "
            "work on the machine; rerun quieter)"
        )
    elif goal and xs2.idle <= xs1.idle / 2 and xs2.rate > xs1.rate:
        scaling = (
            f"met (CPU per answer does not grow; the second instance turns idle cores "
            f"{xs1.idle:.0%} -> {xs2.idle:.0%} into answers, {xs2.rate / xs1.rate:.2f}x)"
        )
    elif not goal:
        scaling = "NOT met (CPU per 402 answer grows with instances)"
    elif xs2.rate <= xs1.rate:
        scaling = (
            f"NOT met on this machine: 2 instances answer {xs2.rate / xs1.rate:.2f}x; the "
            f"cores 1 instance left idle ({xs1.idle:.0%}) went to contention "
            f"(CPU per answer of all processes {all2 / all1 - 1:+.1%}, the control's "
            f"{call2 / call1 - 1:+.1%})"
        )
    else:
        scaling = (
            f"NOT met on this machine: 2 instances answer {xs2.rate / xs1.rate:.2f}x but leave "
            f"{xs2.idle:.0%} of the cores idle (1 instance: {xs1.idle:.0%})"
        )
    print(f"GOAL answers scale with cores: {scaling}")


def paired(
    samples: dict[Run, list[Sample]], x1: Run, x2: Run, c1: Run, c2: Run
) -> tuple[float, float, float]:
    """Medians over rounds of the 402's growth (``x1`` -> ``x2``) and of :func:`beyond`, each
    round's four measurements compared with each other: taken seconds apart, they share the
    machine's other load more than measurements of different rounds do."""
    rounds = zip(samples[x1], samples[x2], samples[c1], samples[c2], strict=True)
    values = [(b.app / a.app - 1, *beyond(a, b, c, d)) for a, b, c, d in rounds]
    growth, in_us, in_proportion = (median([v[i] for v in values]) for i in range(3))
    return growth, in_us, in_proportion


def beyond(x1: Sample, x2: Sample, c1: Sample, c2: Sample) -> tuple[float, float]:
    """How much more the 402's CPU per answer grows (1 -> 2 instances) than the control's:
    in µs, as a share of the 402's (the machine adding the same µs to every answer: fewer
    answers per event-loop wake-up), and in proportion (the machine slowing every instruction
    alike: caches, run-queue waits). x402gate's own growth would exceed both."""
    in_us = ((x2.app - x1.app) - (c2.app - c1.app)) / x1.app
    in_proportion = x2.app / x1.app - c2.app / c1.app
    return in_us, in_proportion


def c_growth(one: Sample, two: Sample) -> str:
    """``a -> b µs (+x %)``: the instances' CPU per answer, 1 then 2 instances."""
    return f"{1e6 * one.app:.0f} -> {1e6 * two.app:.0f} µs ({two.app / one.app - 1:+.1%})"


def _haproxy_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout
    return out.split("\n", 1)[0].replace("HAProxy version ", "")


if __name__ == "__main__":
    main()
