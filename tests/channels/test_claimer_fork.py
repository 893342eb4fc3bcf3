"""A server that forks its workers after the gate started (a preloading server): the claimer's
thread does not survive the fork; the worker starts its own, with a holder token of its own, so
parent and worker never both believe they hold the lease."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from x402gate.channels import BackgroundClaimer, ClaimEngine, ClaimSettings
from x402gate.stores import open_store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork")

SETTINGS = ClaimSettings(every=3600, tick_seconds=0.05, lease_seconds=1)


def _child(claimer: BackgroundClaimer, url: str, results: Any) -> None:
    before = (claimer.forked, claimer.running, claimer.holder)
    claimer.start()
    deadline = time.monotonic() + 10
    with open_store(url) as store:
        holder = store.lease_holder(claimer.name, time.time())
        while holder != claimer.holder and time.monotonic() < deadline:
            time.sleep(0.05)
            holder = store.lease_holder(claimer.name, time.time())
    results.put((*before, claimer.running, claimer.holder, holder, os.getpid()))
    claimer.stop()


def test_a_forked_worker_runs_a_claimer_of_its_own(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gate.db'}"
    store = open_store(url)
    claimer = BackgroundClaimer(ClaimEngine(store, None), SETTINGS, "channel-claimer:test")
    claimer.start()
    try:
        deadline = time.monotonic() + 10
        while store.lease_holder(claimer.name, time.time()) != claimer.holder:
            assert time.monotonic() < deadline, "the parent's claimer never took the lease"
            time.sleep(0.05)
        assert not claimer.forked and claimer.running
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        child = ctx.Process(target=_child, args=(claimer, url, results))
        child.start()
        claimer.stop()  # the parent stops claiming: its lease is released
        forked, running, old_holder, now_running, new_holder, seen, pid = results.get(timeout=30)
        child.join(30)
    finally:
        claimer.stop()
        store.close()
    assert (forked, running) == (True, False)  # the thread stayed in the parent
    assert old_holder == claimer.holder and new_holder != old_holder
    assert now_running and str(pid) in new_holder
    # The worker's claimer took the lease once the parent's was released.
    assert seen == new_holder
