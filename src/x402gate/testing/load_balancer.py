"""A real load balancer for tests and benchmarks: HAProxy on loopback in front of app servers.

Many instances of one paid API are what a production deployment runs: a balancer spreading
connections over processes that share one store. :class:`LoadBalancer` writes an HAProxy
configuration for the given backends, starts ``haproxy`` in the foreground on a free loopback
port and stops exactly that process::

    with LoadBalancer(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]) as lb:
        httpx.get(f"{lb.url}/paid")

HAProxy comes from the operating system (Debian: ``apt-get install haproxy``);
:func:`find_haproxy` looks at ``$X402GATE_HAPROXY``, then ``PATH``, then ``/usr/sbin``.
Tests call :func:`require_haproxy`: without the binary they are skipped with the reason,
unless ``X402GATE_REQUIRE_HAPROXY=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

__all__ = [
    "ENV_BINARY",
    "ENV_REQUIRE",
    "LoadBalancer",
    "LoadBalancerError",
    "find_haproxy",
    "haproxy_config",
    "require_haproxy",
]

ENV_BINARY = "X402GATE_HAPROXY"
"""Path of the ``haproxy`` binary to use instead of the one on ``PATH``."""
ENV_REQUIRE = "X402GATE_REQUIRE_HAPROXY"
"""``1``: a missing ``haproxy`` fails the tests that need it instead of skipping them."""


class LoadBalancerError(RuntimeError):
    """HAProxy could not be found, configured or started (the message holds its output)."""


def find_haproxy() -> str | None:
    """The ``haproxy`` binary: ``$X402GATE_HAPROXY``, ``PATH``, then ``/usr/sbin/haproxy``."""
    configured = os.environ.get(ENV_BINARY)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("haproxy")
    if found is not None:
        return found
    return "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None


def require_haproxy() -> str:
    """The binary's path, or skip the calling test (fail it when ``X402GATE_REQUIRE_HAPROXY=1``)."""
    import pytest

    binary = find_haproxy()
    if binary is None:
        reason = f"no haproxy binary (apt-get install haproxy, or set {ENV_BINARY})"
        if os.environ.get(ENV_REQUIRE) == "1":
            pytest.fail(f"{reason} ({ENV_REQUIRE}=1)", pytrace=False)
        pytest.skip(f"{reason}; set {ENV_REQUIRE}=1 to make this a failure")
    return binary


def haproxy_config(
    backends: Sequence[str], *, port: int, balance: str = "roundrobin", maxconn: int = 4096
) -> str:
    """An HAProxy configuration: HTTP on ``127.0.0.1:port``, spread over ``backends``.

    ``backends`` are base URLs (``http://127.0.0.1:8001``). ``balance`` is HAProxy's algorithm
    (``roundrobin``, ``leastconn``...). Every request is forwarded with ``X-Forwarded-For``;
    the timeouts are long enough for a paid call waiting on a settlement.
    """
    servers = []
    for n, url in enumerate(backends):
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise LoadBalancerError(f"a backend must be http://host:port, not {url!r}")
        servers.append(f"    server app{n} {parts.hostname}:{parts.port} maxconn {maxconn}")
    lines = [
        "global",
        f"    maxconn {maxconn}",
        "defaults",
        "    mode http",
        "    option forwardfor",
        "    timeout connect 5s",
        "    timeout client 120s",
        "    timeout server 120s",
        "frontend paid_api",
        f"    bind 127.0.0.1:{port}",
        "    default_backend app_instances",
        "backend app_instances",
        f"    balance {balance}",
        *servers,
    ]
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoadBalancer:
    """``haproxy`` in the foreground on loopback in front of ``backends`` (base URLs).

    :meth:`start` returns once the front end accepts connections (raising
    :class:`LoadBalancerError` with HAProxy's output otherwise); :meth:`stop` ends the process
    it started, by its id. :attr:`url` is the front end's base URL.
    """

    def __init__(
        self,
        backends: Sequence[str],
        *,
        binary: str | None = None,
        balance: str = "roundrobin",
        start_timeout: float = 20.0,
    ) -> None:
        if not backends:
            raise LoadBalancerError("a load balancer needs at least one backend")
        self.backends = list(backends)
        self.binary = binary
        self.balance = balance
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._dir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: where clients send their requests."""
        if self.port is None:
            raise LoadBalancerError("the load balancer is not running; call start()")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The ``haproxy`` process id while running."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> LoadBalancer:
        """Write the configuration and start HAProxy (a second port is tried if the first,
        picked free a moment before, was taken in between)."""
        binary = self.binary or find_haproxy()
        if binary is None:
            raise LoadBalancerError(f"no haproxy binary (apt-get install haproxy, or {ENV_BINARY})")
        self._dir = tempfile.mkdtemp(prefix="x402gate-haproxy-")
        try:
            for _ in range(3):
                if self._spawn(binary, _free_port()):
                    return self
            raise LoadBalancerError(f"haproxy did not start:\n{self._log()}")
        except BaseException:
            self.stop()
            raise

    def _spawn(self, binary: str, port: int) -> bool:
        assert self._dir is not None
        config = Path(self._dir) / "haproxy.cfg"
        config.write_text(haproxy_config(self.backends, port=port, balance=self.balance))
        check = subprocess.run(
            [binary, "-c", "-q", "-f", str(config)], capture_output=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise LoadBalancerError(
                "haproxy refused its configuration:\n" + (check.stdout + check.stderr).decode()
            )
        with open(Path(self._dir) / "haproxy.log", "wb") as log:
            # -db: foreground, no daemon; -W is not used, so the pid is HAProxy itself.
            self._proc = subprocess.Popen(
                [binary, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False  # most likely the port was taken meanwhile: try another
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                self.port = port
                return True
            time.sleep(0.02)
        raise LoadBalancerError(f"haproxy did not listen in {self.start_timeout}s:\n{self._log()}")

    def _log(self) -> str:
        if self._dir is None:
            return "(no log)"
        try:
            return (Path(self._dir) / "haproxy.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop HAProxy by its process id (SIGTERM, then SIGKILL) and remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.port = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LoadBalancer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid} url={self.url}" if self._proc is not None else "stopped"
        return f"<LoadBalancer {len(self.backends)} backends {state}>"
