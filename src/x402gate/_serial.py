"""One worker thread that runs a serial store's calls, in order, for async code.

A store that does every operation one at a time anyway (the SQLite store: one connection under
one lock) gains nothing from a thread pool, and pays for one on every call: a
``concurrent.futures`` future with its condition variable, a copied context, and threads that
wake up only to queue on the store's lock while holding the GIL. :class:`SerialWorker` keeps one
thread per gate that takes calls from a queue and hands each result back to the caller's event
loop: the event loop still never waits on the store's I/O, at a fraction of the cost per call.

A caller that would rather run a call itself once the worker is done (a store that runs calls
inline when it can, :mod:`x402gate.stores.calls`) asks :meth:`SerialWorker.idle` for a future
done when the calls queued so far have run.

The thread starts on first use (again in a forked child, which does not inherit it) and stops
when the worker is closed or dropped; calls made after :meth:`SerialWorker.close` run in the
default thread pool, as before there was a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["SerialWorker"]

T = TypeVar("T")

_Item = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _deliver(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the caller stopped waiting; the call itself did run
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _serve(items: queue.SimpleQueue[_Item | None]) -> None:
    """The thread: run each call, hand its outcome to the loop that asked, until ``None``."""
    while True:
        item = items.get()
        if item is None:
            return
        fn, args, loop, future = item
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn(*args)
        except BaseException as exc:  # delivered to the caller, as a thread pool would
            error = exc
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_deliver, future, result, error)
        del item, fn, args, loop, future, result, error


def _stop(items: queue.SimpleQueue[_Item | None]) -> None:
    items.put(None)


class SerialWorker:
    """Runs blocking calls one after another in a thread of its own (see the module)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._items: queue.SimpleQueue[_Item | None] | None = None
        self._pid = 0
        self._closed = False
        self._finalizer: weakref.finalize[Any, SerialWorker] | None = None
        # The future of the call queued last: the calls run in order, so once it is done every
        # call queued before it is too.
        self._last: asyncio.Future[Any] | None = None
        self._last_pid = 0

    def _queue(self) -> queue.SimpleQueue[_Item | None]:
        items = self._items
        if items is not None and self._pid == os.getpid():
            return items
        with self._lock:
            if self._items is None or self._pid != os.getpid():
                items = queue.SimpleQueue()
                thread = threading.Thread(
                    target=_serve, args=(items,), name=self._name, daemon=True
                )
                thread.start()
                self._items, self._pid = items, os.getpid()
                # Dropped without close(): the thread ends, it holds no reference to self.
                self._finalizer = weakref.finalize(self, _stop, items)
            return self._items

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the worker thread; its result or its exception, on this loop."""
        if self._closed:
            return await asyncio.to_thread(fn, *args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue().put((fn, args, loop, future))
        self._last, self._last_pid = future, os.getpid()
        return await future

    def idle(self) -> asyncio.Future[None] | None:
        """``None`` when no call queued from the running loop is still under way, else a
        future of that loop, done (never failed) once they all ran, or sooner when the last
        caller stopped waiting. A hint for the caller's timing only: a store call run inline
        afterwards still finds out for itself whether it would wait."""
        last = self._last
        if last is None or last.done() or self._last_pid != os.getpid():
            return None  # (a forked child: the thread that was to run it is not here)
        loop = asyncio.get_running_loop()
        if last.get_loop() is not loop:
            return None
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: asyncio.Future[Any]) -> None:
            if not waiter.done():
                waiter.set_result(None)

        last.add_done_callback(wake)
        return waiter

    def close(self) -> None:
        """Stop the thread once the calls already queued have run."""
        with self._lock:
            self._closed = True
            if self._finalizer is not None and self._pid == os.getpid():
                self._finalizer()
            self._items = None
