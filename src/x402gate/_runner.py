"""Drive the gate's one async flow from synchronous code (WSGI, Django, Flask).

The flow is written once, as coroutines. Sync integrations submit those coroutines to one
background event loop per process, so async resources (HTTP facilitator clients, locks) live on a
single loop and the request thread simply waits for the result.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _start() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=serve, name="x402gate-loop", daemon=True).start()
            ready.wait()
            _loop = loop
        return _loop


def _forget_after_fork() -> None:
    # A forked child inherits the loop object but not its thread: start a new one on demand.
    global _loop
    _loop = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for its result in this thread."""
    loop = _loop if _loop is not None and not _loop.is_closed() else _start()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:  # pragma: no cover - would deadlock; a programming error
        coro.close()
        raise RuntimeError("run_sync() called from the x402gate loop itself")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()
