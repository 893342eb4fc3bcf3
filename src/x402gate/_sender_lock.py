"""One sender at a time per settlement account on this host, across processes.

Worker processes of one server (``x402gate proxy --workers N``, gunicorn, several uvicorn
processes behind a balancer) that settle with the same key each keep a nonce counter of their
own. Without coordination two of them can sign the same nonce at once: the node refuses the
second ("nonce too low", "replacement transaction underpriced"), or worse takes it as a
replacement of the first, whose receipt then never comes. Measured on the local chain, 40
settlements spread over two senders of one key, all at once: 7 to 10 of them failed.

:class:`SenderLock` is an advisory file lock (``flock``) named after the RPC endpoint and the
account, held around "take a nonce, sign, broadcast". The file also holds a stamp that each
broadcast under the lock rewrites: a process that finds a stamp other than the one it wrote
last knows another process sent meanwhile and reads the node's count again; a process alone
never pays that round trip. The file's content is never taken for a nonce, so a stale file
(a node restarted since) can only cost one extra read.

Processes on other hosts cannot be seen: they need keys of their own (docs/deployment.md);
collisions with them are retried by the signer. Where ``fcntl`` is missing (Windows) or the
lock file cannot be opened, the lock does nothing and the retries are all there is.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["SenderLock"]

logger = logging.getLogger("x402gate.facilitator")

_LOCKS: weakref.WeakSet[SenderLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child shares its parent's open file description, and with it the flock: it
    # must open the file again to be excluded from its parent.
    for lock in list(_LOCKS):
        lock._reopen()


class SenderLock:
    """The cross-process lock of one account's broadcasts through one RPC endpoint."""

    def __init__(self, rpc_url: str, address: str, directory: str | None = None) -> None:
        digest = hashlib.sha256(f"{rpc_url}|{address.lower()}".encode()).hexdigest()[:32]
        self.path = Path(directory or tempfile.gettempdir()) / f"x402gate-sender-{digest}.lock"
        self._fd: int | None = None
        self._mine: bytes | None = None  # the stamp this process wrote last
        self._threads = threading.Lock()
        self._open()
        _LOCKS.add(self)

    def _open(self) -> None:
        if fcntl is None:
            return
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            logger.warning("no cross-process sender lock (%s): %s", self.path, exc)
            self._fd = None

    def _reopen(self) -> None:
        self._threads = threading.Lock()
        self._mine = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._open()

    @contextlib.contextmanager
    def held(self) -> Iterator[bool]:
        """Hold the lock; yields True when another process may have broadcast since this one
        last did (then the node's count must be read again)."""
        with self._threads:
            fd = self._fd
            if fd is None or fcntl is None:
                yield False
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                stamp = os.pread(fd, 16, 0)
                yield stamp != (self._mine or b"")
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def sent(self) -> None:
        """A broadcast went out under :meth:`held`: stamp the file so the others know."""
        fd = self._fd
        if fd is None:
            return
        stamp = os.urandom(8).hex().encode()
        try:
            os.pwrite(fd, stamp, 0)
        except OSError as exc:
            logger.warning("the cross-process sender lock could not be stamped: %s", exc)
            return
        self._mine = stamp

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
