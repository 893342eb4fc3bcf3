"""The serial store worker: one thread runs a serial store's calls in order for async code."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from x402gate._serial import SerialWorker


def test_calls_run_in_one_other_thread_in_order_and_return_their_results() -> None:
    worker = SerialWorker("test-serial")
    seen: list[tuple[int, str]] = []

    def record(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * n

    async def main() -> list[int]:
        return list(await asyncio.gather(*(worker.call(record, n) for n in range(50))))

    try:
        assert asyncio.run(main()) == [n * n for n in range(50)]
    finally:
        worker.close()
    assert [n for n, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"test-serial"}


def test_an_exception_reaches_the_caller_and_the_worker_goes_on() -> None:
    worker = SerialWorker("test-serial")

    def fail() -> None:
        raise ValueError("refused")

    async def main() -> int:
        with pytest.raises(ValueError, match="refused"):
            await worker.call(fail)
        return await worker.call(lambda: 7)

    try:
        assert asyncio.run(main()) == 7
    finally:
        worker.close()


def test_the_event_loop_runs_while_a_call_blocks() -> None:
    worker = SerialWorker("test-serial")
    release = threading.Event()
    ticks = 0

    async def main() -> str:
        nonlocal ticks
        call = asyncio.ensure_future(worker.call(lambda: "done" if release.wait(5) else "late"))
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        release.set()
        return await call

    try:
        assert asyncio.run(main()) == "done"
    finally:
        worker.close()
    assert ticks == 5


def test_a_cancelled_caller_does_not_break_the_worker() -> None:
    worker = SerialWorker("test-serial")
    ran = threading.Event()

    def slow() -> None:
        time.sleep(0.05)
        ran.set()

    async def main() -> int:
        task = asyncio.ensure_future(worker.call(slow))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await worker.call(lambda: 3)

    try:
        assert asyncio.run(main()) == 3
    finally:
        worker.close()
    assert ran.is_set()  # the call itself ran: only its caller stopped waiting


def test_close_stops_the_thread_and_later_calls_still_run() -> None:
    worker = SerialWorker("test-serial-close")

    async def main() -> int:
        return await worker.call(lambda: 1)

    asyncio.run(main())
    assert any(t.name == "test-serial-close" for t in threading.enumerate())
    worker.close()
    deadline = time.monotonic() + 5
    while any(t.name == "test-serial-close" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the worker thread did not stop"
        time.sleep(0.01)
    assert asyncio.run(main()) == 1  # after close: the default thread pool


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_gets_a_thread_of_its_own(tmp_path: Path) -> None:
    worker = SerialWorker("test-serial")

    async def call() -> int:
        return await worker.call(os.getpid)

    try:
        assert asyncio.run(call()) == os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: the parent's thread does not exist here
            code = 0
            try:
                code = 0 if asyncio.run(asyncio.wait_for(call(), 10)) == os.getpid() else 1
            except BaseException:
                code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert asyncio.run(call()) == os.getpid()
    finally:
        worker.close()


def test_a_gate_runs_sqlite_calls_that_would_wait_in_its_store_thread_and_memory_calls_inline(
    tmp_path: Path,
) -> None:
    from eth_account import Account

    from x402gate import PaymentGate
    from x402gate.assets import Asset

    class Unused:  # no payment is made here
        async def verify(self, *args: object) -> None: ...
        async def settle(self, *args: object) -> None: ...
        async def supported(self) -> None: ...

    asset = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")

    from x402gate.stores.calls import WouldBlock

    def where() -> str:
        # A call that would wait (as a SQLite store's does when another holds its lock) gives
        # up on the event loop's thread; its second try runs where the gate sends it.
        if threading.current_thread() is threading.main_thread() and expected is not None:
            raise WouldBlock
        return threading.current_thread().name

    for store, expected in (
        (f"sqlite:///{tmp_path / 's.db'}", "x402gate-store"),
        ("memory://", None),
    ):
        gate = PaymentGate(
            pay_to=Account.create().address,
            assets=asset,
            facilitator=cast(Any, Unused()),
            store=store,
        )
        try:
            name = asyncio.run(gate._store_call(where))
        finally:
            gate.close()
        assert name == (expected or threading.current_thread().name)


def test_idle_is_done_once_the_calls_queued_ran() -> None:
    worker = SerialWorker("test-serial")
    release = threading.Event()

    async def main() -> None:
        assert worker.idle() is None  # nothing queued
        first = asyncio.ensure_future(worker.call(release.wait, 5))
        last = asyncio.ensure_future(worker.call(sum, (1, 2)))
        await asyncio.sleep(0)
        idle = worker.idle()
        assert idle is not None
        await asyncio.sleep(0.05)
        assert not idle.done()  # the first call still runs
        release.set()
        await asyncio.wait_for(idle, 5)
        assert first.done() and last.done() and await last == 3
        assert worker.idle() is None

    try:
        asyncio.run(main())
    finally:
        worker.close()


def test_idle_never_fails_when_the_last_caller_stops_waiting() -> None:
    worker = SerialWorker("test-serial")
    release = threading.Event()

    async def main() -> None:
        first = asyncio.ensure_future(worker.call(release.wait, 5))
        last = asyncio.ensure_future(worker.call(sum, (1, 2)))
        await asyncio.sleep(0)
        idle = worker.idle()
        assert idle is not None
        last.cancel()
        await asyncio.wait_for(idle, 5)
        assert idle.result() is None
        release.set()
        assert await first is True

    try:
        asyncio.run(main())
    finally:
        worker.close()
