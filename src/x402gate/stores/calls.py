"""How async code calls a store: on the event loop when that cannot wait, else in a thread.

Store methods are synchronous. A backend that does I/O (:attr:`Store.blocking`) is called from
a worker thread, so the event loop never waits on a disk or a network. The hop costs CPU and
a wake-up of the loop on every call, which is most of what a fast store call costs: a SQLite
ledger transaction that needs no ``fsync`` takes tens of microseconds, the hop about as long
again, and on a loaded machine the wake-up much longer. So a backend can say
(:attr:`Store.inline_first`) that it tries each call on the caller's thread first, refusing
with :class:`WouldBlock`, before it changed anything, whatever would make it wait (a lock
held by another thread or process, an ``fsync``, a connection not yet open); the call then
runs in a worker thread as before.

A call that finds the store's lock held by the store's worker thread (:attr:`WouldBlock.busy`)
waits on the event loop for the calls the worker has under way, then tries inline once more.
Handing it to the worker instead keeps the worker busy for the next call, and that one's, so
that one call that had to wait (an ``fsync``, a checkpoint) would turn every later call into a
thread hop. A call that would wait itself (an ``fsync``, another process's write lock) goes
to the worker at once, behind the calls already there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .._serial import SerialWorker
    from .base import Store

__all__ = ["WouldBlock", "call_store"]

T = TypeVar("T")


class WouldBlock(Exception):
    """A store call tried inline (:meth:`Store.inline`) would have to wait; nothing changed,
    so the caller runs it again in a worker thread. ``busy``: only because another thread of
    this process holds the store (the call itself would not wait), so it may run inline once
    that thread is done."""

    def __init__(self, *args: object, busy: bool = False) -> None:
        super().__init__(*args)
        self.busy = busy


async def call_store(
    store: Store, fn: Callable[..., T], *args: Any, worker: SerialWorker | None = None
) -> T:
    """``fn(*args)``, a method of ``store``: inline when the store is not blocking or manages
    without waiting, in a worker thread otherwise (``worker``, the store's own thread, when the
    gate gave it one; the default pool otherwise)."""
    if not store.blocking:
        return fn(*args)
    if store.inline_first:
        idle = None
        try:
            with store.inline():
                return fn(*args)
        except WouldBlock as exc:
            if exc.busy and worker is not None:
                idle = worker.idle()
        if idle is not None:
            await idle  # the worker's calls ran: the store's lock is likely free now
            try:
                with store.inline():
                    return fn(*args)
            except WouldBlock:
                pass
    if worker is not None:
        return await worker.call(fn, *args)
    return await asyncio.to_thread(fn, *args)
