"""What the reliability tests share: real uvicorn processes, chain scans, process memory."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from x402gate.testing.payments import encode_payment

from . import served_app

APP_DIR = str(Path(served_app.__file__).parent)
APP_FACTORY = "served_app:create_app"

_PORT_RE = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
_WORKER_RE = re.compile(r"Started server process \[(\d+)\]")
_STARTED = "Application startup complete."


class UvicornProcess:
    """``uvicorn`` serving :mod:`served_app` in a subprocess of its own (its own session).

    ``--port 0`` lets the kernel pick the port atomically; uvicorn logs it, and readiness is
    read from its log (every worker reports "Application startup complete.") and then proven by
    a ``GET /health``, all polled with a deadline, never a fixed sleep. :meth:`stop` ends exactly
    the processes this object started: SIGTERM to its child (uvicorn's supervisor stops its
    workers), SIGKILL if that did not work in time, and SIGKILL to any worker left over.
    """

    def __init__(self, env: Mapping[str, str], *, workers: int | None = None) -> None:
        self.env = {**os.environ, **env}
        self.workers = workers
        self.port: int | None = None
        self.worker_pids: list[int] = []
        self._started = 0
        self._ready = threading.Event()
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "not started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """PID of the uvicorn process itself (the only server process without ``workers``)."""
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self, timeout: float = 90.0) -> UvicornProcess:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            APP_FACTORY,
            "--factory",
            "--app-dir",
            APP_DIR,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "info",
            "--no-access-log",
        ]
        if self.workers:
            command += ["--workers", str(self.workers)]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        try:
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _drain(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        expected = self.workers or 1
        for line in self._process.stdout:
            self._output.append(line.rstrip())
            if (match := _PORT_RE.search(line)) is not None:
                self.port = int(match.group(1))
            elif (match := _WORKER_RE.search(line)) is not None:
                self.worker_pids.append(int(match.group(1)))
            elif _STARTED in line:
                self._started += 1
            if self.port is not None and self._started >= expected:
                self._ready.set()
        self._ready.set()  # EOF: let the waiter see that the process died

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        if not self._ready.wait(max(0.0, deadline - time.monotonic())) or self.port is None:
            raise RuntimeError(f"uvicorn did not start:\n{self.output()}")
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"uvicorn exited:\n{self.output()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn never answered /health:\n{self.output()}")
                time.sleep(0.02)

    def output(self) -> str:
        return "\n".join(self._output)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # uvicorn's supervisor stops its workers; should one outlive it, end it by its pid, once
        # sure it is still ours (in the session this object created).
        for pid in self.worker_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == process.pid:
                    os.kill(pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> UvicornProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def app_env(
    *, rpc_url: str, facilitator_key: str, token: str, pay_to: str, store: str, runs: Path
) -> dict[str, str]:
    """Environment of :func:`served_app.create_app`."""
    return {
        served_app.ENV_RPC_URL: rpc_url,
        served_app.ENV_FACILITATOR_KEY: facilitator_key,
        served_app.ENV_TOKEN: token,
        served_app.ENV_PAY_TO: pay_to,
        served_app.ENV_STORE: store,
        served_app.ENV_RUNS: str(runs),
    }


def handler_runs(runs: Path) -> list[int]:
    """PIDs of the worker processes that ran the paid handler, one entry per run."""
    if not runs.exists():
        return []
    return [int(line) for line in runs.read_text().split()]


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def payment_headers(payload: Any) -> dict[str, str]:
    return {"PAYMENT-SIGNATURE": encode_payment(payload)}


def transactions(chain: Any, first_block: int) -> list[dict[str, Any]]:
    """Every transaction mined from ``first_block`` on, with its receipt's status and gas."""
    found = []
    for number in range(first_block, chain.block_number() + 1):
        block = chain.w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            receipt = chain.w3.eth.get_transaction_receipt(tx["hash"])
            found.append(
                {
                    "hash": tx["hash"].hex(),
                    "from": tx["from"],
                    "status": receipt["status"],
                    "gas": receipt["gasUsed"],
                    "block": number,
                }
            )
    return found


def pending_nonce(chain: Any, address: str) -> int:
    """Transactions sent by ``address`` including those not mined (still in the pool)."""
    return int(chain.rpc("eth_getTransactionCount", [address, "pending"]), 16)


@contextlib.contextmanager
def servers(*processes: UvicornProcess) -> Iterator[list[UvicornProcess]]:
    """Start several servers (stopping those already started if one fails)."""
    started: list[UvicornProcess] = []
    try:
        for process in processes:
            started.append(process.start())
        yield started
    finally:
        for process in started:
            process.stop()
