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
import time
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

_STAMP = 32  # bytes: a broadcast count (16 hex digits), its Unix time (10), 6 random digits
_LIVE = 60.0  # seconds: a stamp younger than this at a first turn is a live process's


def _count(stamp: bytes) -> int:
    try:
        return int(stamp[:16], 16)
    except ValueError:
        return 0  # empty, or not a file of this release


def _written(stamp: bytes) -> float:
    try:
        return float(int(stamp[16:26], 16))
    except ValueError:
        return 0.0


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
        self.shared = False
        """True once another process was seen sending from the account: from then on a
        simulation made before the turn is made again when anyone sent in between."""
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
        self.shared = False
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
                stamp = os.pread(fd, _STAMP, 0)
                others = stamp != (self._mine or b"")
                if others and stamp and not self.shared:
                    # Another process sends from the account now, unless this is the stamp of
                    # one that ended long ago, found at this process's first turn.
                    self.shared = self._mine is not None or time.time() - _written(stamp) < _LIVE
                yield others
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def sends(self) -> int:
        """How many broadcasts the host's senders stamped so far (no lock: a snapshot to
        compare with :meth:`sends` under the lock later)."""
        fd = self._fd
        if fd is None:
            return 0
        try:
            return _count(os.pread(fd, _STAMP, 0))
        except OSError:
            return 0

    def sent(self) -> None:
        """A broadcast went out under :meth:`held`: stamp the file so the others know."""
        fd = self._fd
        if fd is None:
            return
        try:
            count = _count(os.pread(fd, _STAMP, 0)) + 1
            stamp = f"{count:016x}{int(time.time()):010x}{os.urandom(3).hex()}".encode()
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
