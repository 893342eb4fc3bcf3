"""Signed payment webhooks through real processes: the paid API in a uvicorn process settling on
the local chain, the receiver in a process of its own that checks every signature.

An event is delivered with a valid signature; while the receiver is down it waits in the
store's outbox and is redelivered, with the same event id, once the receiver is back; when the
sending process is SIGKILLed with the event undelivered, the restarted process delivers it with
that id. An endpoint that keeps failing is retried a bounded number of times, its rows end dead,
and the deliverer's memory does not grow with the number of failing events.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from x402.http import decode_payment_response_header

from x402gate.stores import Store, open_store
from x402gate.stores.journal import JournalRow
from x402gate.stores.outbox import OutboxEntry
from x402gate.testing.payments import decode_payment_required, sign_exact_payment
from x402gate.webhooks import WebhookDeliverer, WebhookEndpoint

from ._support import UvicornProcess, app_env, payment_headers
from .served_app import ENV_WEBHOOK

SECRET = "whsec-test-0123456789abcdef"
PRICE = 10_000
RECEIVER = str(Path(__file__).with_name("webhook_receiver.py"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def receiver(port: int, out: Path, status: int = 204) -> Iterator[subprocess.Popen[str]]:
    """The receiver process on ``port``, ready when this yields; ended by its pid after."""
    process = subprocess.Popen(
        [sys.executable, RECEIVER, str(port), SECRET, str(out), str(status)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def received(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines()]


def wait_for(check: Callable[[], Any], seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def pay(url: str, payer: Any) -> str:
    """One paid ``GET /paid``; answers the settlement's transaction."""
    with httpx.Client(base_url=url, timeout=60) as client:
        challenge = client.get("/paid")
        assert challenge.status_code == 402
        accepts = decode_payment_required(challenge.headers["payment-required"])
        payload = sign_exact_payment(payer, accepts.accepts[0])
        paid = client.get("/paid", headers=payment_headers(payload))
        assert paid.status_code == 200, paid.text
        receipt = decode_payment_response_header(paid.headers["payment-response"])
        return str(receipt.transaction)


def pending(store: Store) -> list[OutboxEntry]:
    return store.outbox_due(float("inf"), 100)


@pytest.fixture
def setup(
    chain: Any, test_token: Any, pay_to: str, facilitator_account: Any, tmp_path: Path
) -> tuple[dict[str, str], Path, int, Store]:
    port = _free_port()
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    env = app_env(
        rpc_url=chain.rpc_url,
        facilitator_key=facilitator_account.key.hex(),
        token=test_token.address,
        pay_to=pay_to,
        store=store_url,
        runs=tmp_path / "runs",
    )
    env[ENV_WEBHOOK] = f"http://127.0.0.1:{port}/hooks {SECRET}"
    return env, tmp_path / "received.jsonl", port, open_store(store_url)


def check_event(line: dict[str, Any], event_id: str, payer: Any, tx: str, pay_to: str) -> None:
    assert line["valid"] is True
    assert line["id"] == event_id
    body = json.loads(line["body"])
    assert body["id"] == event_id and body["type"] == "payment.settled"
    assert body["data"]["amount"] == str(PRICE)
    assert body["data"]["payer"] == payer.address.lower()
    assert body["data"]["transaction"].lower() == tx.lower()
    assert body["data"]["route"] == "GET /paid"


@pytest.mark.chain
@pytest.mark.slow
def test_delivered_signed_and_redelivered_after_the_receiver_was_down(
    setup: tuple[dict[str, str], Path, int, Store], payer: Any, pay_to: str
) -> None:
    env, out, port, store = setup
    with UvicornProcess(env) as server:
        # The receiver is down: the event waits in the outbox, its attempts failing.
        tx = pay(server.url, payer)
        (row,) = [r for r in store.journal_rows() if r.outcome == "settled"]
        waiting = wait_for(lambda: [e for e in pending(store) if e.attempts >= 2])
        assert [e.event for e in waiting] == [row.id]
        assert received(out) == []
        with receiver(port, out):
            (line,) = wait_for(lambda: received(out))
            check_event(line, row.id, payer, tx, pay_to)
            wait_for(lambda: store.outbox_pending() == 0)
            # With the receiver up, the next payment's event arrives at once, a new id.
            tx2 = pay(server.url, payer)
            lines = wait_for(lambda: received(out)[1:])
            rows = [r for r in store.journal_rows() if r.outcome == "settled"]
            assert len(rows) == 2 and len(lines) == 1
            check_event(lines[0], rows[1].id, payer, tx2, pay_to)
            assert rows[1].id != row.id
    # A body changed in transit fails the check: the receiver's verification is not a formality.
    from x402gate.webhooks import sign, verify_signature

    stamp = str(int(time.time()))
    good = sign(SECRET, stamp, line["body"].encode())
    assert verify_signature(SECRET, line["body"].encode(), stamp, good)
    assert not verify_signature(SECRET, line["body"].encode() + b" ", stamp, good)
    assert not verify_signature("another-secret-0123456789", line["body"].encode(), stamp, good)
    assert not verify_signature(SECRET, line["body"].encode(), str(int(stamp) - 3600), good)
    store.close()


