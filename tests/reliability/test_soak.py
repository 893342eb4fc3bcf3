"""Sustained load on loopback: paid and unpaid requests mixed, against a real uvicorn process.

The server is :mod:`served_app` in one uvicorn process (SQLite replay store, LocalFacilitator on
the session chain). Four client tasks loop until the time is up, cycling through paid requests
(a fresh payment each), unpaid requests (402), free requests, replays of a settled payment (402),
malformed headers (400) and payments for the wrong amount (402). The run passes with zero errors
(every answer has the expected status and code, no transport error), one handler run, one
transaction and one price moved per paid request, and resident memory of the server process
growing less than 10 % between the end of the warm-up (the first quarter) and the end.

Duration: ``X402GATE_SOAK_SECONDS`` (default 120; ``X402GATE_SOAK_SECONDS=300`` for the 5-minute
run of docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from x402gate.testing.payments import decode_payment_required, sign_exact_payment

from ._support import UvicornProcess, app_env, handler_runs, payment_headers, rss_kib
from .served_app import PAID_CONTENT

SOAK_SECONDS = float(os.environ.get("X402GATE_SOAK_SECONDS", "120"))
WARMUP_SECONDS = max(5.0, SOAK_SECONDS / 4)
CONCURRENCY = 4
PRICE = 10_000
MAX_RSS_GROWTH = 0.10

pytestmark = [pytest.mark.chain, pytest.mark.slow]

# The mix each client task cycles through.
MIX = ["paid", "unpaid", "free", "paid", "replay", "malformed", "unpaid", "wrong_amount", "free"]
EXPECTED = {
    "paid": (200, None),
    "unpaid": (402, "payment_required"),
    "free": (200, None),
    "replay": (402, "invalid_exact_evm_nonce_already_used"),
    "malformed": (400, "invalid_payment_header"),
    "wrong_amount": (402, "invalid_exact_evm_payload_authorization_value_mismatch"),
}


class Load:
    def __init__(self, client: httpx.AsyncClient, payer: Any, requirements: Any) -> None:
        self.client = client
        self.payer = payer
        self.requirements = requirements
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.last_paid: dict[str, str] | None = None
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)

    async def one(self, kind: str) -> None:
        headers: dict[str, str] = {}
        path = "/free" if kind == "free" else "/paid"
        if kind == "paid":
            headers = payment_headers(sign_exact_payment(self.payer, self.requirements))
        elif kind == "replay":
            if self.last_paid is None:
                return
            headers = self.last_paid
        elif kind == "malformed":
            headers = {"PAYMENT-SIGNATURE": "%%% not base64 %%%"}
        elif kind == "wrong_amount":
            headers = payment_headers(
                sign_exact_payment(self.payer, self.requirements, value=PRICE - 1)
            )
        started = time.perf_counter()
        try:
            response = await self.client.get(path, headers=headers)
        except httpx.HTTPError as exc:
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            return
        self.latencies[kind].append(time.perf_counter() - started)
        self.counts[kind] += 1
        status, code = EXPECTED[kind]
        body: Any = response.json()
        if response.status_code != status or (code is not None and body.get("error") != code):
            self.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
        elif kind == "paid":
            if body.get("secret") != PAID_CONTENT or "payment-response" not in response.headers:
                self.errors.append(f"paid: no content or receipt: {response.text[:200]}")
            self.last_paid = headers
        elif kind != "free" and PAID_CONTENT in response.text:
            self.errors.append(f"{kind}: paid content served")

    async def worker(self, offset: int, deadline: float) -> None:
        step = offset
        while time.monotonic() < deadline:
            await self.one(MIX[step % len(MIX)])
            step += 1


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@pytest.mark.timeout(SOAK_SECONDS + 180)
async def test_sustained_mixed_load_has_no_errors_and_flat_memory(
    chain: Any,
    test_token: Any,
    payer: Any,
    pay_to: str,
    facilitator_account: Any,
    tmp_path: Path,
) -> None:
    test_token.mint(payer.address, 10**12)  # enough for any duration
    runs = tmp_path / "handler-runs"
    env = app_env(
        rpc_url=chain.rpc_url,
        facilitator_key=facilitator_account.key.hex(),
        token=test_token.address,
        pay_to=pay_to,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
        runs=runs,
    )
    nonce_before = chain.tx_count(facilitator_account.address)
    with UvicornProcess(env) as server:
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            challenge = await client.get("/paid")
            requirements = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
            load = Load(client, payer, requirements)
            started = time.monotonic()
            rss: list[tuple[float, int]] = [(0.0, rss_kib(server.pid))]

            async def sample_memory(deadline: float) -> None:
                while time.monotonic() < deadline:
                    await asyncio.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                    rss.append((time.monotonic() - started, rss_kib(server.pid)))

            warm_end = started + WARMUP_SECONDS
            end = started + SOAK_SECONDS
            await asyncio.gather(
                *(load.worker(i * 2, warm_end) for i in range(CONCURRENCY)),
                sample_memory(warm_end),
            )
            warm_rss = rss_kib(server.pid)
            warm_counts = sum(load.counts.values())
            await asyncio.gather(
                *(load.worker(i * 2, end) for i in range(CONCURRENCY)), sample_memory(end)
            )
            elapsed = time.monotonic() - started
            end_rss = rss_kib(server.pid)
        assert server.alive()

    total = sum(load.counts.values())
    growth = (end_rss - warm_rss) / warm_rss
    latency = {
        kind: f"p50 {_percentile(v, 0.5) * 1000:.1f} ms / p99 {_percentile(v, 0.99) * 1000:.1f} ms"
        for kind, v in sorted(load.latencies.items())
    }
    print(
        f"\nsoak {elapsed:.0f} s: {total} requests ({total / elapsed:.0f}/s), "
        f"{dict(load.counts)}, errors {len(load.errors)}; "
        f"server RSS {warm_rss} KiB after warm-up ({warm_counts} requests), {end_rss} KiB at "
        f"the end ({growth:+.1%}), peak {max(k for _, k in rss)} KiB; latency {latency}"
    )
    assert load.errors == []
    assert load.counts["paid"] > 0 and load.counts["replay"] > 0
    paid = load.counts["paid"]
    assert len(handler_runs(runs)) == paid
    assert chain.tx_count(facilitator_account.address) == nonce_before + paid
    assert test_token.balance_of(pay_to) == PRICE * paid
    assert growth < MAX_RSS_GROWTH
