"""Benchmark: replay-store and idempotency operations, µs per call, for every backend.

Run with ``.venv/bin/python bench/stores.py [--n 2000] [--repeats 3]``. Loopback only: Redis is
a throw-away ``redis-server`` (:class:`x402gate.testing.redis_server.RedisServer`) on 127.0.0.1,
stopped by its PID; SQLite files live in a temporary directory.

Backends: ``memory://``; ``sqlite:///…`` with ``synchronous=full`` (the default: every commit is
fsynced) and ``synchronous=normal`` (WAL survives a process crash, may lose the last commits on
power loss); ``redis://`` through redis-py (one Lua script per operation, one round trip).

What one paid request costs the store:

* ``claim + mark_used``: a fresh authorization is claimed for a resource, then marked used
  after settlement (two writes: what x402gate does per paid request);
* ``idempotency begin + complete``: a fresh payment id is reserved, then its response (a
  300-byte body) stored (what a route with the ``payment-identifier`` extension adds);
* ``reserve + commit``: a credit reservation held, then charged (a request paid from credit);
* ``channel step``: ``channel_begin`` then ``channel_commit`` on one payment channel (a request
  paid by a channel voucher).

Redis Cluster: a local cluster of 3 primaries and 3 replicas
(:class:`x402gate.testing.redis_cluster.LocalRedisCluster`), once as it is and once with
``wait_replicas=1`` (credit and channel writes wait for a replica); ``--no-cluster`` skips it.

Each operation is timed on its own (one ``perf_counter_ns`` pair per call), from one thread, on
fresh keys, after a warm-up; repeats go round-robin over the backends so background noise hits
all of them. The table gives the median and 90th percentile per call and the median of a pair;
every call's answer is checked (claimed, marked, new, completed).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, header, median, percentile, print_table

WARM_UP = 200
RESPONSE = b'{"status":200,"headers":[["content-type","application/json"]],"body":"' + (
    b"x" * 230 + b'"}'
)


def replay_ops(store: Any, n: int, prefix: str) -> dict[str, list[int]]:
    from x402gate.stores import ClaimResult, replay_key

    clock = time.perf_counter_ns
    now = time.time()
    expires = int(now) + 300
    keys = [replay_key("eip155:8453", "0xabc", "0xdef", f"0x{prefix}{i:060x}") for i in range(n)]
    tokens = [os.urandom(16).hex() for _ in range(n)]
    claim: list[int] = []
    mark: list[int] = []
    for key, token in zip(keys, tokens, strict=True):
        start = clock()
        result = store.claim(key, "GET /paid", token, expires, now)
        middle = clock()
        marked = store.mark_used(key, token)
        end = clock()
        if result is not ClaimResult.CLAIMED or marked is not True:
            raise SystemExit(f"{store!r}: claim {result}, mark_used {marked}")
        claim.append(middle - start)
        mark.append(end - middle)
    return {"claim": claim, "mark_used": mark}


def idempotency_ops(store: Any, n: int, prefix: str) -> dict[str, list[int]]:
    from x402gate.stores import IdempotencyOutcome

    clock = time.perf_counter_ns
    now = time.time()
    begin: list[int] = []
    complete: list[int] = []
    for i in range(n):
        payment_id = f"pay_{prefix}{i:024d}"
        start = clock()
        result = store.idempotency_begin(payment_id, "f" * 64, 300, now)
        middle = clock()
        done = store.idempotency_complete(payment_id, "f" * 64, RESPONSE, now)
        end = clock()
        if result.outcome is not IdempotencyOutcome.NEW or done is not True:
            raise SystemExit(f"{store!r}: begin {result.outcome}, complete {done}")
        begin.append(middle - start)
        complete.append(end - middle)
    return {"idempotency_begin": begin, "idempotency_complete": complete}


def credit_ops(store: Any, n: int, prefix: str) -> dict[str, list[int]]:
    """A fresh reservation held then committed per call pair (one credit-paid request)."""
    from x402gate.stores import credit_account

    clock = time.perf_counter_ns
    now = time.time()
    account = credit_account("eip155:8453", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "0xB")
    store.credit_topup(account, 10**12, f"bench-{prefix}", now)
    reserve: list[int] = []
    commit: list[int] = []
    for i in range(n):
        rid = f"res-{prefix}-{i}"
        start = clock()
        held = store.credit_reserve(account, 1000, rid, now + 300, now)
        middle = clock()
        charged = store.credit_commit(rid, 700, now)
        end = clock()
        if held is not True or charged != 700:
            raise SystemExit(f"{store!r}: reserve {held}, commit {charged}")
        reserve.append(middle - start)
        commit.append(end - middle)
    return {"credit_reserve": reserve, "credit_commit": commit}


def channel_ops(store: Any, n: int, prefix: str) -> dict[str, list[int]]:
    """One payment-channel step per call pair: begin (the voucher checked in), then commit."""
    from x402gate.stores.channels import ChannelBeginOutcome

    clock = time.perf_counter_ns
    now = time.time()
    channel = "0x" + prefix.rjust(64, "0")
    config = '{"payer":"0x01","receiver":"0x02","salt":"0x00"}'
    state = store.channel_sync(channel, config, balance=10**15, total_claimed=0,
                               withdraw_requested_at=0, refund_nonce=0, now=now)  # fmt: skip
    base = state.charged
    begin: list[int] = []
    commit: list[int] = []
    for i in range(n):
        token = f"{prefix}-{i}"
        start = clock()
        begun = store.channel_begin(
            channel,
            token,
            base=base,
            max_claimable=base + 1000,
            signature="0x" + "11" * 65,
            expires_at=now + 60,
            now=now,
        )
        middle = clock()
        after = store.channel_commit(channel, token, 1000, now)
        end = clock()
        if begun.outcome is not ChannelBeginOutcome.STARTED or after is None:
            raise SystemExit(f"{store!r}: channel begin {begun.outcome}")
        base = after.charged
        begin.append(middle - start)
        commit.append(end - middle)
    return {"channel_begin": begin, "channel_commit": commit}


def timed(function: Callable[[], dict[str, list[int]]]) -> dict[str, list[int]]:
    gc.collect()
    gc.disable()
    try:
        return function()
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="operation pairs per backend/repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-redis", action="store_true", help="skip Redis")
    parser.add_argument(
        "--no-cluster", action="store_true", help="skip the Redis Cluster (6 local nodes)"
    )
    args = parser.parse_args()

    from x402gate.stores import open_store
    from x402gate.testing.redis_cluster import LocalRedisCluster
    from x402gate.testing.redis_server import RedisServer, find_redis_server

    started = time.monotonic()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    redis_binary = None if args.no_redis else find_redis_server()
    redis_version = ""
    samples: dict[tuple[str, str], list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="x402gate-bench-") as tmp:
        server = RedisServer() if redis_binary else None
        cluster = LocalRedisCluster() if redis_binary and not args.no_cluster else None
        try:
            urls = {
                "memory": "memory://",
                "sqlite (synchronous=full, default)": f"sqlite:///{tmp}/full.db",
                "sqlite (synchronous=normal)": f"sqlite:///{tmp}/normal.db?synchronous=normal",
            }
            if server is not None and redis_binary is not None:
                server.start()
                urls["redis (loopback TCP)"] = server.url
                redis_version = subprocess.run(
                    [redis_binary, "--version"], capture_output=True, text=True, check=False
                ).stdout.strip()
            if cluster is not None:
                cluster.start()
                urls["redis cluster (3 primaries + 3 replicas)"] = cluster.url
                wait_url = f"{cluster.url}&wait_replicas=1&key_prefix=w:"
                urls["redis cluster, wait_replicas=1"] = wait_url
            stores = {name: open_store(url) for name, url in urls.items()}
            try:
                for store in stores.values():
                    store.ping()
                    replay_ops(store, WARM_UP, "ff")
                    idempotency_ops(store, WARM_UP, "ff")
                    credit_ops(store, WARM_UP, "ff")
                    channel_ops(store, WARM_UP, "ff")
                for repeat in range(args.repeats):
                    for name, store in stores.items():
                        prefix = f"{repeat:02x}"
                        for ops in (
                            timed(partial(replay_ops, store, args.n, prefix)),
                            timed(partial(idempotency_ops, store, args.n, prefix)),
                            timed(partial(credit_ops, store, args.n, prefix)),
                            timed(partial(channel_ops, store, args.n, prefix)),
                        ):
                            for op, values in ops.items():
                                samples.setdefault((name, op), []).extend(values)
            finally:
                for store in stores.values():
                    store.close()
        finally:
            if server is not None:
                server.stop()
            if cluster is not None:
                cluster.stop()
    elapsed = time.monotonic() - started

    import redis as redis_py  # only for its version in the header

    extra = [
        git_state(),
        f"{args.repeats} repeats x {args.n} operation pairs per backend after {WARM_UP} "
        f"warm-up pairs ({elapsed:.1f} s); one thread; SQLite file in {tempfile.gettempdir()}; "
        f"sqlite3 {__import__('sqlite3').sqlite_version}; redis-py {redis_py.__version__}"
        + (f"; {find_redis_server()}" if redis_binary else "; Redis skipped (no redis-server)"),
        f"load average before {load_before}, after "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
    print(header("x402gate store benchmark, µs per call", ["x402gate"], extra))
    pairs_of = [
        ("claim", "mark_used"),
        ("idempotency_begin", "idempotency_complete"),
        ("credit_reserve", "credit_commit"),
        ("channel_begin", "channel_commit"),
    ]
    rows: list[list[object]] = [[name] for name in dict.fromkeys(name for name, _ in samples)]
    for row in rows:
        for first, second in pairs_of:
            a, b = samples[(str(row[0]), first)], samples[(str(row[0]), second)]
            pairs = [x + y for x, y in zip(a, b, strict=True)]
            row += [
                f"{median(a) / 1000:.1f} ({percentile(a, 0.9) / 1000:.1f})",
                f"{median(b) / 1000:.1f} ({percentile(b, 0.9) / 1000:.1f})",
                f"{median(pairs) / 1000:.1f}",
            ]
    names = ["claim", "mark_used", "claim+mark_used", "idem. begin", "idem. complete"]
    names += ["begin+complete"]
    print_table(["backend", *names], [row[:7] for row in rows])
    print()
    names = ["reserve", "commit", "reserve+commit", "channel begin", "channel commit", "step"]
    print_table(["backend", *names], [[row[0], *row[7:]] for row in rows])
    print("\nmedian (p90) µs per call; pair = median of the two calls' sum")
    if redis_version:
        print(redis_version)


if __name__ == "__main__":
    main()