@pytest.mark.chain
@pytest.mark.slow
def test_an_event_left_by_a_killed_sender_is_delivered_by_the_restarted_one(
    setup: tuple[dict[str, str], Path, int, Store], payer: Any, pay_to: str
) -> None:
    env, out, port, store = setup
    with UvicornProcess(env) as server:
        tx = pay(server.url, payer)
        waiting = wait_for(lambda: [e for e in pending(store) if e.attempts >= 1])
        os.kill(server.pid, signal.SIGKILL)
        wait_for(lambda: not server.alive())
    (event,) = [e.event for e in waiting]
    with receiver(port, out):
        time.sleep(1.0)
        assert received(out) == []  # nobody sends: the event is only in the store
        assert [e.event for e in pending(store)] == [event]
        with UvicornProcess(env):
            (line,) = wait_for(lambda: received(out))
            check_event(line, event, payer, tx, pay_to)
            wait_for(lambda: store.outbox_pending() == 0)
    store.close()


def _fail_all(tmp_path: Path, events: int, out: Path, port: int) -> tuple[int, Store]:
    """Queue ``events`` events for an endpoint answering 500, deliver until every row is
    dead; answers the deliverer's peak of traced memory."""
    store = open_store(f"sqlite:///{tmp_path / f'fail-{events}.db'}?synchronous=normal")
    endpoint = WebhookEndpoint(f"http://127.0.0.1:{port}/hooks", SECRET)
    store.outbox_targets = (endpoint.target(),)
    now = time.time()
    for i in range(events):
        store.journal_append(
            JournalRow(f"settled:{i:06d}", now, "GET /paid", "0xab", PRICE, "0xcd", "n", "settled")
        )
    deliverer = WebhookDeliverer(
        store,
        [endpoint],
        max_attempts=2,
        backoff_seconds=0.001,
        max_backoff_seconds=0.001,
        page=16,
        concurrency=4,
    )
    tracemalloc.start()
    try:
        deadline = time.monotonic() + 120
        while store.outbox_pending():
            assert time.monotonic() < deadline
            if not deliverer.deliver_once():
                time.sleep(0.002)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        deliverer.stop()
    return peak, store


@pytest.mark.slow
def test_a_failing_endpoint_ends_dead_with_bounded_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    out = tmp_path / "failing.jsonl"
    with receiver(port, out, status=500):
        _, warm = _fail_all(tmp_path, 10, out, port)  # imports and first connections
        small, small_store = _fail_all(tmp_path, 200, out, port)
        large, store = _fail_all(tmp_path, 1000, out, port)
    dead = store.outbox_dead_rows(5000)
    assert len(dead) == 1000 and store.outbox_pending() == 0
    assert {(e.attempts, e.error) for e in dead} == {(2, "HTTP 500")}
    # Every event was tried exactly twice, each time signed validly, with the same id.
    lines = received(out)
    assert len(lines) == 2 * 1210 and all(line["valid"] for line in lines)
    ids = [line["id"] for line in lines[2 * 210 :]]
    assert sorted(set(ids)) == [f"settled:{i:06d}" for i in range(1000)]
    assert all(count == 2 for count in collections.Counter(ids).values())
    # Five times the failing events, not five times the deliverer's memory: it holds a page
    # (800 more rows held at once would take far more than the margin).
    assert large < small + 200 * 1024, (small, large)
    # The log is not flooded either: one warning per deliverer (each ran for under a minute).
    dead_logs = [r for r in caplog.records if "dead" in r.getMessage()]
    assert len(dead_logs) == 3, [r.getMessage() for r in dead_logs]
    for opened in (warm, small_store, store):
        opened.close()


@pytest.mark.slow
def test_with_store_leases_one_instance_delivers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = open_store(url), open_store(url)
    if not getattr(first, "supports_leases", False):
        pytest.skip("this store keeps no leases")
    port = _free_port()
    out = tmp_path / "received.jsonl"
    endpoint = WebhookEndpoint(f"http://127.0.0.1:{port}/hooks", SECRET)
    for store in (first, second):
        store.outbox_targets = (endpoint.target(),)
    deliverers = [WebhookDeliverer(s, [endpoint], poll_seconds=0.05) for s in (first, second)]
    now = time.time()
    with receiver(port, out):
        for deliverer in deliverers:
            deliverer.start()
        try:
            for i in range(30):
                store = (first, second)[i % 2]
                store.journal_append(
                    JournalRow(
                        f"settled:{i:03d}", now, "GET /paid", "0xab", PRICE, "", "", "settled"
                    )
                )
            wait_for(lambda: first.outbox_pending() == 0 and len(received(out)) >= 30)
            holder = getattr(first, "lease_holder")("x402gate-webhooks", time.time())  # noqa: B009
            assert holder in {d.holder for d in deliverers}
        finally:
            for deliverer in deliverers:
                deliverer.stop()
    ids = [line["id"] for line in received(out)]
    assert sorted(ids) == [f"settled:{i:03d}" for i in range(30)]  # each once
    first.close()
    second.close()
