"""One poll loop for the receipts of every settlement waiting for one (see
:class:`ReceiptPoller`); used by :class:`x402gate._rpc.Signer`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from web3.exceptions import TimeExhausted

if TYPE_CHECKING:
    from ._rpc import JsonRpcTransport

__all__ = ["ReceiptCallback", "ReceiptPoller"]

logger = logging.getLogger("x402gate.facilitator")


ReceiptCallback = Callable[[dict[str, Any] | None, BaseException | None], None]
"""Called once, from the poll thread, with the receipt or the error that ended the wait."""


class _Waiter:
    __slots__ = ("callbacks", "deadline")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.callbacks: list[ReceiptCallback] = []


class ReceiptPoller:
    """One poll loop for every transaction waiting for its receipt.

    A thread of its own asks the node for the receipts of all pending transactions in one
    JSON-RPC batch per poll: every 2 ms while a transaction was sent in the last 50 ms (a local
    node mines at once), then less and less often, up to every 250 ms (a real chain needs
    seconds). A burst of settlements costs one round trip per poll, not one per transaction, and
    no thread waits per settlement (:meth:`watch` calls back). The thread starts with the first
    transaction and ends when nothing has waited for a while.
    """

    FIRST_POLLS_SECONDS = 0.05
    FAST_POLL_SECONDS = 0.002
    SLOW_POLL_SECONDS = 0.25
    IDLE_SECONDS = 5.0
    BATCH = 100

    def __init__(self, transport: JsonRpcTransport) -> None:
        self._transport = transport
        self._lock = threading.Condition()
        self._pending: dict[str, _Waiter] = {}
        self._newest = 0.0  # monotonic time the latest transaction was added
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Transactions waiting for their receipt now."""
        with self._lock:
            return len(self._pending)

    def watch(self, tx_hash: str, timeout: float, callback: ReceiptCallback) -> None:
        """Call ``callback(receipt, None)`` once the receipt of ``tx_hash`` (``0x`` + 64
        lowercase hex) is mined, or ``callback(None, error)``: ``TimeExhausted`` after
        ``timeout`` seconds, or the poll's error (the node unreachable, say), when the
        transaction's outcome is unknown. The callback runs in the poll thread: keep it short."""
        now = time.monotonic()
        with self._lock:
            if not self._closed:
                waiter = self._pending.get(tx_hash)
                if waiter is None:
                    waiter = self._pending[tx_hash] = _Waiter(now + timeout)
                else:
                    waiter.deadline = max(waiter.deadline, now + timeout)
                waiter.callbacks.append(callback)
                self._newest = now
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="x402gate-receipts", daemon=True
                    )
                    self._thread.start()
                self._lock.notify()
                return
        callback(None, ConnectionError("the RPC transport is closed"))

    def wait(self, tx_hash: str, timeout: float) -> dict[str, Any]:
        """:meth:`watch`, blocking this thread until the end; raises the error."""
        done = threading.Event()
        outcome: list[Any] = []

        def finished(receipt: dict[str, Any] | None, error: BaseException | None) -> None:
            outcome[:] = [receipt, error]
            done.set()

        self.watch(tx_hash, timeout, finished)
        done.wait()
        receipt, error = outcome
        if error is not None:
            raise error
        assert receipt is not None
        return dict(receipt)

    def close(self) -> None:
        """End every wait in progress with an error and stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
            waiting, self._pending = self._pending, {}
        closed = ConnectionError("the RPC transport is closed")
        for waiter in waiting.values():
            _call_back(waiter, None, closed)

    def _run(self) -> None:
        delay = self.FAST_POLL_SECONDS
        while True:
            with self._lock:
                idle_until = time.monotonic() + self.IDLE_SECONDS
                while not self._pending and not self._closed:
                    left = idle_until - time.monotonic()
                    if left <= 0:
                        self._thread = None
                        return
                    self._lock.wait(left)
                if self._closed:
                    self._thread = None
                    return
                hashes = list(self._pending)[: self.BATCH]
            try:
                answers = self._transport.batch(
                    [("eth_getTransactionReceipt", [h]) for h in hashes]
                )
                failure: BaseException | None = None
            except Exception as exc:  # every waiter of this poll learns it
                answers, failure = [], exc
            now = time.monotonic()
            ended: list[tuple[_Waiter, dict[str, Any] | None, BaseException | None]] = []
            with self._lock:
                for i, tx_hash in enumerate(hashes):
                    waiter = self._pending.get(tx_hash)
                    if waiter is None:
                        continue
                    answer = answers[i] if failure is None else None
                    if failure is not None:
                        ended.append((waiter, None, failure))
                    elif isinstance(answer, BaseException):  # that call's RpcError
                        ended.append((waiter, None, answer))
                    elif isinstance(answer, dict):
                        ended.append((waiter, answer, None))
                    elif now >= waiter.deadline:
                        ended.append((waiter, None, TimeExhausted(f"no receipt for {tx_hash}")))
                    else:
                        continue
                    del self._pending[tx_hash]
            for waiter, receipt, error in ended:
                _call_back(waiter, receipt, error)
            with self._lock:
                if not self._pending or self._closed:
                    continue
                if now - self._newest < self.FIRST_POLLS_SECONDS:
                    delay = self.FAST_POLL_SECONDS
                else:
                    delay = min(delay * 2, self.SLOW_POLL_SECONDS)
                soonest = min(w.deadline for w in self._pending.values())
                newest = self._newest
                self._lock.wait(max(0.0, min(delay, soonest - time.monotonic())))
                if self._newest != newest:
                    delay = self.FAST_POLL_SECONDS


def _call_back(
    waiter: _Waiter, receipt: dict[str, Any] | None, error: BaseException | None
) -> None:
    for callback in waiter.callbacks:
        try:
            callback(receipt, error)
        except Exception:  # one waiter's failure must not stop the loop for the others
            logger.exception("receipt callback failed")
